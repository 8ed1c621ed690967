"""The images the container tests run: a Debian base with Python, and the project's three targets.

No registry can be pulled from here, so the base is made locally (test images only; the
Dockerfile's default base for users stays the public ``python:*-slim``):

- ``debian_image()``: ``debootstrap --variant=minbase`` of bookworm from the machine's apt mirror,
  ``docker import``-ed (~35 s, ~200 MB).
- ``python_image()``: that plus Debian's python3 and python3-venv, and the host's CA bundle
  copied *after* the apt step (the ``ca-certificates`` postinst regenerates the bundle and would
  drop the CA that re-signs the registries' traffic here), with ``PIP_CERT``/``SSL_CERT_FILE``.
- ``project_images()``: the Dockerfile's ``api``, ``agent`` and ``operator`` targets built on it
  with ``--build-arg PYTHON=<python_image()>``; returns ``{target: ref}`` (what ``kind load
  docker-image`` takes).

Every image is tagged with a hash of its inputs and skipped when that tag exists, so a warm run
builds nothing: the engine's data root (in the cache) is the cache. Called by the fixtures
``python_base_image`` and ``putplace_images``, and by ``python -m tests.servers install images``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from . import docker
from .base import ServerError, cache_dir, progress
from .docker import DockerEngine

NAME = "images"
SUITE = "bookworm"
PYTHON = "3.11"  # bookworm's python3; pyproject.toml requires >= 3.11
VERSION = f"python{PYTHON}-{SUITE}"
TARGETS = ("api", "agent", "operator")
LABEL = "io.putplace.test.inputs"  # the hash of what an image was built from
ROOT = Path(__file__).resolve().parents[2]
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Everything the Dockerfile's build stage copies (and the Dockerfile itself).
PROJECT_INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "api", "agent", "operator")

PYTHON_DOCKERFILE = """\
FROM {debian}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
"""


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:12]


def exists(engine: DockerEngine, ref: str) -> bool:
    return engine.docker("image", "inspect", "--format", "{{.Id}}", ref, check=False).returncode == 0


def size_bytes(engine: DockerEngine, ref: str) -> int:
    return int(engine.docker("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def debian_mirror() -> str:
    """The first ``URIs:`` of the machine's deb822 sources that serves ``SUITE`` (else deb.debian.org)."""
    try:
        text = SOURCES.read_text()
    except OSError:
        return "http://deb.debian.org/debian"
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
        if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
            return fields["URIs"].split()[0]
    return "http://deb.debian.org/debian"


def record(ref: str, seconds: float, engine: DockerEngine) -> None:
    """Append what a build took to ``<cache>/image-builds.jsonl`` (docs/benchmarks.md reads it)."""
    line = {"ref": ref, "seconds": round(seconds, 1), "bytes": size_bytes(engine, ref), "at": time.time()}
    with (cache_dir() / "image-builds.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\n")


