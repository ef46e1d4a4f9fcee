"""Notification of instance changes, so clients wait without polling.

Embedded and colocated clients share their worker's :class:`InstanceWatch`; a remote client's
watch is fed from Redis pub/sub by :class:`FinishedFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class FinishedFeed:
    """Feeds an :class:`InstanceWatch` from the store's "finished" pub/sub channel.

    A remote client (no worker in its process) would otherwise learn that an instance finished
    only by polling; commits publish the instance's member (``workflow:id``) on the channel once it
    reached a final status. A lost subscription only costs latency: ``Instance.wait`` keeps polling
    with backoff underneath, and the feed re-subscribes after a pause.
    """

    def __init__(self, redis: Redis, channel: str, watch: InstanceWatch, *, retry_s: float = 1.0) -> None:
        self._redis = redis
        self._channel = channel
        self._watch = watch
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe (waits for the first subscription, so a wait begun next cannot miss a finish)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hutch-finished-feed")
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
                    member = message["data"]
                    workflow, _, instance_id = (member.decode() if isinstance(member, bytes) else member).partition(":")
                    self._watch.notify(workflow, instance_id)
            except STORE_ERRORS as exc:
                if first:
                    raise
                log.warning("lost the finished-instances subscription (%s); re-subscribing", exc)
            finally:
                with contextlib.suppress(*STORE_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._retry_s)
