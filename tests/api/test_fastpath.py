"""The lean routes (``putplace_api.fastpath``): the hot announce routes answer as FastAPI's own
handler would -- same statuses and bodies for unusual content types and bad bodies -- and the
mechanism refuses endpoint shapes and inclusions it would serve wrongly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel

from putplace_api import fastpath
from putplace_api.app import create_app
from putplace_api.deps import WriteKey
from tests.api.conftest import Api, make_settings, meta


class _In(BaseModel):
    n: int


class _Out(BaseModel):
    n: int


def _lean(router: APIRouter, endpoint: Any) -> None:
    fastpath.post(router, "/x", response_model=_Out)(endpoint)


def test_an_endpoint_of_another_shape_is_refused_when_declared() -> None:
    async def with_query(body: _In, q: int) -> _Out:
        return _Out(n=body.n + q)

    with pytest.raises(TypeError, match="query"):
        _lean(APIRouter(), with_query)


async def _extra(request: Request) -> None:
    return None


def test_an_inclusion_adding_dependencies_is_refused() -> None:
    async def echo(body: _In, key: WriteKey) -> _Out:
        return _Out(n=body.n)

    router = APIRouter()
    _lean(router, echo)
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(_extra)])
    with pytest.raises(TypeError, match="dependencies"):
        fastpath.serve_first(app)


def test_the_documented_routes_are_unchanged_and_listed_once(api: Api) -> None:
    with api.http() as c:
        doc = c.get("/openapi.json").json()
    for path, op_id in (("/put_file", "put_file_put_file_post"), ("/put_files", "put_files_put_files_post")):
        assert list(doc["paths"][path]) == ["post"]
        assert doc["paths"][path]["post"]["operationId"] == op_id
        assert "201" in doc["paths"][path]["post"]["responses"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.putplace+json"])
def test_json_content_types_fastapi_accepts_are_accepted(api: Api, content_type: str) -> None:
    body = meta(b"lean " + content_type.encode())
    with api.http() as c:
        r = c.post("/put_file", content=json.dumps(body), headers={"content-type": content_type})
    assert r.status_code == 201, r.text
    assert (r.json()["sha256"], r.json()["upload_required"]) == (body["sha256"], True)


@pytest.mark.parametrize(
    ("content", "headers", "status", "error_type"),
    [
        (json.dumps(meta()), {"content-type": "text/plain"}, 422, "model_attributes_type"),
        (json.dumps(meta()), {}, 422, "model_attributes_type"),
        ("", {"content-type": "application/json"}, 422, "missing"),
        ("{not json", {"content-type": "application/json"}, 422, "json_invalid"),
        (json.dumps({**meta(), "file_size": "12"}), {"content-type": "application/json"}, 422, "value_error"),
    ],
)
def test_bodies_off_the_lean_path_get_fastapis_answer(
    api: Api, content: str, headers: dict[str, str], status: int, error_type: str
) -> None:
    with api.http() as c:
        r = c.post("/put_file", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["type"] == error_type


def test_a_read_key_is_refused_before_the_body_is_judged(api: Api) -> None:
    key = api.new_key("read")
    with api.http(key) as c:
        for body in (meta(), {"sha256": "nope"}):
            r = c.post("/put_file", json=body)
            assert (r.status_code, r.json()) == (403, {"detail": "This API key lacks the 'write' scope"})


def test_put_files_answers_through_the_lean_route(api: Api) -> None:
    files = [meta(b"lean batch %d" % i) for i in range(3)]
    with api.http() as c:
        r = c.post("/put_files", json={"files": files})
        again = c.post("/put_files", json={"files": files})
    assert r.status_code == 201, r.text
    assert [(f["sha256"], f["upload_required"]) for f in r.json()["files"]] == [(f["sha256"], True) for f in files]
    assert [f["_id"] for f in again.json()["files"]] == [f["_id"] for f in r.json()["files"]]


def test_the_lean_routes_are_matched_first_and_undocumented_there(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    head = app.router.routes[:2]
    assert [(type(r), r.path, r.include_in_schema) for r in head] == [  # type: ignore[attr-defined]
        (fastpath.LeanRoute, "/put_file", False),
        (fastpath.LeanRoute, "/put_files", False),
    ]
