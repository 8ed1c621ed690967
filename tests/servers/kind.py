"""kind: real Kubernetes nodes as Docker containers, for the end-to-end tests.

Nothing kind normally downloads can be had here (no image registry), so every part is built
from the package registries and cached:

- the kind CLI, ``sigs.k8s.io/kind`` from the Go module proxy;
- the parts of kind's *base* image: containerd (``github.com/containerd/containerd/v2``, the
  version kind's own base image pins) on top of a Debian image with systemd and Debian's runc
  and CNI plugins; kind's base-image files (entrypoint, systemd units, containerd config) are
  taken from the kind module's ``images/base/files``, the same inputs kind's Dockerfile uses;
- the Kubernetes node binaries (kubelet, kubeadm, kubectl, kube-proxy) from the same
  ``k8s.io/kubernetes`` module as the control plane in ``kube.py``;
- the images ``kubeadm init`` and kind's default manifests run: the control-plane components,
  etcd, CoreDNS, pause, the CNI daemon and the local-path storage provisioner.

``kind build node-image --type file`` then assembles the node image, as kind's docs describe.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import docker, images, kube, runc_bounded
from .base import ServerError, bin_dir, cache_dir, go_build, go_module_dir, progress
from .docker import DockerEngine

NAME = "kind"
KIND_VERSION = "v0.31.0"
CONTAINERD_VERSION = "v2.2.0"  # what kind v0.31.0's base image builds
LOCAL_PATH_VERSION = "v0.0.30"
VERSION = f"{KIND_VERSION}+k8s-{kube.KUBE_VERSION}"

NODE_BINARIES = ("kubelet", "kubeadm", "kubectl", "kube-proxy")
CONTAINERD_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2")
CONTAINERD_TAGS = ("no_aufs", "no_zfs", "no_btrfs", "no_devmapper")


def binary() -> Path:
    return bin_dir("kind", KIND_VERSION) / "kind"


def containerd_dir() -> Path:
    return bin_dir("containerd", CONTAINERD_VERSION)


def coredns() -> Path:
    return bin_dir("coredns", _tag(_kubeadm_image_refs()["coredns"])) / "coredns"


def etcd() -> Path:
    return kube.binaries()["etcd"]


def local_path_provisioner() -> Path:
    return bin_dir("local-path-provisioner", LOCAL_PATH_VERSION) / "local-path-provisioner"


def node_binary(name: str) -> Path:
    return bin_dir("kubernetes", kube.KUBE_VERSION) / name


def install_binaries() -> None:
    """Build every binary the kind cluster needs, unless cached."""
    go_build(
        name="kind",
        version=KIND_VERSION,
        module="sigs.k8s.io/kind",
        module_version=KIND_VERSION,
        package="sigs.k8s.io/kind",
        binary="kind",
        minutes="1-2",
    )
    for name in CONTAINERD_BINARIES:
        go_build(
            name="containerd",
            version=CONTAINERD_VERSION,
            module=f"github.com/containerd/containerd/v2/cmd/{name}",
            module_version=CONTAINERD_VERSION,
            package=f"github.com/containerd/containerd/v2/cmd/{name}",
            binary=name,
            tags=CONTAINERD_TAGS,
            ldflags=[f"-X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}"],
            minutes="1-3",
        )
    go_build(
        name="local-path-provisioner",
        version=LOCAL_PATH_VERSION,
        module="github.com/rancher/local-path-provisioner",
        module_version=LOCAL_PATH_VERSION,
        package="github.com/rancher/local-path-provisioner",
        binary="local-path-provisioner",
        minutes="1-3",
    )
    kube.install()
    for name in NODE_BINARIES:
        kube.build_kubernetes_binary(name)
    # CoreDNS at the version kubeadm deploys (its image tag names it)
    refs = _kubeadm_image_refs()
    go_build(
        name="coredns",
        version=_tag(refs["coredns"]),
        module="github.com/coredns/coredns",
        module_version=_tag(refs["coredns"]),
        package="github.com/coredns/coredns",
        binary="coredns",
        minutes="2-4",
    )
    if etcd_version() != kube.ETCD_VERSION:  # one etcd build serves the control plane and the nodes
        raise ServerError(f"kubeadm deploys etcd {etcd_version()}: set kube.ETCD_VERSION to it")


def _tag(ref: str) -> str:
    return ref.rsplit(":", 1)[1]


def etcd_version() -> str:
    """The etcd release of kubeadm's etcd image (tag ``3.6.5-0`` -> ``v3.6.5``)."""
    return "v" + _tag(_kubeadm_image_refs()["etcd"]).split("-")[0]


