"""OpenTelemetry traces: on only when an OTLP endpoint is configured.

FastAPI, httpx and pymongo are instrumented by their OpenTelemetry packages; S3 calls are
traced through aiohttp, the HTTP client under aiobotocore (botocore's own instrumentation
patches a method aiobotocore overrides, so it would see nothing). Spans go to the endpoint
over OTLP/HTTP in batches; the caller shuts the provider down to flush them.
``redact_request_span`` (called by ObservabilityMiddleware) names requests by route template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from opentelemetry import trace  # the API only (no SDK): a no-op span when tracing is off

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["setup_tracing", "redact_request_span"]

# Request span attributes that carry the raw path or query, where a caller may have put a key.
_RAW_URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")


def setup_tracing(app: FastAPI, endpoint: str | None, service_name: str = "putplace-api") -> TracerProvider | None:
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    traces_url = endpoint.rstrip("/")
    if not traces_url.endswith("/v1/traces"):
        traces_url += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics")
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    PymongoInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    return provider


def redact_request_span(route: str) -> None:
    """Replace the request span's raw path and query with the route template, as the logs and
    metrics already do: a key pasted into a path or a query string must not reach the traces."""
    span = trace.get_current_span()
    recorded = getattr(span, "attributes", None)
    if not span.is_recording() or not recorded:
        return
    for name in _RAW_URL_ATTRIBUTES:
        if name in recorded:
            span.set_attribute(name, "" if name == "url.query" else route)
