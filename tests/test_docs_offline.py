"""``/docs`` and ``/redoc`` work offline (issue 14 item 6): their pages name no other host, and the
Swagger UI and ReDoc assets they load are served by the gateway itself, from the installed package."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hutch
import pytest
from hutch import WorkflowEntrypoint
from hutch.events import WorkflowEvent
from hutch.gateway.app import create_app
from hutch.step import WorkflowStep

TOKEN = "docs-token"
KiB = 1024


class Hello(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("greet", lambda: "hi")


@pytest.fixture
async def anonymous() -> AsyncIterator[httpx.AsyncClient]:
    """A client with no token, in process, against the gateway app over an embedded runtime."""
    async with hutch.connect({"hello": Hello}) as client:
        app = create_app(client, tokens=[TOKEN])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as http:
            yield http


def _referenced(html: str) -> list[str]:
    """Every URL a page loads or links: src= and href= attributes, plus ReDoc's spec-url."""
    return re.findall(r'(?:src|href|spec-url)\s*=\s*["\']([^"\']+)["\']', html) + re.findall(
        r"url:\s*['\"]([^'\"]+)['\"]", html
    )


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/assets/favicon.png"}),
        ("/redoc", {"/docs/assets/redoc.standalone.js", "/docs/assets/favicon.png"}),
    ],
)
async def test_docs_pages_load_only_the_gateways_own_assets(
    anonymous: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    response = await anonymous.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "https://" not in html and "http://" not in html and "cdn" not in html.lower()
    referenced = set(_referenced(html))
    assert assets <= referenced, referenced
    assert "/openapi.json" in referenced
    for url in referenced:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = await anonymous.get(url)
        assert asset.status_code == 200, url


@pytest.mark.parametrize(
    ("name", "content_type", "min_size"),
    [
        ("swagger-ui-bundle.js", "javascript", 500 * KiB),
        ("redoc.standalone.js", "javascript", 500 * KiB),
        ("swagger-ui.css", "text/css", 100 * KiB),
    ],
)
async def test_the_assets_are_the_real_libraries(
    anonymous: httpx.AsyncClient, name: str, content_type: str, min_size: int
) -> None:
    response = await anonymous.get(f"/docs/assets/{name}")
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    assert len(response.content) > min_size
    if name.endswith(".js"):
        # The bundles define the globals the pages call (SwaggerUIBundle(...), <redoc>'s Redoc).
        assert ("SwaggerUIBundle" if "swagger" in name else "Redoc") in response.text


async def test_docs_need_no_token_and_the_api_still_does(anonymous: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
        assert (await anonymous.get(path)).status_code == 200, path
    assert (await anonymous.get("/api/workflows")).status_code == 401


async def test_docs_pages_are_not_in_the_published_schema(anonymous: httpx.AsyncClient) -> None:
    paths = (await anonymous.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


async def test_unknown_asset_is_404(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/docs/assets/nope.js")).status_code == 404
