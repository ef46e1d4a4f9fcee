"""Cloudflare's own tools drive Hutch: wrangler and the ``cloudflare`` SDK against ``hutch dev`` (issue 13 item 6).

``hutch dev`` runs as a real subprocess with a token; the gateway serves Cloudflare's Workflows
REST API under ``/client/v4``. The official ``cloudflare`` Python SDK (``Cloudflare(base_url=...)``)
and wrangler itself (installed from npm, ``CLOUDFLARE_API_BASE_URL`` pointing at the gateway) run
every workflows verb they have, and the tests assert on what they return and print.

wrangler 4.86.0 is the newest wrangler that runs on Node 20 (4.87 and later need Node 22); it is
installed once into a temporary directory and reused by later runs. Without npm the wrangler test
fails with the reason (CI must run it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudflare import Cloudflare, ConflictError, NotFoundError, UnprocessableEntityError

from tests.helpers import unique
from tests.test_cli_rest import Server, clean_env, dev_args, poll, start_server

TOKEN = "cf-token"
ACCOUNT = "0123456789abcdef"  # any account id: a Hutch deployment is one account
WRANGLER_VERSION = "4.86.0"
WRANGLER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    trip = ("--workflow", "trip=tests/cloudflare_workflows.py:Trip")
    server = start_server(tmp_path_factory.mktemp("cf-dev") / "dev.log", "dev", *dev_args(*trip, "--token", TOKEN))
    yield server
    assert server.stop() == 0, server.output


@pytest.fixture
def cf(dev: Server) -> Iterator[Cloudflare]:
    with Cloudflare(api_token=TOKEN, base_url=f"{dev.url}/client/v4", max_retries=0) as client:
        yield client


def status_of(dev: Server, workflow: str, instance_id: str) -> str:
    response = httpx.get(
        f"{dev.url}/api/workflows/{workflow}/instances/{instance_id}/status",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    status: str = response.json()["result"]["status"]
    return status


def wait_status(dev: Server, workflow: str, instance_id: str, *statuses: str) -> str:
    return poll(lambda: (s := status_of(dev, workflow, instance_id)) in statuses and s, timeout=15.0)


# ----------------------------------------------------------------------------- the cloudflare SDK
def test_sdk_workflows_and_versions(cf: Cloudflare, dev: Server) -> None:
    listed = {w.name: w for w in cf.workflows.list(account_id=ACCOUNT)}
    assert set(listed) == {"approval", "order", "fanout", "trip"}
    assert set(listed["approval"].instances) >= {"queued", "running", "waiting", "waitingForPause", "complete"}
    assert [w.name for w in cf.workflows.list(account_id=ACCOUNT, per_page=2, page=2).result] == ["order", "trip"]
    every = ["approval", "fanout", "order", "trip"]
    assert [w.name for w in cf.workflows.list(account_id=ACCOUNT, per_page=1)] == every
    assert [w.name for w in cf.workflows.list(account_id=ACCOUNT, search="ORD")] == ["order"]

    iid = unique("cf-v")
    cf.workflows.instances.create("approval", account_id=ACCOUNT, instance_id=iid, params={"requestId": iid})
    wait_status(dev, "approval", iid, "waiting")
    workflow = cf.workflows.get("approval", account_id=ACCOUNT)
    assert workflow.name == "approval" and workflow.instances["waiting"] >= 1
    assert workflow.triggered_on is not None and workflow.id == listed["approval"].id
    versions = cf.workflows.versions.list("approval", account_id=ACCOUNT).result
    started_on = cf.workflows.instances.get(iid, account_id=ACCOUNT, workflow_name="approval").version_id
    assert versions[0].id == started_on != "unknown"

    with pytest.raises(NotFoundError, match="nope"):
        cf.workflows.get("nope", account_id=ACCOUNT)


def test_sdk_instance_lifecycle_events_and_steps(cf: Cloudflare, dev: Server) -> None:
    instances = cf.workflows.instances
    iid = unique("cf-sdk")
    created = instances.create("approval", account_id=ACCOUNT, instance_id=iid, params={"requestId": iid})
    assert (created.id, created.status, created.trigger_source) == (iid, "queued", "api")
    wait_status(dev, "approval", iid, "waiting")

    detail = instances.get(iid, account_id=ACCOUNT, workflow_name="approval")
    assert detail.status == "waiting" and detail.params == {"requestId": iid} and detail.trigger.source == "api"
    assert [(s.type, s.name) for s in detail.steps] == [
        ("step", "record request"),
        ("step", "notify approver"),
        ("waitForEvent", "manager approval"),
    ]
    record = detail.steps[0]
    assert record.type == "step" and record.success is True and len(record.attempts) == 1
    assert record.config.retries.delay == 10_000 and record.config.timeout == 600_000  # milliseconds
    waiting = detail.steps[2]
    assert waiting.type == "waitForEvent" and waiting.finished is False and waiting.event_type == "approval"
    newest_first = instances.get(iid, account_id=ACCOUNT, workflow_name="approval", order="desc")
    assert newest_first.steps[0].name == "manager approval"
    simple = instances.get(iid, account_id=ACCOUNT, workflow_name="approval", simple="true")
    assert simple.steps == [] and simple.step_count == 3

    step = instances.step(iid, account_id=ACCOUNT, workflow_name="approval", name="notify approver", type="step")
    assert step.status == "complete" and step.output == {"to": "manager@example.com", "message": f"please review {iid}"}
    wait = instances.step(
        iid, account_id=ACCOUNT, workflow_name="approval", name="manager approval", type="waitForEvent"
    )
    assert wait.status == "waiting" and wait.output is None and wait.event_type == "approval"

    status = instances.status
    assert status.edit(iid, account_id=ACCOUNT, workflow_name="approval", status="pause").status == "paused"
    assert status.edit(iid, account_id=ACCOUNT, workflow_name="approval", status="resume").status == "waiting"
    assert status.edit(iid, account_id=ACCOUNT, workflow_name="approval", status="terminate").status == "terminated"
    terminated = instances.get(iid, account_id=ACCOUNT, workflow_name="approval")
    assert terminated.success is False and terminated.steps[-1].type == "termination"
    with pytest.raises(ConflictError, match="cannot terminate"):
        status.edit(iid, account_id=ACCOUNT, workflow_name="approval", status="terminate")
    status.edit(iid, account_id=ACCOUNT, workflow_name="approval", status="restart")
    wait_status(dev, "approval", iid, "waiting")

    sent = instances.events.create(
        "approval", account_id=ACCOUNT, workflow_name="approval", instance_id=iid, body={"approved": True}
    )
    assert sent.instance_id == iid
    wait_status(dev, "approval", iid, "complete")
    done = instances.get(iid, account_id=ACCOUNT, workflow_name="approval")
    assert done.success is True and done.output == {
        "requestId": iid,
        "decision": "approved",
        "reason": "decided",
        "by": None,
    }
    received = instances.step(
        iid, account_id=ACCOUNT, workflow_name="approval", name="manager approval", type="waitForEvent"
    )
    assert received.status == "complete" and received.output["payload"] == {"approved": True}

    with pytest.raises(ConflictError, match="already exists"):
        instances.create("approval", account_id=ACCOUNT, instance_id=iid)
    with pytest.raises(NotFoundError, match="not found"):
        instances.get("no-such-instance", account_id=ACCOUNT, workflow_name="approval")


def test_sdk_restart_from_a_step_and_terminate_with_rollback(cf: Cloudflare, dev: Server) -> None:
    instances = cf.workflows.instances
    status = instances.status
    iid = unique("cf-trip")
    instances.create("trip", account_id=ACCOUNT, instance_id=iid)
    wait_status(dev, "trip", iid, "waiting")

    def output(step: str) -> Any:
        return instances.step(iid, account_id=ACCOUNT, workflow_name="trip", name=step, type="step").output

    flight, hotel = output("book flight"), output("book hotel")
    status.edit(
        iid, account_id=ACCOUNT, workflow_name="trip", status="restart", from_={"name": "book hotel", "type": "do"}
    )
    wait_status(dev, "trip", iid, "waiting")
    assert output("book flight") == flight  # kept: the steps before the one restarted from replay
    assert output("book hotel") not in (hotel, None)  # ran again
    with pytest.raises(ConflictError, match="no such step"):
        status.edit(iid, account_id=ACCOUNT, workflow_name="trip", status="restart", from_={"name": "nope"})

    status.edit(iid, account_id=ACCOUNT, workflow_name="trip", status="terminate", rollback=True)
    wait_status(dev, "trip", iid, "terminated")
    steps = instances.get(iid, account_id=ACCOUNT, workflow_name="trip").steps
    assert [s.name for s in steps if s.type == "step"] == [
        "book flight",
        "book hotel",
        "rollback book hotel",
        "rollback book flight",
    ]
    assert steps[-1].type == "termination"
    refused = httpx.patch(
        f"{dev.url}/client/v4/accounts/{ACCOUNT}/workflows/trip/instances/{iid}/status",
        json={"status": "pause", "rollback": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert refused.status_code == 422 and "only for status 'terminate'" in refused.text


def test_sdk_instance_retention(cf: Cloudflare, dev: Server) -> None:
    instances = cf.workflows.instances
    short, bulk_short, kept = (unique(f"cf-ret-{n}") for n in range(3))

    def errors_at_once(iid: str) -> dict[str, Any]:
        return {"requestId": iid, "amountCents": -1}

    instances.create(
        "approval",
        account_id=ACCOUNT,
        instance_id=short,
        params=errors_at_once(short),
        instance_retention={"error_retention": 1000},  # milliseconds, Cloudflare's unit
    )
    instances.bulk(
        "approval",
        account_id=ACCOUNT,
        body=[
            {
                "instance_id": bulk_short,
                "params": errors_at_once(bulk_short),
                "instance_retention": {"error_retention": "1 second"},
            },
            {"instance_id": kept, "params": errors_at_once(kept), "instance_retention": {"success_retention": 1000}},
        ],
    )

    def gone(iid: str) -> bool:
        try:
            instances.get(iid, account_id=ACCOUNT, workflow_name="approval")
        except NotFoundError:
            return True
        return False

    poll(lambda: gone(short) and gone(bulk_short), timeout=15.0)
    assert instances.get(kept, account_id=ACCOUNT, workflow_name="approval").status == "errored"  # error retention
    with pytest.raises(UnprocessableEntityError, match="soon"):
        instances.create("approval", account_id=ACCOUNT, instance_retention={"success_retention": "soon"})


def test_sdk_lists_by_page_cursor_status_and_dates(cf: Cloudflare, dev: Server) -> None:
    instances = cf.workflows.instances
    prefix = unique("cf-b")
    ids = [f"{prefix}-{n}" for n in range(5)]
    bulk = instances.bulk(
        "approval",
        account_id=ACCOUNT,
        body=[{"instance_id": i, "params": {"requestId": i, "amountCents": -1}} for i in ids],  # errors at once
    )
    assert sorted(b.id for b in bulk) == ids
    again = instances.bulk("approval", account_id=ACCOUNT, body=[{"instance_id": ids[0]}])
    assert list(again) == []  # an id that exists is skipped
    for iid in ids:
        wait_status(dev, "approval", iid, "errored")

    # Auto-pagination walks page=1, 2, ... until an empty page.
    errored = [i.id for i in instances.list("approval", account_id=ACCOUNT, status="errored", per_page=2)]
    assert set(ids) <= set(errored) and len(errored) == len(set(errored))
    assert all(i.status == "errored" for i in instances.list("approval", account_id=ACCOUNT, status="errored"))

    # A cursor (result_info.cursor, what wrangler follows) continues where the page ended.
    first = httpx_list(dev, status="errored", per_page="2")
    assert first["result_info"]["count"] == 2 and first["result_info"]["cursor"]
    second = httpx_list(dev, status="errored", per_page="2", cursor=first["result_info"]["cursor"])
    assert [r["id"] for r in first["result"] + second["result"]] == errored[:4]

    created = [datetime.fromisoformat(r["created_on"]) for r in httpx_list(dev, per_page="100")["result"]]
    newest = max(created)
    window = instances.list(
        "approval",
        account_id=ACCOUNT,
        date_start=newest - timedelta(milliseconds=1),
        date_end=newest,
        per_page=100,
    )
    assert {i.created_on for i in window.result} == {newest}
    future = instances.list("approval", account_id=ACCOUNT, date_start=datetime.now(UTC) + timedelta(days=1))
    assert future.result == []
    past_the_end = instances.list("approval", account_id=ACCOUNT, page=10_000, per_page=100)
    assert past_the_end.result == []
    not_a_date = httpx.get(
        f"{dev.url}/client/v4/accounts/{ACCOUNT}/workflows/approval/instances",
        params={"date_start": "0.5"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert not_a_date.status_code == 400 and "date_start '0.5' is not an ISO 8601" in not_a_date.text
    # Oldest first: the same instances as newest first, reversed, by page number and by cursor.
    newest_first = [r["id"] for r in httpx_list(dev, status="errored", per_page="100")["result"]]
    oldest_first = [i.id for i in instances.list("approval", account_id=ACCOUNT, status="errored", direction="asc")]
    assert oldest_first == newest_first[::-1] and len(oldest_first) >= len(ids)
    head = httpx_list(dev, status="errored", per_page="2", direction="asc")
    rest = httpx_list(dev, status="errored", per_page="2", direction="asc", cursor=head["result_info"]["cursor"])
    page_two = httpx_list(dev, status="errored", per_page="2", direction="asc", page="2")
    assert [r["id"] for r in head["result"] + rest["result"]] == oldest_first[:4]
    assert [r["id"] for r in page_two["result"]] == oldest_first[2:4]


def httpx_list(dev: Server, **query: str) -> dict[str, Any]:
    response = httpx.get(
        f"{dev.url}/client/v4/accounts/{ACCOUNT}/workflows/approval/instances",
        params=query,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def unfinished(dev: Server, workflow: str) -> int:
    response = httpx.get(f"{dev.url}/api/workflows/{workflow}", headers={"Authorization": f"Bearer {TOKEN}"})
    counts: dict[str, int] = response.json()["result"]["instances"]
    return sum(counts[s] for s in ("queued", "running", "paused", "waiting", "waitingForPause"))


def test_the_cloudflare_api_needs_the_token(dev: Server) -> None:
    response = httpx.get(f"{dev.url}/client/v4/accounts/{ACCOUNT}/workflows")
    assert response.status_code == 401
    assert response.json()["success"] is False and response.json()["errors"][0]["code"] == 10000


# ----------------------------------------------------------------------------- wrangler
@pytest.fixture(scope="session")
def wrangler_bin() -> Path:
    """wrangler from npm, installed once into a temporary directory shared by later runs."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the wrangler test needs Node.js 20+ and npm (apt-get install nodejs npm)")
    prefix = Path(tempfile.gettempdir()) / f"hutch-wrangler-{WRANGLER_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "wrangler"
    if not binary.exists():
        done = subprocess.run(
            [npm, "install", "--prefix", str(prefix), f"wrangler@{WRANGLER_VERSION}", "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm install wrangler failed:\n{done.stdout}\n{done.stderr}"
    return binary


def wrangler(binary: Path, dev: Server, *args: str, ok: bool = True) -> str:
    """Run ``wrangler ARGS`` against the gateway; its stdout and stderr together."""
    env = {
        **clean_env(),
        "CLOUDFLARE_API_BASE_URL": f"{dev.url}/client/v4",
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_HIDE_BANNER": "true",
        "WRANGLER_LOG_PATH": str(dev.log.parent / "wrangler-logs"),
        "CI": "true",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [str(binary), *args], env=env, cwd=dev.log.parent, capture_output=True, text=True, timeout=WRANGLER_TIMEOUT_S
    )
    output = done.stdout + done.stderr
    assert (done.returncode == 0) is ok, f"wrangler {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def test_wrangler_drives_hutch(wrangler_bin: Path, dev: Server) -> None:
    def run(*args: str, ok: bool = True) -> str:
        return wrangler(wrangler_bin, dev, "workflows", *args, ok=ok)

    listed = run("list")
    assert "Showing 4 workflows from page 1" in listed and "approval" in listed and "fanout" in listed
    described = run("describe", "approval")
    assert "Name:" in described and "approval" in described and "Latest Version:" in described

    triggered = run("trigger", "approval", '{"x": 1}')
    generated = triggered.split('Workflow instance "')[1].split('"')[0]
    assert "has been queued successfully" in triggered and len(generated) == 36  # a UUID, never "undefined"
    iid = unique("wr")
    assert f'Workflow instance "{iid}" has been queued successfully' in run(
        "trigger", "approval", json.dumps({"requestId": iid}), "--id", iid
    )
    wait_status(dev, "approval", iid, "waiting")

    instances = run("instances", "list", "approval")
    assert iid in instances and "Waiting" in instances and "Showing" in instances
    assert iid in run("instances", "list", "approval", "--status", "waiting", "--per-page", "100")
    details = run("instances", "describe", "approval", iid)
    assert iid in details and "Waiting" in details and "record request" in details and "manager approval" in details

    assert f'The instance "{iid}" from approval was paused successfully' in run("instances", "pause", "approval", iid)
    wait_status(dev, "approval", iid, "paused")
    assert f'The instance "{iid}" from approval was resumed successfully' in run("instances", "resume", "approval", iid)
    wait_status(dev, "approval", iid, "waiting")
    assert "was terminated successfully" in run("instances", "terminate", "approval", iid)
    assert wait_status(dev, "approval", iid, "terminated") == "terminated"
    assert "Termination" in run("instances", "describe", "approval", iid)
    assert "was restarted successfully" in run("instances", "restart", "approval", iid)
    wait_status(dev, "approval", iid, "waiting")
    sent = run("instances", "send-event", "approval", iid, "--type", "approval", "--payload", '{"approved": true}')
    assert f'was sent to the instance "{iid}" from approval' in sent
    wait_status(dev, "approval", iid, "complete")
    assert "Completed" in run("instances", "describe", "approval", iid)

    refused = run("delete", "approval", ok=False)  # the generated instance still waits
    assert "unfinished instances" in refused and "terminate-all approval" in refused
    assert "has been started" in run("instances", "terminate-all", "approval", "--status", "waiting")
    wait_status(dev, "approval", generated, "terminated")
    assert "has been started" in run("instances", "terminate-all", "approval")
    poll(lambda: unfinished(dev, "approval") == 0, timeout=15.0)
    assert 'Workflow "approval" removed successfully' in run("delete", "approval")

    missing = run("instances", "describe", "approval", "no-such-instance", ok=False)
    assert "not found" in missing
