"""Playwright (sync API) driving Debian's Chromium against real ``hutch dev`` subprocesses.

The browser is the system's (``apt-get install chromium``): a test tool's own browser download
does not work here. Every page a test opens records console errors and uncaught exceptions,
and the test fails if there were any.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli_rest import Server, clean_env, start_server

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"
TARGETS = {
    "gated": "tests/browser/workflows.py:Gated",
    "sleeper": "tests/browser/workflows.py:Sleeper",
    "failing": "tests/browser/workflows.py:Failing",
}


def workflow_args() -> list[str]:
    return [arg for name, target in TARGETS.items() for arg in ("--workflow", f"{name}={target}")]


def stop(server: Server) -> None:
    status = server.stop()
    assert status == 0, f"hutch dev exited with {status}:\n{server.output}"


@pytest.fixture(autouse=True)
def _no_leaked_tasks() -> None:
    """The suite's leaked-task check needs an event loop of its own in the test's thread, which
    Playwright's sync API occupies; these tests run no asyncio code of theirs (the gateway is a subprocess)."""


# Module scope, not session: Playwright's sync API runs an event loop in this thread while it is
# open, and the async tests that run after this module need the thread's loop to themselves.
@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
        pytest.skip(f"{CHROMIUM} is missing")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hutch dev`` (embedded runtime) requiring TOKEN."""
    server = start_server(
        tmp_path_factory.mktemp("dash") / "dev.log", "dev", *workflow_args(), "--no-access-log", "--token", TOKEN
    )
    yield server
    stop(server)


class Api:
    """The REST API of a server, to set up and check what the browser does."""

    def __init__(self, url: str, token: str | None = TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=15)

    def create(self, workflow: str, instance_id: str, params: object = None) -> None:
        answer = self.http.post(f"/api/workflows/{workflow}/instances", json={"id": instance_id, "params": params})
        assert answer.status_code == 201, answer.text

    def describe(self, workflow: str, instance_id: str) -> dict[str, object]:
        answer = self.http.get(f"/api/workflows/{workflow}/instances/{instance_id}")
        assert answer.status_code == 200, answer.text
        result: dict[str, object] = answer.json()["result"]
        return result

    def status(self, workflow: str, instance_id: str) -> str:
        return str(self.describe(workflow, instance_id)["status"])

    def event(self, workflow: str, instance_id: str, event_type: str, payload: object) -> None:
        answer = self.http.post(f"/api/workflows/{workflow}/instances/{instance_id}/events/{event_type}", json=payload)
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def api(dev: Server) -> Iterator[Api]:
    client = Api(dev.url)
    yield client
    client.http.close()


class Console:
    """Console errors and uncaught exceptions of the pages of one context."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def allow(self, *fragments: str) -> None:
        """Forget the errors a test provoked on purpose (a refused request logs one in Chromium's console)."""
        self.errors = [e for e in self.errors if not any(f in e for f in fragments)]

    def watch(self, page: object) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)  # type: ignore[attr-defined]
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))  # type: ignore[attr-defined]
        page.on("dialog", lambda d: d.accept())  # type: ignore[attr-defined]  # the "terminate?" confirmations


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def context(chromium: object, console: Console) -> Iterator[object]:
    ctx = chromium.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    ctx.on("page", console.watch)
    yield ctx
    ctx.close()
    assert console.errors == [], console.errors


def sign_in(context: object, url: str, token: str = TOKEN) -> object:
    page = context.new_page()  # type: ignore[attr-defined]
    page.goto(f"{url}/")
    page.fill("#token", token)
    page.press("#token", "Enter")  # keyboard only
    page.wait_for_selector("#workflows tbody tr[data-workflow]")
    return page


@pytest.fixture
def page(context: object, dev: Server) -> object:
    return sign_in(context, dev.url)


__all__ = ["TOKEN", "Api", "clean_env", "sign_in"]
