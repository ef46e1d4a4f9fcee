"""Readable output of the ``hutch`` REST commands: rich tables, status colours, the step timeline.

Every function takes what the REST API returned (the envelope's ``result``, plain JSON) and
returns a rich renderable; the CLI prints it, or prints the JSON itself under ``--json``.
Colours appear only on a terminal (rich drops them otherwise). Times are UTC; offsets in the
timeline are relative to the instance's start, so a reader sees at a glance where time went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hutch import AttemptDetail, InstanceDetail, InstanceLink, Status, StepDetail
from hutch.gateway.cli.formatting import (
    compact,
    duration_text,
    error_text,
    glyphs,
    list_table,
    offset_text,
    parse_time,
    until_text,
    utc_clock,
)
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

STATUS_STYLES: dict[str, str] = {
    Status.QUEUED: "blue",
    Status.RUNNING: "cyan",
    Status.WAITING: "yellow",
    Status.WAITING_FOR_PAUSE: "magenta",
    Status.PAUSED: "magenta",
    Status.COMPLETE: "green",
    Status.ERRORED: "bold red",
    Status.TERMINATED: "red",
    Status.UNKNOWN: "dim",
}
"""Rich style of each instance status."""

# The order statuses are listed in: live ones first, then finished ones.
STATUS_ORDER = (
    Status.QUEUED,
    Status.RUNNING,
    Status.WAITING,
    Status.WAITING_FOR_PAUSE,
    Status.PAUSED,
    Status.ERRORED,
    Status.TERMINATED,
    Status.COMPLETE,
)

_TYPE_LABELS = {"step": "step", "sleep": "sleep", "waitForEvent": "wait", "invoke": "invoke"}
_MAX_VALUE_CHARS = 400  # a value in the instance summary; 200 in a timeline cell
WIDE_TIMELINE = 110  # console columns from which the timeline has a Detail column


def status_text(status: str) -> Text:
    """An instance status in its colour."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


# --------------------------------------------------------------------------- workflows
def workflows_table(workflows: Sequence[Mapping[str, Any]]) -> RenderableType:
    """``hutch workflows list``: each workflow, its instance total and the non-zero counts by status."""
    if not workflows:
        return Text("No workflows. Register some with [[workflows]] in hutch.toml or --workflow.", style="dim")
    table = list_table()
    table.add_column("Workflow", style="bold", overflow="fold")
    table.add_column("Instances", justify="right")
    table.add_column("By status")
    for wf in workflows:
        counts: Mapping[str, int] = wf.get("instances") or {}
        by_status = Text(" · ").join(
            Text.assemble(status_text(s), f" {counts[s]}") for s in STATUS_ORDER if counts.get(s)
        )
        table.add_row(str(wf["name"]), str(sum(counts.values())), by_status)
    return table


def created_text(result: Mapping[str, Any]) -> RenderableType:
    """``hutch workflows trigger``: the new instance and how to follow it."""
    return Group(
        Text.assemble(
            "Created instance ",
            (str(result["id"]), "bold"),
            " of ",
            (str(result["workflow"]), "bold cyan"),
            " (",
            status_text(str(result["status"])),
            ")",
        ),
        Text(f"Follow it with: hutch instances describe {result['workflow']} {result['id']}", style="dim"),
    )


