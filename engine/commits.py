"""Every commit of the instances a remote client follows live, announced by the store as it happens.

A remote client (``hutch gateway``) hears only of final statuses (:mod:`hutch.watch`): enough to
wait for an instance, not to show one live. To follow an instance, a :class:`CommitFeed` marks it
in its partition's watched set (:meth:`Keys.watched <hutch.keys.Keys.watched>`) and subscribes to
the partition's changed channel; from then on every commit of that instance publishes its new
``seq`` there (commit.lua), and the follower reads the instance once per change, nothing while it
is idle. An instance nobody follows is announced nowhere: the commit script finds its partition's
watched set absent (one ``EXISTS`` in the script per partition and call, no round trip) and
publishes nothing, so the per-step path costs what it did.

Marks lapse rather than being removed. A mark is a member of the watched set scored with the
epoch ms it lapses at, ``mark_ttl_s`` after its last refresh; the set expires ``mark_ttl_s``
after the last refresh of any mark in it. Each follower refreshes its mark when it checks the
instance (:meth:`Following.check`, the safety re-read, every few tens of seconds), and drops the
lapsed marks of the partition on the way. So a gateway that dies leaves marks behind for at most
``mark_ttl_s``, and several gateways following one instance keep it marked as long as one of them
does: a refresh never shortens a mark (``ZADD GT``), and one that stops following leaves the mark
to lapse instead of removing it from under the others. Marks are scored on the followers' clocks:
their skew must stay well under ``mark_ttl_s`` minus the check interval.

Pub/sub delivers at most once (a dropped connection loses what was published until the feed is
subscribed again), so a follower still checks the instance now and then; a mark lost with Redis is
made again by that check. Each check also says whether every commit after it will be announced
(:attr:`Following.heard`): the partition's channel is heard (its subscription confirmed, and not
lost since) and every live worker announces (:data:`ANNOUNCES_CHANGES`: a worker of an earlier
version, during a rolling deploy, commits without announcing). While it is not, a follower should
check often, as it would without announcements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from hutch.keys import instance_member
from hutch.store.redis import RedisStore, Watched
from hutch.watch import ChannelFeed

log = logging.getLogger("hutch.commits")

MARK_TTL_S = 120.0
"""How long a follower's mark lasts after its last refresh: a few check intervals (30 s by default)."""

ANNOUNCES_CHANGES = "changed"
"""The worker feature (``Keys.worker_feature``) of announcing every commit of a watched instance (commit.lua)."""

SETTLE_S = 2.0
"""How long :meth:`CommitFeed.follow` waits for the subscription before its first check (it goes on regardless)."""


@dataclass(eq=False)
class Following:
    """One follower of one instance: the commits announced since it last looked (:meth:`CommitFeed.follow`)."""

    _feed: CommitFeed
    partition: int
    workflow: str
    instance_id: str
    seq: int | None = None
    """The highest ``seq`` announced or checked so far (None before the first)."""
    heard: bool = False
    """Whether, at the last check, the channel was heard and every live worker announced: every later commit is."""
    _announced: asyncio.Event = field(default_factory=asyncio.Event)

    async def changed(self, timeout: float) -> bool:
        """Wait for a commit announced after the previous call; False after ``timeout`` seconds without one.

        A commit announced while the caller was busy (reading the instance) is not missed: it is
        returned by the next call at once.
        """
        if not self._announced.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._announced.wait()
        announced = self._announced.is_set()
        self._announced.clear()
        return announced

    async def check(self) -> int | None:
        """Refresh this follower's mark and read the instance's ``seq``, in one round trip (None: no such instance).

        The safety net under the announcements (a lost message, a mark lost with Redis). Notes
        whether every commit after the read is announced (:attr:`heard`): the channel was heard
        before the read, and every live worker announces.
        """
        hears = self._feed._hears(self.partition)
        watched = await self._feed._check(self)
        self.heard = hears and watched.every_worker
        if watched.seq is not None and (self.seq is None or watched.seq > self.seq):
            self.seq = watched.seq
        return watched.seq

    def _announce(self, seq: int) -> None:
        if self.seq is None or seq > self.seq:
            self.seq = seq
            self._announced.set()


class CommitFeed:
    """Follows instances' commits for a remote client; see the module docstring.

    Args:
        store: the client's store.
        mark_ttl_s: how long a mark lasts after its last refresh; a follower must check its
            instance more often than that.
        settle_s: how long :meth:`follow` waits for the subscription before its first check.
        feed: makes the pub/sub feed (opened on the first follower, closed with this).
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        mark_ttl_s: float = MARK_TTL_S,
        settle_s: float = SETTLE_S,
        feed: Callable[..., ChannelFeed] = ChannelFeed,
    ) -> None:
        self._store = store
        self.mark_ttl_s = mark_ttl_s
        self.settle_s = settle_s
        self._make_feed = feed
        self._feed: ChannelFeed | None = None
        self._followers: dict[str, set[Following]] = {}  # by instance member
        self._per_partition: Counter[int] = Counter()  # followers: its channel is subscribed while > 0
        self.announcements = 0  # messages heard, for tests and the curious

    @contextlib.asynccontextmanager
    async def follow(self, partition: int, workflow: str, instance_id: str) -> AsyncIterator[Following]:
        """Hear every commit of the instance while the context lasts.

        On entry the partition's channel is subscribed (waiting up to ``SETTLE_S`` for Redis to
        confirm it) and the instance marked and checked (:meth:`Following.check`), in that order:
        when the check found the channel heard, every commit after it is announced to the follower.
        A subscription that fails does not fail this: the feed retries it in the background, and
        :attr:`Following.heard` says when the follower must poll meanwhile.

        Raises:
            the store's error when the check failed.
        """
        following = Following(self, partition, workflow, instance_id)
        key = instance_member(workflow, instance_id)
        self._followers.setdefault(key, set()).add(following)
        self._per_partition[partition] += 1
        try:
            feed = self._open()
            feed.subscribe([self._store.keys.changed_channel(partition)])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settle_s):
                    error = await feed.settled()
                    if error is not None:
                        log.warning("cannot hear the commits of partition %d yet (%s); retrying", partition, error)
            await following.check()
            yield following
        finally:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(following)
                if not followers:
                    del self._followers[key]
            self._per_partition[partition] -= 1
            if self._per_partition[partition] <= 0:
                del self._per_partition[partition]
                if self._feed is not None:
                    self._feed.unsubscribe([self._store.keys.changed_channel(partition)])

    async def close(self) -> None:
        """Close the pub/sub feed (the marks lapse by themselves)."""
        if self._feed is not None:
            await self._feed.close()
            self._feed = None

    def _open(self) -> ChannelFeed:
        if self._feed is None:
            self._feed = self._make_feed(self._store.redis, self._on_message)
        return self._feed

    def _hears(self, partition: int) -> bool:
        return self._feed is not None and self._feed.hears(self._store.keys.changed_channel(partition))

    def _on_message(self, data: bytes) -> None:
        """A commit.lua announcement: ``<seq> <member>``, on the channel of the member's partition."""
        self.announcements += 1
        seq, _, member = data.partition(b" ")
        for following in self._followers.get(member.decode(), ()):
            following._announce(int(seq))

    async def _check(self, following: Following) -> Watched:
        now_ms = time.time_ns() // 1_000_000
        return await self._store.mark_watched(
            following.partition,
            following.workflow,
            following.instance_id,
            now_ms=now_ms,
            until_ms=now_ms + round(self.mark_ttl_s * 1000),
            worker_feature=ANNOUNCES_CHANGES,
        )
