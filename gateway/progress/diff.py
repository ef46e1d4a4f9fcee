"""The diff engine of live progress: successive instance details in, the events between them out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hutch import InstanceDetail, Status, StepDetail
from hutch.gateway.progress.model import Active, ProgressEvent, elapsed_ms, utc_now


class ProgressTracker:
    """Turns successive :class:`InstanceDetail` snapshots into the events that happened in between."""

    def __init__(self) -> None:
        self._seen: set[tuple[Any, ...]] = set()
        self._status: Status | None = None
        self._dues: dict[tuple[str, str, int], datetime | None] = {}

    def update(self, detail: InstanceDetail) -> list[ProgressEvent]:
        """The events not reported yet, oldest first."""
        out: list[ProgressEvent] = []
        # queued and running come from timestamps, so they are reported even when a poll missed
        # them; later changes (waiting, paused, running again...) as observed.
        if self._once(("status", "queued")):
            out.append(ProgressEvent("status", detail.queued, status=Status.QUEUED.value))
            self._status = Status.QUEUED
        if detail.start is not None and self._once(("status", "running")):
            out.append(ProgressEvent("status", detail.start, status=Status.RUNNING.value))
            self._status = Status.RUNNING
        for s in detail.steps:
            if s.type == "step":
                out.extend(self._do_events(s))
            elif s.type == "invoke":
                out.extend(self._invoke_events(s))
            else:
                out.extend(self._timed_events(s))
        # Stable: events at the same millisecond keep issue order.
        out.sort(key=lambda e: e.at)
        # What this poll sees and history does not date comes after everything recorded up to it:
        # a wait for a code version no worker owning the instance has, and a status change.
        if detail.waiting_for_version is not None and self._once(("version", detail.waiting_for_version)):
            out.append(ProgressEvent("version.waiting", utc_now(), version=detail.waiting_for_version))
        if detail.status != self._status and detail.status is not Status.QUEUED:
            at = detail.end if detail.status.finished and detail.end else utc_now()
            out.append(ProgressEvent("status", at, status=detail.status.value))
        self._status = detail.status
        return out

    def _once(self, key: tuple[Any, ...]) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _do_events(self, s: StepDetail) -> list[ProgressEvent]:
        # A step.do: each attempt's start and end, the retries scheduled, the step giving up.
        key = (s.type, s.name, s.count)
        base: dict[str, Any] = {"step": s.name, "count": s.count}
        out: list[ProgressEvent] = []
        for a in s.attempts:
            if self._once((*key, a.attempt, "start")):
                out.append(ProgressEvent("attempt.started", a.start, attempt=a.attempt, **base))
            if a.end is None or not self._once((*key, a.attempt, "end")):
                continue
            ms = elapsed_ms(a.end - a.start)
            outcome: dict[str, Any] = {"output": s.output} if a.success else {"error": a.error}
            kind = "attempt.succeeded" if a.success else "attempt.failed"
            out.append(ProgressEvent(kind, a.end, attempt=a.attempt, duration_ms=ms, **base, **outcome))
            if a.retry_at is not None:
                source = a.retry_delay_from  # the step's backoff, or a delay the error asked for
                retry = ProgressEvent(
                    "retry.scheduled", a.end, attempt=a.attempt + 1, due=a.retry_at, retry_delay_from=source, **base
                )
                out.append(retry)
        if s.end is not None and s.success is False and self._once((*key, "failed")):
            last = s.attempts[-1] if s.attempts else None
            refused = True if last is not None and last.retry_refused else None
            attempt = last.attempt if last else None
            out.append(
                ProgressEvent("step.failed", s.end, attempt=attempt, error=s.error, retry_refused=refused, **base)
            )
        if s.outcome == "cancelled" and self._once((*key, "cancelled")):
            out.append(ProgressEvent("step.cancelled", s.end or utc_now(), **base))
        return out

    def _invoke_events(self, s: StepDetail) -> list[ProgressEvent]:
        # A step.invoke: the child it started, and what the child returned or why it failed.
        key = (s.type, s.name, s.count)
        base: dict[str, Any] = {"step": s.name, "count": s.count}
        if s.child is not None:
            base |= {"child_workflow": s.child.workflow, "child_id": s.child.instance_id}
        out: list[ProgressEvent] = []
        if self._once((*key, "start")):
            out.append(ProgressEvent("invoke.started", s.start, **base))
        if s.end is None or not self._once((*key, "end")):
            return out
        ms = elapsed_ms(s.end - s.start)
        if s.outcome == "cancelled":
            out.append(ProgressEvent("invoke.cancelled", s.end, duration_ms=ms, **base))
        elif s.success:
            out.append(ProgressEvent("invoke.returned", s.end, duration_ms=ms, output=s.output, **base))
        else:
            out.append(ProgressEvent("invoke.failed", s.end, duration_ms=ms, error=s.error, **base))
        return out

    def _timed_events(self, s: StepDetail) -> list[ProgressEvent]:
        # A step.sleep or step.wait_for_event: its start (again when a pause moved its due time) and its end.
        key = (s.type, s.name, s.count)
        base: dict[str, Any] = {"step": s.name, "count": s.count}
        out: list[ProgressEvent] = []
        prefix = "sleep" if s.type == "sleep" else "wait"
        extra: dict[str, Any] = {"event_type": s.event_type} if s.type == "waitForEvent" else {}
        if self._once((*key, "start")):
            self._dues[key] = s.due
            out.append(ProgressEvent(f"{prefix}.started", s.start, due=s.due, **base, **extra))
        elif s.end is None and s.due != self._dues.get(key):  # resumed after a pause: a new due time
            self._dues[key] = s.due
            out.append(ProgressEvent(f"{prefix}.rescheduled", utc_now(), due=s.due, **base, **extra))
        if s.end is None or not self._once((*key, "end")):
            return out
        ms = elapsed_ms(s.end - s.start)
        if s.outcome == "cancelled":
            out.append(ProgressEvent(f"{prefix}.cancelled", s.end, duration_ms=ms, **base, **extra))
        elif s.type == "sleep":
            out.append(ProgressEvent("sleep.completed", s.end, duration_ms=ms, **base))
        elif s.success:
            payload = s.output.get("payload") if isinstance(s.output, dict) else None
            out.append(ProgressEvent("wait.received", s.end, duration_ms=ms, payload=payload, **base, **extra))
        else:
            out.append(ProgressEvent("wait.timed_out", s.end, duration_ms=ms, error=s.error, **base, **extra))
        return out

    @staticmethod
    def active(detail: InstanceDetail) -> list[Active]:
        """What is in progress in ``detail``: running attempts, pending retries, sleeps, waits, child workflows."""
        items: list[Active] = []
        for s in detail.steps:
            if s.end is not None or s.outcome == "cancelled":
                continue
            if s.type == "step" and s.attempts:
                last = s.attempts[-1]
                if last.end is None:
                    items.append(Active("attempt", s.name, s.count, last.start, attempt=last.attempt))
                elif last.retry_at is not None:
                    retry = Active("retry", s.name, s.count, last.end, attempt=last.attempt + 1, due=last.retry_at)
                    items.append(retry)
            elif s.type == "sleep":
                items.append(Active("sleep", s.name, s.count, s.start, due=s.due))
            elif s.type == "waitForEvent":
                items.append(Active("wait", s.name, s.count, s.start, due=s.due, event_type=s.event_type))
            elif s.type == "invoke":
                child = f"{s.child.workflow}/{s.child.instance_id}" if s.child is not None else None
                items.append(Active("invoke", s.name, s.count, s.start, child=child))
        return items
