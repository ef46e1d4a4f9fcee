"""Concurrency limits and priorities (SPEC §12): slots taken while running, given back as an instance parks.

Every test runs on both runtimes (embedded, and a worker on the real Redis and RabbitMQ). The
4-worker proof with a kill -9 is tests/distributed/test_concurrency_limits.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hutch import Client, Status, WorkflowEntrypoint
from hutch.concurrency import concurrency_of
from hutch.errors import InvalidInputError
from hutch.store.slots import SlotStore

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status

INTERVALS: dict[str, list[tuple[str, float, float]]] = {}  # test tag -> (instance id, start, end) of each step body
STARTED: dict[str, list[str]] = {}  # test tag -> instance ids in the order their first step began
GATES: dict[str, asyncio.Event] = {}  # test tag -> released when the blocking instance may end


async def _work(tag: str, iid: str, seconds: float) -> None:
    start = time.monotonic()
    STARTED.setdefault(tag, []).append(iid)
    await asyncio.sleep(seconds)
    INTERVALS.setdefault(tag, []).append((iid, start, time.monotonic()))


class Serial(WorkflowEntrypoint):
    """Two steps around a short sleep, one instance at a time."""

    max_concurrency = 1

    async def run(self, event: Any, step: Any) -> Any:
        tag, iid = event.payload["tag"], event.instance_id
        await step.do("first", lambda: _work(tag, iid, 0.03))
        await step.sleep("pause", "10 milliseconds")
        await step.do("second", lambda: _work(tag, iid, 0.03))
        return iid


class PerCustomer(WorkflowEntrypoint):
    """One instance per customer at a time, three at most overall."""

    max_concurrency = 3
    concurrency_key = "{params.customer}"
    max_concurrency_per_key = 1

    async def run(self, event: Any, step: Any) -> Any:
        tag, iid = event.payload["tag"], f"{event.payload['customer']}/{event.instance_id}"
        await step.do("work", lambda: _work(tag, iid, 0.03))


class Gated(WorkflowEntrypoint):
    """One at a time; an instance with ``block`` set waits in its step until the test opens the gate."""

    max_concurrency = 1

    async def run(self, event: Any, step: Any) -> Any:
        tag, iid = event.payload["tag"], event.instance_id

        async def body() -> None:
            STARTED.setdefault(tag, []).append(iid)
            if event.payload.get("block"):
                await GATES[tag].wait()

        await step.do("work", body)


class Waits(WorkflowEntrypoint):
    """One at a time: a step, a wait for an event (holding no slot), another step."""

    max_concurrency = 1

    async def run(self, event: Any, step: Any) -> Any:
        tag, iid = event.payload["tag"], event.instance_id
        await step.do("before", lambda: _work(tag, iid, 0.01))
        if event.payload.get("wait"):
            await step.wait_for_event("go", "go", timeout="1 hour")
        await step.do("after", lambda: _work(tag, iid, 0.01))


def _peak(intervals: list[tuple[str, float, float]]) -> int:
    """The most step bodies that ever ran at once."""
    edges = sorted([(s, 1) for _, s, _ in intervals] + [(e, -1) for _, _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


async def _holders(client: Client, workflow: str, key: str | None = None) -> dict[str, str]:
    store = client._store
    return await SlotStore(store.redis, store.keys).holders(workflow, key)


async def test_a_limit_of_one_runs_instances_one_at_a_time_and_leaks_no_slot(make_client: MakeClient) -> None:
    client = await make_client({"serial": Serial})
    tag = unique("serial")
    workflow = client.workflow("serial")
    instances = [await workflow.create(params={"tag": tag}) for _ in range(6)]

    for instance in instances:
        assert (await instance.wait(timeout=30)).status is Status.COMPLETE
    intervals = INTERVALS[tag]
    assert len(intervals) == 12
    # Another instance may run while one sleeps between its steps, but never two step bodies at once.
    assert _peak(intervals) == 1
    assert await eventually(lambda: _holders_empty(client, "serial"), timeout=10)


async def _holders_empty(client: Client, workflow: str, key: str | None = None) -> bool:
    return await _holders(client, workflow, key) == {}


async def test_a_concurrency_key_limits_each_key_and_the_workflow_limit_all(make_client: MakeClient) -> None:
    client = await make_client({"per-customer": PerCustomer})
    tag = unique("key")
    workflow = client.workflow("per-customer")
    instances = [await workflow.create(params={"tag": tag, "customer": f"c{i % 4}"}) for i in range(16)]

    for instance in instances:
        assert (await instance.wait(timeout=30)).status is Status.COMPLETE
    intervals = INTERVALS[tag]
    for customer in ("c0", "c1", "c2", "c3"):
        assert _peak([i for i in intervals if i[0].startswith(customer + "/")]) == 1
    assert _peak(intervals) <= 3
    for key in (None, "c0", "c1", "c2", "c3"):
        assert await _holders_empty(client, "per-customer", key)


async def test_waiting_instances_start_by_priority_then_fifo(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    tag = unique("prio")
    GATES[tag] = asyncio.Event()
    workflow = client.workflow("gated")
    blocker = await workflow.create(id=f"{tag}-blocker", params={"tag": tag, "block": True})
    await eventually(lambda: _started(tag, 1))
    late = await workflow.create(id=f"{tag}-late", params={"tag": tag}, priority=5)
    first_default = await workflow.create(id=f"{tag}-default1", params={"tag": tag})
    second_default = await workflow.create(id=f"{tag}-default2", params={"tag": tag})
    urgent = await workflow.create(id=f"{tag}-urgent", params={"tag": tag}, priority=-5)
    waiting = [late, first_default, second_default, urgent]

    # Over the limit they stay queued, and describe() says for which limit and where in its queue.
    async def all_queued() -> bool:
        details = [await i.describe() for i in waiting]
        return all(d.status is Status.QUEUED and d.waiting_for_slot is not None for d in details)

    await eventually(all_queued, timeout=10)
    detail = await urgent.describe()
    assert detail.waiting_for_slot is not None
    assert detail.waiting_for_slot.limit == "max_concurrency"
    assert detail.waiting_for_slot.position == 0
    assert (await late.describe()).waiting_for_slot.position == 3  # type: ignore[union-attr]

    GATES[tag].set()
    for instance in [blocker, *waiting]:
        assert (await instance.wait(timeout=20)).status is Status.COMPLETE
    assert STARTED[tag] == [blocker.id, urgent.id, first_default.id, second_default.id, late.id]
    assert (await urgent.describe()).waiting_for_slot is None
    assert await _holders_empty(client, "gated")


async def _started(tag: str, n: int) -> bool:
    return len(STARTED.get(tag, [])) >= n


async def test_a_waiting_instance_holds_no_slot(make_client: MakeClient) -> None:
    client = await make_client({"waits": Waits})
    tag = unique("waits")
    workflow = client.workflow("waits")
    parked = await workflow.create(params={"tag": tag, "wait": True})
    await wait_status(parked, Status.WAITING)

    other = await workflow.create(params={"tag": tag})
    assert (await other.wait(timeout=10)).status is Status.COMPLETE  # ran while the first waited
    assert (await parked.status()).status is Status.WAITING

    await parked.send_event("go")
    assert (await parked.wait(timeout=10)).status is Status.COMPLETE
    assert _peak(INTERVALS[tag]) == 1
    assert await _holders_empty(client, "waits")


async def test_terminating_a_queued_instance_leaves_the_queue(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    tag = unique("term")
    GATES[tag] = asyncio.Event()
    workflow = client.workflow("gated")
    blocker = await workflow.create(params={"tag": tag, "block": True})
    await eventually(lambda: _started(tag, 1))
    queued = await workflow.create(params={"tag": tag})
    await eventually(lambda: _waits_for_slot(queued))

    await queued.terminate()
    GATES[tag].set()
    assert (await blocker.wait(timeout=10)).status is Status.COMPLETE
    assert (await queued.status()).status is Status.TERMINATED
    assert STARTED[tag] == [blocker.id]
    store = client._store
    assert await SlotStore(store.redis, store.keys).place("gated", None, f"gated:{queued.id}") is None
    assert await _holders_empty(client, "gated")


async def _waits_for_slot(instance: Any) -> bool:
    return (await instance.describe()).waiting_for_slot is not None


@pytest.mark.embedded_only
async def test_priorities_and_limits_are_checked(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    with pytest.raises(InvalidInputError, match="priority"):
        await client.workflow("gated").create(params={"tag": "x"}, priority=1001)
    with pytest.raises(InvalidInputError, match="priority"):
        await client.workflow("gated").create(params={"tag": "x"}, priority=True)  # type: ignore[arg-type]

    class Bad(WorkflowEntrypoint):
        max_concurrency = 0

    with pytest.raises(InvalidInputError, match="max_concurrency"):
        concurrency_of(Bad)
    assert concurrency_of(Waits) is not None
    assert concurrency_of(WorkflowEntrypoint) is None


@pytest.mark.parametrize("ahead", ["deleted", "finished"])
async def test_a_waiter_that_no_longer_waits_cannot_block_the_limit(make_client: MakeClient, ahead: str) -> None:
    # A waiter deleted (or finished) while its entry stayed in the queue — its removal lost to a
    # crash or a race — sits at the head with the best priority; the instance behind it still starts.
    client = await make_client({"gated": Gated})
    tag = unique("stale")
    GATES[tag] = asyncio.Event()
    workflow = client.workflow("gated")
    blocker = await workflow.create(params={"tag": tag, "block": True})
    await eventually(lambda: _started(tag, 1))
    if ahead == "finished":
        done = await workflow.create(params={"tag": tag})
        await eventually(lambda: _waits_for_slot(done))
        await done.terminate()
        await wait_status(done, Status.TERMINATED)
        stale = f"gated:{done.id}"
    else:
        stale = f"gated:{tag}-gone"
    store = client._store
    await store.redis.zadd(store.keys.limit_waiters("gated", None), {stale: -(10**15)})
    queued = await workflow.create(params={"tag": tag})
    await eventually(lambda: _waits_for_slot(queued))

    GATES[tag].set()
    assert (await blocker.wait(timeout=10)).status is Status.COMPLETE
    assert (await queued.wait(timeout=20)).status is Status.COMPLETE
    assert await SlotStore(store.redis, store.keys).place("gated", None, stale) is None
    assert await _holders_empty(client, "gated")


def test_hutch_toml_limits_win_over_the_class_attributes() -> None:
    from hutch.settings import WorkflowSpec
    from hutch.versions import version_of
    from pydantic import ValidationError

    spec = WorkflowSpec(
        name="per-customer",
        class_name="tests.test_concurrency_limits:PerCustomer",
        max_concurrency=7,
        concurrency_key="{params.region}",
    )
    loaded = spec.load()
    config = concurrency_of(loaded)
    # Set in hutch.toml: its value; not set: the class's.
    assert config is not None
    assert (config.max_concurrency, config.concurrency_key, config.max_concurrency_per_key) == (7, "{params.region}", 1)
    assert issubclass(loaded, PerCustomer) and PerCustomer.max_concurrency == 3  # the imported class is unchanged
    assert version_of(loaded) == version_of(PerCustomer)  # same code version: running instances stay on it
    assert WorkflowSpec(name="p", class_name="tests.test_concurrency_limits:PerCustomer").load() is PerCustomer
    for bad in ({"max_concurrency": 0}, {"max_concurrency": True}, {"max_concurrency_per_key": "2"}):
        with pytest.raises(ValidationError):
            WorkflowSpec(name="p", class_name="tests.test_concurrency_limits:PerCustomer", **bad)
