"""No concurrency slot is leaked when an instance's partition changes hands or the instance vanishes.

Each test drives the race by hand: two partition owners (real orchestrators, no membership) on
one store, the partition taken from the first by a claim it does not hear of, so that the old
owner runs one more turn with its stale token; or an instance deleted between the turn that took
its slot and that turn's commit. The store is fakeredis and the real Redis (the limit's script and
the partition's keys on separate hash tags) and a private Redis Cluster (the limit's keys and the
partition's in different slots).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from hutch import Status, WorkflowEntrypoint
from hutch.broker import BrokerDispatcher, InProcessTransport
from hutch.client import Client
from hutch.consumers import Worker
from hutch.consumers.runtime import open_redis
from hutch.keys import instance_member
from hutch.settings import Settings
from hutch.store.redis import RedisStore
from hutch.store.slots import SlotStore

from tests.conftest import drop_namespace
from tests.helpers import eventually, unique

PARTITIONS = 8
STARTED: dict[str, list[str]] = {}  # tag -> ids of the instances whose step began, in order
GATES: dict[str, asyncio.Event] = {}  # tag -> opened when the blocked steps may end


class Limited(WorkflowEntrypoint):
    """One instance at a time; one step, which waits for the test's gate when ``block`` is set."""

    max_concurrency = 1

    async def run(self, event: Any, step: Any) -> Any:
        tag, iid = event.payload["tag"], event.instance_id

        async def body() -> str:
            STARTED.setdefault(tag, []).append(iid)
            if event.payload.get("block"):
                await GATES[tag].wait()
            return iid

        return await step.do("work", body)


class TwoSlots(Limited):
    """As Limited, two at a time."""

    max_concurrency = 2


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {"limited": Limited, "two": TwoSlots}

MakeStore = Callable[[], RedisStore]


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """Stores of one deployment (each its own connection): fakeredis, or a namespace of the real Redis or Cluster."""
    made: list[RedisStore] = []
    server = fakeredis.FakeServer()
    namespace = unique("slotleak")
    url = {"redis": "redis_url", "cluster": "redis_cluster_url"}.get(request.param)
    if url is not None:
        url = request.getfixturevalue(url)

    def make() -> RedisStore:
        if url is None:
            store = RedisStore(fakeredis.aioredis.FakeRedis(server=server), PARTITIONS)
        else:
            store = RedisStore(open_redis(url), PARTITIONS, namespace=namespace)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.redis.aclose()
    if url is not None:
        await drop_namespace(namespace, url)


class _Deployment:
    """A client and partition owners sharing one store and one in-process transport."""

    def __init__(self, make_store: MakeStore) -> None:
        self._make_store = make_store
        self.transport = InProcessTransport(PARTITIONS)
        self.client = Client(make_store(), BrokerDispatcher(self.transport))
        self.slots = SlotStore(self.client._store.redis, self.client._store.keys)
        self._loops: list[tuple[Worker, asyncio.Task[None]]] = []

    def owner(self, name: str) -> Worker:
        """A partition owner with no membership: the test hands it partitions (``on_assigned``)."""
        worker = Worker(
            store=self._make_store(),
            transport=self.transport,
            workflows=WORKFLOWS,
            settings=Settings(partitions=PARTITIONS),
            worker_id=name,
        )
        self._loops.append((worker, asyncio.create_task(worker.orchestrator.run())))
        return worker

    async def holders(self, workflow: str = "limited") -> dict[str, str]:
        return await self.slots.holders(workflow, None)

    async def close(self) -> None:
        for worker, loop in self._loops:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await worker.orchestrator.runner.close()
        await self.client.close()


@pytest.fixture
async def deployment(make_store: MakeStore) -> AsyncIterator[_Deployment]:
    deployment = _Deployment(make_store)
    yield deployment
    await deployment.close()


def _ids_on_one_partition(client: Client, tag: str, n: int, workflow: str = "limited") -> tuple[int, list[str]]:
    """``n`` fresh instance ids of ``workflow`` on one partition, and that partition."""
    ids = [f"{tag}-{i}" for i in range(200)]
    partition = client._partition(workflow, ids[0])
    return partition, [iid for iid in ids if client._partition(workflow, iid) == partition][:n]


async def _true(check: Callable[[], bool]) -> bool:
    return check()


