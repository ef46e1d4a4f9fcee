"""The owner's fast paths: starting without a store read, waking short sleepers without a replay.

A brand-new instance is built from its start message (the commit's sequence and creation-time
checks refuse a stale one, which then loads from Redis); a ``waiting`` instance whose next timer
is due soon keeps its live ``run()``, longer sleepers leave memory and replay when they wake.
"""

from __future__ import annotations

import collections
from typing import Any

from hutch import Status, WorkflowEntrypoint
from hutch.broker import Outgoing
from hutch.broker.envelopes import Control, InstanceCreated, encode
from hutch.clock import Clock
from hutch.serialization import pack

from tests.conftest import MakeClient
from tests.helpers import count_loads, eventually, unique, wait_status, worker_of

RUNS: collections.Counter[str] = collections.Counter()  # instance id -> run() executions (live or replay)
SEEN: dict[str, list[Any]] = {}  # instance id -> the params each run() execution saw
STEPS: dict[str, list[Any]] = {}  # instance id -> the params version each execution of the step saw


class ManualClock(Clock):
    """Wall-clock time plus an offset the test advances, so an hour-long sleep ends at once."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


class Nap(WorkflowEntrypoint):
    """Sleeps ``params["seconds"]``, then one step; counts its run() executions."""

    async def run(self, event: Any, step: Any) -> Any:
        iid = event.instance_id
        RUNS[iid] += 1
        SEEN.setdefault(iid, []).append(event.payload)
        await step.sleep("nap", event.payload["seconds"])

        async def after() -> str:
            STEPS.setdefault(iid, []).append(event.payload.get("version"))
            return "rested"

        await step.do("after", after)
        return event.payload.get("version", "rested")


async def test_a_new_instance_starts_from_its_message_without_reading_the_store(make_client: MakeClient) -> None:
    client = await make_client({"nap": Nap})
    loaded = count_loads(client)

    instance = await client.workflow("nap").create(params={"seconds": 0})

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE and final.output == "rested"
    assert [iid for _, _, iid in loaded] == []
    assert RUNS[instance.id] == 1 and SEEN[instance.id] == [{"seconds": 0}]


async def test_a_short_sleep_resumes_the_live_run_with_no_load_and_no_replay(make_client: MakeClient) -> None:
    client = await make_client({"nap": Nap})
    orchestrator = worker_of(client).orchestrator
    loaded = count_loads(client)

    instance = await client.workflow("nap").create(params={"seconds": 0.3})
    await wait_status(instance, Status.WAITING)
    assert ("nap", instance.id) in orchestrator.actors  # sleeping, but still in memory

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert RUNS[instance.id] == 1  # the same coroutine went on: no replay
    assert loaded == []


async def test_a_long_sleep_leaves_memory_and_replays_when_it_ends(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"nap": Nap}, clock=clock)
    orchestrator = worker_of(client).orchestrator
    loaded = count_loads(client)

    instance = await client.workflow("nap").create(params={"seconds": 3600})
    await wait_status(instance, Status.WAITING)

    async def evicted() -> bool:
        return ("nap", instance.id) not in orchestrator.actors

    await eventually(evicted)
    assert orchestrator.timers.armed == 0  # an hour away: the timer waits in Redis, not in memory
    clock.offset_ms += 3_600_000
    orchestrator.timers.due_at(0)

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert RUNS[instance.id] == 2  # replayed from history after the wake-up
    assert [iid for _, _, iid in loaded] == [instance.id]


async def test_a_stale_start_message_of_a_same_id_instance_never_runs(make_client: MakeClient) -> None:
    client = await make_client({"nap": Nap})
    store = client._store
    iid = unique("same-id")
    partition = client._partition("nap", iid)
    created = client.clock.now_ms()
    real = {"seconds": 0, "version": "real"}
    # The instance as stored, and a start message that describes another instance with this id
    # (an earlier one whose creation was undone, say): other params, another creation time.
    fields = {
        "wf": "nap",
        "id": iid,
        "status": "queued",
        "seq": 0,
        "run": 0,
        "params": pack(real),
        "created": created,
        "trigger": pack({"source": "api"}),
    }
    assert await store.create(partition, "nap", iid, created, fields)
    stale_fields = {**fields, "params": pack({"seconds": 0, "version": "stale"}), "created": created - 5_000}
    stale = InstanceCreated(workflow="nap", instance_id=iid, fields=stale_fields)

    await worker_of(client).transport.publish([Outgoing(partition, encode(stale))])

    final = await client.workflow("nap").get(iid)
    status = await final.wait(timeout=10)
    # The commit refused the transition computed from the stale message, so nothing of it took effect
    # (run() code outside steps may have run on it, as on any replay); the redelivery loaded the real
    # one — or, distributed, the create's notice started the real one before the message arrived.
    assert (status.status, status.output) == (Status.COMPLETE, "real")
    assert STEPS[iid] == ["real"]
    assert real in SEEN[iid]
    detail = await final.describe()
    assert detail.params == real


async def test_pause_and_resume_handled_in_one_batch_keep_the_sleep_timer(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"nap": Nap}, clock=clock)
    worker = worker_of(client)
    instance = await client.workflow("nap").create(params={"seconds": 3600})
    await wait_status(instance, Status.WAITING)
    partition = client._partition("nap", instance.id)

    # Both requests reach the owner together, so one transition pauses and resumes.
    await worker.transport.publish(
        [
            Outgoing(partition, encode(Control(workflow="nap", instance_id=instance.id, action=a)))
            for a in ("pause", "resume")
        ]
    )

    async def resumed() -> bool:
        detail = await instance.describe()
        return detail.status == Status.WAITING and any(s.type == "sleep" and s.due is not None for s in detail.steps)

    await eventually(resumed)
    await worker.orchestrator.settle()
    timers = await client._store.due_timers([partition], now_ms=clock.now_ms() + 3_700_000)
    assert [m for _, m, _ in timers if instance.id.encode() in m], "the sleep timer must still be in Redis"
    clock.offset_ms += 3_700_000
    worker.orchestrator.timers.due_at(0)
    assert (await instance.wait(timeout=10)).status == Status.COMPLETE
