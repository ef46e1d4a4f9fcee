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

from tests.helpers import eventually

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


def _distributed(server: fakeredis.FakeServer, transport: InProcessTransport) -> Worker:
    return Worker(
        store=RedisStore(fakeredis.aioredis.FakeRedis(server=server), PARTITIONS),
        transport=transport,
        workflows={"one": OneStep},
        settings=Settings(partitions=PARTITIONS, heartbeat_s=0.05, worker_ttl_s=0.3),
        distributed=True,
    )


async def _task(name: str) -> asyncio.Task[Any]:
    async def running() -> asyncio.Task[Any]:
        found = [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]
        assert len(found) == 1, [t.get_name() for t in asyncio.all_tasks()]
        return found[0]

    return await eventually(running, timeout=2)


@pytest.mark.parametrize(
    "name", ["hutch-membership", "hutch-membership-claims", "hutch-orchestrator", "hutch-timers", "hutch-leases"]
)
async def test_an_internal_task_cancelled_while_the_worker_runs_stops_it_loudly(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A stray CancelledError (aiormq fails the RPCs of a closing channel with one) that ends a loop
    # of the worker's, or a cancel() from anywhere: the worker used to go on heartbeating and holding
    # its partitions while that loop was gone, and nobody was told.
    server, transport = fakeredis.FakeServer(), InProcessTransport(PARTITIONS)
    await transport.start()
    worker = _distributed(server, transport)
    await worker.start()
    try:
        assert worker.partitions == list(range(PARTITIONS))
        (await _task(name)).cancel()

        await asyncio.wait_for(worker.wait_stopped(), timeout=5)
        assert any(r.levelname == "ERROR" and "an internal task ended" in r.getMessage() for r in caplog.records)
        assert f"{name} was cancelled" in caplog.text
        # Nothing of it runs any more: no heartbeat keeps its partitions from the other workers.
        internal = {"hutch-worker", "hutch-orchestrator", "hutch-timers", "hutch-membership", "hutch-leases"}
        assert not [t for t in asyncio.all_tasks() if t.get_name() in internal | {name} and not t.done()]
    finally:
        # Nothing left to finish: it releases its partitions at once, not after shutdown_timeout_s.
        await asyncio.wait_for(worker.shutdown(), timeout=5)
    heartbeats = await fakeredis.aioredis.FakeRedis(server=server).zcard(worker.store.keys.workers())
    assert heartbeats == 0


async def test_a_worker_shut_down_reports_no_ended_task(caplog: pytest.LogCaptureFixture) -> None:
    server, transport = fakeredis.FakeServer(), InProcessTransport(PARTITIONS)
    await transport.start()
    worker = _distributed(server, transport)
    await worker.start()
    await worker.shutdown()
    await asyncio.wait_for(worker.wait_stopped(), timeout=2)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
