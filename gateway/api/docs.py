"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with their JavaScript and CSS served by the gateway.

FastAPI's own pages load both from a CDN, so they are blank on a machine without internet access.
The assets come from the ``fastapi-offline`` distribution (a dependency, refreshed upstream with
each Swagger UI / ReDoc release) and are served under :data:`ASSETS_PATH`; the pages name nothing
outside the gateway. Like ``/openapi.json`` they need no token: they hold no data, and the
"Authorize" button of Swagger UI sends the token only to ``/api``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS_PATH = "/docs/assets"
"""Where the Swagger UI and ReDoc files are served."""

ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
"""``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js`` and ``favicon.png``."""


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets on ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        assets = _assets_url(request)
        return get_swagger_ui_html(
            openapi_url=_url(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,  # bearer tokens only: no OAuth2 flow to come back from
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        assets = _assets_url(request)
        return get_redoc_html(
            openapi_url=_url(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,  # fonts from Google are a CDN too; the system fonts do
        )


def _url(request: Request, path: str) -> str:
    # Behind a proxy that mounts the gateway under a prefix (uvicorn --root-path), links need it.
    return f"{request.scope.get('root_path', '')}{path}"


def _assets_url(request: Request) -> str:
    return _url(request, ASSETS_PATH)
