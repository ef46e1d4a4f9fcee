"""Killing workers: nothing is lost, nothing committed runs twice, nothing stays stuck.

Real worker processes (``hutch worker``) on the real Redis and RabbitMQ, killed with SIGKILL or
stopped with SIGTERM. Each test runs in a namespace of its own (keys and queues deleted after).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hutch
import pytest
from hutch import Client, Settings
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.distributed.workflows import HoldWorkflow, LedgerWorkflow, RelayWorkflow, counter_key
from tests.helpers import eventually, ids_per_partition, unique

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

WORKFLOWS = {
    "ledger": "tests.distributed.workflows:LedgerWorkflow",
    "hold": "tests.distributed.workflows:HoldWorkflow",
    "relay": "tests.distributed.workflows:RelayWorkflow",
}
STEPS = [name for name, _ in LedgerWorkflow.STEPS]


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("crash")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=8, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[Client]:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=8)
    workflows = {"ledger": LedgerWorkflow, "hold": HoldWorkflow, "relay": RelayWorkflow}
    async with hutch.connect(workflows, settings=settings) as client:
        yield client


async def _counters(redis: Redis, namespace: str, kind: str, ids: list[str], step: str) -> list[int]:
    values = await redis.mget([counter_key(kind, iid, step, namespace) for iid in ids])
    return [int(v or 0) for v in values]


async def _split(*workers: WorkerProcess) -> bool:
    """Whether these workers say they own every partition between them, each some, none twice."""
    owned = [w.partitions() or [] for w in workers]
    return sorted(p for ps in owned for p in ps) == list(range(8)) and all(owned)


async def test_sigkill_of_a_worker_mid_step_loses_nothing_and_reruns_only_interrupted_steps(
    namespace: str, client: Client
) -> None:
    a = WorkerProcess(namespace, WORKFLOWS)
    b = WorkerProcess(namespace, WORKFLOWS)
    redis = Redis.from_url(REDIS_URL)
    try:
        await a.start()
        await b.start()

        await eventually(lambda: _split(a, b), timeout=15)

        ledger = client.workflow("ledger")
        instances = await ledger.create_batch([{"params": {}} for _ in range(100)])
        ids = [inst.id for inst in instances]

        async def long_steps_running() -> bool:
            return sum(await _counters(redis, namespace, "attempts", ids, "long-1")) >= 40

        await eventually(long_steps_running, timeout=30)
        # One concurrent snapshot, so the long steps are still running when the kill lands.
        details = await asyncio.gather(*(inst.describe() for inst in instances))
        committed_before_kill = {
            (inst.id, step.name)
            for inst, detail in zip(instances, details, strict=True)
            for step in detail.steps
            if step.success
        }
        a.kill()
        assert await a.wait(timeout=10) == -9

        async def b_owns_everything() -> bool:
            return b.partitions() == list(range(8))

        await eventually(b_owns_everything, timeout=5)  # failover within 5 s of the kill

        for inst in instances:
            final = await inst.wait(timeout=60)
            assert final.status == "complete", (inst.id, final)
            assert final.output == STEPS

        interrupted = 0
        for step in STEPS:
            attempts = await _counters(redis, namespace, "attempts", ids, step)
            effects = await _counters(redis, namespace, "effects", ids, step)
            assert effects == [1] * len(ids), f"{step}: side effect applied other than once"
            assert all(1 <= n <= 4 for n in attempts), f"{step}: attempts outside 1..limit+1: {attempts}"
            for iid, n in zip(ids, attempts, strict=True):
                if (iid, step) in committed_before_kill:
                    assert n == 1, f"{iid} {step} was committed before the kill but ran {n} times"
            interrupted += sum(n - 1 for n in attempts)
        assert interrupted > 0, "the kill interrupted no step; the test proved nothing"

        for inst in instances:
            detail = await inst.describe()
            assert [s.name for s in detail.steps] == STEPS  # each step committed exactly once
            assert all(s.success for s in detail.steps)

        b.terminate()
        assert await b.wait(timeout=40) == 0
    finally:
        await redis.aclose()
        await a.close()
        await b.close()


async def test_steps_handed_back_by_a_worker_killed_after_taking_them_over_run_again(
    namespace: str, client: Client
) -> None:
    # A and B run first attempts; C joins and takes partitions over. A and B hand over without waiting
    # for their attempts (a handover deadline of 0.2 s), so on C those are declared lost and started
    # again. C is killed: the partitions go back while the first attempts still run there, the
    # attempts recorded since run nowhere, and each must be started again, or its instance stays
    # running for ever.
    seconds = 12.0
    hasty = {"HUTCH_SHUTDOWN_TIMEOUT_S": "0.2"}
    a, b = WorkerProcess(namespace, WORKFLOWS, **hasty), WorkerProcess(namespace, WORKFLOWS, **hasty)
    c = WorkerProcess(namespace, WORKFLOWS)
    redis = Redis.from_url(REDIS_URL)
    try:
        await a.start()
        await b.start()

        await eventually(lambda: _split(a, b), timeout=15)
        relay = client.workflow("relay")
        created = asyncio.get_running_loop().time()
        # Two instances in every partition, so whichever partitions C takes, it takes running steps.
        instances = await relay.create_batch(
            [
                {"id": iid, "params": {"seconds": seconds}}
                for ids in ids_per_partition("relay", 8, 2).values()
                for iid in ids
            ]
        )
        ids = [inst.id for inst in instances]

        async def attempts_at_least(n: int, of: list[str]) -> bool:
            return all(k >= n for k in await _counters(redis, namespace, "attempts", of, "relay"))

        await eventually(lambda: attempts_at_least(1, ids), timeout=15)
        await c.start()
        await eventually(lambda: _split(a, b, c), timeout=15)
        taken_by_c = [iid for iid in ids if partition_of("relay", iid, 8) in (c.partitions() or [])]
        assert taken_by_c, "C took over no running step; the test proved nothing"
        await eventually(lambda: attempts_at_least(2, taken_by_c), timeout=15)
        c.kill()
        assert await c.wait(timeout=10) == -9

        await eventually(lambda: _split(a, b), timeout=10)
        back = asyncio.get_running_loop().time() - created
        assert back < seconds, f"partitions came back after {back:.1f} s: no first attempt was running any more"

        for inst in instances:
            final = await inst.wait(timeout=seconds + 20)
            assert final.status == "complete", (inst.id, final)
        assert await _counters(redis, namespace, "effects", ids, "relay") == [1] * len(ids)
        attempts = await _counters(redis, namespace, "attempts", ids, "relay")
        assert all(attempts[ids.index(iid)] >= 3 for iid in taken_by_c), attempts
    finally:
        await redis.aclose()
        for worker in (a, b, c):
            await worker.close()


async def test_sigterm_drains_in_flight_steps_and_exits_zero(namespace: str, client: Client) -> None:
    worker = WorkerProcess(namespace, WORKFLOWS)
    redis = Redis.from_url(REDIS_URL)
    try:
        await worker.start()
        instances = [await client.workflow("hold").create(params={"seconds": 1.0}) for _ in range(5)]
        ids = [inst.id for inst in instances]

        async def all_running() -> bool:
            return await _counters(redis, namespace, "attempts", ids, "hold") == [1] * 5

        await eventually(all_running, timeout=20)
        worker.terminate()
        assert await worker.wait(timeout=40) == 0
        assert "hutch worker stopped" in worker.output
        # The in-flight steps finished and were committed before the worker let go.
        for inst in instances:
            status = await inst.status()
            assert status.status == "complete", status
        assert await _counters(redis, namespace, "attempts", ids, "hold") == [1] * 5
    finally:
        await redis.aclose()
        await worker.close()