# --------------------------------------------------------------------------- images


IMAGE_DIR = Path(__file__).with_name("kind_images")
NODE_REPOSITORY = "putplace-test/kind-node"


def _kind_source() -> Path:
    """kind's module source, as resolved by the build module of the kind CLI."""
    build = cache_dir() / "build" / f"kind-{KIND_VERSION}"
    return go_module_dir(build, {**os.environ, "GOTOOLCHAIN": "local"}, "sigs.k8s.io/kind")


def _inputs(*parts: str | Path) -> str:
    """The hash of an image's inputs: texts, and files or directories (names and contents)."""
    data: list[bytes] = []
    for part in parts:
        if isinstance(part, str):
            data.append(part.encode())
            continue
        for path in sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]:
            data += [str(path.relative_to(part) if part.is_dir() else path.name).encode(), path.read_bytes()]
    return images.digest(*data)


def build_image(engine: DockerEngine, tags: Sequence[str], dockerfile: str, context: Mapping[str, Path]) -> None:
    """``docker build`` ``dockerfile`` with ``context`` (name in the build context -> file or
    directory) unless ``tags[0]`` was built from the same inputs; every tag names the image."""
    inputs = _inputs(dockerfile, *context.values())
    if images.built_from(engine, tags[0], inputs):
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="putplace-kind-image-") as tmp:
        root = Path(tmp)
        for name, source in context.items():
            if source.is_dir():
                shutil.copytree(source, root / name)
            else:
                shutil.copy2(source, root / name)
        # the Go module cache is read-only; the images want plain 0644/0755 files
        subprocess.run(["chmod", "-R", "u+rwX,go+rX", str(root)], check=True)
        (root / "Dockerfile").write_text(dockerfile)
        images.build(engine, root, ["--label", f"{images.LABEL}={inputs}", *(a for t in tags for a in ("-t", t))])
    images.record(tags[0], time.monotonic() - started, engine)
    progress(f"built {tags[0]} in {time.monotonic() - started:.0f} s")


def _kind_image_refs() -> dict[str, str]:
    """The kindnetd and local-path images kind's default manifests name (from kind's source)."""
    source = _kind_source() / "pkg" / "build" / "nodeimage"
    text = (source / "const_cni.go").read_text() + (source / "const_storage.go").read_text()
    refs = dict(re.findall(r'^const (\w+Image) = "([^"]+)"$', text, re.M))
    return {
        "kindnetd": refs["kindnetdImage"],
        "local-path-provisioner": refs["storageProvisionerImage"],
        "local-path-helper": refs["storageHelperImage"],
    }


def _kubeadm_image_refs() -> dict[str, str]:
    """``kubeadm config images list``: image name (kube-apiserver, etcd, pause, ...) -> reference."""
    listed = subprocess.run(
        [str(node_binary("kubeadm")), "config", "images", "list", "--kubernetes-version", kube.KUBE_VERSION],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in listed}


def _sandbox_image(base_files: Path) -> str:
    """The pause image containerd runs for each pod (kind's containerd config.toml)."""
    found = re.search(r'sandbox_image = "([^"]+)"', (base_files / "etc" / "containerd" / "config.toml").read_text())
    if found is None:
        raise ServerError("kind's containerd config names no sandbox_image")
    return found.group(1)


PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"


def _apt(packages: str) -> str:
    return (
        f"RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages} "
        "&& apt-get clean && rm -rf /var/lib/apt/lists/*\n"
    )


