"""Notification of instance changes, so clients wait without polling.

Embedded and colocated clients share their worker's :class:`InstanceWatch`; a remote client's
watch is fed from Redis sharded pub/sub by a :class:`ChannelFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hutch.cancelling import cancel_and_wait, cancel_requested
from hutch.store.redis import STORE_ERRORS
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

log = logging.getLogger("hutch.watch")


class InstanceWatch:
    """Workers call :meth:`notify` after committing; waiters wake on the next change."""

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, str], list[asyncio.Future[str | None]]] = {}

    def notify(self, workflow: str, instance_id: str, status: str | None = None) -> None:
        """An instance changed; ``status`` is its newly committed status, when the notifier knows it."""
        for future in self._waiters.pop((workflow, instance_id), ()):
            if not future.done():
                future.set_result(status)

    async def changed(self, workflow: str, instance_id: str, timeout: float) -> str | None:
        """Return on the instance's next change, or after ``timeout`` seconds.

        Returns the status the change was notified with (None if unknown or timed out), so a
        waiter that only cares about some statuses can skip reading the store.
        """
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((workflow, instance_id), []).append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            key = (workflow, instance_id)
            waiters = self._waiters.get(key)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:  # do not keep an empty entry per instance ever waited on
                    del self._waiters[key]


class _Moved(Exception):
    """The server dropped a shard channel we did not leave: its slot moved to another node."""


@dataclass(eq=False)
class _Shard:
    """One pub/sub connection and the channels subscribed through it (a cluster has one per node)."""

    name: str
    client: Redis
    owns_client: bool  # a per-node client of a cluster, closed with the shard
    pubsub: PubSub
    channels: set[str] = field(default_factory=set)  # subscribed, or being subscribed
    confirming: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    leaving: dict[str, int] = field(default_factory=dict)  # SUNSUBSCRIBEs sent, per channel, not yet answered
    reader: asyncio.Task[None] | None = None


class ChannelFeed:
    """Calls ``on_message(data)`` for each message on the Redis sharded pub/sub channels it subscribes to.

    The store's scripts announce instances on per-partition channels (engine.store.announcements,
    ``Keys.finished_channel`` / ``Keys.created_channel``): commits those that reached a final status (a
    remote client's :class:`InstanceWatch` hears of it instead of polling), creates the new ones (their
    partition's owner starts them without waiting for the broker). They are sharded channels
    (``SSUBSCRIBE``): on Redis Cluster a message goes only to the node that holds its partition and
    to the subscribers of that channel, not to every node and every subscriber, so a worker hears
    only of its own partitions (it subscribes as it acquires them and leaves as it releases them).
    A single server (or fakeredis) takes every channel on one connection; a cluster one connection
    per node that holds a subscribed channel, each read by its own task, so a message on one node
    never waits for a read on another.

    :meth:`subscribe` and :meth:`unsubscribe` return at once: a task of the feed applies them (and
    :meth:`settled` waits for it), so a worker acquiring or releasing a partition never waits for a
    slow or unreachable Redis here. Pub/sub delivers at most once, so a feed only ever saves
    latency: what it misses still happens by the slower path (a poll, a start message). A connection
    that fails beyond its retries, or a channel whose slot moved to another node, is subscribed
    again (on the node that now holds it), every ``retry_s`` until that works.

    Args:
        redis: the store's client: a ``Redis`` (or fakeredis) or a ``RedisCluster``.
        on_message: called with each message's data, in the reading task (keep it short).
        retry_s: the pause after a failed attempt to subscribe.
        confirm_timeout_s: how long an attempt waits for the server to confirm a subscription.
        close_timeout_s: how long :meth:`close` waits for the feed's tasks and connections to end.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        on_message: Callable[[bytes], object],
        *,
        retry_s: float = 1.0,
        confirm_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._on_message = on_message
        self._retry_s = retry_s
        self._confirm_timeout_s = confirm_timeout_s
        self._close_timeout_s = close_timeout_s
        self._cluster = isinstance(redis, RedisCluster)
        self._wanted: set[str] = set()
        self._shards: dict[str, _Shard] = {}
        self._changed = asyncio.Event()  # the wanted channels changed, or a shard was lost: apply
        self._settling: list[asyncio.Future[BaseException | None]] = []  # settled() callers, for the next pass
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._refresh = False  # a cluster's layout may have changed: ask for it before the next attempt
        self._closed = False

    @property
    def channels(self) -> frozenset[str]:
        """The channels this feed is subscribed to, or subscribing to."""
        return frozenset(self._wanted)

    def hears(self, channel: str) -> bool:
        """Whether the server confirmed the subscription to ``channel`` on a connection that has not failed since.

        What is published on it from now on reaches the feed (unless that connection fails later).
        """
        return channel in self._wanted and any(
            channel in shard.channels and channel not in shard.confirming for shard in self._shards.values()
        )

    async def start(self, channels: Iterable[str] = ()) -> None:
        """Subscribe to ``channels``; returns once the server confirmed (nothing published later is missed).

        Raises:
            the error that kept a channel from being subscribed (the feed is then closed).
        """
        self.subscribe(channels)
        error = await self.settled()
        if error is not None:
            await self.close()
            raise error

    def subscribe(self, channels: Iterable[str]) -> None:
        """Also hear ``channels`` (applied in the background: see :meth:`settled`)."""
        new = set(channels) - self._wanted
        if new and not self._closed:  # a worker's partitions may still change while it shuts down
            self._wanted |= new
            self._kick()

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop hearing ``channels``: their messages are dropped from now on, the server told in the background."""
        gone = set(channels) & self._wanted
        if gone:
            self._wanted -= gone
            self._kick()

    async def settled(self) -> BaseException | None:
        """Wait until the changes made so far are applied.

        Returns None when every channel is subscribed (confirmed by the server), else the error of
        the attempt (the feed keeps trying every ``retry_s``).
        """
        if self._closed:
            return None
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._settling.append(done)
        self._kick()
        return await done

    async def close(self) -> None:
        """Unsubscribe from everything and close the feed's connections.

        Waits up to ``close_timeout_s`` for that: a task of the feed whose cancellation a library
        swallowed, or a connection whose teardown never ends, is left behind (logged) rather than
        holding up the caller's shutdown for good.
        """
        self._closed = True
        self._wanted.clear()
        deadline = asyncio.get_running_loop().time() + self._close_timeout_s
        if self._task is not None:
            await cancel_and_wait(self._task, self._close_timeout_s)
        for shard in list(self._shards.values()):
            self._drop(shard)
        for done in self._settling:
            if not done.done():
                done.set_result(None)
        self._settling.clear()
        while self._closing:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.warning(
                    "the pub/sub feed left %d connection(s) closing after %.1f s",
                    len(self._closing),
                    self._close_timeout_s,
                )
                return
            await asyncio.wait(self._closing, timeout=remaining)

    # ------------------------------------------------------------------ internals
    def _kick(self) -> None:
        self._changed.set()
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hutch-feed")

    async def _run(self) -> None:
        """Apply the changes, a pass at a time; after a failed pass, wait ``retry_s`` and try again."""
        while True:
            await self._changed.wait()
            if cancel_requested():  # by close(), the CancelledError swallowed on the way (see hutch.cancelling)
                raise asyncio.CancelledError
            self._changed.clear()
            settling, self._settling = self._settling, []
            error: BaseException | None = None
            try:
                error = await self._pass()
            except Exception as exc:  # a bug: keep the feed alive, and say so
                log.exception("the pub/sub feed failed to apply its subscriptions")
                error = exc
            finally:  # also when close() cancels the pass: no settled() caller waits forever
                for done in settling:
                    if not done.done():
                        done.set_result(error)
            if error is not None:
                self._changed.set()
                await asyncio.sleep(self._retry_s)

    async def _pass(self) -> BaseException | None:
        """Leave what is no longer wanted, subscribe to what is wanted and not subscribed; the first error."""
        error: BaseException | None = None
        for shard in list(self._shards.values()):
            gone = shard.channels - self._wanted
            if not gone:
                continue
            shard.channels -= gone
            if not shard.channels:
                self._drop(shard)  # its last channel: close the connection rather than keep an idle one
                continue
            for channel in gone:
                shard.leaving[channel] = shard.leaving.get(channel, 0) + 1
            try:
                for batch in self._batches(gone):
                    await shard.pubsub.sunsubscribe(*batch)
            except Exception as exc:  # the connection is gone: its other channels are subscribed again
                self._lost(shard, exc)
                error = error or exc
        subscribed = {channel for shard in self._shards.values() for channel in shard.channels}
        joining = self._wanted - subscribed
        if joining:
            error = await self._attach(joining) or error
        return error

    async def _attach(self, channels: set[str]) -> BaseException | None:
        """SSUBSCRIBE ``channels`` on the connections that hear them and await the confirmations."""
        try:
            groups = await self._group(channels)
        except Exception as exc:  # no node for a slot right now (a failover under way...)
            self._refresh = True
            return exc
        error: BaseException | None = None
        waits: list[tuple[_Shard, asyncio.Future[None]]] = []
        loop = asyncio.get_running_loop()
        for name, mine in groups.items():
            shard = self._shards.get(name) or self._open(name)
            for channel in mine:
                confirmation = shard.confirming[channel] = loop.create_future()
                waits.append((shard, confirmation))
            shard.channels |= mine
            try:
                for batch in self._batches(mine):
                    await shard.pubsub.ssubscribe(*batch)
            except Exception as exc:
                self._lost(shard, exc)
                error = error or exc
                continue
            if shard.reader is None:  # after the first SSUBSCRIBE: listen() ends at once while nothing is subscribed
                shard.reader = loop.create_task(self._read(shard), name=f"hutch-feed-{shard.name or 'redis'}")
        for shard, confirmation in waits:
            try:
                async with asyncio.timeout(self._confirm_timeout_s):
                    await asyncio.shield(confirmation)
            except Exception as exc:  # the reader failed (and dropped the shard), or no answer in time
                self._lost(shard, exc)
                error = error or exc
        return error

    async def _group(self, channels: set[str]) -> dict[str, set[str]]:
        """The channels by the connection that hears them: one for a single server, the node's on a cluster."""
        if not isinstance(self._redis, RedisCluster):
            return {"": channels}
        if self._refresh:  # a moved slot or a failed node: learn the cluster's current layout first
            self._refresh = False
            await self._redis.nodes_manager.initialize()
        else:
            await self._redis.initialize()  # a no-op once the client knows the cluster
        groups: dict[str, set[str]] = {}
        for channel in channels:
            node = self._redis.get_node_from_key(channel)
            if node is None:
                raise RuntimeError(f"no Redis Cluster node holds the slot of {channel!r}")
            groups.setdefault(node.name, set()).add(channel)
        return groups

    def _batches(self, channels: set[str]) -> list[list[str]]:
        """SSUBSCRIBE/SUNSUBSCRIBE arguments: all at once on a single server, one channel per command on a cluster.

        A cluster refuses a command whose channels are in different slots (every partition has its own).
        """
        ordered = sorted(channels)
        return [[c] for c in ordered] if self._cluster else [ordered]

    def _open(self, name: str) -> _Shard:
        """A shard for the connection ``name`` (``""``: the single server's; else a cluster node's)."""
        if not isinstance(self._redis, RedisCluster):
            shard = _Shard(name, self._redis, False, self._redis.pubsub())
        else:
            node = self._redis.get_node(node_name=name)
            assert node is not None
            # A connection of its own to the node (its address, credentials and socket options), in
            # a pool of one: the cluster client's node connections serve its commands and never
            # retry by themselves (the cluster client does), while a subscriber's connection must
            # reconnect and subscribe again by itself, as the single server's does.
            pool = ConnectionPool(
                connection_class=node.connection_class,
                max_connections=1,
                **{**node.connection_kwargs, "retry": Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=8)},
            )
            client = Redis.from_pool(pool)
            shard = _Shard(name, client, True, client.pubsub())
        self._shards[name] = shard
        return shard

    async def _read(self, shard: _Shard) -> None:
        """Deliver the shard's messages until it is dropped; a failure hands its channels back to the feed."""
        try:
            async for message in shard.pubsub.listen():
                self._handle(shard, message)
            if shard.channels:  # listen() ends only when nothing is subscribed
                raise _Moved(f"the subscription to {sorted(shard.channels)} ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(shard, exc)

    def _handle(self, shard: _Shard, message: dict[str, Any]) -> None:
        """Act on one message of the shard's connection: deliver it, or note a (un)subscribe confirmation.

        Raises:
            _Moved: the server unsubscribed a channel the shard still holds (its slot moved).
        """
        kind, channel = message["type"], _text(message["channel"])
        if kind == "smessage":
            self._deliver(shard, channel, message["data"])
        elif kind == "ssubscribe":
            confirmation = shard.confirming.pop(channel, None)
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(None)
        elif kind == "sunsubscribe":
            self._unsubscribed(shard, channel)

    def _deliver(self, shard: _Shard, channel: str, data: Any) -> None:
        """Hand a message to the feed's callback if its channel is still wanted; a failing callback is logged."""
        if channel in shard.channels and channel in self._wanted:
            try:
                self._on_message(data)
            except Exception:
                log.exception("a message on %s could not be handled: %r", channel, data[:200])

    def _unsubscribed(self, shard: _Shard, channel: str) -> None:
        """Count an SUNSUBSCRIBE confirmation against the ones this feed asked for.

        Raises:
            _Moved: the feed asked for none and the shard still holds the channel, so the server
                dropped it on its own: its slot moved.
        """
        sent = shard.leaving.pop(channel, 0)
        if sent > 1:
            shard.leaving[channel] = sent - 1
        if not sent and channel in shard.channels:
            raise _Moved(f"the server unsubscribed {channel!r}: its slot moved")

    def _lost(self, shard: _Shard, error: BaseException) -> None:
        """The shard's connection failed (or a channel moved): drop it; the next pass subscribes its channels again."""
        if self._shards.get(shard.name) is not shard:
            return  # already dropped
        channels = shard.channels & self._wanted
        where = shard.name or "Redis"
        if isinstance(error, (_Moved, *STORE_ERRORS)):
            log.warning(
                "lost the subscription to %d channel(s) on %s (%s); re-subscribing", len(channels), where, error
            )
        else:
            log.warning(
                "lost the subscription to %d channel(s) on %s; re-subscribing", len(channels), where, exc_info=error
            )
        self._drop(shard, error)
        self._refresh = self._cluster
        if channels:
            self._kick()

    def _drop(self, shard: _Shard, error: BaseException | None = None) -> None:
        """Forget the shard now; its reader and connection are closed in the background."""
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        for confirmation in shard.confirming.values():
            if not confirmation.done():
                confirmation.set_exception(error or ConnectionError("the subscription was closed"))
                confirmation.exception()  # retrieved: nobody else may be waiting for it
        shard.confirming.clear()
        task = asyncio.get_running_loop().create_task(self._close_shard(shard), name="hutch-feed-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_shard(self, shard: _Shard) -> None:
        if shard.reader is not None:
            await cancel_and_wait(shard.reader, self._close_timeout_s)
        with contextlib.suppress(Exception):
            await shard.pubsub.aclose()
        if shard.owns_client:
            with contextlib.suppress(Exception):
                await shard.client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
