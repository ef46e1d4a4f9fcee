"""create_or_send across processes: `hutch worker` subprocesses, callers on connections of their own.

Fifty callers race on one new id through five client connections while two worker processes own
the partitions: one instance is created, and it receives all fifty events, each exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import hutch
import pytest
from hutch import Instance, Settings, Status
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.helpers import unique
from tests.test_create_or_send import CALLERS, WORKFLOWS

PARTITIONS = 8
WORKER_WORKFLOWS = {"gather": "tests.test_create_or_send:Gather"}


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("cos")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


async def test_fifty_callers_on_separate_connections_make_one_instance_with_fifty_events(namespace: str) -> None:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=PARTITIONS)
    workers = [WorkerProcess(namespace, WORKER_WORKFLOWS, partitions=PARTITIONS) for _ in range(2)]
    iid = unique("race")
    try:
        for worker in workers:
            await worker.start()
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(hutch.connect(WORKFLOWS, settings=settings)) for _ in range(5)]
            results = await asyncio.gather(
                *(
                    clients[n % len(clients)].workflow("gather").create_or_send(iid, {"expect": CALLERS}, "ping", n)
                    for n in range(CALLERS)
                )
            )
            assert sum(r.created for r in results) == 1
            final = await Instance(clients[0], "gather", iid).wait(timeout=60)
            assert final.status is Status.COMPLETE, final
            assert sorted(final.output) == list(range(CALLERS))  # fifty events, each delivered once
            assert (await clients[0].workflow("gather").list()).instances == [iid]
    finally:
        for worker in workers:
            await worker.close()
