"""CLI and REST parity with Cloudflare's API and wrangler (issue 13 items 3 and 5).

A gateway over an embedded runtime, served by uvicorn in this process on a real socket, and the
``hutch`` commands run against it as a user runs them (each in a thread: a command runs its own
event loop). Covered: ``PATCH .../status`` with ``from`` and ``rollback``, ``instances restart
--from-step-*``, ``instances terminate --rollback``, ``instances step``, ``workflows describe``,
``instance_retention`` on create, and ids cut (never wrapped) in the list table at 80 columns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import hutch
import pytest
from click.testing import CliRunner, Result
from hutch import Client, Status, WorkflowEntrypoint
from hutch.gateway.api import ErrorCode
from hutch.gateway.app import create_app
from hutch.gateway.cli import main, render
from rich.console import Console

from tests.helpers import eventually, unique, wait_status
from tests.test_gateway_api import AUTH, TOKEN, assert_error, assert_ok, serve
from tests.test_restart_from import ThreeSteps, calls
from tests.test_rollback import UNDONE, Booking

LONG = "x" * 1000  # longer than any cut the CLI makes in a table or timeline cell


class LongOutput(WorkflowEntrypoint):
    """One step whose output is long, and one named twice."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.do("big", lambda: {"text": LONG, "n": 1})
        await step.do("twice", lambda: "first")
        await step.do("twice", lambda: "second")
        return "done"


@dataclass
class Gateway:
    url: str
    http: httpx.AsyncClient
    client: Client

    async def cli(self, *args: str) -> Result:
        """Run ``hutch ARGS --url ... --token ...`` in a thread; never a traceback."""

        def run() -> Result:
            env = {"HUTCH_URL": None, "HUTCH_TOKEN": None}
            full = [*args, "--url", self.url, "--token", TOKEN]
            return CliRunner().invoke(main, full, env=env, catch_exceptions=False)

        result = await asyncio.to_thread(run)
        assert "Traceback" not in result.output, result.output
        return result

    async def cli_json(self, *args: str) -> Any:
        result = await self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    workflows = {"three": ThreeSteps, "booking": Booking, "long": LongOutput}
    async with hutch.connect(workflows) as client:
        app = create_app(client, tokens=[TOKEN])
        async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            yield Gateway(url, http, client)


async def _waiting(gw: Gateway, workflow: str, params: Any = None) -> str:
    iid = unique(workflow)
    instance = await gw.client.workflow(workflow).create(id=iid, params=params)
    await wait_status(instance, Status.WAITING)
    return iid


# ----------------------------------------------------------------------------- restart from a step
async def test_cli_restart_from_step_keeps_earlier_results(gateway: Gateway) -> None:
    gw = gateway
    iid = await _waiting(gw, "three")
    instance = await gw.client.workflow("three").get(iid)
    await instance.send_event("go", 1)
    await instance.wait(timeout=10)

    result = await gw.cli_json(
        "instances",
        "restart",
        "three",
        iid,
        "--from-step-name",
        "b",
        "--from-step-count",
        "1",
        "--from-step-type",
        "do",
    )
    assert result["applied"] is True
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", 2)
    assert (await instance.wait(timeout=10)).output == ["a1", "b2", 2, "c2"]
    assert calls(iid) == {"a": 1, "b": 2, "c": 2}

    missing = await gw.cli("instances", "restart", "three", iid, "--from-step-name", "zzz")
    assert missing.exit_code == 1
    assert "no such step" in missing.output and "409" in missing.output
    orphan = await gw.cli("instances", "restart", "three", iid, "--from-step-count", "2")
    assert orphan.exit_code == 2 and "need --from-step-name" in orphan.output


async def test_rest_from_and_rollback_fields(gateway: Gateway) -> None:
    gw = gateway
    iid = await _waiting(gw, "three")
    path = f"/api/workflows/three/instances/{iid}/status"
    body = {"status": "restart", "from": {"name": "b", "count": 1, "type": "do"}}
    assert assert_ok(await gw.http.patch(path, json=body))["applied"] is True
    await eventually(lambda: _ran(iid, "b", 2))

    missing = await gw.http.patch(path, json={"status": "restart", "from": {"name": "nope"}})
    assert_error(missing, 409, ErrorCode.ILLEGAL_TRANSITION, "no such step")
    for wrong in (
        {"status": "pause", "from": {"name": "b"}},
        {"status": "restart", "rollback": True},
        {"status": "restart", "from": {"name": "b", "type": "step"}},
        {"status": "restart", "from": {"name": "b", "count": 0}},
    ):
        assert (await gw.http.patch(path, json=wrong)).status_code == 422, wrong

    terminate = {"status": "terminate", "rollback": True}
    assert assert_ok(await gw.http.patch(path, json=terminate))["applied"] is True
    await wait_status(await gw.client.workflow("three").get(iid), Status.TERMINATED)


async def _ran(iid: str, name: str, times: int) -> bool:
    return calls(iid).get(name, 0) >= times


