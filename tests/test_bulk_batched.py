"""Bulk actions sent as one control message per partition (``ControlBatch``), on both runtimes.

A bulk terminate of thousands of instances goes out as a few batched messages and terminates each
instance exactly once; a batch the broker delivers again (requeued after its targets were applied:
a worker that died before its ack) restarts no instance twice; while a worker that does not take
batches heartbeats (a rolling deploy), the job falls back to one message per instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hutch import Client, Status, WorkflowEntrypoint
from hutch.broker.dispatch import BATCH_TARGETS, BrokerDispatcher
from hutch.broker.envelopes import ControlBatch, ControlTarget, decode
from hutch.broker.repartition import split_batch
from hutch.broker.transports.base import Delivery, Outgoing
from hutch.bulk import BATCH, BulkState
from hutch.consumers import fanout
from hutch.consumers.fanout import Fanout

from tests.conftest import MakeClient
from tests.helpers import eventually


class Waiter(WorkflowEntrypoint):
    """Waits for an event that never comes (until terminated)."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.wait_for_event("go", "go", timeout="1 day")


class Quick(WorkflowEntrypoint):
    """Completes at once (a restart runs it again)."""

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("a", lambda: 1)


WORKFLOWS = {"waiter": Waiter, "quick": Quick}


def _count_published(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message the client publishes from now on, decoded."""
    dispatcher = client._dispatcher
    assert isinstance(dispatcher, BrokerDispatcher)
    transport = dispatcher.transport
    sent: list[Any] = []
    publish = transport.publish

    async def counting(messages: Sequence[Outgoing]) -> None:
        sent.extend(decode(m.body) for m in messages)
        await publish(messages)

    monkeypatch.setattr(transport, "publish", counting)
    return sent


async def _create(client: Client, workflow: str, count: int) -> list[str]:
    ids = [f"{workflow}-{n:05d}" for n in range(count)]
    for i in range(0, count, 100):
        await client.workflow(workflow).create_batch([{"id": iid} for iid in ids[i : i + 100]])
    return ids


async def _metas(client: Client, workflow: str, ids: list[str], fields: list[str]) -> list[list[Any]]:
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for iid in ids:
        pipe.hmget(store.keys.meta(client._partition(workflow, iid), workflow, iid), fields)
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in await pipe.execute()]


async def _all(client: Client, workflow: str, ids: list[str], status: str) -> bool:
    statuses = [row[0] for row in await _metas(client, workflow, ids, ["status"])]
    assert statuses == [status] * len(ids), {s: statuses.count(s) for s in set(statuses)}
    return True


async def test_a_bulk_terminate_of_thousands_sends_a_few_batches_and_terminates_each_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(WORKFLOWS)
    ids = await _create(client, "waiter", 3000)
    await eventually(lambda: _all(client, "waiter", ids, Status.WAITING), timeout=120, interval=0.2)
    sent = _count_published(client, monkeypatch)

    progress = await (await client.bulk("terminate", workflow="waiter", status="waiting")).wait(timeout=120)
    assert (progress.state, progress.total, progress.done, progress.failed) == (BulkState.DONE, 3000, 3000, 0)
    await eventually(lambda: _all(client, "waiter", ids, Status.TERMINATED), timeout=120, interval=0.2)

    partitions = client._dispatcher.partitions
    assert all(isinstance(m, ControlBatch) for m in sent), "no message per instance"
    assert len(sent) <= partitions * math.ceil(3000 / BATCH) * math.ceil(BATCH / BATCH_TARGETS)
    targets = [(t.workflow, t.instance_id) for m in sent for t in m.targets]
    assert sorted(targets) == [("waiter", iid) for iid in ids], "each instance asked once"
    store = client._store
    snapshots = await store.load_many([(client._partition("waiter", iid), "waiter", iid) for iid in ids])
    ends = [sum(1 for r in s.history if r.get("what") == "terminated") for s in snapshots if s is not None]
    assert ends == [1] * len(ids), "each instance terminated exactly once"


async def test_a_batch_delivered_again_after_it_was_applied_restarts_nothing_twice(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(WORKFLOWS)
    ids = await _create(client, "quick", 400)
    await eventually(lambda: _all(client, "quick", ids, Status.COMPLETE), timeout=120, interval=0.2)
    sent = _count_published(client, monkeypatch)
    # Every batch's first delivery is requeued once all its targets were applied and committed, as
    # if its worker died just before the ack: the broker delivers it again, to the same owner.
    redelivered: list[bool] = []
    settled = Fanout._settled

    async def requeue_first(self: Fanout, *, requeue: bool = False, reason: str | None = None) -> None:
        last = self._left == 1
        if last and not self.delivery.redelivered:
            requeue = True
        if last:
            redelivered.append(self.delivery.redelivered)
        await settled(self, requeue=requeue, reason=reason)

    monkeypatch.setattr(fanout.Fanout, "_settled", requeue_first)

    progress = await (await client.bulk("restart", workflow="quick")).wait(timeout=120)
    assert (progress.state, progress.total, progress.done, progress.failed) == (BulkState.DONE, 400, 400, 0)
    batches = len(sent)
    assert batches and all(isinstance(m, ControlBatch) for m in sent)

    async def every_batch_came_back() -> bool:
        assert redelivered.count(True) == batches, (redelivered.count(False), redelivered.count(True), batches)
        return True

    await eventually(every_batch_came_back, timeout=60, interval=0.05)
    await eventually(lambda: _all(client, "quick", ids, Status.COMPLETE), timeout=120, interval=0.2)
    runs = [int(row[0]) for row in await _metas(client, "quick", ids, ["run"])]
    assert runs == [1] * len(ids), "each instance restarted exactly once"


# Embedded only: on the real runtime, the worker's membership would give the made-up worker partitions.
@pytest.mark.embedded_only
async def test_while_a_worker_without_batches_heartbeats_a_job_sends_one_message_per_instance(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(WORKFLOWS)
    ids = await _create(client, "waiter", 300)
    await eventually(lambda: _all(client, "waiter", ids, Status.WAITING), timeout=60, interval=0.1)
    store = client._store
    # A worker of the previous version: it heartbeats, and announces no feature.
    await store.redis.zadd(store.keys.workers(), {"old-worker": client.clock.now_ms()})
    sent = _count_published(client, monkeypatch)

    progress = await (await client.bulk("terminate", workflow="waiter")).wait(timeout=60)
    assert (progress.done, progress.failed) == (300, 0)
    await eventually(lambda: _all(client, "waiter", ids, Status.TERMINATED), timeout=60, interval=0.1)
    assert len(sent) == 300 and not any(isinstance(m, ControlBatch) for m in sent)


# ----------------------------------------------------------------------------- pure parts


class _FakeDelivery(Delivery):
    def __init__(self) -> None:
        self.partition, self.body, self.headers, self.redelivered = 3, b"x", {}, False
        self.outcomes: list[str] = []

    async def ack(self) -> None:
        self.outcomes.append("ack")

    async def nack(self) -> None:
        self.outcomes.append("nack")

    async def reject(self, reason: str) -> None:
        self.outcomes.append(f"reject {reason}")


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["ack", "ack", "ack"], ["ack"]),
        (["ack", "nack", "reject gone"], ["nack"]),  # a retry redoes every part: the requeue wins
        (["reject first", "ack", "reject second"], ["reject first"]),
    ],
)
async def test_a_fanned_out_delivery_is_settled_once_when_every_part_is(parts: list[str], expected: list[str]) -> None:
    whole = _FakeDelivery()
    shared = Fanout(whole, len(parts))
    deliveries = [shared.part() for _ in parts]
    for n, (part, outcome) in enumerate(zip(deliveries, parts, strict=True)):
        assert whole.outcomes == [], "nothing settled before the last part"
        if outcome == "ack":
            await part.ack()
        elif outcome == "nack":
            await part.nack()
        else:
            await part.reject(outcome.removeprefix("reject "))
        assert (whole.outcomes == []) == (n < len(parts) - 1)
    assert whole.outcomes == expected
    with pytest.raises(RuntimeError, match="settled twice"):
        await deliveries[0].ack()


def test_a_batch_is_split_by_the_new_partitions_when_repartitioning() -> None:
    targets = [ControlTarget(workflow="w", instance_id=str(n), run=n) for n in range(10)]
    batch = ControlBatch(action="restart", targets=targets)
    parts = split_batch(batch, lambda wf, iid: int(iid) % 3)
    assert sorted(parts) == [0, 1, 2]
    for partition, part in parts.items():
        assert part.action == "restart"
        assert [(t.instance_id, t.run) for t in part.targets] == [(str(n), n) for n in range(10) if n % 3 == partition]
