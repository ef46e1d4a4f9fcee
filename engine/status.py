"""Instance statuses and what ``status()`` and ``describe()`` return."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from hutch.concurrency import SLOT_WAIT_FIELD
from hutch.events import ms_to_datetime
from hutch.history import (
    AttemptEnded,
    InvokeCommand,
    Record,
    Resolution,
    RetryWait,
    SleepCommand,
    StepCommand,
    WaitCommand,
)
from hutch.serialization import unpack
from hutch.versions import META_FIELD as VERSION_FIELD
from hutch.versions import WAITING_FIELD
from pydantic import BaseModel, ConfigDict


class Status(StrEnum):
    """The lifecycle status of an instance (Cloudflare's names)."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    ERRORED = "errored"
    TERMINATED = "terminated"
    COMPLETE = "complete"
    WAITING = "waiting"
    WAITING_FOR_PAUSE = "waitingForPause"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        """Whether the status is final (complete, errored or terminated)."""
        return self in FINISHED


FINISHED = frozenset({Status.COMPLETE, Status.ERRORED, Status.TERMINATED})
"""The final statuses (a stored status string is in it too: a :class:`Status` is its value)."""

Action = Literal["pause", "resume", "terminate", "restart"]
"""A lifecycle request (``Instance.pause()`` ..., the API's ``PATCH .../status``, the broker's control message)."""


class ErrorInfo(BaseModel):
    """Why an instance or a step failed."""

    model_config = ConfigDict(frozen=True)

    name: str
    message: str


class InstanceStatus(BaseModel):
    """``{status, output, error}`` of an instance; ``output`` is None until ``complete``."""

    model_config = ConfigDict(frozen=True)

    status: Status
    output: Any = None
    error: ErrorInfo | None = None


class AttemptDetail(BaseModel):
    """One attempt of a step.

    A failed attempt that was retried has ``retry_at``, and ``retry_delay_from`` says where that
    wait came from: ``"backoff"`` (the step's retries config) or ``"error"`` (the error asked for
    it: ``RetryAfter``, a ``retry_after`` attribute, an HTTP ``Retry-After``; capped by
    ``max_delay``). ``retry_refused``: the step's ``retry_if`` refused to retry this attempt's error.
    """

    attempt: int
    start: datetime
    end: datetime | None = None
    success: bool | None = None
    error: ErrorInfo | None = None
    retry_at: datetime | None = None
    retry_delay_from: RetryWait | None = None
    retry_refused: bool = False


class InstanceLink(BaseModel):
    """Another instance ``describe()`` links to: an invoke's child, or the parent that invoked this one.

    ``step`` and ``count`` name the parent's invoke (on a parent link only).
    """

    workflow: str
    instance_id: str
    step: str | None = None
    count: int | None = None


class StepDetail(BaseModel):
    """One step, sleep, wait or invoke (a child workflow: see ``child``) of an instance, in issue order."""

    type: Literal["step", "sleep", "waitForEvent", "invoke"]
    name: str
    count: int
    start: datetime
    end: datetime | None = None
    success: bool | None = None
    config: dict[str, Any] | None = None
    attempts: list[AttemptDetail] = []
    output: Any = None
    error: ErrorInfo | None = None
    due: datetime | None = None
    event_type: str | None = None
    outcome: str | None = None  # sleeps: "completed"/"cancelled"; waits: "received"/"timed out"/"cancelled"
    depends: list[str] = []  # DAG steps: the names of the steps this one depends on
    child: InstanceLink | None = None  # invokes: the child instance


class PatchDetail(BaseModel):
    """A patch this instance's code reached first with the patch (``step.patched`` answered True)."""

    id: str
    at: datetime
    deprecated: bool = False  # recorded by step.deprecate_patch


class SlotWait(BaseModel):
    """The concurrency limit a queued instance waits for (hutch.concurrency).

    ``limit``: ``max_concurrency`` (the workflow's) or ``max_concurrency_per_key``; ``key``: the
    instance's ``concurrency_key`` value for the latter; ``position``: how many wait ahead of it
    (0: it takes the next free slot), None when it is no longer in that queue.
    """

    limit: str
    key: str | None = None
    position: int | None = None


class InstanceDetail(BaseModel):
    """What ``describe()`` returns: Cloudflare's instance detail.

    ``version``: the code version the instance started on (see :mod:`hutch.versions`; None before
    it started, or for one started before versions were recorded). ``waiting_for_version``: the
    version it needs to go on while the worker owning it has no class of that version.
    """

    id: str
    workflow: str
    status: Status
    params: Any = None
    trigger: dict[str, Any] = {}
    queued: datetime
    start: datetime | None = None
    end: datetime | None = None
    output: Any = None
    error: ErrorInfo | None = None
    steps: list[StepDetail] = []
    version: str | None = None
    waiting_for_version: str | None = None
    waiting_for_slot: SlotWait | None = None
    patches: list[PatchDetail] = []
    parent: InstanceLink | None = None  # set on a child created by a parent's step.invoke


_STEP_TYPE: dict[str, Literal["step", "sleep", "waitForEvent", "invoke"]] = {
    "step": "step",
    "sleep": "sleep",
    "wait": "waitForEvent",
}


def status_from_meta(meta: dict[str, Any]) -> InstanceStatus:
    """The ``status()`` view of an instance's meta fields."""
    status = Status(meta.get("status", "unknown"))
    error = meta.get("error")
    return InstanceStatus(
        status=status,
        output=meta.get("output") if status is Status.COMPLETE else None,
        error=ErrorInfo(**error) if error else None,
    )


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)


