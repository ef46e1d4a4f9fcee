"""What a chaos run must prove, checked from Redis once the run has quiesced, and its table.

For every instance: it completed with the right output; each step, sleep and wait result was
committed once; no step body started after its step's result was committed (re-executing an
interrupted attempt is allowed — at-least-once — and counted); the one ``approval`` event sent to
it was delivered once (its second wait times out); how long it was held up beyond its own schedule
(the stall). For the run: dead letters are exactly the poison messages injected, and no message is
left in a partition queue.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hutch.status import StepDetail, build_detail
from rich.console import Console
from rich.table import Table

from tests.chaos.workflow import expected_output


@dataclass
class InstanceRecord:
    """What the load generator did to one instance."""

    id: str
    params: dict[str, Any]
    approval: dict[str, Any]
    event_sent_ms: float | None = None  # when send_event was called (wall clock)


@dataclass
class Report:
    """The outcome of one scenario run."""

    scenario: str
    form: str
    seed: int = 0  # python -m tests.chaos --seed N draws the same durations, event times and targets
    instances: int = 0
    faults: list[str] = field(default_factory=list)
    completed: int = 0
    stuck: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    duplicated_commits: list[str] = field(default_factory=list)
    reexecuted: int = 0  # step executions beyond one per step (interrupted attempts run again)
    after_commit: list[str] = field(default_factory=list)  # executions that started after their commit
    events_twice: list[str] = field(default_factory=list)
    poison_sent: int = 0
    dead_letters: int = 0
    foreign_dead_letters: list[str] = field(default_factory=list)
    left_in_queues: int = 0  # messages (leases aside) in the partition queues once every instance finished
    max_stall_s: float = 0.0
    stall_where: str = ""
    quiesce_s: float | None = None
    runtime_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    logs: str = ""  # the workers' last output lines, kept when the run failed

    def problems(self) -> list[str]:
        """Every broken guarantee, one line each (empty: the run passed)."""
        out = self.errors[:8]
        if len(self.errors) > 8:
            out.append(f"... and {len(self.errors) - 8} more errors like these")
        if self.stuck:
            out.append(f"{len(self.stuck)} instance(s) never finished: {self.stuck[:5]}")
        if self.completed + len(self.stuck) + len(self.wrong) != self.instances:
            out.append(f"{self.instances} created but {self.completed} completed")
        out += [f"wrong outcome: {w}" for w in self.wrong[:5]]
        out += [f"committed twice: {d}" for d in self.duplicated_commits[:5]]
        out += [f"ran after its result was committed: {a}" for a in self.after_commit[:5]]
        out += [f"event delivered twice: {e}" for e in self.events_twice[:5]]
        if self.dead_letters != self.poison_sent or self.foreign_dead_letters:
            out.append(
                f"{self.dead_letters} dead letters for {self.poison_sent} poison messages; "
                f"not poison: {self.foreign_dead_letters[:5]}"
            )
        if self.left_in_queues:
            out.append(
                f"partition queues not drained: {self.left_in_queues} message(s) left, queued or delivered and "
                "never acknowledged, once every instance finished"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()


def _ms(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp() * 1000


def check_instance(
    report: Report,
    record: InstanceRecord,
    meta: dict[str, Any] | None,
    history: list[dict[str, Any]],
    executions: list[dict[str, Any]],
) -> None:
    """Add one instance's findings to ``report``."""
    iid = record.id
    if meta is None:
        report.wrong.append(f"{iid}: does not exist")
        return
    detail = build_detail(meta, history)
    if not detail.status.finished:
        open_steps = [f"{step.type} {step.name!r}" for step in detail.steps if step.end is None]
        at = f" at {', '.join(open_steps)}" if open_steps else ""
        sent = "" if record.event_sent_ms is None else f"; its event was sent at {record.event_sent_ms / 1000:.1f}"
        report.stuck.append(f"{iid} ({detail.status.value}{at}{sent})")
    elif detail.status != "complete":
        report.wrong.append(f"{iid}: {detail.status.value} {detail.error}")
    elif detail.output != expected_output(iid, record.approval):
        report.wrong.append(f"{iid}: output {detail.output!r}")
    else:
        report.completed += 1

    results = Counter((r.get("ref"), r["n"], r["c"]) for r in history if r["k"] == "res")
    report.duplicated_commits += [f"{iid} {ref} {n!r}#{c} x{k}" for (ref, n, c), k in results.items() if k > 1]

    ran: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for execution in executions:
        ran.setdefault((execution["step"], execution["count"]), []).append(execution)
    for step in detail.steps:
        if step.type != "step":
            continue
        runs = ran.pop((step.name, step.count), [])
        report.reexecuted += max(0, len(runs) - 1)
        committed_ms = _ms(step.end) if step.success else None
        won = next((a.attempt for a in step.attempts if a.success), None)
        for execution in runs:
            late = committed_ms is not None and execution["start_ms"] > committed_ms
            if late or (won is not None and execution["attempt"] > won):
                report.after_commit.append(
                    f"{iid} {step.name!r}#{step.count}: attempt {execution['attempt']} on {execution['worker']} "
                    f"started {(execution['start_ms'] - (committed_ms or 0)) / 1000:+.2f} s after attempt {won} "
                    "was committed"
                )
    for (name, count), runs in ran.items():
        report.after_commit.append(f"{iid} {name!r}#{count}: {len(runs)} execution(s) of a step history lacks")

    if detail.output and isinstance(detail.output, dict) and detail.output.get("second") is not None:
        report.events_twice.append(f"{iid}: second approval {detail.output['second']!r}")

    stall, where = _stall(detail.queued, detail.start, detail.end, detail.steps, record)
    if stall > report.max_stall_s:
        report.max_stall_s, report.stall_where = stall, f"{iid} {where}"


