"""FerretDB v1 on its SQLite backend: a MongoDB wire-protocol server for the tests.

Built from the Go module proxy (no binary is published anywhere this machine can reach).
The module zip of FerretDB lacks ``build/version/version.txt``, and a binary built from it
panics at start-up ("Invalid build/version/version.txt file content"), so the build copies the
module source next to the throwaway module, writes that file, and points a ``replace`` at it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from . import postgres
from .base import ENV_PREFIX, Process, Server, bin_dir, free_ports, go_build, go_module_dir, stop_all

NAME = "ferretdb"
VERSION = "v1.24.2"
MODULE = "github.com/FerretDB/FerretDB"
ENV_URL = f"{ENV_PREFIX}MONGODB_URL"
ENV_POSTGRES_URL = f"{ENV_PREFIX}FERRETDB_POSTGRES_URL"  # backend="postgresql": the database under it
_PG_POOL = 160  # FerretDB's connections to PostgreSQL (see start)
# What the README tells an operator of FerretDB on PostgreSQL to run (GIN indexes for PutPlace).
INDEX_SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "ferretdb-postgresql-indexes.sql"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "ferretdb"


def _add_version_file(build: Path, env: Mapping[str, str]) -> None:
    """Build from a writable copy of the module source that has build/version/version.txt."""
    source = build / "src"

    def edit(flag: str) -> None:
        subprocess.run(["go", "mod", "edit", flag], cwd=build, env=dict(env), check=True)

    if not (source / "build" / "version" / "version.txt").is_file():
        edit(f"-dropreplace={MODULE}")  # so that `go list -m` names the module cache copy
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(go_module_dir(build, env, MODULE), source)
        for path in [source, *source.rglob("*")]:  # the module cache is read-only
            path.chmod(path.stat().st_mode | 0o200)
        (source / "build" / "version" / "version.txt").write_text(f"{VERSION}\n")
        (source / "build" / "version" / "package.txt").write_text("putplace-tests\n")
    edit(f"-replace={MODULE}=./src")


def install() -> Path:
    """Build FerretDB into the cache unless it is already there; return the binary."""
    return go_build(
        name=NAME,
        version=VERSION,
        module=f"{MODULE}/cmd/ferretdb",
        module_version=VERSION,
        package=f"{MODULE}/cmd/ferretdb",
        binary="ferretdb",
        prepare=_add_version_file,
        minutes="1-3",
    )


def ping(url: str) -> bool:
    """True once the server at ``url`` answers ``ping``."""
    import pymongo
    from pymongo.errors import PyMongoError

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url,
        serverSelectionTimeoutMS=500,
        connectTimeoutMS=500,
        directConnection=True,
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    finally:
        client.close()
    return True


def start(
    workdir: Path,
    *,
    log_path: Path | None = None,
    timeout: float = 30.0,
    backend: Literal["sqlite", "postgresql"] = "sqlite",
) -> Server:
    """Start FerretDB with its data in ``workdir``; return once it answers ``ping``.

    ``backend="postgresql"`` also starts a PostgreSQL (``postgres.py``) for it to run on: equality
    filters then run in the database instead of a scan of the collection (the SQLite backend
    pushes down only ``_id``), which loads that grow the catalogue need.
    """
    exe = install()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    backing: list[Process] = []
    env: dict[str, str] = {}
    if backend == "postgresql":
        # PostgreSQL runs unprivileged under root: it must be able to pass through our dir
        # (make_workdir's dirs sit in /dev/shm or /tmp, which it can reach).
        workdir.chmod(0o711)
        (workdir / "pg").mkdir()
        pg_log = (log_path or workdir / "ferretdb.log").with_name("postgres.log")
        pg, pg_url = postgres.start(workdir / "pg", log_path=pg_log)
        backing.append(pg)
        env[ENV_POSTGRES_URL] = pg_url
        # FerretDB v1.24 runs findAndModify (and update) holding its query's pooled connection
        # while it takes a second one for the write: with as many at once as its pool has
        # connections (pool_max_conns, 50 by default) every one waits for a second connection
        # for ever, all PostgreSQL backends idle -- the hang bench/soak.py met. A pool above what
        # the API can run at once (2 workers x PUTPLACE_DATABASE_MAX_CONCURRENCY 64) and within
        # PostgreSQL's max_connections (200, postgres.py) keeps the soak clear of it.
        storage = ["--handler=postgresql", f"--postgresql-url={pg_url}?pool_max_conns={_PG_POOL}"]
    else:
        storage = ["--handler=sqlite", f"--sqlite-url=file:{workdir / 'data'}/"]  # a directory, ending in "/"
    (port,) = free_ports(1)
    argv = [
        str(exe),
        *storage,
        f"--listen-addr=127.0.0.1:{port}",
        f"--state-dir={workdir}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=warn",
    ]
    process = Process.spawn(
        NAME,
        argv,
        cwd=workdir,
        log_path=log_path or workdir / "ferretdb.log",
        env={"DO_NOT_TRACK": "1"},
    )
    url = f"mongodb://127.0.0.1:{port}/"
    try:
        process.wait_ready(lambda: ping(url), timeout=timeout)
    except BaseException:
        stop_all([*backing, process])
        raise
    return Server(NAME, process, workdir, {ENV_URL: url, **env}, backing=backing)


def restart(server: Server, *, timeout: float = 30.0) -> None:
    """Stop FerretDB and start it again on the same port and database, as an operator does after
    ``INDEX_SCRIPT``: database settings reach new PostgreSQL connections only."""
    server.process.stop()
    server.process = server.process.respawn()
    server.process.wait_ready(lambda: ping(server.env[ENV_URL]), timeout=timeout)


def psql(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``psql`` of the server's PostgreSQL version on a new connection to its database (a server
    started on PostgreSQL only); stdout and stderr captured as text."""
    argv = [str(postgres.psql()), server.env[ENV_POSTGRES_URL], *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def add_putplace_indexes(server: Server, database: str) -> subprocess.CompletedProcess[str]:
    """Run ``INDEX_SCRIPT`` for the MongoDB database ``database`` as an operator would, stopping at
    its first error. The operator's second step, ``restart``, is the caller's: its clients'
    pooled connections break with it."""
    return psql(server, "-q", "-v", "ON_ERROR_STOP=1", "-v", f"db={database}", "-f", str(INDEX_SCRIPT))
