"""``ChannelFeed.close()`` returns, even when a task of the feed does not end when cancelled.

A library may swallow a cancellation: on Python 3.11 ``asyncio.wait_for`` (through which redis-py
and fakeredis read replies) returns the reply and drops the ``CancelledError`` when both arrive
at once. The feed's task then went back to waiting for work, and ``close()``, awaiting it after
``cancel()``, waited forever, and with it the worker's shutdown (seen with a store outage in
tests/test_membership.py). Its ``suppress(CancelledError)`` also took the caller's own
cancellation for the task's, so a timeout around ``close()`` could not end the wait either.
"""

from __future__ import annotations

import asyncio

import fakeredis
from hutch.watch import ChannelFeed


class _Stubborn:
    """Replaces a feed's subscription pass with one that swallows cancellations: the first one
    only (``times=1``), or every one until :meth:`release`."""

    def __init__(self, feed: ChannelFeed, times: int | None) -> None:
        self.entered = asyncio.Event()
        self.swallowed = 0
        self._times = times
        self._released = False
        feed._pass = self.run  # type: ignore[method-assign]

    async def run(self) -> BaseException | None:
        self.entered.set()
        while True:
            try:
                await asyncio.sleep(60)  # a reply that never comes (Redis is unreachable, say)
            except asyncio.CancelledError:
                if self._released:
                    raise
                self.swallowed += 1  # what 3.11's wait_for does when the reply arrives with the cancel
                if self._times is not None and self.swallowed >= self._times:
                    return None

    def release(self) -> None:
        self._released = True


async def _started(times: int | None, close_timeout_s: float) -> tuple[ChannelFeed, _Stubborn]:
    feed = ChannelFeed(fakeredis.aioredis.FakeRedis(), lambda data: None, close_timeout_s=close_timeout_s)
    await feed.start()
    stubborn = _Stubborn(feed, times)
    feed.subscribe(["c:1"])  # the feed's task now runs the stubborn pass
    await asyncio.wait_for(stubborn.entered.wait(), timeout=5)
    return feed, stubborn


async def _cleanup(feed: ChannelFeed, stubborn: _Stubborn, closing: asyncio.Task[None]) -> None:
    # Whatever the outcome, end the feed's task: the test fails rather than hangs.
    stubborn.release()
    while feed._task is not None and not feed._task.done():
        feed._task.cancel()
        await asyncio.wait({feed._task}, timeout=0.1)
    await asyncio.wait({closing}, timeout=1)


async def test_close_returns_when_the_feeds_task_swallowed_its_cancellation() -> None:
    feed, stubborn = await _started(times=1, close_timeout_s=5)
    closing = asyncio.ensure_future(feed.close())
    try:
        await asyncio.wait({closing}, timeout=4)
        assert stubborn.swallowed == 1  # the situation under test did arise
        assert closing.done(), "close() is still waiting for a task that swallowed its cancellation"
        closing.result()
        assert feed._task is not None and feed._task.done()  # cancelled again, it ended
    finally:
        await _cleanup(feed, stubborn, closing)


async def test_close_gives_up_on_a_task_that_never_ends_after_its_timeout() -> None:
    feed, stubborn = await _started(times=None, close_timeout_s=1.5)
    closing = asyncio.ensure_future(feed.close())
    try:
        await asyncio.wait({closing}, timeout=4)
        assert closing.done(), "close() waits for good for a task that ignores every cancellation"
        closing.result()
        assert stubborn.swallowed >= 2  # it was cancelled again meanwhile
    finally:
        await _cleanup(feed, stubborn, closing)


async def test_a_timeout_around_close_ends_it() -> None:
    # The caller's cancellation is the caller's: close() no longer takes it for its task's and goes on.
    feed, stubborn = await _started(times=None, close_timeout_s=60)

    async def closes_with_a_deadline() -> None:
        async with asyncio.timeout(0.5):
            await feed.close()

    closing = asyncio.ensure_future(closes_with_a_deadline())
    try:
        await asyncio.wait({closing}, timeout=4)
        assert closing.done(), "a timeout around close() did not end it"
        assert isinstance(closing.exception(), TimeoutError)
    finally:
        await _cleanup(feed, stubborn, closing)
