"""A Redis outage must not use up the delivery limit that exists for poison messages.

While the store is unreachable no delivery can be processed; if the worker handed each one back
(a nack counts toward the quorum queue's ``x-delivery-limit`` of 20), an outage of 20 retry cycles
would dead-letter every message that arrived meanwhile and leave its instance waiting forever.
The worker here runs on a private Redis that the test shuts down and restarts with its data, and
on the shared RabbitMQ in a namespace of its own.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hutch import Client, Settings, WorkflowEntrypoint
from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers.colocated import start_colocated
from hutch.consumers.worker import Worker
from hutch.serialization import pack
from hutch.store.redis import STORE_ERRORS, RedisStore
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.conftest import IN_CI
from tests.helpers import eventually, unique, wait_status
from tests.private_servers import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq]

INSTANCES = 8  # fewer than a turn's max_instances: every retry cycle handles every event at once
OUTAGE_CYCLES = 25  # more than the partition queues' delivery limit of 20


class AwaitsEvent(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        received = await step.wait_for_event("go", "go", timeout="1 hour")
        return received.payload


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI must run the real-server tests)")
        pytest.skip("redis-server is not installed")
    async with PrivateRedis() as server:
        yield server


def _store(settings: Settings) -> RedisStore:
    # One immediate retry per command instead of the deployment's ~3.5 s of backoff: a refused
    # attempt then fails within milliseconds, so many retry cycles fit in a few seconds.
    redis = Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, OSError],
    )
    return RedisStore(redis, settings.partitions, namespace=settings.namespace, announce_created=True)


@pytest.fixture
async def running(
    private_redis: PrivateRedis, amqp_url: str
) -> AsyncIterator[tuple[Client, Worker, RabbitMQTransport]]:
    settings = Settings(
        redis_url=private_redis.url,
        amqp_url=amqp_url,
        namespace=unique("outage"),
        partitions=4,
        heartbeat_s=0.2,
    )
    transport = RabbitMQTransport.from_settings(settings)
    await transport.start()
    try:
        client, worker = await start_colocated(
            _store(settings),
            transport,
            {"awaits": AwaitsEvent},
            settings=settings,
            limits=DEFAULT_LIMITS,
            clock=Clock(),
            resources={},
            binding_names={},
            distributed=True,
        )
        try:
            yield client, worker, transport
        finally:
            if private_redis.proc is None or private_redis.proc.returncode is not None:
                await private_redis.start()  # a test that failed mid-outage: let the worker stop cleanly
            await client.close()  # shuts the worker down, closes the transport and the store
    finally:
        # A transport of its own: the worker's is closed by now, or was when the start failed.
        cleaner = RabbitMQTransport.from_settings(settings)
        await cleaner.start()
        try:
            await cleaner.delete_topology()
        finally:
            await cleaner.close()


async def test_events_survive_a_store_outage_longer_than_the_delivery_limit(
    running: tuple[Client, Worker, RabbitMQTransport], private_redis: PrivateRedis
) -> None:
    client, worker, transport = running
    orchestrator = worker.orchestrator
    orchestrator._retry_max_s = orchestrator._retry_s  # retry cycles of 0.2 s, not up to 1 s
    instances = await client.workflow("awaits").create_batch([{"params": {}} for _ in range(INSTANCES)])
    for instance in instances:
        await wait_status(instance, "waiting")

    # Count the turns that failed because the store was unreachable: each one is a retry cycle
    # (and, were the deliveries handed back, one more delivery of every event toward the limit).
    failed_turns = 0
    process = orchestrator.process

    async def counting(batch: Any) -> None:
        nonlocal failed_turns
        try:
            await process(batch)
        except STORE_ERRORS:
            failed_turns += 1
            raise

    orchestrator.process = counting  # type: ignore[method-assign]

    await private_redis.stop()
    # Sent while Redis is down (a client's send_event reads the instance first; this is what it then publishes).
    dispatcher = BrokerDispatcher(transport)
    for instance in instances:
        await dispatcher.event("awaits", instance.id, "go", pack(f"for {instance.id}"), 0)

    async def outage_outlasted_the_delivery_limit() -> bool:
        dead = await transport.dead_letters()
        if dead:
            pytest.fail(f"{len(dead)} event(s) dead-lettered during the outage: {dead[0].reason}")
        return failed_turns >= OUTAGE_CYCLES

    await eventually(outage_outlasted_the_delivery_limit, timeout=60, interval=0.1)
    await private_redis.start()

    for instance in instances:
        final = await instance.wait(timeout=30)
        assert (final.status, final.output) == ("complete", f"for {instance.id}"), (instance.id, final)
    assert await transport.dead_letters() == []

    # The creation-notice feed subscribed again, and the worker takes new work as before.
    store = worker.store

    async def feed_resubscribed() -> bool:
        channels = [store.keys.created_channel(p) for p in worker.partitions]
        counts = await store.redis.pubsub_shardnumsub(*channels)
        return bool(channels) and all(int(n) >= 1 for _, n in counts)

    await eventually(feed_resubscribed, timeout=10)
    later = await client.workflow("awaits").create(params={})
    await wait_status(later, "waiting")
    await later.send_event("go", "after")
    assert (await later.wait(timeout=10)).output == "after"