# iptables-wrapper.sh answers for iptables and ip6tables (and -save, -restore) with the node's backend.
IPTABLES = (
    _apt("iptables")
    + "COPY iptables-wrapper.sh /usr/sbin/iptables-wrapper\n"
    + "RUN chmod 0755 /usr/sbin/iptables-wrapper && for tool in iptables ip6tables; do "
    + "for suffix in '' -save -restore; do ln -sf iptables-wrapper /usr/sbin/$tool$suffix; done; done\n"
)


def _component_images(engine: DockerEngine, debian: str, sandbox: str) -> dict[str, list[str]]:
    """Build the images kubeadm and kind's manifests run: archive name -> the tags in it.

    The four Kubernetes components go in their own archives, as in a Kubernetes release; every
    other image goes into kube-proxy's archive too: ``kind build node-image`` loads all the
    images of those archives into the node and would otherwise try to pull the rest.
    """
    kubeadm = _kubeadm_image_refs()
    kind_refs = _kind_image_refs()
    base = f"FROM {debian}\n{PATH_ENV}"
    archives: dict[str, list[str]] = {}
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
        context = {name: node_binary(name)}  # the control plane's build, and kube-proxy beside it
        extra = ""
        if name == "kube-proxy":
            extra = _apt("conntrack ipset kmod") + IPTABLES
            context["iptables-wrapper.sh"] = IMAGE_DIR / "iptables-wrapper.sh"
        dockerfile = f"{base}{extra}COPY {name} /usr/local/bin/{name}\n"
        build_image(engine, [kubeadm[name]], dockerfile, context)
        archives[name] = [kubeadm[name]]
    with tempfile.TemporaryDirectory(prefix="putplace-pause-") as tmp:
        pause = Path(tmp) / "pause"
        subprocess.run(["gcc", "-static", "-Os", "-o", str(pause), str(IMAGE_DIR / "pause.c")], check=True)
        dockerfile = 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'
        pause_tags = sorted({kubeadm["pause"], sandbox})
        build_image(engine, pause_tags, dockerfile, {"pause": pause})
    others: list[tuple[list[str], str, dict[str, Path]]] = [
        ([kubeadm["etcd"]], f"{base}COPY etcd /usr/local/bin/etcd\n", {"etcd": etcd()}),
        ([kubeadm["coredns"]], f'{base}COPY coredns /coredns\nENTRYPOINT ["/coredns"]\n', {"coredns": coredns()}),
        (
            [kind_refs["kindnetd"]],
            f"{base}{_apt('curl jq iproute2')}{IPTABLES}"
            'COPY cni.sh /bin/kindnetd\nRUN chmod 0755 /bin/kindnetd\nENTRYPOINT ["/bin/kindnetd"]\n',
            {"cni.sh": IMAGE_DIR / "cni.sh", "iptables-wrapper.sh": IMAGE_DIR / "iptables-wrapper.sh"},
        ),
        (
            [kind_refs["local-path-provisioner"]],
            f"{base}COPY local-path-provisioner /usr/local/bin/local-path-provisioner\n",
            {"local-path-provisioner": local_path_provisioner()},
        ),
        ([kind_refs["local-path-helper"]], base, {}),
    ]
    for tags, dockerfile, context in others:
        build_image(engine, tags, dockerfile, context)
        archives["kube-proxy"] += tags
    archives["kube-proxy"] += pause_tags
    return archives


def _qualified(repository: str) -> str:
    """A repository as containerd names it: ``kindest/x`` -> ``docker.io/kindest/x``."""
    first, _, rest = repository.partition("/")
    if not rest:
        return f"docker.io/library/{repository}"
    return repository if "." in first or ":" in first or first == "localhost" else f"docker.io/{repository}"


