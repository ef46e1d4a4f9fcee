"""Live progress of one instance, built only from the public client API.

:func:`follow` polls :meth:`engine.Instance.describe` on a short interval; a
:class:`ProgressTracker` diffs successive details into :class:`ProgressEvent` s (attempt
started/succeeded/failed, retry scheduled, sleep started/completed, wait started/received/timed
out, ...), and a sink renders them: :class:`HumanSink` (rich: one line per event plus, on a
terminal, a live region with what is running now) or :class:`JsonSink` (JSON lines).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from hutch import ErrorInfo, Instance, InstanceDetail, Status, StepDetail
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

# JSON key of ProgressEvent.due, by event kind.
_DUE_KEY = {
    "retry.scheduled": "retry_at",
    "sleep.started": "wake_at",
    "sleep.rescheduled": "wake_at",
    "wait.started": "timeout_at",
    "wait.rescheduled": "timeout_at",
}
# Fields kept in JSON even when None (a step may return None; an event may carry no payload).
_ALWAYS = {"attempt.succeeded": ("output",), "wait.received": ("payload",), "event.sent": ("payload",)}


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Something that happened to the instance, in the order it happened.

    ``kind`` is one of ``status``, ``attempt.started``, ``attempt.succeeded``,
    ``attempt.failed``, ``retry.scheduled``, ``step.failed``, ``step.cancelled``,
    ``sleep.started``, ``sleep.rescheduled``, ``sleep.completed``, ``sleep.cancelled``,
    ``wait.started``, ``wait.rescheduled``, ``wait.received``, ``wait.timed_out``,
    ``wait.cancelled`` or ``event.sent``. ``due`` is the retry, wake or timeout time.
    """

    kind: str
    at: datetime
    step: str | None = None
    count: int | None = None
    attempt: int | None = None
    duration_ms: int | None = None
    due: datetime | None = None
    event_type: str | None = None
    payload: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    status: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"event": kind, "at": ISO time, ...}`` without empty fields."""
        data: dict[str, Any] = {"event": self.kind, "at": _iso(self.at)}
        keep = _ALWAYS.get(self.kind, ())
        for name in ("step", "count", "attempt", "duration_ms", "event_type", "status", "payload", "output"):
            value = getattr(self, name)
            if value is not None or name in keep:
                data[name] = value
        if self.due is not None:
            data[_DUE_KEY.get(self.kind, "due")] = _iso(self.due)
        if self.error is not None:
            data["error"] = self.error.model_dump()
        return data


@dataclass(frozen=True, slots=True)
class Active:
    """Something in progress right now, for the live region: a running attempt, a pending retry, a sleep, a wait."""

    kind: str  # "attempt" | "retry" | "sleep" | "wait"
    step: str
    count: int
    since: datetime
    attempt: int | None = None
    due: datetime | None = None
    event_type: str | None = None


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
            out.extend(self._step_events(s))
        # Stable: events at the same millisecond keep issue order.
        out.sort(key=lambda e: e.at)
        # A status change seen by this poll comes after everything recorded up to it.
        if detail.status != self._status and detail.status is not Status.QUEUED:
            at = detail.end if detail.status.finished and detail.end else _now()
            out.append(ProgressEvent("status", at, status=detail.status.value))
        self._status = detail.status
        return out

    def _once(self, key: tuple[Any, ...]) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _step_events(self, s: StepDetail) -> list[ProgressEvent]:
        key = (s.type, s.name, s.count)
        base: dict[str, Any] = {"step": s.name, "count": s.count}
        out: list[ProgressEvent] = []
        if s.type == "step":
            for a in s.attempts:
                if self._once((*key, a.attempt, "start")):
                    out.append(ProgressEvent("attempt.started", a.start, attempt=a.attempt, **base))
                if a.end is None or not self._once((*key, a.attempt, "end")):
                    continue
                ms = _ms(a.end - a.start)
                outcome: dict[str, Any] = {"output": s.output} if a.success else {"error": a.error}
                kind = "attempt.succeeded" if a.success else "attempt.failed"
                out.append(ProgressEvent(kind, a.end, attempt=a.attempt, duration_ms=ms, **base, **outcome))
                if a.retry_at is not None:
                    out.append(ProgressEvent("retry.scheduled", a.end, attempt=a.attempt + 1, due=a.retry_at, **base))
            if s.end is not None and s.success is False and self._once((*key, "failed")):
                last = s.attempts[-1].attempt if s.attempts else None
                out.append(ProgressEvent("step.failed", s.end, attempt=last, error=s.error, **base))
            if s.outcome == "cancelled" and self._once((*key, "cancelled")):
                out.append(ProgressEvent("step.cancelled", s.end or _now(), **base))
            return out
        prefix = "sleep" if s.type == "sleep" else "wait"
        extra: dict[str, Any] = {"event_type": s.event_type} if s.type == "waitForEvent" else {}
        if self._once((*key, "start")):
            self._dues[key] = s.due
            out.append(ProgressEvent(f"{prefix}.started", s.start, due=s.due, **base, **extra))
        elif s.end is None and s.due != self._dues.get(key):  # resumed after a pause: a new due time
            self._dues[key] = s.due
            out.append(ProgressEvent(f"{prefix}.rescheduled", _now(), due=s.due, **base, **extra))
        if s.end is None or not self._once((*key, "end")):
            return out
        ms = _ms(s.end - s.start)
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
        """What is in progress in ``detail``: running attempts, pending retries, sleeps, waits."""
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
        return items


# --------------------------------------------------------------------------- following an instance
class ProgressSink(Protocol):
    """Where :func:`follow` reports: a renderer."""

    def started(self, instance: Instance) -> None:
        """The instance exists and is about to be followed."""

    def event(self, event: ProgressEvent) -> None:
        """Something happened."""

    def tick(self, detail: InstanceDetail, active: list[Active]) -> None:
        """The latest snapshot (for a live view); called after every poll."""

    def finished(self, result: RunResult) -> None:
        """Following ended: the instance finished, or the timeout passed."""


@dataclass(slots=True)
class RunResult:
    """How following an instance ended."""

    instance_id: str
    detail: InstanceDetail
    elapsed_s: float
    timed_out: bool = False
    timeout_s: float | None = None
    unsent: list[str] = field(default_factory=list)  # --event types no wait asked for

    @property
    def exit_code(self) -> int:
        """0 when the instance completed, else 1 (errored, terminated, or still running at the timeout)."""
        return 0 if self.detail.status is Status.COMPLETE and not self.timed_out else 1


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
            sink.event(ProgressEvent("event.sent", _now(), step=item.step, event_type=event_type, payload=payload))
        elapsed = time.monotonic() - started
        timed_out = timeout is not None and elapsed >= timeout
        if detail.status.finished or timed_out:
            result = RunResult(instance.id, detail, elapsed, timed_out and not detail.status.finished, timeout)
            result.unsent = [t for t, _ in pending]
            sink.finished(result)
            return result
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- rendering
class JsonSink:
    """JSON lines: one object per event, then ``{"status", "output", "error"}``."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or (lambda line: print(line, flush=True))

    def _emit(self, data: dict[str, Any]) -> None:
        self._write(json.dumps(data, default=jsonable, ensure_ascii=False))

    def started(self, instance: Instance) -> None:
        """Emit ``{"event": "created", "instance_id", "workflow"}``."""
        self._emit({"event": "created", "at": _iso(_now()), "instance_id": instance.id, "workflow": instance.workflow})

    def event(self, event: ProgressEvent) -> None:
        """Emit the event as one line."""
        self._emit(event.to_json())

    def tick(self, detail: InstanceDetail, active: list[Active]) -> None:
        """Nothing: JSON output has no live region."""

    def finished(self, result: RunResult) -> None:
        """Emit the final ``{"status", "output", "error"}`` line."""
        detail = result.detail
        error = detail.error.model_dump() if detail.error else None
        if result.timed_out:
            message = f"instance {result.instance_id} is still {detail.status.value} after {result.timeout_s:g} s"
            error = {"name": "WaitTimeout", "message": message}
        self._emit({"status": detail.status.value, "output": detail.output, "error": error})


