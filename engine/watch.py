"""In-process notification of instance changes, so embedded clients wait without polling."""

from __future__ import annotations

import asyncio


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