# ----------------------------------------------------------------------------- terminate with rollback
async def test_cli_terminate_with_rollback_runs_the_undos(gateway: Gateway) -> None:
    gw = gateway
    iid = await _waiting(gw, "booking")
    await gw.cli_json("instances", "terminate", "booking", iid, "--rollback")
    instance = await gw.client.workflow("booking").get(iid)
    await wait_status(instance, Status.TERMINATED)
    assert [u[0] for u in UNDONE[iid]] == ["car", "hotel", "flight"]
    detail = await gw.cli_json("instances", "describe", "booking", iid)
    assert [s["name"] for s in detail["steps"]][-3:] == ["rollback car", "rollback hotel", "rollback flight"]

    plain = await _waiting(gw, "booking")
    await gw.cli_json("instances", "terminate", "booking", plain)
    await wait_status(await gw.client.workflow("booking").get(plain), Status.TERMINATED)
    assert UNDONE[plain] == []


# ----------------------------------------------------------------------------- instances step
async def test_instances_step_prints_the_full_output(gateway: Gateway) -> None:
    gw = gateway
    instance = await gw.client.workflow("long").create()
    await instance.wait(timeout=10)

    big = await gw.cli("instances", "step", "long", instance.id, "big")
    assert big.exit_code == 0, big.output
    assert json.loads(big.stdout) == {"text": LONG, "n": 1}  # uncut
    second = await gw.cli("instances", "step", "long", "latest", "twice", "--count", "2")
    assert json.loads(second.stdout) == "second"
    whole = await gw.cli_json("instances", "step", "long", instance.id, "twice")
    assert whole["output"] == "first" and whole["count"] == 1 and whole["attempts"]
    missing = await gw.cli("instances", "step", "long", instance.id, "nope")
    assert missing.exit_code == 1 and "'big'" in missing.output


# ----------------------------------------------------------------------------- workflows describe
async def test_workflows_describe(gateway: Gateway) -> None:
    gw = gateway
    done = await gw.client.workflow("long").create()
    await done.wait(timeout=10)
    await _waiting(gw, "three")

    result = await gw.cli_json("workflows", "describe", "long")
    assert result["instances"]["complete"] == 1 and result["total"] == 1
    assert result["newest"]["id"] == done.id
    version = (await done.describe()).version
    assert result["versions"] == [{"version": version, "instances": 1}]
    text = await gw.cli("workflows", "describe", "three")
    assert text.exit_code == 0 and "waiting" in text.output and "Newest instance" in text.output
    unknown = await gw.cli("workflows", "describe", "nope")
    assert unknown.exit_code == 1


# ----------------------------------------------------------------------------- instance_retention
async def test_instance_retention_on_create(gateway: Gateway) -> None:
    gw = gateway
    store = gw.client._store

    async def ttl(workflow: str, iid: str) -> int:
        instance = await gw.client.workflow(workflow).get(iid)
        return int(await store.redis.ttl(store.keys.meta(instance._partition, workflow, iid)))

    body = {"instance_retention": {"success_retention": 60_000, "error_retention": "2 hours"}}
    short = assert_ok(await gw.http.post("/api/workflows/long/instances", json=body), 201)["id"]
    default = assert_ok(await gw.http.post("/api/workflows/long/instances", json={}), 201)["id"]
    for iid in (short, default):
        await (await gw.client.workflow("long").get(iid)).wait(timeout=10)
    assert 0 < await ttl("long", short) <= 60  # 60 000 ms, Cloudflare's unit
    assert await ttl("long", default) > 29 * 86400  # the deployment's 30 days

    terminated = await gw.client.workflow("three").create(retention={"error_retention": "2 hours"})
    await wait_status(terminated, Status.WAITING)
    await terminated.terminate()
    assert 3600 < await ttl("three", terminated.id) <= 7200  # terminated: the error retention

    bad = await gw.http.post(
        "/api/workflows/long/instances", json={"instance_retention": {"success_retention": "soon"}}
    )
    assert bad.status_code == 422
    unknown = await gw.http.post("/api/workflows/long/instances", json={"instance_retention": {"forever": 1}})
    assert unknown.status_code == 422
    # Past a century is a bad value (a 422), not a server error from an overflowing duration (schemathesis).
    huge = await gw.http.post(
        "/api/workflows/long/instances", json={"instance_retention": {"error_retention": 86_400_000_000_000}}
    )
    assert huge.status_code == 422 and "36500 days" in huge.text


# ----------------------------------------------------------------------------- ids at 80 columns
def test_ids_are_cut_with_an_ellipsis_never_wrapped_at_80_columns() -> None:
    long_id = "order-" + "0123456789" * 9
    rows = [
        {"id": long_id, "status": "complete", "version": "v" * 20, "created_on": "2026-01-01T00:00:00Z"},
        {"id": "short", "status": "waitingForPause", "version": None, "created_on": "2026-01-01T00:00:00Z"},
    ]
    uuid = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
    rows.append({"id": uuid, "status": "running", "version": None, "created_on": "2026-01-01T00:00:00Z"})
    for width in (80, 60):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(render.instances_table("wf", rows))
        lines = [line for line in console.export_text().splitlines() if line.strip()]
        assert all(len(line) <= width for line in lines)
        body = lines[lines.index(next(line for line in lines if "━" in line)) + 1 :]
        assert len(body) == len(rows), lines  # one line per instance: nothing wrapped onto a second line
        cell = body[0].split("│")[0].strip()
        assert cell.startswith("order-0123") and cell.endswith("…") and long_id not in body[0]
        assert body[1].split("│")[0].strip() == "short"


async def test_list_json_has_full_ids(gateway: Gateway) -> None:
    gw = gateway
    long_id = "id-" + "9" * 90
    await gw.client.workflow("long").create(id=long_id)
    rows = await gw.cli_json("instances", "list", "long")
    assert long_id in [row["id"] for row in rows]
