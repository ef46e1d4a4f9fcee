"""Following an instance: poll its detail, report what changed, send the events it waits for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from hutch import Instance
from hutch.gateway.progress.diff import ProgressTracker
from hutch.gateway.progress.model import ProgressEvent, ProgressSink, RunResult, utc_now


async def follow(
    instance: Instance,
    sink: ProgressSink,
    *,
    events: Sequence[tuple[str, Any]] = (),
    interval: float = 0.05,
    timeout: float | None = None,
) -> RunResult:
    """Report an instance's progress to ``sink`` until it finishes (or ``timeout`` seconds pass).

    Args:
        instance: the instance to follow.
        sink: the renderer.
        events: ``(type, payload)`` pairs; each is sent (once, in order) when the instance waits
            for an event of that type.
        interval: seconds between polls.
        timeout: give up after this many seconds (the instance keeps running).
    """
    tracker = ProgressTracker()
    pending = list(events)
    served: set[tuple[str, int]] = set()
    started = time.monotonic()
    sink.started(instance)
    while True:
        detail = await instance.describe()
        active = tracker.active(detail)
        sink.tick(detail, active)  # first, so the live region never redraws a stale state under new lines
        for event in tracker.update(detail):
            sink.event(event)
        for item in active:
            if item.kind != "wait" or (item.step, item.count) in served:
                continue
            index = next((i for i, (t, _) in enumerate(pending) if t == item.event_type), None)
            if index is None:
                continue
            served.add((item.step, item.count))
            event_type, payload = pending.pop(index)
            await instance.send_event(event_type, payload)
            sink.event(ProgressEvent("event.sent", utc_now(), step=item.step, event_type=event_type, payload=payload))
        elapsed = time.monotonic() - started
        timed_out = timeout is not None and elapsed >= timeout
        if detail.status.finished or timed_out:
            result = RunResult(instance.id, detail, elapsed, timed_out and not detail.status.finished, timeout)
            result.unsent = [t for t, _ in pending]
            sink.finished(result)
            return result
        await asyncio.sleep(interval)
