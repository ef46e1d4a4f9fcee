"""A fleet of instances in every stable status, for the search and bulk tests (SPEC §12)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hutch import Client, NonRetryableError, Status, WorkflowEntrypoint

from tests.helpers import eventually


class Release:
    """Set ``event`` to let the blocked steps of ``block`` instances finish (a new one per fleet: per event loop)."""

    event = asyncio.Event()


async def _blocked() -> str:
    await Release.event.wait()
    return "released"


class Fleet(WorkflowEntrypoint):
    """Ends as its params' ``kind`` says: complete, errors, waits for an event, or blocks in a step."""

    version = "v7"

    async def run(self, event: Any, step: Any) -> Any:
        kind = event.payload["kind"]
        if kind == "error":
            await step.do("fail", _fail)
        if kind == "wait":
            await step.wait_for_event("go", "go", timeout="1 hour")
        if kind == "block":
            await step.do("block", _blocked)
        return await step.do("done", lambda: kind)


def _fail() -> None:
    raise NonRetryableError("asked to fail")


class Other(WorkflowEntrypoint):
    """A second workflow, so that searches across workflows have something to merge."""

    version = "o1"

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("a", lambda: 1)


class Limited(WorkflowEntrypoint):
    """One instance at a time, each blocked in a step: the first runs, the others stay ``queued``."""

    version = "l1"
    max_concurrency = 1

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("block", _blocked)


WORKFLOWS = {"fleet": Fleet, "other": Other, "limited": Limited}


@dataclass
class FleetTruth:
    """What the fleet holds, read from each instance's meta: member -> (created ms, status, version)."""

    rows: dict[tuple[str, str], tuple[int, str, str | None]] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(status for _, status, _ in self.rows.values())


async def read_truth(client: Client, members: list[tuple[str, str]]) -> FleetTruth:
    """Each instance's created ms, status and version, read one by one (the ground truth)."""
    truth = FleetTruth()
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for wf, iid in members:
        pipe.hmget(store.keys.meta(client._partition(wf, iid), wf, iid), ["created", "status"])
    for member, (created, status) in zip(members, await pipe.execute(), strict=True):
        if status is not None:
            truth.rows[member] = (int(created), status.decode(), None)
    return truth


async def build_fleet(client: Client, *, scale: int = 1) -> list[tuple[str, str]]:
    """Create the fleet and bring it to its statuses; its (workflow, id) members.

    Per ``scale``: 700 complete, 300 errored, 360 waiting, 300 terminated, 300 paused, 20 running,
    20 waitingForPause instances of ``fleet``, 50 complete of ``other``, and of ``limited`` (one at a
    time) one running and 199 queued.
    """
    Release.event = asyncio.Event()
    plan = {"complete": 700, "error": 300, "wait": 960, "block": 40}
    fleet = client.workflow("fleet")
    ids: dict[str, list[str]] = {}
    for kind, count in plan.items():
        ids[kind] = [f"{kind}-{n:05d}" for n in range(count * scale)]
        for i in range(0, len(ids[kind]), 100):
            await fleet.create_batch([{"id": iid, "params": {"kind": kind}} for iid in ids[kind][i : i + 100]])
    others = [f"other-{n:05d}" for n in range(50 * scale)]
    await client.workflow("other").create_batch([{"id": iid} for iid in others[:100]])
    limited = [f"queue-{n:05d}" for n in range(200 * scale)]
    for i in range(0, len(limited), 100):
        await client.workflow("limited").create_batch([{"id": iid} for iid in limited[i : i + 100]])
    members = [("fleet", iid) for kind in plan for iid in ids[kind]] + [("other", iid) for iid in others]
    members += [("limited", iid) for iid in limited]

    async def settled() -> bool:
        truth = await read_truth(client, members)
        waiting = [m for m, row in truth.rows.items() if m[1].startswith("wait") and row[1] == Status.WAITING]
        running = [m for m, row in truth.rows.items() if m[1].startswith("block") and row[1] == Status.RUNNING]
        done = sum(1 for _, status, _ in truth.rows.values() if status in ("complete", "errored"))
        assert done == (1000 + 50) * scale and len(waiting) == 960 * scale and len(running) == 40 * scale
        limited_ = Counter(row[1] for m, row in truth.rows.items() if m[0] == "limited")
        assert limited_ == {"running": 1, "queued": 200 * scale - 1}, limited_
        return True

    await eventually(settled, timeout=120, interval=0.2)
    waits, blocks = ids["wait"], ids["block"]
    await _control(client, "terminate", waits[: 300 * scale])
    await _control(client, "pause", waits[300 * scale : 600 * scale] + blocks[: 20 * scale])

    async def controlled() -> bool:
        counts = (await read_truth(client, members)).counts()
        assert counts["terminated"] == 300 * scale and counts["paused"] == 300 * scale, counts
        assert counts["waitingForPause"] == 20 * scale, counts
        return True

    await eventually(controlled, timeout=60, interval=0.2)
    return members


async def _control(client: Client, action: str, iids: list[str]) -> None:
    for i in range(0, len(iids), 200):
        await asyncio.gather(*(client._dispatcher.control("fleet", iid, action) for iid in iids[i : i + 200]))  # type: ignore[arg-type]
