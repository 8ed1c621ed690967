"""``putplace-agent sync PATH…``: sync trees once (``--once``) or continuously until SIGTERM.

Exit status: 0 when everything is in the catalogue (or a continuous run was stopped), 1 when
``--once`` left files failed or pending, 2 on bad settings or a key the server refuses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from putplace_agent.index import Index
from putplace_agent.progress import report_progress, use_progress_bar
from putplace_agent.settings import AgentSettings, load_settings
from putplace_agent.sync import Agent, Fatal
from putplace_client import CertificateError, PutPlaceClient, PutPlaceClientError
from putplace_common.heap import settle_heap
from putplace_common.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("putplace_agent")


def _settings_help() -> str:
    lines = ["settings (flags win over environment variables, which win over the --config TOML file):"]
    for name, field in AgentSettings.model_fields.items():
        env = "NODE_NAME" if name == "node_name" else "NODE_IP" if name == "ip_address" else f"PUTPLACE_{name.upper()}"
        lines.append(f"  {env:<36} {field.description or ''}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="putplace-agent", description="PutPlace node agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync",
        help="catalogue trees and keep them in sync",
        description="Catalogue PATHs at a PutPlace server, then keep watching them until SIGTERM.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="trees (or files) to sync")
    sync.add_argument("--once", action="store_true", help="scan once, print a summary and exit")
    sync.add_argument("--config", type=Path, help="TOML file with settings (keys as in the list below, lowercase)")
    sync.add_argument("--server", dest="server_url", help="PutPlace API base URL")
    sync.add_argument("--ca-bundle", type=Path, help="PEM CA bundle trusted for an https server")
    sync.add_argument("--api-key-file", type=Path, help="file holding the API key (or set PUTPLACE_API_KEY)")
    sync.add_argument("--state-dir", type=Path, help="where the local index lives")
    sync.add_argument("--node-name", help="hostname recorded in the catalogue")
    sync.add_argument("--strip-prefix", type=Path, help="where the node's root is mounted, e.g. /host")
    sync.add_argument("--exclude", action="append", metavar="GLOB", help="skip matching paths (repeatable)")
    sync.add_argument("--skip", action="append", type=Path, metavar="DIR", help="never descend DIR (repeatable)")
    sync.add_argument("--follow-symlinks", action="store_true", default=None, help="hash link targets")
    sync.add_argument("--rescan-interval", dest="rescan_interval_seconds", type=float, help="seconds; 0 = never")
    sync.add_argument("--hash-workers", type=int, help="threads hashing files")
    sync.add_argument("--upload-concurrency", type=int, help="uploads in flight")
    sync.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    sync.add_argument("--metrics-host", help="address of the metrics endpoint")
    sync.add_argument("--log-format", choices=["json", "text"])
    sync.add_argument("--log-level")
    return parser


def _fail(message: str) -> int:
    print(f"putplace-agent: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("command", "once", "config")}
    if not flags["paths"]:
        flags.pop("paths")
    try:
        settings = load_settings(args.config, **flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"invalid setting {where}: {first['msg'].removeprefix('Value error, ')}")
    except ValueError as exc:  # an unreadable config file
        return _fail(str(exc))
    if not settings.paths:
        return _fail("nothing to sync: give one or more PATHs (or PUTPLACE_PATHS)")
    missing = [str(p) for p in settings.paths if not os.path.lexists(p)]
    if missing:
        return _fail(f"no such file or directory: {', '.join(missing)}")
    if settings.api_key is None:
        return _fail("no API key: pass --api-key-file or set PUTPLACE_API_KEY")
    setup_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_sync(settings, once=args.once))
    except Fatal as exc:
        return _fail(str(exc))


async def _sync(settings: AgentSettings, *, once: bool) -> int:
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, settings.metrics_host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    index = Index(settings.state_dir, settings.identity)
    assert settings.api_key is not None
    try:
        async with PutPlaceClient(
            settings.server_url,
            settings.api_key.get_secret_value(),
            timeout=settings.request_timeout_seconds,
            ca_bundle=settings.ca_bundle,
        ) as client:
            await _check_certificate(client)
            agent = Agent(settings, client, index)
            settle_heap()  # the start-up's objects leave every later collection (5 % less CPU per file)
            log.info(
                "agent starting",
                extra={"paths": [str(p) for p in settings.paths], "server": settings.server_url,
                       "node": settings.node_name, "once": once},
            )  # fmt: skip
            reporter = asyncio.create_task(
                report_progress(
                    agent.tally,
                    bar=use_progress_bar(once),
                    interval=settings.progress_interval_seconds,
                    scanning=lambda: agent.scanning,
                )
            )
            try:
                await agent.run(stop, once=once)
            except* Fatal as group:
                raise group.exceptions[0] from None
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        owed = {state.name.lower(): n for state, n in index.owed().items()}
    finally:
        index.close()
    log.info("sync stopped" if not once else "sync complete", extra={**agent.tally.as_dict(), "pending": owed})
    if once and (agent.tally.failed or owed):
        return 1
    return 0


async def _check_certificate(client: PutPlaceClient) -> None:
    """An untrusted server certificate is a setting to fix, not an outage to wait out: say so
    at once. (A server that is down is fine here: the work waits in the index.)"""
    try:
        await client.health()
    except CertificateError as exc:
        raise Fatal(f"{exc} (give the CA that signed it with --ca-bundle or PUTPLACE_CA_BUNDLE)") from None
    except PutPlaceClientError:
        pass


if __name__ == "__main__":
    sys.exit(main())
