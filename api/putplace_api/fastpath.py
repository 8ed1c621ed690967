"""Lean routes: a typed FastAPI endpoint served without FastAPI's per-request dependency solving.

For the hot metadata routes (``POST /put_file``, ``POST /put_files``), FastAPI's generic request
handler -- solving the dependency graph, inspecting the content type, validating the answer
again against the response model -- cost more CPU than the endpoint itself. ``LeanRoute`` is an
``APIRoute`` (FastAPI's documented extension point, ``route_class``) for endpoints of one simple
shape: a JSON body validated by one pydantic model, and dependencies that each take only the
``Request`` (``deps.get_state``, ``deps.KeyCheck``). It serves them with one JSON parse, one
validation by the body's own ``ModelField``, the dependencies called in their declared order, and
the answer serialized once. Everything else stays FastAPI's: the route, its OpenAPI operation
(built from the same signature), the middlewares and exception handlers around it.

Anything off the common path -- no JSON content type, an empty, unparsable or invalid body,
dependency overrides, a body size limit -- is handed to FastAPI's own handler of the same route,
so errors keep their exact shapes and order (a key lacking the scope is a 403 before the body's
422). The endpoint has one definition; the handler FastAPI would have used serves the rest.

``serve_first(app)`` (called by ``create_app`` once every router is included) makes the lean
routes the first ones a request is matched against.
"""

from __future__ import annotations

import copy
import email.message
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

