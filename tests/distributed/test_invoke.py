"""``step.invoke`` across worker processes: parent and child on partitions of different workers.

Real ``hutch worker`` processes on the real Redis and RabbitMQ. Killing the worker that holds the
parent while its child runs loses nothing: the child's end reaches the parent's partition (now
another worker's) as a message, and the parent takes the child's output exactly once. A failing
child raises ``ChildWorkflowError`` in the parent, and terminating the parent terminates the child
on the other worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hutch
import pytest
from hutch import Client, Settings
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.invoke_workflows import InvokeChild, InvokeParent
from tests.distributed.procs import WorkerProcess
from tests.distributed.workflows import counter_key
from tests.helpers import eventually, ids_per_partition, unique, wait_status

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

PARTITIONS = 8
WORKFLOWS = {
    "invparent": "tests.distributed.invoke_workflows:InvokeParent",
    "invchild": "tests.distributed.invoke_workflows:InvokeChild",
}


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("invoke")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[Client]:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=PARTITIONS)
    async with hutch.connect({"invparent": InvokeParent, "invchild": InvokeChild}, settings=settings) as client:
        yield client


@pytest.fixture
async def workers(namespace: str) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    a, b = WorkerProcess(namespace, WORKFLOWS, partitions=PARTITIONS), WorkerProcess(namespace, WORKFLOWS)
    try:
        await a.start()
        await b.start()

        loop = asyncio.get_running_loop()
        seen: dict[str, float] = {}

        async def settled() -> bool:
            # Shared, and unchanged for a few heartbeats: a handover moves partitions one at a time,
            # and the ids below must land on the worker that keeps their partition.
            owned = [a.partitions() or [], b.partitions() or []]
            if sorted(p for ps in owned for p in ps) != list(range(PARTITIONS)) or not all(owned):
                seen.clear()
                return False
            since = seen.setdefault(repr(owned), loop.time())
            if len(seen) > 1:
                seen.clear()
            return loop.time() - since > 2.0

        await eventually(settled, timeout=20, interval=0.1)
        yield a, b
    finally:
        await a.close()
        await b.close()


def _ids_on(parent_worker: WorkerProcess, child_worker: WorkerProcess) -> tuple[list[str], list[str]]:
    """Fresh parent ids in the first worker's partitions and child ids in the second's."""
    parents = ids_per_partition("invparent", PARTITIONS, 2, prefix="par")
    children = ids_per_partition("invchild", PARTITIONS, 2, prefix="kid")
    return (
        [iid for p in parent_worker.partitions() or [] for iid in parents[p]],
        [iid for p in child_worker.partitions() or [] for iid in children[p]],
    )


async def _count(redis: Redis, namespace: str, kind: str, iid: str, step: str) -> int:
    return int(await redis.get(counter_key(kind, iid, step, namespace)) or 0)


async def test_killing_the_parents_worker_while_the_child_runs_delivers_the_output_exactly_once(
    namespace: str, client: Client, workers: tuple[WorkerProcess, WorkerProcess]
) -> None:
    a, b = workers
    parents, children = _ids_on(a, b)
    parent_id, child_id = parents[0], children[0]
    redis = Redis.from_url(REDIS_URL)
    try:
        parent = await client.workflow("invparent").create(
            id=parent_id, params={"child_id": child_id, "child": {"seconds": 3.0}}
        )

        async def child_running() -> bool:
            return await _count(redis, namespace, "attempts", child_id, "work") >= 1

        await eventually(child_running, timeout=15)
        assert (await parent.status()).status == "waiting"  # waiting on the child, evicted on A
        a.kill()
        assert await a.wait(timeout=10) == -9

        final = await parent.wait(timeout=60)
        assert final.status == "complete", final
        assert final.output == {"child": child_id, "did": "work"}
        # The parent took the output once: one resolution of the invoke, and the step after it ran once.
        history = await client._store.history(parent._partition, "invparent", parent_id)
        resolutions = [r for r in history if r["k"] == "res" and r["ref"] == "invoke"]
        assert len(resolutions) == 1
        assert await _count(redis, namespace, "attempts", parent_id, "received") == 1
        assert await _count(redis, namespace, "effects", parent_id, "received") == 1
        # One child, whose step ran once on B, untouched by the kill.
        assert (await client.workflow("invchild").list()).instances == [child_id]
        assert await _count(redis, namespace, "attempts", child_id, "work") == 1
        child = await client.workflow("invchild").get(child_id)
        detail = await child.describe()
        assert detail.parent is not None and detail.parent.instance_id == parent_id
        assert b.partitions() == list(range(PARTITIONS))  # B took A's partitions, the parent's among them
    finally:
        await redis.aclose()


async def test_a_failing_child_and_a_terminated_parent_across_two_workers(
    namespace: str, client: Client, workers: tuple[WorkerProcess, WorkerProcess]
) -> None:
    a, b = workers
    parents, children = _ids_on(a, b)
    failing = await client.workflow("invparent").create(
        id=parents[0], params={"child_id": children[0], "child": {"fail": True}}
    )
    final = await failing.wait(timeout=30)
    assert final.status == "complete", final
    assert final.output == {"error": [children[0], "ValueError", "the child failed"]}

    waiting = await client.workflow("invparent").create(
        id=parents[1], params={"child_id": children[1], "child": {"wait": True}}
    )
    child = await client.workflow("invchild").get(await eventually(lambda: _created(client, children[1]), timeout=15))
    await wait_status(child, "waiting", timeout=15)
    assert (await waiting.terminate()).applied
    await wait_status(child, "terminated", timeout=15)


async def _created(client: Client, child_id: str) -> str | None:
    try:
        await client.workflow("invchild").get(child_id)
    except KeyError:
        return None
    return child_id
