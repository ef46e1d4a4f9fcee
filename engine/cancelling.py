"""Cancelling a task that may not end when told to, without waiting for it forever.

A library may swallow a cancellation: on Python 3.11 ``asyncio.wait_for`` returns the awaited
result, and drops the ``CancelledError``, when the two arrive at the same moment (redis-py and
fakeredis read replies through it). A loop whose cancellation was swallowed goes on as if nothing
happened, and whoever awaits it after ``cancel()`` waits forever. So a cancelled task is cancelled
again every :data:`RECANCEL_S` until it ends, and a loop checks :func:`cancel_requested` itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("hutch")

RECANCEL_S = 1.0
"""How long a cancelled task may take to end before it is cancelled again."""


def cancel_requested() -> bool:
    """Whether the current task was cancelled, the ``CancelledError`` having been swallowed on the way."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(task: asyncio.Task[Any], timeout_s: float) -> bool:
    """Cancel ``task`` and wait up to ``timeout_s`` for it to end, cancelling it again meanwhile.

    Returns whether it ended. The caller's own cancellation is not swallowed (unlike ``await
    task`` under ``suppress(CancelledError)``, which takes it for the task's).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("task %s did not end within %.1f s of its cancellation", task.get_name(), timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_S, remaining))
    return True