__all__ = ["LeanRoute", "post", "serve_first"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
RequestDep = Callable[[Request], Awaitable[Any]]
EndpointT = TypeVar("EndpointT", bound=Callable[..., Awaitable[Any]])
_FASTAPI_ONLY = object()  # the request goes to FastAPI's own handler


@functools.lru_cache(maxsize=64)
def _is_json(content_type: str) -> bool:
    """FastAPI's rule (fastapi.routing.get_request_handler): application/json or application/*+json."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _is_async(call: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an instance whose class's ``__call__`` is one (``KeyCheck``)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def _request_only(dep: Dependant) -> bool:
    """A dependency the lean handler can call as FastAPI would: ``await call(request)``."""
    return (
        dep.call is not None
        and _is_async(dep.call)
        and dep.request_param_name is not None
        and not (dep.path_params or dep.query_params or dep.header_params or dep.cookie_params or dep.body_params)
        and not dep.dependencies
        and dep.name is not None
        and all(
            name is None
            for name in (
                dep.websocket_param_name,
                dep.http_connection_param_name,
                dep.response_param_name,
                dep.background_tasks_param_name,
                dep.security_scopes_param_name,
            )
        )
    )


class LeanRoute(APIRoute):
    """``route_class`` of an endpoint ``async def f(body: Model, <request-only deps>) -> ResponseModel``
    (or a ``Response``). Refused at import, with the reason, if the endpoint has another shape."""

    def _unsupported(self) -> str | None:
        d = self.dependant
        if not _is_async(self.endpoint):
            return "the endpoint must be async"
        if len(d.body_params) != 1 or self._embed_body_fields:
            return "exactly one (not embedded) body parameter"
        if d.path_params or d.query_params or d.header_params or d.cookie_params or self.dependencies:
            return "no path, query, header or cookie parameters, no route-level dependencies"
        if d.request_param_name or d.response_param_name or d.background_tasks_param_name:
            return "no Request, Response or BackgroundTasks parameter"
        if not all(_request_only(dep) for dep in d.dependencies):
            return "every dependency must be an async callable taking only the Request"
        model = self.response_model
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return "response_model must be a pydantic model"
        if self.response_model_include or self.response_model_exclude:
            return "no response_model_include/exclude"
        if any(
            (self.response_model_exclude_unset, self.response_model_exclude_defaults, self.response_model_exclude_none)
        ):
            return "no response_model_exclude_* options"
        return None

    def get_route_handler(self) -> Handler:
        problem = self._unsupported()
        if problem:
            raise TypeError(f"LeanRoute {self.path}: {problem}")
        fastapi_handler = super().get_route_handler()
        body_field = self.dependant.body_params[0]
        body_name = body_field.name
        # (name, call) of each dependency: _unsupported made sure each takes only the Request.
        deps = [(cast(str, dep.name), cast(RequestDep, dep.call)) for dep in self.dependant.dependencies]
        model: type[BaseModel] = self.response_model
        by_alias = self.response_model_by_alias
        status_code = self.status_code or 200

        def parsed_body(request: Request, body: bytes) -> Any:
            content_type = request.headers.get("content-type")
            if not body or not content_type or not _is_json(content_type):
                return _FASTAPI_ONLY
            try:
                data = json.loads(body)
            except Exception:  # its 422 json_invalid (or 400): the error comes from FastAPI's handler
                return _FASTAPI_ONLY
            value, errors = body_field.validate(data, {}, loc=("body",))
            return _FASTAPI_ONLY if errors else value

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides or MAX_BODY_SIZE_SCOPE_KEY in request.scope:
                return await fastapi_handler(request)
            try:
                body = await request.body()
            except Exception:  # a client gone mid-body: FastAPI's handler answers as it would
                return await fastapi_handler(request)
            value = parsed_body(request, body)
            if value is _FASTAPI_ONLY:  # its handler validates again, after the dependencies
                return await fastapi_handler(request)
            values: dict[str, Any] = {}
            for name, call in deps:  # in FastAPI's order: a dependency's refusal comes first
                values[name] = await call(request)
            values[body_name] = value
            answer = await self.endpoint(**values)
            if isinstance(answer, Response):
                return answer
            if not isinstance(answer, model):
                raise TypeError(f"{self.path}: the endpoint answered {type(answer).__name__}, not {model.__name__}")
            # Serialized once: its values were validated on the way in (request model, store rows).
            return Response(answer.model_dump_json(by_alias=by_alias), status_code, media_type="application/json")

        return handler


def post(router: APIRouter, path: str, **options: Any) -> Callable[[EndpointT], EndpointT]:
    """``@router.post(path, **options)``, served by a ``LeanRoute``."""

    def register(endpoint: EndpointT) -> EndpointT:
        router.add_api_route(path, endpoint, methods=["POST"], route_class_override=LeanRoute, **options)
        return endpoint

    return register


def serve_first(app: FastAPI) -> None:
    """Match the lean routes before every other route of ``app``.

    Each request is matched against the app's routes in order, and a route of an included
    router through FastAPI's per-inclusion layers (two passes over the router's routes, scope
    bookkeeping), behind the docs routes and the health router: ~10 % of a ``put_file``. A copy of each
    lean route -- the same object's fields: endpoint, dependant, handler -- goes to the head of
    ``app.router.routes``, left out of the OpenAPI document; the route in its router still
    documents it (the document is unchanged) and still answers if the copy did not match.

    Refused (TypeError) if the inclusion changed how the route serves: dependencies, a body
    size limit or content-type strictness given to ``include_router`` would be missed."""
    first: list[BaseRoute] = []
    for route in iter_route_contexts(app.router.routes):
        original = route.original_route
        if not isinstance(original, LeanRoute) or any(r is original for r in app.router.routes):
            continue  # not lean, or on the app itself: the app's own order stands
        served = (
            [d.call for d in route.dependant.dependencies],
            route.max_body_size,
            getattr(route.strict_content_type, "value", route.strict_content_type),
        )
        own = (
            [d.call for d in original.dependant.dependencies],
            original.max_body_size,
            getattr(original.strict_content_type, "value", original.strict_content_type),
        )
        if served != own:
            raise TypeError(f"LeanRoute {original.path}: included with dependencies or body options it would not see")
        head = copy.copy(original)
        head.include_in_schema = False
        first.append(head)
    app.router.routes[:0] = first