def build_detail(meta: dict[str, Any], history: Sequence[Record]) -> InstanceDetail:
    """The ``describe()`` view: meta plus every step in issue order with its attempts and outcome."""
    steps: dict[tuple[str, str, int], StepDetail] = {}
    patches: list[PatchDetail] = []
    for r in history:
        if r["k"] == "step" or r["k"] == "sleep" or r["k"] == "wait" or r["k"] == "invoke":
            steps[(r["k"], r["n"], r["c"])] = _issued(r)
            continue
        if r["k"] == "life":
            continue
        if r["k"] == "patch":
            patches.append(PatchDetail(id=r["n"], at=ms_to_datetime(r["t"]), deprecated=r.get("dep", False)))
            continue
        # Attempts are a step's; a retime or a resolution or cancel names the kind it is about.
        detail = steps.get(("step" if r["k"] == "att" or r["k"] == "attend" else r["ref"], r["n"], r["c"]))
        if detail is not None:
            _apply(detail, r)
    return _instance_detail(meta, list(steps.values()), patches)


def _apply(detail: StepDetail, r: Record) -> None:
    """Update a step's detail with a later record about it: an attempt, a retime, its resolution or cancel."""
    if r["k"] == "att":
        detail.attempts.append(AttemptDetail(attempt=r["a"], start=ms_to_datetime(r["t"])))
    elif r["k"] == "attend" and detail.attempts:
        _end_attempt(detail.attempts[-1], r)
    elif r["k"] == "retime":
        detail.due = _at(r["due"])
    elif r["k"] == "res":
        _resolve(detail, r)
    elif r["k"] == "cancel":
        detail.end = ms_to_datetime(r["t"])
        detail.outcome = "cancelled"


def _end_attempt(attempt: AttemptDetail, r: AttemptEnded) -> None:
    attempt.end = ms_to_datetime(r["t"])
    attempt.success = r["ok"]
    attempt.error = ErrorInfo(**r["err"]) if r.get("err") else None
    attempt.retry_at = _at(r.get("retry_at"))
    if "retry_at" in r:
        attempt.retry_delay_from = r.get("wait", "backoff")  # recorded since error-driven waits exist
    attempt.retry_refused = r.get("stop") == "retry_if"


def _resolve(detail: StepDetail, r: Resolution) -> None:
    detail.end = ms_to_datetime(r["t"])
    detail.success = r["ok"]
    if r["ok"]:
        if "vb" in r:
            detail.output = unpack(r["vb"])
        if "ev" in r:
            ev = r["ev"]
            detail.output = {"type": ev["type"], "payload": ev.get("payload"), "timestamp": _at(ev["ts"])}
    else:
        detail.error = ErrorInfo(**r["err"])
    detail.outcome = _outcome(detail.type, r["ok"])


def _instance_detail(meta: dict[str, Any], steps: list[StepDetail], patches: list[PatchDetail]) -> InstanceDetail:
    """The instance's own fields from its meta, around its steps and patches."""
    error = meta.get("error")
    status = Status(meta.get("status", "unknown"))
    parent = meta.get("parent")
    return InstanceDetail(
        id=meta["id"],
        workflow=meta["wf"],
        status=status,
        params=meta.get("params"),
        trigger=meta.get("trigger") or {},
        queued=ms_to_datetime(meta["created"]),
        start=_at(meta.get("started")),
        end=_at(meta.get("ended")),
        output=meta.get("output") if status is Status.COMPLETE else None,
        error=ErrorInfo(**error) if error else None,
        steps=steps,
        version=meta.get(VERSION_FIELD),
        waiting_for_version=meta.get(WAITING_FIELD),
        waiting_for_slot=SlotWait(**meta[SLOT_WAIT_FIELD])
        if meta.get(SLOT_WAIT_FIELD) and status not in FINISHED
        else None,
        patches=patches,
        parent=InstanceLink(workflow=parent["wf"], instance_id=parent["id"], step=parent["n"], count=parent["c"])
        if parent
        else None,
    )


def _issued(r: StepCommand | SleepCommand | WaitCommand | InvokeCommand) -> StepDetail:
    if r["k"] == "invoke":
        return StepDetail(
            type="invoke",
            name=r["n"],
            count=r["c"],
            start=ms_to_datetime(r["t"]),
            config={"parent_close": r["close"]},
            child=InstanceLink(workflow=r["wf"], instance_id=r["id"]),
        )
    return StepDetail(
        type=_STEP_TYPE[r["k"]],
        name=r["n"],
        count=r["c"],
        start=ms_to_datetime(r["t"]),
        config=r.get("cfg") if r["k"] == "step" else None,
        depends=list(r.get("deps") or ()) if r["k"] == "step" else [],
        due=_at(r.get("due")) if r["k"] != "step" else None,
        event_type=r.get("type") if r["k"] == "wait" else None,
    )


def _outcome(step_type: str, ok: bool) -> str:
    if step_type == "sleep":
        return "completed"
    if step_type == "waitForEvent":
        return "received" if ok else "timed out"
    return "succeeded" if ok else "failed"
