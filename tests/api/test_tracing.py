"""Traces reach a real OTLP/HTTP receiver when an endpoint is configured."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import make_settings, meta, serve


def test_request_spans_are_exported_over_otlp_http(
    tmp_path: Path, otlp: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    import httpx

    endpoint, received = otlp
    settings = make_settings(tmp_path, otlp_endpoint=endpoint)
    with serve(settings) as url:
        r = httpx.post(f"{url}/put_file", json=meta(), headers={"X-API-Key": settings.admin_key.get_secret_value()})  # type: ignore[union-attr]
        assert r.status_code == 201
    # Shutting the app down flushed the batch.
    assert received, "no spans were exported"
    paths = {p for p, _, _ in received}
    assert paths == {"/v1/traces"}
    assert all(ct == "application/x-protobuf" for _, ct, _ in received)
    payload = b"".join(body for _, _, body in received)
    assert b"putplace-api" in payload and b"/put_file" in payload
    assert settings.admin_key.get_secret_value().encode() not in payload  # type: ignore[union-attr]