def _stall(
    queued: datetime, start: datetime | None, end: datetime | None, steps: list[StepDetail], record: InstanceRecord
) -> tuple[float, str]:
    """The longest an instance was held up beyond its own schedule, and where (seconds, label).

    Each step, sleep and wait is expected to take its nominal time (a step body's seconds, the
    sleep, the wait until the event was sent, the second wait's window) from when it was issued;
    anything beyond that, and any gap between one ending and the next being issued, is a stall.
    """
    worst, where = 0.0, ""

    def consider(delay_ms: float, label: str) -> None:
        nonlocal worst, where
        if delay_ms / 1000 > worst:
            worst, where = delay_ms / 1000, label

    if start is None:
        return worst, where
    consider((start - queued).total_seconds() * 1000, "start")
    previous = start.timestamp() * 1000
    params = record.params
    for step in steps:
        issued = step.start.timestamp() * 1000
        consider(issued - previous, f"before {step.name!r}")
        finished = _ms(step.end)
        if finished is None:
            break
        if step.type == "step":
            nominal = issued + params[step.name] * 1000
        elif step.type == "sleep":
            nominal = issued + params["nap"] * 1000
        elif step.name == "approval":
            nominal = max(issued, record.event_sent_ms or issued)
        else:
            nominal = issued + params["window"] * 1000
        consider(finished - nominal, repr(step.name))
        previous = finished
    if end is not None:
        consider(end.timestamp() * 1000 - previous, "before the end")
    return worst, where


def check_dead_letters(report: Report, bodies: list[bytes], poison: set[bytes]) -> None:
    """Dead letters must be exactly the poison messages injected."""
    report.dead_letters = len(bodies)
    report.foreign_dead_letters = [body[:60].hex() for body in bodies if body not in poison]


def decode_execution(raw: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(raw)
    return record


def _faults_summary(faults: list[str]) -> str:
    kinds = Counter(fault.split(" ", 1)[0] for fault in faults)
    return " ".join(f"{kind}:{n}" for kind, n in kinds.items()) or "none"


COLUMNS = (
    "scenario",
    "inst.",
    "faults",
    "done",
    "stuck",
    "wrong",
    "2x commit",
    "re-run",
    "after commit",
    "2x event",
    "DLQ/poison",
    "undrained",
    "stall s",
    "quiesce s",
    "run s",
    "verdict",
)
LEGEND = (
    "done: completed with the right output; 2x commit: a step/sleep/wait result committed twice; re-run: step\n"
    "executions beyond one per step (an interrupted attempt runs again: allowed); after commit: executions that\n"
    "started after their step's result was committed (never allowed); 2x event: an event delivered twice;\n"
    "undrained: messages (leases aside) left in the partition queues, queued or delivered and never acked;\n"
    "stall s: the longest an instance was held up beyond its own schedule; quiesce s: from the end of the last\n"
    "fault to the last instance finishing."
)


def row(report: Report, verdict: str | None = None) -> list[str]:
    """One table row for a report."""
    return [
        report.scenario,
        str(report.instances),
        _faults_summary(report.faults),
        str(report.completed),
        str(len(report.stuck)),
        str(len(report.wrong)),
        str(len(report.duplicated_commits)),
        str(report.reexecuted),
        str(len(report.after_commit)),
        str(len(report.events_twice)),
        f"{report.dead_letters}/{report.poison_sent}",
        str(report.left_in_queues),
        f"{report.max_stall_s:.1f}",
        "-" if report.quiesce_s is None else f"{report.quiesce_s:.1f}",
        f"{report.runtime_s:.0f}",
        verdict or ("ok" if report.ok else "FAILED"),
    ]


def render(reports: list[Report], *, title: str, verdicts: dict[str, str] | None = None) -> str:
    """A rich table of reports, as text (so tests can print it and put it in failure messages)."""
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold", max_width=22 if column == "faults" else None)
    for report in reports:
        table.add_row(*row(report, (verdicts or {}).get(report.scenario)))
    buffer = io.StringIO()
    Console(file=buffer, width=180, force_terminal=False, color_system=None).print(table)
    details = []
    for report in reports:
        where = f", at {report.stall_where}" if report.stall_where else ""
        details.append(f"{report.scenario}: seed {report.seed}; longest stall {report.max_stall_s:.1f} s{where}")
        details += [f"{report.scenario}: {problem}" for problem in report.problems()]
    return buffer.getvalue() + "".join(f"  {line}\n" for line in details) + LEGEND + "\n"
