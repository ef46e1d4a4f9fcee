"""A concurrency limit holds across four ``hutch worker`` processes, through a kill -9, and leaks no slot.

200 instances of a workflow limited to 3, each a step, a sleep and a step (50-200 ms each). Every
step body writes its (start, end) to a ledger in Redis; sweeping the intervals gives the most step
bodies that ever ran at once, which must never exceed 3. One worker is killed with SIGKILL mid-way:
every instance still completes, and at the end no slot is held and no instance waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import hutch
import pytest
from hutch import Client, Settings
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.keys import Keys
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.limited_workflows import LimitedWorkflow
from tests.distributed.procs import WorkerProcess
from tests.helpers import eventually, unique

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

WORKFLOWS = {"limited": "tests.distributed.limited_workflows:LimitedWorkflow"}
INSTANCES = 200


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("limits")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=8, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


def _peak(rows: list[bytes]) -> int:
    edges: list[tuple[float, int]] = []
    for row in rows:
        _, start, end = row.decode().split()
        edges += [(float(start), 1), (float(end), -1)]
    running = peak = 0
    for _, delta in sorted(edges):  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


async def test_a_limit_of_three_holds_across_four_workers_and_a_kill(namespace: str) -> None:
    ledger = f"{namespace}:ledger"
    workers = [WorkerProcess(namespace, WORKFLOWS) for _ in range(4)]
    redis = Redis.from_url(REDIS_URL)
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=8)
    try:
        for worker in workers:
            await worker.start()

        async def split() -> bool:
            owned = [w.partitions() or [] for w in workers]
            return sorted(p for ps in owned for p in ps) == list(range(8)) and sum(map(bool, owned)) >= 3

        await eventually(split, timeout=30)
        async with hutch.connect({"limited": LimitedWorkflow}, settings=settings) as client:
            await _run(client, redis, ledger, workers, namespace)
    finally:
        for worker in workers:
            await worker.close()
        await redis.aclose()


async def _run(client: Client, redis: Redis, ledger: str, workers: list[WorkerProcess], namespace: str) -> None:
    workflow = client.workflow("limited")
    instances = []
    for start in range(0, INSTANCES, 100):
        instances += await workflow.create_batch([{"params": {"ledger": ledger}} for _ in range(start, start + 100)])
    assert len(instances) == INSTANCES

    async def a_third_done() -> bool:
        return await redis.llen(ledger) >= INSTANCES * 2 // 3

    await eventually(a_third_done, timeout=120, interval=0.05)
    victim = max(workers, key=lambda w: len(w.partitions() or []))
    victim.kill()
    assert await victim.wait(timeout=10) == -9

    for instance in instances:
        final = await instance.wait(timeout=180)
        assert final.status == "complete", (instance.id, final)

    rows: list[bytes] = await redis.lrange(ledger, 0, -1)  # type: ignore[assignment]
    assert len({row.split()[0] for row in rows}) == INSTANCES * 2  # every step of every instance ended
    assert _peak(rows) <= 3
    assert _peak(rows) == 3  # the limit was reached: the test measured something
    keys = Keys(namespace)

    async def no_slot_held() -> bool:
        return await redis.hlen(keys.limit_holders("limited", None)) == 0

    await eventually(no_slot_held, timeout=10)
    assert await redis.zcard(keys.limit_waiters("limited", None)) == 0
