"""``priority`` over REST (create and batch) and ``hutch workflows trigger --priority``: the wait order for a slot."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hutch.gateway.app import create_app
from hutch.gateway.cli.root import main as cli

from tests.conftest import MakeClient
from tests.helpers import eventually, unique
from tests.test_concurrency_limits import GATES, STARTED, Gated

TOKEN = "prio-token"


@pytest.mark.embedded_only
async def test_rest_priority_orders_the_waiting_instances_and_is_a_strict_integer(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    tag = unique("rest-prio")
    GATES[tag] = asyncio.Event()
    app = create_app(client, tokens=[TOKEN])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=auth) as http:
        path = "/api/workflows/gated/instances"
        for bad in (True, 1.5, "1", 1001, -1001):
            for response in (
                await http.post(path, json={"params": {"tag": tag}, "priority": bad}),
                await http.post(f"{path}/batch", json=[{"params": {"tag": tag}, "priority": bad}]),
            ):
                assert response.status_code in (400, 422), (bad, response.text)
                assert "priority" in response.text
        assert (await client.workflow("gated").list()).instances == []  # nothing invalid was created

        def created(response: httpx.Response) -> Any:
            assert response.status_code == 201, response.text
            return response.json()["result"]

        blocker = created(await http.post(path, json={"id": f"{tag}-blocker", "params": {"tag": tag, "block": True}}))
        await eventually(lambda: _started(tag, 1))
        created(await http.post(path, json={"id": f"{tag}-late", "params": {"tag": tag}, "priority": 7}))
        created(
            await http.post(
                f"{path}/batch",
                json=[
                    {"id": f"{tag}-plain", "params": {"tag": tag}},
                    {"id": f"{tag}-urgent", "params": {"tag": tag}, "priority": -7},
                ],
            )
        )
        GATES[tag].set()
        for iid in (blocker["id"], f"{tag}-late"):
            instance = await client.workflow("gated").get(iid)
            assert (await instance.wait(timeout=20)).status.value == "complete"
    assert STARTED[tag] == [f"{tag}-blocker", f"{tag}-urgent", f"{tag}-plain", f"{tag}-late"]


def test_cli_trigger_sends_priority_and_checks_its_range(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(__import__("json").loads(request.content))
        return httpx.Response(201, json={"success": True, "result": {"id": "x", "workflow": "w", "status": "queued"}})

    real = httpx.AsyncClient.__init__

    def mock_transport(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        kwargs["transport"] = httpx.MockTransport(handler)
        real(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", mock_transport)
    runner = CliRunner()
    ok = runner.invoke(cli, ["workflows", "trigger", "w", "{}", "--priority", "-5", "--url", "http://gw", "--json"])
    assert ok.exit_code == 0, ok.output
    assert sent == [{"params": {}, "priority": -5}]
    bad = runner.invoke(cli, ["workflows", "trigger", "w", "--priority", "1001", "--url", "http://gw"])
    assert bad.exit_code == 2 and "--priority" in bad.output
    assert len(sent) == 1


async def _started(tag: str, n: int) -> bool:
    return len(STARTED.get(tag, [])) >= n
