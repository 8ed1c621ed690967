"""``putplace-api``: run the service with uvicorn.

Flags become ``PUTPLACE_*`` environment variables before anything else is imported, so
that every uvicorn worker (and prometheus-client's multiprocess mode) sees one
configuration.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="putplace-api",
        description="PutPlace API service: file metadata catalogue and content store.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to listen on (PUTPLACE_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (PUTPLACE_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (PUTPLACE_WORKERS)")
    parser.add_argument("--data-dir", help="data directory (PUTPLACE_DATA_DIR)")
    parser.add_argument(
        "--sync",
        action="append",
        metavar="PATH",
        help="also run a putplace-agent keeping PATH catalogued (repeatable; PUTPLACE_SYNC)",
    )
    return parser


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
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="putplace-metrics-")

    import uvicorn

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
    }
    try:
        if settings.workers > 1:
            uvicorn.run("putplace_api.app:create_app", factory=True, workers=settings.workers, **serving)
        else:
            from putplace_api.app import create_app

            uvicorn.run(create_app(settings), **serving)
    except ValueError as exc:  # a bad URL scheme and the like, found while building the app
        print(f"putplace-api: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:  # a key that does not match the certificate, a file that is not PEM
        print(f"putplace-api: cannot serve HTTPS with {settings.tls_certfile}: {exc.reason or exc}", file=sys.stderr)
        return 2
    finally:
        if local_agent is not None:
            local_agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
