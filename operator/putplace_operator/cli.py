"""``putplace-operator``: run the kopf operator with PutPlace's handlers; ``putplace-operator
cleanup``: delete what it manages and wait until it has let go (the chart's pre-delete hook).

One replica, standalone (kopf's peering is not leader election: the Deployment uses the
``Recreate`` strategy instead), cluster-wide or limited to some namespaces, with a liveness
endpoint (``/healthz``) and Prometheus metrics. Exit status 2 with one line on bad settings;
``cleanup`` exits 1 with one line when it cannot finish (see ``cleanup.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from putplace_common.logs import setup_logging
from putplace_operator.settings import OperatorSettings

__all__ = ["main"]

log = logging.getLogger("putplace_operator")


def _settings_help() -> str:
    lines = ["settings (environment variables):"]
    for name, field in OperatorSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  PUTPLACE_OPERATOR_{name.upper():<24} {field.description or ''} (default: {default!r})")
    return "\n".join(lines)


def _scope(parser: argparse.ArgumentParser, default: object) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", metavar="NS", default=default,
        help="watch only this namespace (repeatable, globs allowed); default: PUTPLACE_OPERATOR_NAMESPACES, "
             "else all namespaces",
    )  # fmt: skip
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", default=False if default is None else default,
        help="watch every namespace (the default)",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="putplace-operator",
        description="Reconcile PutPlaceInstance and ApiKey objects (kubeconfig or in-cluster service account).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _scope(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="{cleanup}")
    clean = commands.add_parser(
        "cleanup",
        help="delete every PutPlaceInstance and ApiKey in the watched namespaces and wait until they are gone",
        description=(
            "Delete every PutPlaceInstance and ApiKey in the watched namespaces and wait until the running "
            "operator has revoked their keys and let them go (the chart's pre-delete hook). Exit 0 when none "
            "is left, 1 with one line at the deadline or on a Kubernetes error."
        ),
    )
    _scope(clean, argparse.SUPPRESS)  # -n before or after the command
    clean.add_argument(
        "--timeout", type=float, default=240.0, metavar="SECONDS",
        help="give up after this long (default: %(default)g)",
    )  # fmt: skip
    return parser


def _cleanup(namespaces: list[str], timeout: float) -> int:
    import asyncio

    from kubernetes.config import ConfigException

    from putplace_operator.cleanup import CleanupError, cleanup
    from putplace_operator.kube import Kube, KubeError

    try:
        asyncio.run(cleanup(Kube(), namespaces, timeout))
    except (CleanupError, KubeError, ConfigException) as exc:
        print(f"putplace-operator cleanup: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"putplace-operator: PUTPLACE_OPERATOR_{where.upper()}: {first['msg']}", file=sys.stderr)
        return 2
    namespaces = [] if args.all_namespaces else (args.namespaces or settings.namespaces)
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "cleanup":
        log.info("cleanup of %s", ", ".join(namespaces) if namespaces else "all namespaces")
        return _cleanup(namespaces, args.timeout)

    import kopf
    from prometheus_client import start_http_server

    import putplace_operator.handlers  # noqa: F401  (registers the handlers)
    from putplace_operator import reconcile

    reconcile.SETTINGS.namespaces = namespaces  # the periodic pass watches what kopf watches

    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.bind_address)
    liveness = f"http://{settings.bind_address}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    log.info("watching %s", ", ".join(namespaces) if namespaces else "all namespaces")
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint=liveness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
