"""Change notification: the in-process watch, and the Redis feed remote clients wait on."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

import engine
from consumers.runtime import start_distributed
from engine import Settings, WorkflowEntrypoint
from engine.clock import Clock
from engine.config import DEFAULT_LIMITS
from engine.store.announcements import finished_member
from engine.watch import ChannelFeed, InstanceWatch
from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.helpers import unique, wait_status


async def test_a_timed_out_wait_leaves_no_entry_behind() -> None:
    watch = InstanceWatch()
    assert await watch.changed("wf", "i-1", timeout=0.001) is None
    assert watch._waiters == {}


async def test_notify_wakes_the_waiter_with_the_status() -> None:
    watch = InstanceWatch()
    waiter = asyncio.ensure_future(watch.changed("wf", "i-1", timeout=5))
    await asyncio.sleep(0)  # let the waiter register
    watch.notify("wf", "i-1", "complete")
    assert await waiter == "complete"
    assert watch._waiters == {}


class WaitForGo(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.wait_for_event("go", "go")
        return await step.do("after", lambda: "done")


@pytest.mark.redis
async def test_the_feed_wakes_a_waiter_when_a_commit_announces_a_finish(redis_url: str) -> None:
    # The feed against the real Redis, fed by hand: what commit.lua publishes is an instance member.
    redis = Redis.from_url(redis_url)
    watch = InstanceWatch()
    channel = f"{unique('test')}:finished"
    feed = ChannelFeed(redis, channel, lambda data: watch.notify(*finished_member(data)))
    await feed.start()
    try:
        waiter = asyncio.ensure_future(watch.changed("wait", "i-1", timeout=60))
        await asyncio.sleep(0)
        assert await redis.publish(channel, "wait:i-1") == 1  # the feed is subscribed once started
        assert await asyncio.wait_for(waiter, timeout=10) is None  # woken (a timeout would also be None,
        assert watch._waiters == {}  # but only after 60 s: wait_for would have raised first)
    finally:
        await feed.close()
        await redis.aclose()


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_remote_client_hears_that_an_instance_finished(redis_url: str, amqp_url: str) -> None:
    # A worker (with its colocated client) and, in the same namespace, a client with no worker: the
    # remote client learns of the finish from the commit's announcement, not by polling.
    namespace = unique("test")
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=4)
    local, worker = await start_distributed(
        {"wait": WaitForGo}, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
    )
    try:
        async with engine.connect({"wait": WaitForGo}, settings=settings) as remote:
            assert remote.runtime_worker is None and remote._watch is not None
            instance = await remote.workflow("wait").create()
            await wait_status(instance, "waiting")
            woken = asyncio.ensure_future(remote._watch.changed("wait", instance.id, timeout=60))
            await asyncio.sleep(0)
            await instance.send_event("go")
            await asyncio.wait_for(woken, timeout=10)  # a 60 s poll would have raised here
            assert (await instance.status()).output == "done"
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()  # type: ignore[attr-defined]
        await local.close()
        await drop_namespace(namespace)
