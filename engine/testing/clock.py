"""Virtual time for tests: real time flows, and the test (or the environment) skips ahead."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import Any

from hutch.clock import Clock
from hutch.durations import Duration, to_seconds
from hutch.events import ms_to_datetime


class TestClock(Clock):
    """A :class:`~engine.clock.Clock` whose time a test can move forward.

    Virtual time starts at ``start`` (default: the wall clock) and then flows with real time,
    plus every skip made by :meth:`advance` / :meth:`advance_to`. Pass it to
    ``engine.connect(clock=...)``: the engine stamps history, computes due times and fires timers
    only through its clock, so after ``advance("3 days")`` a three-day sleep is due at once.
    Sleepers in :meth:`sleep_until` re-check their due time whenever the clock is advanced.

    Args:
        start: the virtual time to start at (an aware datetime, or epoch seconds).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            origin_ms = time.time_ns() // 1_000_000
        elif isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError(f"TestClock start {start!r} must be timezone-aware")
            origin_ms = round(start.timestamp() * 1000)
        else:
            origin_ms = round(start * 1000)
        self._origin_ms = origin_ms
        self._mono_origin_ns = time.monotonic_ns()
        self._skipped_ms = 0
        self._sleepers: set[asyncio.Future[None]] = set()

    def now_ms(self) -> int:
        """The virtual time in epoch milliseconds."""
        return self._origin_ms + (time.monotonic_ns() - self._mono_origin_ns) // 1_000_000 + self._skipped_ms

    def now(self) -> datetime:
        """The virtual time as an aware UTC datetime."""
        return ms_to_datetime(self.now_ms())

    @property
    def skipped(self) -> timedelta:
        """How far the clock has been moved ahead of real time in total."""
        return timedelta(milliseconds=self._skipped_ms)

    def advance(self, duration: Duration) -> None:
        """Move virtual time forward by ``duration`` (``"3 days"``, seconds or a timedelta)."""
        self._skip(round(to_seconds(duration) * 1000))

    def advance_to(self, when: datetime | int) -> None:
        """Move virtual time forward to ``when`` (an aware datetime, or epoch milliseconds).

        A moment already past is a no-op: time never goes backwards.
        """
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError(f"advance_to({when!r}) needs a timezone-aware datetime")
            when = round(when.timestamp() * 1000)
        self._skip(when - self.now_ms())

    def _skip(self, ms: int) -> None:
        if ms <= 0:
            return
        self._skipped_ms += ms
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)

    async def sleep_until(self, due_ms: int, wake: asyncio.Event) -> None:
        """Return once virtual time reaches ``due_ms``, or as soon as ``wake`` is set."""
        if wake.is_set() or self.now_ms() >= due_ms:
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_task(wake.wait(), name="hutch-test-clock-wake")
        try:
            while not woken.done():
                remaining_ms = due_ms - self.now_ms()
                if remaining_ms <= 0:
                    return
                advanced: asyncio.Future[None] = loop.create_future()
                self._sleepers.add(advanced)
                either: set[asyncio.Future[Any]] = {woken, advanced}
                try:
                    # Real time counts too, so the sleep also ends when due without any skip.
                    await asyncio.wait(either, timeout=remaining_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._sleepers.discard(advanced)
        finally:
            if not woken.done():
                woken.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await woken
