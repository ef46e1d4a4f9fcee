"""Cut the worker's connections to RabbitMQ and Redis mid-run: it recovers by itself, loses nothing
and commits nothing twice. The servers are never touched: an in-test TCP proxy sits in between.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from hutch import Client, Settings
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers.runtime import start_distributed
from redis.asyncio import Redis

from tests.conftest import REDIS_URL, drop_namespace
from tests.distributed.workflows import HoldWorkflow, LedgerWorkflow, close_ledger, counter_key
from tests.helpers import eventually, unique, wait_status
from tests.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq]

STEPS = [name for name, _ in LedgerWorkflow.STEPS]


@pytest.fixture
async def proxied(
    redis_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Client, TCPProxy, TCPProxy, str]]:
    namespace = unique("faults")
    monkeypatch.setenv("HUTCH_NAMESPACE", namespace)  # the step bodies' ledger keys
    amqp_proxy = await TCPProxy("127.0.0.1", 5672).start()
    redis_proxy = await TCPProxy("127.0.0.1", 6379).start()
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        amqp_url=f"amqp://guest:guest@127.0.0.1:{amqp_proxy.port}/",
        namespace=namespace,
        partitions=4,
        heartbeat_s=0.2,
        timer_poll_s=0.3,
    )
    client, worker = await start_distributed(
        {"ledger": LedgerWorkflow, "hold": HoldWorkflow},
        settings=settings,
        limits=DEFAULT_LIMITS,
        clock=Clock(),
        resources={},
        binding_names={},
    )
    try:
        yield client, amqp_proxy, redis_proxy, namespace
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()
        await client.close()
        await close_ledger()
        await amqp_proxy.close()
        await redis_proxy.close()
        await drop_namespace(namespace)


async def _sum(redis: Redis, namespace: str, kind: str, ids: list[str], step: str) -> int:
    values = await redis.mget([counter_key(kind, iid, step, namespace) for iid in ids])
    return sum(int(v or 0) for v in values)


async def test_cut_broker_and_store_connections_mid_run(proxied: tuple[Client, TCPProxy, TCPProxy, str]) -> None:
    client, amqp_proxy, redis_proxy, namespace = proxied
    redis = Redis.from_url(REDIS_URL)
    try:
        instances = await client.workflow("ledger").create_batch([{"params": {}} for _ in range(30)])
        ids = [inst.id for inst in instances]

        async def progressed(step: str, at_least: int) -> bool:
            return await _sum(redis, namespace, "attempts", ids, step) >= at_least

        await eventually(lambda: progressed("long-1", 15), timeout=30)
        assert await amqp_proxy.disconnect_all() > 0
        await eventually(lambda: progressed("quick-2", 10), timeout=30)
        assert await redis_proxy.disconnect_all() > 0
        more = await client.workflow("ledger").create_batch([{"params": {}} for _ in range(10)])
        await eventually(lambda: progressed("long-2", 15), timeout=30)
        assert await amqp_proxy.disconnect_all() + await redis_proxy.disconnect_all() > 0

        for inst in [*instances, *more]:
            final = await inst.wait(timeout=60)
            assert final.status == "complete" and final.output == STEPS, (inst.id, final)

        store = client._store
        for inst in [*instances, *more]:
            history = await store.history(inst._partition, "ledger", inst.id)
            results = Counter(r["n"] for r in history if r["k"] == "res" and r["ok"])
            assert results == dict.fromkeys(STEPS, 1), f"{inst.id}: committed results {results}"
        for step in STEPS:
            assert await _sum(redis, namespace, "effects", [i.id for i in [*instances, *more]], step) == 40
    finally:
        await redis.aclose()


async def test_acks_never_wait_for_a_step_body(proxied: tuple[Client, TCPProxy, TCPProxy, str]) -> None:
    """While a long step runs, no delivery of its partition is left unacknowledged.

    RabbitMQ closes a channel whose delivery stays unacked past its consumer timeout; a step that
    runs for an hour must not hold one. The queue's unacked count comes from rabbitmqctl.
    """
    client, _, _, namespace = proxied
    instance = await client.workflow("hold").create(params={"seconds": 3})
    await wait_status(instance, "running")
    redis = Redis.from_url(REDIS_URL)
    try:

        async def step_started() -> bool:
            return await redis.get(counter_key("attempts", instance.id, "hold", namespace)) == b"1"

        await eventually(step_started, timeout=10)
    finally:
        await redis.aclose()
    listing = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged", "messages_ready"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = [line.split() for line in listing.stdout.splitlines() if line.startswith(f"{namespace}.")]
    assert rows, listing.stdout
    assert (await instance.status()).status == "running"  # the step is still in flight
    assert all(unacked == "0" for _, unacked, _ in rows), rows
    assert (await instance.wait(timeout=30)).status == "complete"
