"""Change notification: the in-process watch, and the Redis feed remote clients wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import hutch
import pytest
from hutch import Settings, WorkflowEntrypoint
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers.runtime import open_redis, start_distributed
from hutch.keys import Keys
from hutch.store.announcements import finished_member
from hutch.watch import ChannelFeed, InstanceWatch
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.helpers import eventually, unique, wait_status


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
    channel = Keys(unique("test")).finished_channel(3)
    feed = ChannelFeed(redis, lambda data: watch.notify(*finished_member(data)))
    await feed.start([channel])
    try:
        waiter = asyncio.ensure_future(watch.changed("wait", "i-1", timeout=60))
        await asyncio.sleep(0)
        assert await redis.spublish(channel, "wait:i-1") == 1  # the feed is subscribed once started
        assert await asyncio.wait_for(waiter, timeout=10) is None  # woken (a timeout would also be None,
        assert watch._waiters == {}  # but only after 60 s: wait_for would have raised first)
    finally:
        await feed.close()
        await redis.aclose()


@pytest.fixture(
    params=[pytest.param("real", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
def feed_redis_url(request: pytest.FixtureRequest) -> str:
    """The shared Redis, or the session's private Redis Cluster (a connection per node there)."""
    return str(request.getfixturevalue("redis_url" if request.param == "real" else "redis_cluster_url"))


async def test_the_feed_hears_exactly_the_channels_it_is_subscribed_to(feed_redis_url: str) -> None:
    keys = Keys(unique("test"))
    redis = open_redis(feed_redis_url)
    heard: list[bytes] = []
    feed = ChannelFeed(redis, heard.append)

    def heard_exactly(expected: list[bytes]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return sorted(heard) == sorted(expected)

        return check

    channels = [keys.created_channel(p) for p in range(8)]  # on every node of a 3-node cluster
    try:
        await feed.start(channels[:4])
        assert [feed.hears(c) for c in channels] == [True] * 4 + [False] * 4  # confirmed, and not asked for
        feed.subscribe(channels[4:])  # applied in the background
        assert feed.channels == set(channels)
        assert await feed.settled() is None
        assert all(feed.hears(c) for c in channels)
        for n, channel in enumerate(channels):
            assert await redis.spublish(channel, f"m{n}") == 1  # confirmed: each has its one subscriber
        await eventually(heard_exactly([f"m{n}".encode() for n in range(8)]))

        feed.unsubscribe(channels[::2])
        assert feed.channels == set(channels[1::2])
        assert [feed.hears(c) for c in channels] == [False, True] * 4

        async def left() -> bool:
            return [await redis.spublish(channel, "after") for channel in channels[::2]] == [0, 0, 0, 0]

        await eventually(left)
        heard.clear()
        for channel in channels:
            await redis.spublish(channel, channel)
        await eventually(heard_exactly([c.encode() for c in channels[1::2]]))
        heard.clear()
        feed.subscribe(channels[:1])  # again, after leaving it
        assert await feed.settled() is None
        assert await redis.spublish(channels[0], "back") == 1
        await eventually(heard_exactly([b"back"]))
    finally:
        await feed.close()
    assert not any(feed.hears(c) for c in channels)
    assert [await redis.spublish(channel, "closed") for channel in channels] == [0] * 8
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
        async with hutch.connect({"wait": WaitForGo}, settings=settings) as remote:
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
        await worker.transport.delete_topology()
        await local.close()
        await drop_namespace(namespace)


async def _move_empty_slot(redis: Any, slot: int, target: Any) -> None:
    """Give an empty slot to ``target`` (a ClusterNode), as a resharding does once its keys moved."""
    ids = {node.name: _text(await redis.cluster_myid(target_node=node)) for node in redis.get_primaries()}
    source = redis.nodes_manager.slots_cache[slot][0]
    await redis.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.name], target_nodes=target)
    await redis.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.name], target_nodes=source)
    for node in redis.get_primaries():
        await redis.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.name], target_nodes=node)
    await redis.nodes_manager.initialize()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.redis
async def test_a_channel_whose_slot_moved_is_heard_again_on_its_new_node(redis_cluster_url: str) -> None:
    # The node that held the slot unsubscribes the feed from its channel (Redis 7 does so when a slot
    # leaves a node); the feed subscribes again on the node that holds it now.
    redis: Any = open_redis(redis_cluster_url)
    await redis.initialize()
    channel = Keys(unique("test")).created_channel(5)  # no key of this namespace exists: the slot moves as is
    slot = redis.keyslot(channel)
    home = redis.get_node_from_key(channel)
    heard: list[bytes] = []
    feed = ChannelFeed(redis, heard.append, retry_s=0.05)
    await feed.start([channel])
    try:
        await _move_empty_slot(redis, slot, next(n for n in redis.get_primaries() if n.name != home.name))

        async def heard_on_the_new_node() -> bool:
            await redis.spublish(channel, "moved")  # at most once: the first ones may go unheard
            return b"moved" in heard

        await eventually(heard_on_the_new_node, timeout=10, interval=0.05)
        assert feed.channels == {channel}
    finally:
        await feed.close()
        await _move_empty_slot(redis, slot, home)  # leave the session's cluster as it was
        await redis.aclose()


async def test_the_feed_works_on_fakeredis_too() -> None:
    # The embedded runtime's store: its scripts' SPUBLISH reaches an SSUBSCRIBE there as on a server.
    redis = fakeredis.aioredis.FakeRedis()
    heard: list[bytes] = []
    feed = ChannelFeed(redis, heard.append)
    channel = Keys(unique("test")).finished_channel(2)
    try:
        await feed.start([channel])
        assert await redis.eval("return redis.call('SPUBLISH', KEYS[1], 'wf:i-1')", 1, channel) == 1

        async def heard_it() -> bool:
            return heard == [b"wf:i-1"]

        await eventually(heard_it)
    finally:
        await feed.close()
        await redis.aclose()


async def test_closing_the_feed_releases_a_caller_waiting_for_it_to_settle() -> None:
    feed = ChannelFeed(fakeredis.aioredis.FakeRedis(), lambda data: None)
    stuck = asyncio.Event()

    async def never_answers(channels: set[str]) -> BaseException | None:
        await stuck.wait()
        return None

    feed._attach = never_answers  # type: ignore[method-assign]  # a server that never confirms
    feed.subscribe([Keys("t").created_channel(0)])
    waiting = asyncio.ensure_future(feed.settled())
    await asyncio.sleep(0.01)
    await feed.close()
    assert await asyncio.wait_for(waiting, timeout=1) is None
