"""Cloudflare's terminate-all (``PUT .../workflows/{w}/instances/terminate``) is a durable bulk job (SPEC §12).

wrangler's ``instances terminate-all`` prints "has been started" for ``ok`` and "is already running"
for ``already_running`` (tests/test_cloudflare_api.py runs it); here the job behind the answer: it is
the engine's bulk job (its progress at ``GET /api/bulk/{id}``), over the workflow and the status
asked for, and repeating the request while it runs starts nothing new.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from hutch import Client, Status
from hutch.bulk import BulkJobs, BulkState
from hutch.search import SearchFilter

from tests.helpers import eventually
from tests.test_gateway_api import in_process

TERMINATE = "/client/v4/accounts/any-account/workflows/{}/instances/terminate"


async def terminate_all(http: httpx.AsyncClient, workflow: str, **query: str) -> tuple[str, str]:
    """PUT terminate-all; (Cloudflare's ``result.status``, the bulk job id the message names)."""
    answer = await http.put(TERMINATE.format(workflow), params=query)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["errors"] == [], body
    (message,) = body["messages"]
    found = re.search(r"bulk job ([0-9a-f]{32})", message)
    assert found is not None, message
    return body["result"]["status"], found.group(1)


async def finished_job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        progress: dict[str, Any] = (await http.get(f"/api/bulk/{job_id}")).json()["result"]
        assert progress["state"] == "done", progress
        return progress

    return await eventually(done, timeout=30, interval=0.05)


def given(where: dict[str, Any]) -> dict[str, Any]:
    """The fields of a filter that are set."""
    return {k: v for k, v in where.items() if v is not None}


async def statuses(client: Client, workflow: str, ids: list[str]) -> set[str]:
    return {str((await (await client.workflow(workflow).get(i)).status()).status) for i in ids}


async def test_terminate_all_runs_as_a_bulk_job_and_a_repeat_while_it_runs_starts_nothing() -> None:
    async with in_process() as (http, client, _):
        sleepers = [(await client.workflow("sleeper").create(id=f"nap-{n}")).id for n in range(4)]
        approval = (await client.workflow("approval").create(id="appr-1", params={"order": 1})).id

        async def waiting() -> bool:
            assert await statuses(client, "sleeper", sleepers) == {"waiting"}
            return await statuses(client, "approval", [approval]) == {"waiting"}

        await eventually(waiting, timeout=30, interval=0.05)

        # The same terminate-all still running (a job no runner advances here): nothing new starts.
        jobs = BulkJobs(client._store)
        where = SearchFilter(workflow="sleeper", status=Status.WAITING)
        running = await jobs.create("terminate", where, client.clock.now_ms())
        assert await terminate_all(http, "sleeper", status="waiting") == ("already_running", running)
        assert await jobs.active() == [running]
        assert await statuses(client, "sleeper", sleepers) == {"waiting"}

        await client.bulk_job(running).cancel()
        state, job_id = await terminate_all(http, "sleeper", status="waiting")
        assert state == "ok" and job_id != running
        progress = await finished_job(http, job_id)
        assert progress["action"] == "terminate"
        assert given(progress["filter"]) == {"workflow": "sleeper", "status": "waiting"}
        assert (progress["total"], progress["done"], progress["failed"]) == (4, 4, 0), progress

        async def terminated() -> bool:
            return await statuses(client, "sleeper", sleepers) == {"terminated"}

        await eventually(terminated, timeout=30, interval=0.05)
        assert await statuses(client, "approval", [approval]) == {"waiting"}, "another workflow is left alone"

        # Without a status: every instance of the workflow; the terminated ones are skipped.
        state, again = await terminate_all(http, "sleeper")
        assert state == "ok" and again != job_id
        progress = await finished_job(http, again)
        assert given(progress["filter"]) == {"workflow": "sleeper"} and progress["state"] == BulkState.DONE.value
        assert (progress["total"], progress["done"], progress["skipped"]) == (4, 4, 4), progress
        missing = await http.put(TERMINATE.format("no-such-workflow"))
        assert missing.status_code == 404, missing.text
