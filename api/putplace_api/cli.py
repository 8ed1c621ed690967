"""``putplace-api``: run the service with uvicorn (``serve``, the default), or check and
clean its content (``verify``, ``gc``: ``putplace_api.maintenance``) with the same settings.

Flags become ``PUTPLACE_*`` environment variables before anything else is imported, so
that every uvicorn worker (and prometheus-client's multiprocess mode) sees one
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from putplace_api.settings import Settings

__all__ = ["main"]


def _settings_help() -> str:
    lines = ["settings (environment variables, or a .env file in the working directory):"]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        shown = "" if default in (None, [], "") else f" [default: {default}]"
        lines.append(f"  PUTPLACE_{name.upper():<28} {field.description or ''}{shown}")
    lines.append("")
    lines.append("production: putplace-api --host 0.0.0.0 --workers 4 (with a MongoDB database and S3 storage)")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")  # one line, no usage dump


def _serve_flags(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--host", default=default, help="address to listen on (PUTPLACE_HOST)")
    parser.add_argument("--port", type=int, default=default, help="port to listen on (PUTPLACE_PORT)")
    parser.add_argument("--workers", type=int, default=default, help="worker processes (PUTPLACE_WORKERS)")
    parser.add_argument("--data-dir", default=default, help="data directory (PUTPLACE_DATA_DIR)")
    parser.add_argument(
        "--sync",
        action="append",
        default=default,
        metavar="PATH",
        help="also run a putplace-agent keeping PATH catalogued (repeatable; PUTPLACE_SYNC)",
    )


def _number(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < low or (high is not None and value > high):
            raise ValueError(text)
        return value

    parse.__name__ = f"{kind.__name__} in range"  # what argparse names in its error line
    return parse


def _duration(text: str) -> float:
    from putplace_api.maintenance.common import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="putplace-api",
        description="PutPlace API service: file metadata catalogue and content store.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_flags(parser)
    commands = parser.add_subparsers(dest="command", title="commands (default: serve)")
    # SUPPRESS: flags given before the command are not reset by the command's defaults.
    _serve_flags(commands.add_parser("serve", help="run the service"), argparse.SUPPRESS)

    verify = commands.add_parser(
        "verify",
        help="re-hash stored content; report corrupt, missing, dangling and orphan content (read-only)",
        description="Exit status: 0 all well, 1 problems found, 2 bad usage or settings, 3 backend unavailable.",
    )
    sample = verify.add_mutually_exclusive_group()
    sample.add_argument("--sample", type=_number(int, 0), metavar="N", help="re-hash N random stored contents")
    sample.add_argument(
        "--sample-fraction",
        type=_number(float, 0, 1),
        metavar="F",
        help="re-hash each stored content with probability F",
    )
    verify.add_argument("--concurrency", type=_number(int, 1), default=4, help="contents hashed side by side")
    verify.add_argument("--json", action="store_true", help="a machine-readable report on stdout")

    gc = commands.add_parser(
        "gc",
        help="delete content no current or historical file record references (dry run unless --delete)",
        description="Exit status: 0 done, 1 content lost to a concurrent upload, 2 bad usage or settings, "
        "3 backend unavailable, 4 another gc --delete is running (or this one lost its lease: run it again).",
    )
    gc.add_argument(
        "--grace", type=_duration, default="24h", help="collect only what is older than this (30s, 15m, 24h, 7d)"
    )
    gc.add_argument("--delete", action="store_true", help="really delete (default: list what would go)")
    gc.add_argument("--json", action="store_true", help="a machine-readable report on stdout")
    return parser


def _maintain(args: argparse.Namespace, settings: Settings) -> int:
    """Run verify or gc; print its report. 0 all well, 1 problems, 3 a backend is unavailable."""
    from putplace_api.errors import PutPlaceError
    from putplace_api.maintenance import common
    from putplace_api.maintenance.gc import GcOptions, collect_garbage
    from putplace_api.maintenance.lease import LeaseError
    from putplace_api.maintenance.verify import VerifyOptions, verify
    from putplace_common.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)

    async def run() -> Any:
        async with common.opened(settings) as backends:
            if args.command == "verify":
                options = VerifyOptions(args.sample, args.sample_fraction, args.concurrency)
                return await verify(backends, options)
            return await collect_garbage(backends, GcOptions(grace_seconds=args.grace, delete=args.delete))

    try:
        report = asyncio.run(run())
    except ValueError as exc:  # a bad URL scheme and the like
        print(f"putplace-api {args.command}: {exc}", file=sys.stderr)
        return 2
    except PutPlaceError as exc:
        print(f"putplace-api {args.command}: {exc.detail}", file=sys.stderr)
        return 3
    except LeaseError as exc:
        print(f"putplace-api {args.command}: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:  # (docs/integrity.md: what an interrupted gc may leave)
        print(f"putplace-api {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag in ("host", "port", "workers", "data_dir", "sync"):
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"PUTPLACE_{flag.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    try:
        settings = Settings()
        settings.effective_database_url  # noqa: B018 - touch derived values early
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if where:
            print(f"putplace-api: invalid setting PUTPLACE_{where.upper()}: {first['msg']}", file=sys.stderr)
        else:  # a rule about several settings
            print(f"putplace-api: invalid settings: {first['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    if args.command in ("verify", "gc"):
        return _maintain(args, settings)
    metrics_dir = None  # the workers' shared metrics files, when we made their dir (deleted at exit)
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="putplace-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    import uvicorn

    from putplace_api.http_protocol import UVICORN_OPTIONS
    from putplace_api.local_agent import LocalAgent
    from putplace_common.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    missing = [str(p) for p in settings.sync if not p.exists()]
    if missing:
        print(f"putplace-api: --sync: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    local_agent = LocalAgent(settings) if settings.sync else None
    if local_agent is not None:
        local_agent.start()
    serving: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": 30,
        "ssl_certfile": settings.tls_certfile,
        "ssl_keyfile": settings.tls_keyfile,
        **UVICORN_OPTIONS,
    }
    try:
        if settings.workers > 1:
            uvicorn.run("putplace_api.app:create_served_app", factory=True, workers=settings.workers, **serving)
        else:
            from putplace_api.app import create_app

            uvicorn.run(create_app(settings, serving=True), **serving)
    except ValueError as exc:  # a bad URL scheme and the like, found while building the app
        print(f"putplace-api: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:  # a key that does not match the certificate, a file that is not PEM
        print(f"putplace-api: cannot serve HTTPS with {settings.tls_certfile}: {exc.reason or exc}", file=sys.stderr)
        return 2
    finally:
        if local_agent is not None:
            local_agent.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
