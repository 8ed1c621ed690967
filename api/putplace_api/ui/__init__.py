"""The web console, served under ``/ui``: server-rendered page shells and their static files.

The pages hold no data and need no key, so they are public (``middleware.PUBLIC_PREFIXES``).
The browser keeps the key the user signs in with in ``sessionStorage`` and calls the JSON
API with it in the ``X-API-Key`` header (``static/console.js``): what a page can show is
decided by the API's own scope checks, there is no second authorization path, and the key
never reaches a URL, a log line or the server's storage. Every response carries a
Content-Security-Policy that allows only this origin's scripts and styles -- no inline script.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import QueryParams
from starlette.types import Scope

__all__ = ["PREFIX", "SECURITY_HEADERS", "mount"]

PREFIX = "/ui"
_HERE = Path(__file__).parent

# blob: images are previews the script fetched with the key; form-action 'none' means a form
# can never send what was typed in it anywhere, even if the script failed to load.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

# name -> (template, title): every page is one shell; console.js fills it by data-page.
PAGES: dict[str, tuple[str, str]] = {
    "": ("overview.html", "Overview"),
    "/signin": ("signin.html", "Sign in"),
    "/browse": ("browse.html", "Browse a node"),
    "/file": ("file.html", "File"),
    "/search": ("search.html", "Search"),
    "/keys": ("keys.html", "API keys"),
}


def _assets_version() -> str:
    """A digest of the static files: their URLs change whenever they do, so browsers may keep
    them for a year without asking again (one round trip less per page)."""
    digest = hashlib.sha256()
    for path in sorted((_HERE / "static").iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


ASSETS_VERSION = _assets_version()
templates = Jinja2Templates(directory=_HERE / "templates")
router = APIRouter(prefix=PREFIX, include_in_schema=False)


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        if response.status_code == 200 and QueryParams(scope["query_string"]).get("v") == ASSETS_VERSION:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def _page(template: str, title: str, page: str) -> Any:
    async def render(request: Request) -> HTMLResponse:
        context = {"title": title, "page": page or "overview", "version": ASSETS_VERSION, "prefix": PREFIX}
        return templates.TemplateResponse(request, template, context, headers=SECURITY_HEADERS)

    return render


for _path, (_template, _title) in PAGES.items():
    router.add_api_route(
        _path, _page(_template, _title, _path.strip("/")), methods=["GET"], response_class=HTMLResponse
    )


@router.get("/", response_class=RedirectResponse)
async def _slash() -> RedirectResponse:
    return RedirectResponse(PREFIX, headers=SECURITY_HEADERS)


def mount(app: FastAPI) -> None:
    """Add the console's pages and static files to ``app``."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", _Static(directory=_HERE / "static"), name="ui-static")
