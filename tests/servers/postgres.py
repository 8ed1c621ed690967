"""PostgreSQL 15, the storage FerretDB runs on when ``ferretdb.start(..., backend="postgresql")``.

FerretDB's default SQLite backend pushes only ``_id`` filters down, so every other query scans
its collection: fine for the suite's small data, not for a load that grows the catalogue (the
soak benchmark). On PostgreSQL, equality filters run in the database.

Debian's ``postgresql-15`` package is fetched with ``apt-get download`` and unpacked into the
cache with ``dpkg-deb -x`` (as for Prometheus): nothing is installed on the machine. The
binaries find their ``share/`` files relative to themselves, so the unpacked tree runs where
it lies; its libraries are the machine's own (Debian 12 has them). PostgreSQL refuses to run
as root, so under root the cluster belongs to, and runs as, ``nobody``, from a copy of the
unpacked tree in its data dir.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .base import Process, bin_dir, free_ports, progress, unpack_debian_package

NAME = "postgres"
VERSION = "15.20-0+deb12u1"
PACKAGE = f"postgresql-15={VERSION}"
CLIENT_PACKAGE = f"postgresql-client-15={VERSION}"
UNPRIVILEGED = "nobody"


def _root() -> Path:
    return bin_dir(NAME, VERSION)


_BIN = Path("usr", "lib", "postgresql", "15", "bin")  # in the unpacked packages


def binary() -> Path:
    return _root() / _BIN / "postgres"


def install() -> Path:
    """Unpack Debian's postgresql-15 into the cache unless it is there (and ``psql``, below);
    return ``postgres``."""
    if not binary().is_file():
        _install_server()
    if not _psql_binary().is_file():
        _install_psql()
    return binary()


def _install_server() -> None:
    progress(f"fetching Debian's postgresql-15 {VERSION} (about 17 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = Path(tmp) / "root"
        unpack_debian_package(PACKAGE, unpacked)
        for path in [unpacked, *unpacked.rglob("*")]:  # readable by the unprivileged user
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        target = _root()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(unpacked, partial, symlinks=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # whole tree at once: present = installed


def _psql_binary() -> Path:
    return _root() / _BIN / "psql"


def _install_psql() -> None:
    progress(f"fetching Debian's postgresql-client-15 {VERSION} (about 2 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        unpack_debian_package(CLIENT_PACKAGE, Path(tmp))
        partial = _psql_binary().with_name("psql.partial")
        shutil.copy2(Path(tmp) / _BIN / "psql", partial)
        partial.rename(_psql_binary())  # whole file at once: present = installed


def psql() -> Path:
    """``psql`` of the same version (Debian's postgresql-client-15, unpacked beside the server):
    for the SQL files the docs give operators to run. Like the server, it uses the machine's own
    libraries (libpq)."""
    install()
    return _psql_binary()


def _user() -> str | None:
    return UNPRIVILEGED if os.geteuid() == 0 else None


def start(workdir: Path, *, log_path: Path | None = None, timeout: float = 60.0) -> tuple[Process, str]:
    """A fresh cluster in ``workdir``; return it and the URL of its ``postgres`` database."""
    exe = install()
    data = workdir / "pgdata"
    user = _user()
    if user is not None:
        # The cache lies under root's home, which the unprivileged user cannot enter: it runs a
        # copy of the unpacked tree (56 MB, a fraction of a second on tmpfs) from its data dir.
        shutil.chown(workdir, user)
        workdir.chmod(0o755)
        shutil.copytree(_root(), workdir / "dist", symlinks=True)
        exe = workdir / "dist" / exe.relative_to(_root())
    tools = exe.parent
    subprocess.run(
        [str(tools / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120, user=user,
    )  # fmt: skip
    (port,) = free_ports(1)
    argv = [
        str(exe), "-D", str(data), "-p", str(port), "-k", str(workdir), "-c", "listen_addresses=127.0.0.1",
        # Test data: durability is not what is measured, and fsync on a shared disk is noise.
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "max_connections=200",
    ]  # fmt: skip
    process = Process.spawn(NAME, argv, cwd=workdir, log_path=log_path or workdir / "postgres.log", user=user)

    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        process.wait_ready(ready, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process, f"postgres://postgres@127.0.0.1:{port}/postgres"
