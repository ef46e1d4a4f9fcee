"""``Worker.start`` / ``shutdown`` / ``wait_stopped`` around their edges (embedded store and transport)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
from hutch import DeploymentMismatch, Limits, WorkflowEntrypoint
from hutch.broker import BrokerDispatcher, InProcessTransport
from hutch.client import Client
from hutch.consumers import Worker
from hutch.events import WorkflowEvent
from hutch.settings import Settings
from hutch.store.redis import RedisStore

PARTITIONS = 4


class OneStep(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return await step.do("one", lambda: 1)


def _worker(server: fakeredis.FakeServer, transport: InProcessTransport) -> Worker:
    return Worker(
        store=RedisStore(fakeredis.aioredis.FakeRedis(server=server), PARTITIONS),
        transport=transport,
        workflows={"one": OneStep},
        settings=Settings(partitions=PARTITIONS),
    )


async def test_shutdown_before_start_stops_the_worker_and_wait_stopped_returns() -> None:
    worker = _worker(fakeredis.FakeServer(), InProcessTransport(PARTITIONS))

    await worker.shutdown()

    await asyncio.wait_for(worker.wait_stopped(), timeout=2)
    with pytest.raises(RuntimeError, match="cannot be started twice"):
        await worker.start()


async def test_a_start_the_deployment_check_refuses_leaves_the_worker_new_so_it_can_start_later() -> None:
    server = fakeredis.FakeServer()
    transport = InProcessTransport(PARTITIONS)
    await transport.start()
    await RedisStore(fakeredis.aioredis.FakeRedis(server=server), 8).check_deployment(Limits())  # 8 partitions
    worker = _worker(server, transport)

    with pytest.raises(DeploymentMismatch, match="holds data for 8 partitions"):
        await worker.start()
    assert worker.partitions == []  # it consumes nothing

    # Once the cause is fixed (here the record is removed), the same worker starts: the refused start
    # left it new, not "running" with nothing started.
    await fakeredis.aioredis.FakeRedis(server=server).delete("hutch:config")
    await worker.start()
    try:
        remote = RedisStore(fakeredis.aioredis.FakeRedis(server=server), PARTITIONS)
        client = Client(remote, BrokerDispatcher(transport))
        instance = await client.workflow("one").create()
        assert (await instance.wait(timeout=10)).output == 1
    finally:
        await worker.shutdown()
    await asyncio.wait_for(worker.wait_stopped(), timeout=2)
