"""The dashboard's live instance feed costs one read per change of the instance, not one per viewer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from hutch import Status
from hutch.gateway.api.deps import WorkflowNames
from hutch.gateway.dashboard.data import instance_snapshot
from hutch.gateway.dashboard.live import LiveInstances

from tests.browser.workflows import Gated
from tests.conftest import MakeClient
from tests.helpers import eventually, unique

VIEWERS = 5


async def test_many_viewers_share_one_reader_per_change(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    names = WorkflowNames(client)

    async def snapshot(workflow: str, instance_id: str) -> dict[str, Any]:
        return await instance_snapshot(client, names, workflow, instance_id)

    hub = LiveInstances(client, snapshot, poll_s=0.2)
    iid = unique("live")
    instance = await client.workflow("gated").create(id=iid)
    await eventually(lambda: _waiting(instance))
    seen: list[list[str]] = [[] for _ in range(VIEWERS)]

    async def view(n: int) -> None:
        async with contextlib.aclosing(hub.stream("gated", iid)) as stream:
            async for text in stream:
                seen[n].append(json.loads(text)["detail"]["status"])
                if seen[n][-1] == Status.COMPLETE:
                    return

    try:
        async with asyncio.timeout(8):
            async with asyncio.TaskGroup() as tasks:
                for n in range(VIEWERS):
                    tasks.create_task(view(n))
                await eventually(_all_seen(seen))
                reads_before = hub.snapshots_read
                await asyncio.sleep(1.0)  # nothing changes: seq is re-read, the detail is not
                assert hub.snapshots_read == reads_before
                await instance.send_event("go", {"ok": True})
    except TimeoutError:
        raise AssertionError(f"viewers saw {seen}; the instance is {(await instance.describe()).status}") from None
    finally:
        await hub.close()
        await asyncio.sleep(0)  # let the cancelled follower finish
    assert all(statuses[-1] == Status.COMPLETE for statuses in seen), seen
    # One describe() for the first snapshot and one per commit after it, shared by every viewer.
    commits_after_the_event = 3  # the event taken, the finish step, the completion (at most)
    assert hub.snapshots_read <= 1 + commits_after_the_event, hub.snapshots_read
    assert not hub._followed  # the follower stopped with its last viewer (every stream was closed)


def _all_seen(seen: list[list[str]]) -> Any:
    async def check() -> bool:
        return all(seen)

    return check


async def _waiting(instance: Any) -> bool:
    return (await instance.status()).status == Status.WAITING