_UNICODE = {"ok": "✓", "fail": "✗", "retry": "↻", "sleep": "☾", "wake": "☀", "wait": "⧗", "send": "→", "off": "\u00b7"}
_ASCII = {"ok": "+", "fail": "x", "retry": "~", "sleep": "z", "wake": "^", "wait": "?", "send": ">", "off": "-"}


class HumanSink:
    """Readable progress with rich: one line per event; on a terminal, a live region of what runs now.

    Args:
        console: where to print (colours and the live region only when it is a terminal).
        label: how the header names the workflow (e.g. the ``hutch run`` target).
        event_types: the event types the caller will send, so a wait for another type gets a hint.
    """

    def __init__(self, console: Console, *, label: str = "", event_types: Collection[str] = ()) -> None:
        self.console = console
        self._label = label
        self._event_types = set(event_types)
        self._glyph = _UNICODE if (console.encoding or "").lower().startswith("utf") else _ASCII
        self._base: datetime | None = None
        self._live: Live | None = None
        self._active: list[Active] = []
        self._spinners: dict[tuple[str, int, int | None], Spinner] = {}

    def started(self, instance: Instance) -> None:
        """Print the header and, on a terminal, start the live region."""
        label = f" ({self._label})" if self._label else ""
        self.console.print(Text.assemble(("Running ", "bold"), (instance.workflow, "bold cyan"), label), soft_wrap=True)
        self.console.print(Text(f"instance {instance.id}", style="dim"), soft_wrap=True)
        if self.console.is_terminal:
            self._live = Live(console=self.console, transient=True, refresh_per_second=10, get_renderable=self._render)
            self._live.start()

    def event(self, event: ProgressEvent) -> None:
        """Print one line for the events a reader cares about."""
        if self._base is None:
            self._base = event.at
        line = self._line(event)
        if line is None:
            return
        elapsed = (event.at - self._base).total_seconds()
        self.console.print(Text.assemble((f"{elapsed:>7.3f}s ", "dim"), line), soft_wrap=True, highlight=False)

    def _line(self, e: ProgressEvent) -> Text | None:
        g = self._glyph
        name = f"{e.step}" + (f" #{e.count}" if e.count and e.count > 1 else "")
        kind = e.kind
        if kind == "attempt.succeeded":
            tries = f" on attempt {e.attempt}" if (e.attempt or 1) > 1 else ""
            return _t(g["ok"], "green", name, f"succeeded{tries} in {_dur(e.duration_ms)}")
        if kind == "attempt.failed":
            return _t(g["fail"], "red", name, f"attempt {e.attempt} failed in {_dur(e.duration_ms)}: {_err(e.error)}")
        if kind == "retry.scheduled":
            wait = _until(e.due, e.at)
            return _t(g["retry"], "yellow", name, f"retrying (attempt {e.attempt}) at {_clock(e.due)} (in {wait})")
        if kind == "step.failed":
            attempts = f"{e.attempt} attempt" + ("s" if (e.attempt or 0) != 1 else "")
            return _t(g["fail"], "bold red", name, f"gave up after {attempts}")
        if kind in ("sleep.started", "sleep.rescheduled"):
            return _t(g["sleep"], "blue", name, f"sleeping {_until(e.due, e.at)}, until {_clock(e.due)}")
        if kind == "sleep.completed":
            return _t(g["wake"], "blue", name, f"woke after {_dur(e.duration_ms)}")
        if kind in ("wait.started", "wait.rescheduled"):
            text = f"waiting for event {e.event_type!r}, timeout at {_clock(e.due)} (in {_until(e.due, e.at)})"
            if e.event_type not in self._event_types:
                text += f"; send one with --event {e.event_type}=JSON"
            return _t(g["wait"], "magenta", name, text)
        if kind == "event.sent":
            return _t(g["send"], "magenta", name, f"sent {e.event_type!r} event {_compact(e.payload)}")
        if kind == "wait.received":
            return _t(g["ok"], "green", name, f"received {e.event_type!r} after {_dur(e.duration_ms)}")
        if kind == "wait.timed_out":
            return _t(g["fail"], "yellow", name, f"timed out after {_dur(e.duration_ms)} waiting for {e.event_type!r}")
        if kind.endswith(".cancelled"):
            return _t(g["off"], "dim", name, "cancelled")
        if kind == "status" and e.status in ("paused", "waitingForPause"):
            return Text(f"{g['off']} instance {e.status}", style="yellow")
        return None  # attempt.started, routine status changes: the live region shows them

    def tick(self, detail: InstanceDetail, active: list[Active]) -> None:
        """Remember what is running now; the live region redraws it."""
        self._active = active
        if self._live is not None:
            self._live.refresh()

    def _render(self) -> RenderableType:
        now = _now()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=2)
        grid.add_column()
        for a in self._active:
            if a.kind == "attempt":
                key = (a.step, a.count, a.attempt)
                spinner = self._spinners.setdefault(key, Spinner("dots", style="cyan"))
                grid.add_row(spinner, f"{a.step}  attempt {a.attempt} · {_dur(_ms(now - a.since))}")
            elif a.kind == "retry" and a.due is not None:
                grid.add_row(self._glyph["retry"], f"{a.step}  attempt {a.attempt} in {_until(a.due, now)}")
            elif a.kind == "sleep" and a.due is not None:
                grid.add_row(self._glyph["sleep"], f"{a.step}  wakes at {_clock(a.due)} (in {_until(a.due, now)})")
            elif a.kind == "wait" and a.due is not None:
                left = _until(a.due, now)
                grid.add_row(self._glyph["wait"], f"{a.step}  waiting for {a.event_type!r}, timeout in {left}")
        return Group(grid) if self._active else Text("")

    def finished(self, result: RunResult) -> None:
        """Stop the live region and print the outcome: output as JSON, or the error."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        detail, g = result.detail, self._glyph
        took = f"in {_dur(round(result.elapsed_s * 1000))}"
        for event_type in result.unsent:
            note = f"! --event {event_type} was not sent: the instance never waited for a {event_type!r} event"
            self.console.print(Text(note, style="yellow"), soft_wrap=True)
        if result.timed_out:
            msg = f"{g['fail']} still {detail.status.value} after {result.timeout_s:g} s (--timeout); gave up"
            self.console.print(Text(msg, style="bold red"), soft_wrap=True)
        elif detail.status is Status.COMPLETE:
            self.console.print(Text(f"{g['ok']} complete {took}", style="bold green"), soft_wrap=True)
            self.console.print_json(json.dumps(detail.output, default=jsonable, ensure_ascii=False))
        else:
            self.console.print(Text(f"{g['fail']} {detail.status.value} {took}", style="bold red"), soft_wrap=True)
            if detail.error is not None:
                self.console.print(Text(f"  {_err(detail.error)}", style="red"), soft_wrap=True)


# --------------------------------------------------------------------------- formatting helpers
def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for what instance data can hold: datetimes, bytes, tuples-as-lists."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _t(glyph: str, style: str, name: str, text: str) -> Text:
    return Text.assemble((f"{glyph} ", style), (f"{name:<20}", "bold"), " ", text)


def _err(error: ErrorInfo | None) -> str:
    return f"{error.name}: {error.message}" if error is not None else "unknown error"


def _compact(value: Any) -> str:
    text = json.dumps(value, default=jsonable, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))


def _until(due: datetime | None, since: datetime) -> str:
    return "?" if due is None else _dur(_ms(due - since))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clock(when: datetime | None) -> str:
    """Local wall time; with the date when it is not today."""
    if when is None:
        return "?"
    local = when.astimezone()
    if local.date() != datetime.now().astimezone().date():
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def _dur(ms: int | None) -> str:
    """``5 ms``, ``1.25 s``, ``2 min 5 s``, ``3 h 10 min``, ``2 d 4 h``."""
    if ms is None:
        return "?"
    if ms < 1000:
        return f"{ms} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.2f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