def debian_image(engine: DockerEngine) -> str:
    """A minbase bookworm root filesystem imported as an image (made once)."""
    mirror = debian_mirror()
    ref = f"putplace-test/debian:{SUITE}-minbase-{digest(SUITE.encode(), mirror.encode(), b'no-debs')}"
    if exists(engine, ref):
        return ref
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ServerError("debootstrap is not installed (python -m tests.servers install docker)")
    progress(f"making {ref}: debootstrap --variant=minbase {SUITE} from {mirror} (about a minute)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="putplace-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log = Path(tmp) / "debootstrap.log"
        with log.open("w") as out:
            code = subprocess.run(
                [debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=900,
                check=False,
            ).returncode
        if code != 0:
            raise ServerError(f"debootstrap {SUITE} failed (exit {code}): {log.read_text()[-400:].strip()}")
        # The downloaded .debs (~120 MB) and package lists: no image needs them.
        apt = rootfs / "var"
        for leftover in [*apt.glob("cache/apt/archives/*.deb"), *apt.glob("lib/apt/lists/*_*")]:
            leftover.unlink()
        progress(f"  debootstrap done in {time.monotonic() - started:.0f} s; docker import")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            ["docker", "import", "-", ref],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env={**engine.env(), "PATH": "/usr/local/bin:/usr/bin:/bin"},
            timeout=600,
            check=False,
        )
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ServerError(f"docker import of the {SUITE} rootfs failed: {imported.stderr.strip()[-300:]}")
    record(ref, time.monotonic() - started, engine)
    progress(f"made {ref} in {time.monotonic() - started:.0f} s")
    return ref


def python_image(engine: DockerEngine) -> str:
    """Debian's Python on the minbase image, trusting the host's CA bundle (made once per inputs)."""
    debian = debian_image(engine)
    dockerfile = PYTHON_DOCKERFILE.format(debian=debian)
    try:
        bundle = HOST_CA_BUNDLE.read_bytes()
    except OSError as error:
        raise ServerError(f"the host's CA bundle {HOST_CA_BUNDLE} is unreadable: {error}") from None
    ref = f"putplace-test/python:{PYTHON}-{SUITE}-{digest(dockerfile.encode(), bundle, SUITE.encode())}"
    if exists(engine, ref):
        return ref
    progress(f"building {ref}: python3 from {SUITE}'s apt (about a minute)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="putplace-python-image-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(dockerfile)
        (context / "ca-certificates.crt").write_bytes(bundle)
        build(engine, context, ["-t", ref])
    version = engine.docker(
        "run", "--rm", "--network=none", ref, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"
    ).stdout.strip()
    if version != PYTHON:
        engine.docker("image", "rm", ref, check=False)
        raise ServerError(f"{SUITE}'s python3 is {version}, the test images are meant to carry {PYTHON}")
    record(ref, time.monotonic() - started, engine)
    progress(f"built {ref} in {time.monotonic() - started:.0f} s")
    return ref


def build(engine: DockerEngine, context: Path, args: list[str], timeout: float = 1200.0) -> None:
    """``docker build`` (the legacy builder: no buildkit here) with its log kept on failure."""
    log = cache_dir() / "image-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ docker build {' '.join(args)} {context}\n")
        out.flush()
        code = subprocess.run(
            ["docker", "build", *args, str(context)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**engine.env(), "PATH": "/usr/local/bin:/usr/bin:/bin"},
            timeout=timeout,
            check=False,
        ).returncode
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines()[-6:]
        raise ServerError(f"docker build {' '.join(args[:4])} failed (exit {code}); log {log}: {' | '.join(lines)}")


def project_files() -> list[str]:
    """The Dockerfile's inputs as git sees them: tracked and untracked, not ignored."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *PROJECT_INPUTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(f"`git ls-files` in {ROOT} failed: {result.stderr.strip()}")
    return sorted(path for path in set(result.stdout.splitlines()) if (ROOT / path).is_file())


def project_images(engine: DockerEngine, targets: tuple[str, ...] = TARGETS) -> dict[str, str]:
    """Build the Dockerfile's targets on ``python_image()`` unless built from the same inputs.

    Returns ``{target: "putplace-<target>:test-<hash12>"}``; the hash covers the base image,
    the Dockerfile and every file the build copies, and is also the image's ``LABEL``. The build
    context is a temp dir holding exactly those files (no venv, no caches).
    """
    base = python_image(engine)
    files = project_files()
    parts = [base.encode()]
    for path in files:
        parts += [path.encode(), (ROOT / path).read_bytes()]
    inputs = digest(*parts)
    refs = {target: f"putplace-{target}:test-{inputs}" for target in targets}
    missing = [target for target, ref in refs.items() if not built_from(engine, ref, inputs)]
    if not missing:
        return refs
    with tempfile.TemporaryDirectory(prefix="putplace-build-context-") as tmp:
        context = Path(tmp)
        for path in files:
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, context / path)
        for target in missing:
            progress(f"building {refs[target]} (--target {target}; first build ~2 min, the others reuse its venvs)")
            started = time.monotonic()
            args = ["--build-arg", f"PYTHON={base}", "--target", target, "--label", f"{LABEL}={inputs}"]
            build(engine, context, [*args, "-t", refs[target]])
            record(refs[target], time.monotonic() - started, engine)
            size = size_bytes(engine, refs[target]) / 1e6
            progress(f"built {refs[target]} in {time.monotonic() - started:.0f} s ({size:.0f} MB)")
    drop_stale(engine, refs.values())
    return refs


def drop_stale(engine: DockerEngine, keep: Iterable[str]) -> None:
    """Untag every other tag of the repositories of ``keep``, then drop the images no tag needs
    any more: the engine's data root is a cache that would otherwise grow with every change of
    inputs (each set of project images leaves ~800 MB and its ~470 MB build stage behind)."""
    kept = set(keep)
    stale = [
        ref
        for repository in sorted({ref.rsplit(":", 1)[0] for ref in kept})
        for ref in engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.split()
        if ref not in kept
    ]
    if stale:
        engine.docker("image", "rm", *stale, check=False)
    prune_dangling(engine)


def prune_dangling(engine: DockerEngine) -> None:
    """Remove untagged images that no tagged one is built on (the legacy builder's earlier
    stages, once the images of their build are gone)."""
    engine.docker("image", "prune", "--force", check=False)


def built_from(engine: DockerEngine, ref: str, inputs: str) -> bool:
    got = engine.docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', ref, check=False)
    return got.returncode == 0 and got.stdout.strip() == inputs


def binary() -> Path:
    return Path(shutil.which("docker") or "docker")


def install() -> Path:
    """Build the base and the project's images (CI's install step, ahead of pytest's timeouts),
    on the engine at the fixed socket, started for the occasion and stopped again if none runs."""
    with docker.engine_for_install() as engine:
        for target, ref in project_images(engine).items():
            progress(f"{target}: {ref}")
    return binary()
