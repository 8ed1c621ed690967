"""Command line for the test servers: install them, or run them detached for a dev shell.

    python -m tests.servers install [NAME...]   build/install into the cache (default: all, tools too,
                                                but restic, which only a benchmark runs; the Go
                                                builds beside the apt and image steps)
    python -m tests.servers start [NAME...]     start detached, print `export` lines
    python -m tests.servers env [NAME...]       print `export` lines of the running ones
    python -m tests.servers stop [NAME...]      stop them and delete their data

Typical use: ``eval "$(python -m tests.servers start)"; pytest; python -m tests.servers stop``.
The tests then reuse these servers instead of starting their own. State (one JSON file and one
log per server) lives in ``<cache>/run/``. Expected failures print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

from . import INSTALLABLE, SERVERS, kind, select
from .base import Process, ServerError, make_workdir, remove_workdir, run_dir, scratch_root, stop_all


def _state_file(name: str) -> Path:
    return run_dir() / f"{name}.json"


def _process(name: str, state: dict[str, Any]) -> Process:
    return Process(
        name,
        int(state["pid"]),
        state["executable"],
        Path(state["log"]),
        float(state.get("grace", 10.0)),
        signal_group=bool(state.get("group", True)),
    )


def _load(name: str) -> tuple[list[Process], dict[str, Any]] | None:
    """The processes of detached server ``name`` if all are still running.

    Stale state is removed; when only some processes of a multi-process server (kube) are left,
    those are stopped first.
    """
    path = _state_file(name)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    processes = [_process(name, state)]
    processes += [_process(extra["name"], extra) for extra in state.get("extra", [])]
    if not all(process.alive() for process in processes):
        stop_all(processes)
        _forget(name, state)
        return None
    return processes, state


def _forget(name: str, state: dict[str, Any]) -> None:
    remove_workdir(Path(state["workdir"]))
    _state_file(name).unlink(missing_ok=True)


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


# What needs apt or the Docker engine (downloads, debootstrap, pip in image builds: mostly network
# and disk) installs in one lane, the Go builds (CPU) in another, side by side: a cold install then
# takes about as long as the longer lane, not the sum. apt's lock allows one apt user at a time, so
# every apt user is in the engine lane. kind needs both (its binaries are Go builds, its node
# image is made of them on the engine): its binaries build in the Go lane, its image after both.
ENGINE_LANE = frozenset({"docker", "prometheus", "postgres", "images", "chromium"})


def _install_one(name: str) -> None:
    exe = INSTALLABLE[name].install()
    print(f"{name} {INSTALLABLE[name].VERSION}: {exe}", flush=True)


def _lane(steps: list[Callable[[], None]]) -> None:
    for step in steps:
        step()


def cmd_install(names: list[str]) -> int:
    engine_lane = [partial(_install_one, name) for name in names if name in ENGINE_LANE]
    go_lane = [partial(_install_one, name) for name in names if name not in ENGINE_LANE and name != "kind"]
    if "kind" in names:
        go_lane.append(kind.install_binaries)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="install") as pool:
        lanes = [pool.submit(_lane, lane) for lane in (engine_lane, go_lane) if lane]
        wait(lanes)
    for lane in lanes:  # both lanes ran to their end (what one built stays cached); report the first error
        lane.result()
    if "kind" in names:
        _install_one("kind")
    return 0


def cmd_start(names: list[str]) -> int:
    run_dir().mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        running = _load(name)
        if running is None:
            parent = scratch_root() or run_dir()
            workdir = make_workdir(f"run-{name}", parent)
            log = run_dir() / f"{name}.log"
            log.unlink(missing_ok=True)
            try:
                server = SERVERS[name].start(workdir, log_path=log)
            except BaseException:
                remove_workdir(workdir)
                raise
            state: dict[str, Any] = {
                "pid": server.process.pid,
                "executable": server.process.executable,
                "log": str(log),
                "grace": server.process.stop_grace,
                "group": server.process.signal_group,
                "reused": server.reused,
                "workdir": str(workdir),
                "env": server.env,
                "extra": [
                    {
                        "name": extra.name,
                        "pid": extra.pid,
                        "executable": extra.executable,
                        "log": str(extra.log_path),
                        "grace": extra.stop_grace,
                    }
                    for extra in server.extra
                ],
            }
            _state_file(name).write_text(json.dumps(state, indent=2) + "\n")
            how = "reusing" if server.reused else "started"
            print(f"{how} {name} (pid {server.process.pid}, log {log})", file=sys.stderr)
        else:
            state = running[1]
            print(f"{name} already running (pid {state['pid']})", file=sys.stderr)
        out.append(_exports(state["env"]))
    sys.stdout.write("".join(out))
    return 0


def cmd_env(names: list[str], explicit: bool) -> int:
    found = {name: _load(name) for name in names}
    missing = [name for name, running in found.items() if running is None]
    if missing and (explicit or len(missing) == len(names)):
        raise ServerError(f"not running: {', '.join(missing)} (start with: python -m tests.servers start)")
    for running in found.values():
        if running is not None:
            sys.stdout.write(_exports(running[1]["env"]))
    return 0


def cmd_stop(names: list[str]) -> int:
    for name in names:
        running = _load(name)
        if running is None:
            continue
        processes, state = running
        if state.get("reused"):  # found running by `start` (the Docker engine): not ours to stop
            _forget(name, state)
            print(f"forgot {name} (pid {state['pid']}): it was running before `start`, left running", file=sys.stderr)
            continue
        stop_all(processes)
        _forget(name, state)
        print(f"stopped {name} (pid {', '.join(str(p.pid) for p in processes)})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.servers",
        description="Real servers for PutPlace's tests.",
    )
    parser.add_argument("command", choices=["install", "start", "stop", "env"])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of: {', '.join(INSTALLABLE)} (after docker: install only)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            return cmd_install(select(args.names, INSTALLABLE))
        names = select(args.names)
        if args.command == "start":
            return cmd_start(names)
        if args.command == "env":
            return cmd_env(names, explicit=bool(args.names))
        return cmd_stop(names)
    except ServerError as error:
        first = str(error).splitlines()[0]
        print(f"error: {first}", file=sys.stderr)
        if "\n" in str(error):
            print(str(error).split("\n", 1)[1], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
