"""Partitions changing hands between real ``hutch worker`` processes: fast after a crash, without
re-running steps when graceful, and fenced when the old owner was only paused.

Each test runs in a namespace of its own (keys and queues deleted after); bench/failover.py
measures the same things at scale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import hutch
import pytest
from hutch import Client, Settings
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.consumers.membership import assign
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.distributed.workflows import HoldWorkflow, LedgerWorkflow, StampWorkflow, counter_key, starts_key
from tests.helpers import eventually, ids_per_partition, unique

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

PARTITIONS = 8
WORKFLOWS = {
    "ledger": "tests.distributed.workflows:LedgerWorkflow",
    "hold": "tests.distributed.workflows:HoldWorkflow",
    "stamp": "tests.distributed.workflows:StampWorkflow",
}
STEPS = [name for name, _ in LedgerWorkflow.STEPS]


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("failover")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[Client]:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=PARTITIONS)
    workflows = {"ledger": LedgerWorkflow, "hold": HoldWorkflow, "stamp": StampWorkflow}
    async with hutch.connect(workflows, settings=settings) as client:
        yield client


@pytest.fixture
async def redis(namespace: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def _worker_id(worker: WorkerProcess) -> str:
    """The id the worker printed when it started (its last start)."""
    ids = [line.split()[2] for line in worker.output.splitlines() if line.startswith("hutch worker ")]
    assert ids, "the worker has not said its id yet"
    return ids[-1]


async def _settled(*workers: WorkerProcess) -> bool:
    """Whether each worker says it owns exactly its share of the plan of these workers (the dead expired)."""
    plan = assign([_worker_id(w) for w in workers], PARTITIONS)
    return all(w.partitions() == plan[_worker_id(w)] for w in workers)


async def _counters(redis: Redis, namespace: str, kind: str, ids: list[str], step: str) -> list[int]:
    values = await redis.mget([counter_key(kind, iid, step, namespace) for iid in ids])
    return [int(v or 0) for v in values]


async def test_a_graceful_rolling_restart_under_load_runs_every_step_once(
    namespace: str, client: Client, redis: Redis
) -> None:
    # Each worker in turn is stopped (SIGTERM) and replaced. A stopping worker starts no new step,
    # lets the running ones commit, and hands each partition to its successor; a joining worker gets
    # its share the same way from the others. Nothing that ran is thrown away and run again.
    a, b = WorkerProcess(namespace, WORKFLOWS), WorkerProcess(namespace, WORKFLOWS)
    replacements: list[WorkerProcess] = []
    try:
        await a.start()
        await b.start()
        await eventually(lambda: _settled(a, b), timeout=15)
        ledger = client.workflow("ledger")
        instances = await ledger.create_batch([{"params": {}} for _ in range(40)])

        async def long_steps_running() -> bool:
            return sum(await _counters(redis, namespace, "attempts", [i.id for i in instances], "long-1")) >= 20

        await eventually(long_steps_running, timeout=30)
        survivor = b
        for old in (a, b):
            old.terminate()
            assert await old.wait(timeout=40) == 0
            new = await WorkerProcess(namespace, WORKFLOWS).start()
            replacements.append(new)
            # More load meanwhile: created while the partitions change hands.
            instances += await ledger.create_batch([{"params": {}} for _ in range(20)])
            await eventually(lambda new=new, survivor=survivor: _settled(new, survivor), timeout=30)
            survivor = new

        ids = [inst.id for inst in instances]
        for inst in instances:
            final = await inst.wait(timeout=60)
            assert final.status == "complete", (inst.id, final)
        for step in STEPS:
            attempts = await _counters(redis, namespace, "attempts", ids, step)
            assert attempts == [1] * len(ids), f"{step} ran more than once: {attempts}"
    finally:
        for worker in (a, b, *replacements):
            await worker.close()


async def test_every_partition_of_a_killed_worker_moves_on_at_once(
    namespace: str, client: Client, redis: Redis
) -> None:
    # The survivor stands by on each partition of the other (single active consumer); the kill closes
    # the dead worker's connection, RabbitMQ activates the standby and hands it the partition's lease
    # message, and it claims. No heartbeat has to expire first.
    a, b = WorkerProcess(namespace, WORKFLOWS), WorkerProcess(namespace, WORKFLOWS)
    try:
        await a.start()
        await b.start()
        await eventually(lambda: _settled(a, b), timeout=15)
        ids = [v[0] for v in ids_per_partition("stamp", PARTITIONS, 1, "kill").values()]
        await client.workflow("stamp").create_batch([{"id": iid, "params": {"hold": 60.0}} for iid in ids])

        async def first_attempts_running() -> bool:
            return all(await asyncio.gather(*(redis.llen(starts_key(iid, namespace)) for iid in ids)))

        await eventually(first_attempts_running, timeout=30)
        moved = a.partitions() or []
        assert moved, "the killed worker owned nothing; the test proved nothing"
        killed_at = time.time()
        a.kill()
        assert await a.wait(timeout=10) == -9

        async def second_attempts() -> list[float] | None:
            stamps = []
            for p in moved:
                later = [r.decode() for r in await redis.lrange(starts_key(ids[p], namespace), 0, -1)]
                later = [r for r in later if not r.startswith("1:")]
                if not later:
                    return None
                stamps.append(float(later[0].split(":")[1]))
            return stamps

        stamps = await eventually(second_attempts, timeout=30)
        slowest = max(stamps) - killed_at
        # Under a second on an idle machine (python -m bench.failover); generous for a busy CI runner,
        # and still well under the heartbeat ttl the test's workers run with plus a heartbeat (2 s).
        assert slowest < 3.0, f"a killed worker's partition moved on only after {slowest:.2f} s"
        await eventually(lambda: _true(b.partitions() == list(range(PARTITIONS))), timeout=5)
    finally:
        await a.close()
        await b.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_paused_owner_is_fenced_and_commits_nothing_for_what_it_lost(
    namespace: str, client: Client, redis: Redis
) -> None:
    # SIGSTOP keeps the worker's connections open: no broker signal, its heartbeat just stops. Once
    # it is ttl old the survivor claims the partitions (new fencing tokens) and runs their steps
    # again. Woken up (SIGCONT), the paused worker finishes its old attempts, but none of their
    # results is committed: history shows each of them lost, and the survivor's attempt as the one.
    seconds = 5.0
    a, b = WorkerProcess(namespace, WORKFLOWS), WorkerProcess(namespace, WORKFLOWS)
    try:
        await a.start()
        await b.start()
        await eventually(lambda: _settled(a, b), timeout=15)
        ids = [v[0] for v in ids_per_partition("hold", PARTITIONS, 1, "pause").values()]
        instances = await client.workflow("hold").create_batch(
            [{"id": iid, "params": {"seconds": seconds}} for iid in ids]
        )

        async def all_running() -> bool:
            return await _counters(redis, namespace, "attempts", ids, "hold") == [1] * len(ids)

        await eventually(all_running, timeout=30)
        lost = [ids[p] for p in a.partitions() or []]
        assert lost, "the paused worker owned nothing; the test proved nothing"
        a.pause()

        async def taken_over() -> bool:
            return b.partitions() == list(range(PARTITIONS)) and all(
                n == 2 for n in await _counters(redis, namespace, "attempts", lost, "hold")
            )

        await eventually(taken_over, timeout=15)
        a.resume()  # its first attempts end now (their time is up): their commits must be refused

        for inst in instances:
            final = await inst.wait(timeout=60)
            assert final.status == "complete", (inst.id, final)
        assert await _counters(redis, namespace, "effects", ids, "hold") == [1] * len(ids)
        for inst in instances:
            attempts = (await inst.describe()).steps[0].attempts
            outcomes = [att.error.name if att.error else "ok" for att in attempts]
            expected = ["WorkerLostError", "ok"] if inst.id in lost else ["ok"]
            assert outcomes == expected, (inst.id, outcomes)
        # The paused worker is alive and well: it gets its share back, handed over gracefully.
        await eventually(lambda: _settled(a, b), timeout=30)
    finally:
        await a.close()
        await b.close()
