"""Time as the engine sees it; tests replace it to make days pass instantly."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall-clock time in epoch milliseconds, and waiting until a moment."""

    def now_ms(self) -> int:
        """The current time in epoch milliseconds."""
        return time.time_ns() // 1_000_000

    async def sleep_until(self, due_ms: int, wake: asyncio.Event) -> None:
        """Return at ``due_ms`` or as soon as ``wake`` is set, whichever comes first."""
        delay = (due_ms - self.now_ms()) / 1000
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            pass
