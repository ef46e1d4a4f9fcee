"""Notification of instance changes, so clients wait without polling.

Embedded and colocated clients share their worker's :class:`InstanceWatch`; a remote client's
watch is fed from Redis pub/sub by a :class:`ChannelFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

from engine.store.redis import STORE_ERRORS

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


class ChannelFeed:
    """Calls ``on_message(data)`` for each message published on a Redis pub/sub channel.

    The store's scripts announce instances on channels (engine.store.announcements): commits those
    that reached a final status (a remote client's :class:`InstanceWatch` hears of it instead of
    polling), creates the new ones (their partition owner starts them without waiting for the
    broker). Pub/sub delivers at most once, so a feed only ever saves latency: what it misses
    still happens by the slower path (a poll, a start message), and a lost subscription is re-made
    after a pause.
    """

    def __init__(
        self, redis: Redis, channel: str, on_message: Callable[[bytes], object], *, retry_s: float = 1.0
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe (waits for the first subscription: nothing published after this returns is missed)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"hutch-feed-{self._channel}")
        subscribed = asyncio.ensure_future(self._subscribed.wait())
        done, _ = await asyncio.wait([self._task, subscribed], return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            subscribed.cancel()
            self._task.result()  # the first subscription failed: raise its error

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        first = True
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                first = False
                async for message in pubsub.listen():
                    try:
                        self._on_message(message["data"])
                    except Exception:
                        log.exception("a message on %s could not be handled: %r", self._channel, message["data"][:200])
            except STORE_ERRORS as exc:
                if first:
                    raise
                log.warning("lost the subscription to %s (%s); re-subscribing", self._channel, exc)
            finally:
                with contextlib.suppress(*STORE_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(self._retry_s)
