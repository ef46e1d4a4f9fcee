"""A Redis outage longer than ``worker_ttl_s`` must not move partitions, nor re-run steps.

During the outage no worker can heartbeat, so when Redis comes back every other worker's last
heartbeat is older than the TTL. A worker that took that for death claimed every partition for
itself; the others then claimed theirs back, and each move re-ran the steps in flight (their
results, committed by the old holder, were fenced). The workers here run on a private Redis that
the test shuts down and restarts with its data, and on the shared RabbitMQ in a namespace of their own.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hutch import Client, Settings, WorkflowEntrypoint
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers.membership import plan
from hutch.consumers.runtime import start_distributed
from hutch.consumers.worker import Worker

from tests.conftest import IN_CI
from tests.helpers import eventually, ids_per_partition, unique
from tests.private_servers import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq]

PARTITIONS = 6
WORKERS = 3
HEARTBEAT_S = 0.2
TTL_S = 1.0
OUTAGE_S = 3 * TTL_S

runs: dict[str, int] = {}  # instance id → how many times its step started
release = asyncio.Event()  # the steps finish once set (re-created per test: see the fixture)


class Blocks(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def work() -> str:
            runs[event.instance_id] = runs.get(event.instance_id, 0) + 1
            await release.wait()
            return "done"

        return await step.do("work", work)


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI must run the real-server tests)")
        pytest.skip("redis-server is not installed")
    async with PrivateRedis() as server:
        yield server


@pytest.fixture
async def cluster(private_redis: PrivateRedis, amqp_url: str) -> AsyncIterator[tuple[list[Client], list[Worker]]]:
    global release
    release = asyncio.Event()
    runs.clear()
    settings = Settings(
        redis_url=private_redis.url,
        amqp_url=amqp_url,
        namespace=unique("outage-members"),
        partitions=PARTITIONS,
        heartbeat_s=HEARTBEAT_S,
        worker_ttl_s=TTL_S,
        redis_timeout_s=0.5,
        shutdown_timeout_s=2,
    )
    clients: list[Client] = []
    workers: list[Worker] = []
    try:
        for _ in range(WORKERS):
            client, worker = await start_distributed(
                {"blocks": Blocks},
                settings=settings,
                limits=DEFAULT_LIMITS,
                clock=Clock(),
                resources={},
                binding_names={},
            )
            clients.append(client)
            workers.append(worker)
        yield clients, workers
    finally:
        if private_redis.proc is None or private_redis.proc.returncode is not None:
            await private_redis.start()  # a test that failed mid-outage: let the workers stop cleanly
        release.set()
        for client in clients:
            await client.close()  # shuts its worker down, closes its transport and store
        cleaner = RabbitMQTransport.from_settings(settings)
        await cleaner.start()
        try:
            await cleaner.delete_topology()
        finally:
            await cleaner.close()


def _holders(workers: list[Worker]) -> dict[int, tuple[str, str]]:
    """Partition → (the worker holding it, its token), from the workers' own view."""
    out: dict[int, tuple[str, str]] = {}
    for worker in workers:
        assert worker.membership is not None
        for p, token in worker.membership.held.items():
            assert p not in out, f"partition {p} held by {out[p][0]} and {worker.worker_id}"
            out[p] = (worker.worker_id, token)
    return out


async def test_an_outage_longer_than_the_ttl_moves_no_partition_and_reruns_no_step(
    cluster: tuple[list[Client], list[Worker]], private_redis: PrivateRedis
) -> None:
    clients, workers = cluster

    async def settled() -> dict[int, tuple[str, str]]:
        held = _holders(workers)
        planned = plan(frozenset(w.worker_id for w in workers), PARTITIONS).owner
        assert {p: w for p, (w, _) in held.items()} == planned, held
        return held

    before = await eventually(settled, timeout=20, interval=0.05)
    # A step in flight on every partition across the outage.
    ids = [found[0] for found in ids_per_partition("blocks", PARTITIONS, 1).values()]
    instances = [await clients[0].workflow("blocks").create(id=i) for i in ids]

    async def all_running() -> bool:
        return all(runs.get(i) == 1 for i in ids)

    await eventually(all_running, timeout=20)
    assert _holders(workers) == before

    # Every change of hands from here on is a move the outage caused.
    moves: list[tuple[str, Any]] = []
    for worker in workers:
        assert worker.membership is not None
        adopt, drop = worker.adopt, worker.drop

        async def adopted(tokens: dict[int, str], adopt: Any = adopt, me: str = worker.worker_id) -> None:
            moves.append((me, ("adopt", sorted(tokens))))
            await adopt(tokens)

        async def dropped(partition: int, drop: Any = drop, me: str = worker.worker_id) -> None:
            moves.append((me, ("drop", partition)))
            await drop(partition)

        worker.adopt = adopted  # type: ignore[method-assign]
        worker.drop = dropped  # type: ignore[method-assign]

    await private_redis.stop()
    await asyncio.sleep(OUTAGE_S)  # the outage itself: what is under test is its length
    await private_redis.start()

    # Every worker heartbeats again and has reconciled more than a TTL after the outage.
    async def all_back() -> bool:
        redis = workers[0].store.redis
        beats = await redis.zrange(workers[0].store.keys.workers(), 0, -1, withscores=True)
        now = Clock().now_ms()
        return len([b for b in beats if now - int(b[1]) < 2 * HEARTBEAT_S * 1000]) == WORKERS

    await eventually(all_back, timeout=20, interval=0.05)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * TTL_S
    while loop.time() < deadline:  # watch for moves for a while: there must be none
        assert not moves, moves
        await asyncio.sleep(HEARTBEAT_S / 2)
    assert not moves, moves
    assert _holders(workers) == before

    release.set()
    for instance in instances:
        final = await instance.wait(timeout=30)
        assert (final.status, final.output) == ("complete", "done"), (instance.id, final)
    assert runs == dict.fromkeys(ids, 1)  # no step ran twice