# --------------------------------------------------------------------------- instances
def instances_table(workflow: str, rows: Sequence[Mapping[str, Any]], *, now: datetime | None = None) -> RenderableType:
    """``hutch instances list``: id, status, code version, creation time and how long each ran (or is running)."""
    if not rows:
        return Text(f"No instances of {workflow}.", style="dim")
    now = now or datetime.now(UTC)
    table = list_table(f"{workflow}: newest first")
    # One line per instance, never wrapped: a narrow terminal cuts values with an ellipsis (a UUID
    # fits whole from 36 characters; --json prints every id whole).
    table.add_column("Instance", no_wrap=True, overflow="ellipsis", min_width=12, max_width=36)
    table.add_column("Status", no_wrap=True, overflow="ellipsis")
    table.add_column("Version", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("Created (UTC)", no_wrap=True, overflow="ellipsis")
    table.add_column("Duration", justify="right", no_wrap=True, overflow="ellipsis")
    for row in rows:
        started, ended = parse_time(row.get("started_on")), parse_time(row.get("ended_on"))
        table.add_row(
            str(row["id"]),
            status_text(str(row["status"])),
            Text(str(row["version"])) if row.get("version") else Text("-", style="dim"),
            utc_clock(parse_time(row.get("created_on"))),
            _span(started, ended, now),
        )
    return table


def status_changed_text(workflow: str, instance_id: str, action: str, result: Mapping[str, Any]) -> Text:
    """``hutch instances pause|resume|terminate|restart``: what was asked and the status now.

    A change no worker applied yet (``applied`` false) says so, and that it stays queued.
    """
    if result.get("applied") is False:
        return Text.assemble(
            ("Not applied yet: ", "yellow"), f"no worker applied the {action} of instance ", (instance_id, "bold"),
            " of ", (workflow, "bold cyan"), " within the wait; it stays queued and is applied when a worker "
            "takes the instance's partition. Status now ", status_text(str(result["status"])),
        )  # fmt: skip
    past = {"pause": "Paused", "resume": "Resumed", "terminate": "Terminated", "restart": "Restarted"}[action]
    return Text.assemble(
        f"{past} instance ", (instance_id, "bold"), " of ", (workflow, "bold cyan"),
        "; status now ", status_text(str(result["status"])),
    )  # fmt: skip


def event_sent_text(workflow: str, result: Mapping[str, Any]) -> Text:
    """``hutch events send``: the event accepted, or a warning that the instance had already finished."""
    head = Text.assemble(
        "Sent event ", (repr(str(result["type"])), "bold"), " to instance ", (str(result["instance_id"]), "bold"),
        " of ", (workflow, "bold cyan"),
    )  # fmt: skip
    if result.get("instance_finished"):
        head.append("\nThe instance had already finished, so nothing will receive this event.", style="yellow")
    return head


def created_or_sent_text(result: Mapping[str, Any]) -> Text:
    """``hutch events create-or-send``: whether the instance was created with the event, or sent it."""
    iid, workflow, event = str(result["id"]), str(result["workflow"]), repr(str(result["event_type"]))
    if result.get("created"):
        return Text.assemble(
            "Created instance ", (iid, "bold"), " of ", (workflow, "bold cyan"), " with event ", (event, "bold"),
            "\n", (f"Follow it with: hutch instances describe {workflow} {iid}", "dim"),
        )  # fmt: skip
    head = Text.assemble(
        "Sent event ", (event, "bold"), " to the existing instance ", (iid, "bold"), " of ", (workflow, "bold cyan"),
    )  # fmt: skip
    if result.get("instance_finished"):
        head.append("\nThe instance had already finished, so nothing will receive this event.", style="yellow")
    return head


def instance_view(result: Mapping[str, Any], console: Console, *, now: datetime | None = None) -> RenderableType:
    """``hutch instances describe``: the instance's summary, then the timeline of its steps, sleeps and waits.

    Args:
        result: the ``result`` of ``GET /api/workflows/{name}/instances/{id}``.
        console: the console it will be printed on (for the choice of symbols).
        now: the current time, for what is still running (default: now).
    """
    detail = InstanceDetail.model_validate(result)
    now = now or datetime.now(UTC)
    g = glyphs(console)
    parts: list[RenderableType] = [_summary(detail, now), Text("")]
    if detail.steps:
        parts.append(_timeline(detail, now, g, console.width))
    else:
        parts.append(Text("No steps yet.", style="dim"))
    return Group(*parts)


def _summary(d: InstanceDetail, now: datetime) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("Instance", Text.assemble((d.id, "bold"), " of ", (d.workflow, "bold cyan")))
    grid.add_row("Status", status_text(d.status.value))
    if d.parent is not None:
        grid.add_row("Parent", _parent_text(d.parent))
    if d.version is not None:
        grid.add_row("Version", d.version)
    if d.waiting_for_version is not None:
        waiting = f"for version {d.waiting_for_version!r}: no worker owning it has that version"
        grid.add_row("Waiting", Text(waiting, style="yellow"))
    if d.patches:
        grid.add_row("Patches", ", ".join(p.id + (" (deprecated)" if p.deprecated else "") for p in d.patches))
    trigger = d.trigger.get("source") if d.trigger else None
    if trigger:
        extra = {k: v for k, v in d.trigger.items() if k != "source"}
        grid.add_row("Trigger", f"{trigger} {compact(extra, _MAX_VALUE_CHARS)}" if extra else str(trigger))
    grid.add_row("Queued", utc_clock(d.queued))
    grid.add_row("Started", utc_clock(d.start) if d.start else Text("not yet", style="dim"))
    if d.end is not None:
        grid.add_row("Ended", utc_clock(d.end))
    if d.start is not None:
        grid.add_row("Duration", _span(d.start, d.end, now))
    grid.add_row("Params", compact(d.params, _MAX_VALUE_CHARS))
    if d.output is not None or d.status is Status.COMPLETE:
        grid.add_row("Output", Text(compact(d.output, _MAX_VALUE_CHARS), style="green"))
    if d.error is not None:
        grid.add_row("Error", Text(error_text(d.error), style="red"))
    return grid


def _parent_text(parent: InstanceLink) -> Text:
    """The parent instance, and the invoke of its that created this one when known."""
    text = link_text(parent)
    if parent.step is not None:
        count = f" #{parent.count}" if (parent.count or 1) > 1 else ""
        text.append(f", its invoke {parent.step!r}{count}")
    return text


def _timeline(d: InstanceDetail, now: datetime, g: Mapping[str, str], width: int) -> RenderableType:
    """The steps in issue order, failed attempts as sub-rows under their step.

    On a wide console the details (outputs, errors, due times) get a column of their own, cut to
    one line; on a narrow one the essential ones (errors, due times) follow the table as notes
    keyed by step number, wrapped at the console's width rather than squeezed into a cell.
    """
    base = d.start or d.queued
    wide = width >= WIDE_TIMELINE
    table = list_table("Steps", title_style="bold", expand=wide)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("Type", no_wrap=True)
    table.add_column("Name", overflow="fold")
    table.add_column("Start", justify="right", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Attempts", justify="right", no_wrap=True)
    table.add_column("Outcome", no_wrap=True)
    if wide:
        table.add_column("Detail", no_wrap=True, overflow="ellipsis", ratio=1)
    notes: list[Text] = []

    def add(cells: list[RenderableType], detail: Text, note: Text | None) -> None:
        if wide:
            table.add_row(*cells, detail)
            return
        table.add_row(*cells)
        if note is not None and detail.plain:
            notes.append(Text.assemble(note, detail))

    for index, s in enumerate(d.steps, start=1):
        name = s.name + (f" #{s.count}" if s.count > 1 else "")
        outcome, detail, essential = _outcome(s, now, g)
        when: list[RenderableType] = [offset_text(s.start, base), _span(s.start, s.end, now)]
        note = Text.assemble((f"{index:>3} ", "dim"), (name, "bold"), ": ") if essential else None
        add([str(index), _TYPE_LABELS.get(s.type, s.type), Text(name, style="bold"), *when, _attempts(s), outcome],
            detail, note)  # fmt: skip
        for attempt in s.attempts:
            if attempt.success is not False:
                continue
            error = Text.assemble(_retry_text(attempt, base), (error_text(attempt.error), "red"))
            sub = Text(f"{g['sub']} attempt {attempt.attempt}", style="dim")
            when = [offset_text(attempt.start, base), _span(attempt.start, attempt.end, now)]
            note = Text(f"{index:>3} {name}, attempt {attempt.attempt}: ", style="dim")
            add(["", "", sub, *when, "", Text(f"{g['fail']} failed", style="red")], error, note)
    if not notes:
        return table
    return Group(table, Text(""), *notes)


def _retry_text(attempt: AttemptDetail, base: datetime) -> Text:
    """What followed a failed attempt: when it was retried and where that wait came from, or that retry_if refused."""
    if attempt.retry_refused:
        return Text("retry_if refused a retry; ", style="yellow")
    if attempt.retry_at is None:
        return Text("")
    source = {"error": " (delay from the error)", "backoff": " (backoff)"}.get(attempt.retry_delay_from or "", "")
    return Text(f"retry at {offset_text(attempt.retry_at, base)}{source}; ", style="yellow")


def link_text(link: InstanceLink) -> Text:
    """Another instance: ``id`` of ``workflow``."""
    return Text.assemble((link.instance_id, "bold"), " of ", (link.workflow, "bold cyan"))


def _attempts(s: StepDetail) -> str:
    if s.type != "step" or not s.attempts:
        return ""
    retries = len(s.attempts) - 1
    return f"{len(s.attempts)}" + (f" ({retries} {'retry' if retries == 1 else 'retries'})" if retries else "")


def _outcome(s: StepDetail, now: datetime, g: Mapping[str, str]) -> tuple[Text, Text, bool]:
    """What became of a step, sleep or wait (or what it is doing now), its detail, and whether that is essential."""
    if s.outcome == "cancelled":
        return Text(f"{g['off']} cancelled", style="dim"), Text(""), False
    if s.type == "step":
        return _step_outcome(s, now, g)
    if s.type == "invoke":
        return _invoke_outcome(s, g)
    if s.type == "sleep":
        if s.end is not None:
            return Text(f"{g['ok']} woke", style="green"), Text(""), False
        until = f"until {utc_clock(s.due)} UTC (in {until_text(s.due, now)})"
        return Text(f"{g['sleep']} sleeping", style="blue"), Text(until), True
    event = repr(s.event_type) if s.event_type else "an event"
    if s.success is True:
        payload = s.output.get("payload") if isinstance(s.output, Mapping) else s.output
        return Text(f"{g['ok']} received", style="green"), Text.assemble(f"{event} ", _value(payload)), False
    if s.success is False:
        return Text(f"{g['fail']} timed out", style="yellow"), Text(f"no {event} event came"), True
    waiting = f"for {event}, timeout in {until_text(s.due, now)}"
    return Text(f"{g['wait']} waiting", style="magenta"), Text(waiting), True


def _step_outcome(s: StepDetail, now: datetime, g: Mapping[str, str]) -> tuple[Text, Text, bool]:
    """A ``step.do``: its result or error, or the attempt running or waiting to retry."""
    if s.success is True:
        return Text(f"{g['ok']} succeeded", style="green"), _value(s.output), False
    if s.success is False:
        return Text(f"{g['fail']} failed", style="bold red"), Text(error_text(s.error), style="red"), True
    last = s.attempts[-1] if s.attempts else None
    if last is not None and last.success is False and last.retry_at is not None:
        when = f"attempt {last.attempt + 1} in {until_text(last.retry_at, now)}"
        return Text(f"{g['retry']} retrying", style="yellow"), Text(when), True
    return Text(f"{g['run']} running", style="cyan"), Text(f"attempt {last.attempt if last else 1}"), False


def _invoke_outcome(s: StepDetail, g: Mapping[str, str]) -> tuple[Text, Text, bool]:
    """A child workflow: its id always (the way to look at it), then what it returned or why it failed."""
    child = Text.assemble("child ", link_text(s.child)) if s.child is not None else Text("child not known")
    if s.success is True:
        return Text(f"{g['ok']} returned", style="green"), Text.assemble(child, " ", _value(s.output)), True
    if s.success is False:
        return (
            Text(f"{g['fail']} failed", style="bold red"),
            Text.assemble(child, ": ", (error_text(s.error), "red")),
            True,
        )
    return Text(f"{g['run']} running", style="cyan"), child, True


def _value(value: Any) -> Text:
    return Text("" if value is None else compact(value, limit=200), style="dim")


def _span(start: datetime | None, end: datetime | None, now: datetime) -> Text:
    """How long something took, or ``3.20 s…`` (dim) while it still runs."""
    if start is None:
        return Text("")
    if end is None:
        return Text(duration_text((now - start).total_seconds()) + "…", style="dim")
    return Text(duration_text((end - start).total_seconds()))
