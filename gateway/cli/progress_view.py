"""How ``hutch run`` shows an instance's progress: a live terminal view, or JSON lines.

Both are :class:`~hutch.gateway.progress.ProgressSink` s that :func:`~hutch.gateway.progress.follow` reports to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from hutch import Instance, InstanceDetail, Status
from hutch.gateway.cli.formatting import (
    compact,
    error_text,
    glyphs,
    jsonable,
    local_clock,
    ms_text,
    until_text,
)
from hutch.gateway.progress.model import (
    Active,
    ProgressEvent,
    RunResult,
    elapsed_ms,
    iso_time,
    utc_now,
)
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text


class JsonSink:
    """JSON lines: one object per event, then ``{"status", "output", "error"}``."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or (lambda line: print(line, flush=True))

    def _emit(self, data: dict[str, Any]) -> None:
        self._write(json.dumps(data, default=jsonable, ensure_ascii=False))

    def started(self, instance: Instance) -> None:
        """Emit ``{"event": "created", "instance_id", "workflow"}``."""
        self._emit(
            {
                "event": "created",
                "at": iso_time(utc_now()),
                "instance_id": instance.id,
                "workflow": instance.workflow,
            }
        )

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
        self._glyph = glyphs(console)
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
        name = f"{e.step}" + (f" #{e.count}" if e.count and e.count > 1 else "")
        family = e.kind.split(".", 1)[0]
        if e.kind.endswith(".cancelled"):
            return _t(self._glyph["off"], "dim", name, "cancelled")
        if family in ("attempt", "retry", "step"):
            return self._attempt_line(e, name)
        if family in ("sleep", "wait", "event"):
            return self._waiting_line(e, name)
        if family == "invoke":
            return self._invoke_line(e, name)
        if e.kind == "version.waiting":
            text = f"{self._glyph['wait']} instance waits for code version {e.version!r}: no worker owning it has it"
            return Text(text, style="yellow")
        if e.kind == "status" and e.status in ("paused", "waitingForPause"):
            return Text(f"{self._glyph['off']} instance {e.status}", style="yellow")
        return None  # routine status changes: the live region shows them

    def _attempt_line(self, e: ProgressEvent, name: str) -> Text | None:
        g, kind = self._glyph, e.kind
        if kind == "attempt.succeeded":
            tries = f" on attempt {e.attempt}" if (e.attempt or 1) > 1 else ""
            return _t(g["ok"], "green", name, f"succeeded{tries} in {ms_text(e.duration_ms)}")
        if kind == "attempt.failed":
            return _t(
                g["fail"], "red", name, f"attempt {e.attempt} failed in {ms_text(e.duration_ms)}: {error_text(e.error)}"
            )
        if kind == "retry.scheduled":
            wait = until_text(e.due, e.at)
            if e.retry_delay_from == "error":
                wait += ", the delay the error asked for"
            return _t(g["retry"], "yellow", name, f"retrying (attempt {e.attempt}) at {local_clock(e.due)} (in {wait})")
        if kind == "step.failed":
            attempts = f"{e.attempt} attempt" + ("s" if (e.attempt or 0) != 1 else "")
            refused = ": retry_if refused to retry its error" if e.retry_refused else ""
            return _t(g["fail"], "bold red", name, f"gave up after {attempts}{refused}")
        return None  # attempt.started: the live region shows it

    def _waiting_line(self, e: ProgressEvent, name: str) -> Text | None:
        g, kind = self._glyph, e.kind
        if kind in ("sleep.started", "sleep.rescheduled"):
            return _t(g["sleep"], "blue", name, f"sleeping {until_text(e.due, e.at)}, until {local_clock(e.due)}")
        if kind == "sleep.completed":
            return _t(g["wake"], "blue", name, f"woke after {ms_text(e.duration_ms)}")
        if kind in ("wait.started", "wait.rescheduled"):
            text = f"waiting for event {e.event_type!r}, timeout at {local_clock(e.due)} (in {until_text(e.due, e.at)})"
            if e.event_type not in self._event_types:
                text += f"; send one with --event {e.event_type}=JSON"
            return _t(g["wait"], "magenta", name, text)
        if kind == "event.sent":
            return _t(g["send"], "magenta", name, f"sent {e.event_type!r} event {compact(e.payload)}")
        if kind == "wait.received":
            return _t(g["ok"], "green", name, f"received {e.event_type!r} after {ms_text(e.duration_ms)}")
        if kind == "wait.timed_out":
            return _t(
                g["fail"], "yellow", name, f"timed out after {ms_text(e.duration_ms)} waiting for {e.event_type!r}"
            )
        return None

    def _invoke_line(self, e: ProgressEvent, name: str) -> Text | None:
        g, kind, child = self._glyph, e.kind, f"{e.child_workflow}/{e.child_id}"
        if kind == "invoke.started":
            return _t(g["run"], "cyan", name, f"invoked child {child}")
        if kind == "invoke.returned":
            return _t(g["ok"], "green", name, f"child {child} returned after {ms_text(e.duration_ms)}")
        if kind == "invoke.failed":
            return _t(
                g["fail"], "red", name, f"child {child} failed after {ms_text(e.duration_ms)}: {error_text(e.error)}"
            )
        return None

    def tick(self, detail: InstanceDetail, active: list[Active]) -> None:
        """Remember what is running now; the live region redraws it."""
        self._active = active
        if self._live is not None:
            self._live.refresh()

    def _render(self) -> RenderableType:
        now = utc_now()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=2)
        grid.add_column()
        for a in self._active:
            if a.kind == "attempt":
                key = (a.step, a.count, a.attempt)
                spinner = self._spinners.setdefault(key, Spinner("dots", style="cyan"))
                grid.add_row(spinner, f"{a.step}  attempt {a.attempt} · {ms_text(elapsed_ms(now - a.since))}")
            elif a.kind == "retry" and a.due is not None:
                grid.add_row(self._glyph["retry"], f"{a.step}  attempt {a.attempt} in {until_text(a.due, now)}")
            elif a.kind == "sleep" and a.due is not None:
                grid.add_row(
                    self._glyph["sleep"], f"{a.step}  wakes at {local_clock(a.due)} (in {until_text(a.due, now)})"
                )
            elif a.kind == "wait" and a.due is not None:
                left = until_text(a.due, now)
                grid.add_row(self._glyph["wait"], f"{a.step}  waiting for {a.event_type!r}, timeout in {left}")
            elif a.kind == "invoke":
                grid.add_row(
                    self._glyph["run"], f"{a.step}  child {a.child} running · {ms_text(elapsed_ms(now - a.since))}"
                )
        return Group(grid) if self._active else Text("")

    def finished(self, result: RunResult) -> None:
        """Stop the live region and print the outcome: output as JSON, or the error."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        detail, g = result.detail, self._glyph
        took = f"in {ms_text(round(result.elapsed_s * 1000))}"
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
                self.console.print(Text(f"  {error_text(detail.error)}", style="red"), soft_wrap=True)


def _t(glyph: str, style: str, name: str, text: str) -> Text:
    return Text.assemble((f"{glyph} ", style), (f"{name:<20}", "bold"), " ", text)
