"""What following an instance reports: its events, what is in progress, how it ended, and where it goes.

:class:`ProgressEvent` is one thing that happened; :class:`Active` one thing in progress now;
:class:`RunResult` how following ended; :class:`ProgressSink` the renderer that receives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from hutch import ErrorInfo, Instance, InstanceDetail, Status

# JSON key of ProgressEvent.due, by event kind.
_DUE_KEY = {
    "retry.scheduled": "retry_at",
    "sleep.started": "wake_at",
    "sleep.rescheduled": "wake_at",
    "wait.started": "timeout_at",
    "wait.rescheduled": "timeout_at",
}
# The fields written to JSON when set, in this order (the due time and the error come after them).
_FIELDS = (
    "step", "count", "attempt", "duration_ms", "event_type", "child_workflow", "child_id", "retry_delay_from",
    "retry_refused", "version", "status", "payload", "output",
)  # fmt: skip
# Fields kept in JSON even when None (a step may return None; an event may carry no payload).
_ALWAYS = {
    "attempt.succeeded": ("output",),
    "invoke.returned": ("output",),
    "wait.received": ("payload",),
    "event.sent": ("payload",),
}


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Something that happened to the instance, in the order it happened.

    ``kind`` is one of ``status``, ``attempt.started``, ``attempt.succeeded``,
    ``attempt.failed``, ``retry.scheduled``, ``step.failed``, ``step.cancelled``,
    ``sleep.started``, ``sleep.rescheduled``, ``sleep.completed``, ``sleep.cancelled``,
    ``wait.started``, ``wait.rescheduled``, ``wait.received``, ``wait.timed_out``,
    ``wait.cancelled``, ``invoke.started``, ``invoke.returned``, ``invoke.failed``,
    ``invoke.cancelled``, ``version.waiting`` or ``event.sent``. ``due`` is the retry, wake or
    timeout time; ``retry_delay_from`` says where a retry's wait came from (``"backoff"`` or
    ``"error"``) and ``retry_refused`` that ``retry_if`` refused to retry a failed step;
    ``child_workflow``/``child_id`` name an invoke's child; ``version`` is the code version an
    instance waits for (no worker owning it has it).
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
    retry_delay_from: str | None = None
    retry_refused: bool | None = None
    child_workflow: str | None = None
    child_id: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"event": kind, "at": ISO time, ...}`` without empty fields."""
        data: dict[str, Any] = {"event": self.kind, "at": iso_time(self.at)}
        keep = _ALWAYS.get(self.kind, ())
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None or name in keep:
                data[name] = value
        if self.due is not None:
            data[_DUE_KEY.get(self.kind, "due")] = iso_time(self.due)
        if self.error is not None:
            data["error"] = self.error.model_dump()
        return data


@dataclass(frozen=True, slots=True)
class Active:
    """Something in progress right now, for the live region.

    A running attempt, a pending retry, a sleep, a wait, or a child workflow.
    """

    kind: str  # "attempt" | "retry" | "sleep" | "wait" | "invoke"
    step: str
    count: int
    since: datetime
    attempt: int | None = None
    due: datetime | None = None
    event_type: str | None = None
    child: str | None = None  # an invoke's child: "workflow/id"


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


def iso_time(when: datetime) -> str:
    """``2030-01-01T00:00:00.000Z``: a time as the JSON output writes it (UTC, milliseconds)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


def elapsed_ms(delta: timedelta) -> int:
    """A time span in whole milliseconds, never negative (``duration_ms``)."""
    return max(0, round(delta.total_seconds() * 1000))