def _started(tag: str, n: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(lambda: len(STARTED.get(tag, [])) >= n)


async def test_an_old_owner_turn_after_the_takeover_does_not_keep_the_slot(deployment: _Deployment) -> None:
    # A runs the instance (its slot under A's token); the partition moves to B, which re-drives it
    # and takes the slot over. A, not knowing yet, runs one more turn for it: its acquire used to
    # re-stamp the slot with A's token, so B's give-back (under B's) did nothing and the slot
    # stayed held after the instance completed. A must leave the slot alone: it is not the owner.
    client, tag = deployment.client, unique("owners")
    GATES[tag] = asyncio.Event()
    partition, (iid,) = _ids_on_one_partition(client, tag, 1)
    member = instance_member("limited", iid)
    instance = await client.workflow("limited").create(id=iid, params={"tag": tag, "block": True})
    a, b = deployment.owner("a"), deployment.owner("b")

    await a.orchestrator.on_assigned(partition)
    await eventually(_started(tag, 1))
    a_token = a.orchestrator.owned[partition]
    assert await deployment.holders() == {member: a_token}

    await b.orchestrator.on_assigned(partition)  # A is not told: its next commit is fenced
    await eventually(_started(tag, 2))  # B re-ran the step A's attempt was declared lost for
    b_token = b.orchestrator.owned[partition]
    assert await deployment.holders() == {member: b_token}

    # A's next turn for the instance, from a fresh load (its actor evicted): it takes its slots again.
    a.orchestrator.actors.pop(("limited", iid)).close()
    await a.orchestrator.unhold(partition)  # re-drives the partition's running instances on A
    await eventually(lambda: _true(lambda: partition not in a.orchestrator.owned))  # its commit was fenced
    assert await deployment.holders() == {member: b_token}

    GATES[tag].set()
    assert (await instance.wait(timeout=10)).status is Status.COMPLETE
    await b.orchestrator.settle()
    assert await deployment.holders() == {}


async def test_a_stale_owner_taking_a_slot_for_an_instance_finished_elsewhere_gives_it_back(
    deployment: _Deployment,
) -> None:
    # A queued instance waits on A (its actor cached, refused a slot). The partition moves to B,
    # where it gets its slot, runs and completes. A, not knowing yet, re-checks its waiter: the
    # slot is free, its stale actor takes it, and its start is refused (the instance moved on).
    # The slot taken for a commit that did not land must go back, or it is held forever.
    client, tag = deployment.client, unique("stale")
    GATES[tag] = asyncio.Event()
    partition, (blocker_id, waiter_id) = _ids_on_one_partition(client, tag, 2)
    workflow = client.workflow("limited")
    blocker = await workflow.create(id=blocker_id, params={"tag": tag, "block": True})
    a, b = deployment.owner("a"), deployment.owner("b")
    await a.orchestrator.on_assigned(partition)
    await eventually(_started(tag, 1))
    waiter = await workflow.create(id=waiter_id, params={"tag": tag})
    await a.orchestrator.unhold(partition)  # A picks it up (no broker consumer here): refused, it waits
    await eventually(lambda: _waits_on(a, waiter_id))

    await b.orchestrator.on_assigned(partition)  # A is not told
    await eventually(_started(tag, 2))  # the blocker's step again, on B
    GATES[tag].set()
    assert (await blocker.wait(timeout=10)).status is Status.COMPLETE
    assert (await waiter.wait(timeout=10)).status is Status.COMPLETE  # woken on B by the blocker's give-back
    await b.orchestrator.settle()
    await a.orchestrator.settle()
    assert await deployment.holders() == {}
    assert partition in a.orchestrator.owned and await _waits_on(a, waiter_id)  # A still believes it owns it

    slot_calls: list[tuple[str, bool]] = []
    run = a.orchestrator.slots._store.run  # type: ignore[union-attr]

    async def recorded(calls: Any) -> Any:
        answers = await run(calls)
        slot_calls.extend((call.op, answer.granted) for call, answer in zip(calls, answers, strict=True))
        return answers

    a.orchestrator.slots._store.run = recorded  # type: ignore[method-assign,union-attr]
    a.orchestrator._recheck_waiting()  # A's periodic re-check of its waiters (every RECHECK_S)
    await eventually(lambda: _true(lambda: bool(slot_calls)))
    await a.orchestrator.settle()
    assert slot_calls[0] == ("acquire", True)  # its stale turn took the free slot
    assert STARTED[tag] == [blocker_id, blocker_id, waiter_id]  # and ran nothing
    assert await deployment.holders() == {}


async def _waits_on(worker: Worker, iid: str) -> bool:
    return ("limited", iid) in worker.orchestrator.slots.waiting


async def test_a_queued_instance_deleted_as_it_gets_its_slot_gives_it_back(deployment: _Deployment) -> None:
    # The create's undo (or a delete) removes a queued instance between the acquire that gave it
    # the limit's only slot and the commit that would start it: the commit finds no instance. The
    # slot must go back, or every later instance of the workflow stays queued forever.
    client, tag = deployment.client, unique("deleted")
    partition, (gone_id, next_id) = _ids_on_one_partition(client, tag, 2)
    workflow = client.workflow("limited")
    await workflow.create(id=gone_id, params={"tag": tag})
    a = deployment.owner("a")
    store = a.store
    assert isinstance(store, RedisStore)
    commit_many = store.commit_many
    deleted: list[bool] = []

    async def delete_then_commit(transitions: Any, fences: Any) -> Any:
        if not deleted and any(t.instance_id == gone_id for t in transitions):
            deleted.append(await client._store.delete_unstarted(partition, "limited", gone_id))
        return await commit_many(transitions, fences)

    store.commit_many = delete_then_commit  # type: ignore[method-assign]
    await a.orchestrator.on_assigned(partition)
    await eventually(lambda: _true(lambda: bool(deleted)))
    await a.orchestrator.settle()
    assert deleted == [True]  # it was deleted before its start committed: the race happened
    assert await deployment.holders() == {}

    after = await workflow.create(id=next_id, params={"tag": tag})
    await a.orchestrator.unhold(partition)  # its owner picks it up (no broker consumer here)
    assert (await after.wait(timeout=10)).status is Status.COMPLETE
    assert STARTED[tag] == [next_id]


async def test_a_slot_leaked_by_an_owner_that_died_is_given_back_to_a_waiter(deployment: _Deployment) -> None:
    # The double fault no ordering closes: an owner takes a slot, its commit is refused (the
    # instance was deleted, or the partition moved), and it dies before it gives the slot back.
    # The slot is under a token that no longer owns any partition and its instance does not run:
    # a refused waiter finds it and gives it back. A slot of a running instance under an old
    # owner's token is not touched (the new owner takes it over when it re-drives the instance).
    client, tag = deployment.client, unique("reap")
    partition, (gone_id, running_id, waiter_id) = _ids_on_one_partition(client, tag, 3, "two")
    store = client._store
    holders_key = store.keys.limit_holders("two", None)
    await store.redis.hset(store.keys.meta(partition, "two", running_id), "status", "running")
    await store.redis.hset(
        holders_key, mapping={instance_member("two", gone_id): "dead:1", instance_member("two", running_id): "dead:1"}
    )
    a = deployment.owner("a")
    await a.orchestrator.on_assigned(partition)

    waiter = await client.workflow("two").create(id=waiter_id, params={"tag": tag})
    await a.orchestrator.unhold(partition)
    assert (await waiter.wait(timeout=10)).status is Status.COMPLETE
    await a.orchestrator.settle()
    assert await deployment.holders("two") == {instance_member("two", running_id): "dead:1"}


async def test_an_owner_that_reclaimed_its_partition_gives_back_under_the_token_it_took_with(
    deployment: _Deployment,
) -> None:
    # A restored broker channel makes the owner claim its partition again (a new token) while an
    # instance runs with its slot under the old one: the give-back under the new token did nothing.
    client, tag = deployment.client, unique("reclaim")
    GATES[tag] = asyncio.Event()
    partition, (iid,) = _ids_on_one_partition(client, tag, 1)
    instance = await client.workflow("limited").create(id=iid, params={"tag": tag, "block": True})
    a = deployment.owner("a")
    await a.orchestrator.on_assigned(partition)
    await eventually(_started(tag, 1))
    first = a.orchestrator.owned[partition]

    await a.orchestrator.on_assigned(partition)
    assert a.orchestrator.owned[partition] != first
    GATES[tag].set()
    assert (await instance.wait(timeout=10)).status is Status.COMPLETE
    await a.orchestrator.settle()
    assert STARTED[tag] == [iid]
    assert await deployment.holders() == {}