def _save(engine: DockerEngine, tags: Sequence[str], target: Path) -> None:
    """``docker save`` the tags into ``target``, its ``repositories`` index first and naming
    every image in full: kind reads an archive's tags from whichever index comes first
    (manifest.json would give it only the first image's) and compares them with the full
    names kubeadm and its manifests use, where docker writes ``kindest/...`` for docker.io."""
    with tempfile.TemporaryDirectory(prefix="putplace-save-") as tmp:
        saved = Path(tmp) / "saved.tar"
        engine.docker("save", "-o", str(saved), *tags, timeout=600)
        with tarfile.open(saved) as source, tarfile.open(target, "w") as out:
            members = sorted(source.getmembers(), key=lambda member: member.name != "repositories")
            for member in members:
                data = source.extractfile(member) if member.isfile() else None
                if member.name == "repositories" and data is not None:
                    index = {_qualified(repo): tags for repo, tags in json.load(data).items()}
                    body = json.dumps(index).encode()
                    member.size = len(body)
                    data = io.BytesIO(body)
                out.addfile(member, data)


def node_image(engine: DockerEngine, debian: str) -> str:
    """kind's base image, then the node image ``kind build node-image`` makes of it; cached."""
    base_files = _kind_source() / "images" / "base" / "files"
    dockerfile = f"ARG DEBIAN={debian}\n" + (IMAGE_DIR / "base.Dockerfile").read_text()
    if "CAP_SYS_RESOURCE" in runc_bounded.missing():
        # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine withholds
        # (runc: "failed to update /proc/self/oom_score_adj: Permission denied" for every pod):
        # containerd then clamps the kubelet's values to its own, as kind has it do in rootless nodes.
        restrict = "s/restrict_oom_score_adj = false/restrict_oom_score_adj = true/"
        dockerfile += f"RUN sed -i '{restrict}' /etc/containerd/config.toml\n"
    base_context = {"files": base_files, "containerd": containerd_dir()}
    base_tag = f"putplace-test/kind-base:{KIND_VERSION}-{_inputs(dockerfile, *base_context.values())}"
    build_image(engine, [base_tag], dockerfile, base_context)

    archives = _component_images(engine, debian, _sandbox_image(base_files))
    image_ids = [
        engine.docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        for tags in archives.values()
        for tag in tags
    ]
    node_binaries = [node_binary(name) for name in ("kubeadm", "kubelet", "kubectl")]
    node_tag = f"{NODE_REPOSITORY}:{kube.KUBE_VERSION}-{_inputs(base_tag, *image_ids, *node_binaries)}"
    if images.exists(engine, node_tag):  # kind commits it: the tag, made of its inputs, is the cache key
        return node_tag
    started = time.monotonic()
    progress(f"building the kind node image {node_tag} (~2 minutes)")
    with tempfile.TemporaryDirectory(prefix="putplace-kind-node-") as tmp:
        bin_path = Path(tmp) / "kubernetes" / "server" / "bin"
        bin_path.mkdir(parents=True)
        (Path(tmp) / "kubernetes" / "version").write_text(kube.KUBE_VERSION + "\n")
        for path in node_binaries:
            shutil.copy2(path, bin_path / path.name)
        for name, tags in archives.items():
            _save(engine, tags, bin_path / f"{name}.tar")
        tarball = Path(tmp) / "kubernetes-server-linux-amd64.tar.gz"
        with tarfile.open(tarball, "w:gz", compresslevel=1) as out:
            out.add(Path(tmp) / "kubernetes", arcname="kubernetes")
        log = cache_dir() / "build" / f"kind-{KIND_VERSION}" / "node-image.log"
        result = subprocess.run(
            [str(binary()), "build", "node-image", "--type", "file", "--base-image", base_tag, "--image", node_tag,
             str(tarball)],
            env={**os.environ, **engine.env()}, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ServerError(f"kind build node-image failed (log {log}): {(result.stdout + result.stderr)[-800:]}")
    progress(f"built the kind node image in {time.monotonic() - started:.0f} s")
    images.drop_stale(engine, [node_tag])  # an older node image is 1.4 GB
    return node_tag


def install() -> Path:
    """Build the binaries and the node image (CI's install step, ahead of pytest's timeouts),
    on the engine at the fixed socket, started for the occasion and stopped again if none runs."""
    install_binaries()
    with docker.engine_for_install() as engine:
        progress(f"kind node image: {node_image(engine, images.debian_image(engine))}")
    return binary()
