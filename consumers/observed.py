"""What the worker logs and counts of what it commits: failed attempts, finished instances, conflicts.

Everything here reads what a *committed* transition recorded (the records it appended, the
status it set) and the step results it consumed, all in memory already: no I/O, and nothing of
replayed history, since replay rebuilds an instance without committing (SPEC §13: replay logs
nothing). A rejected commit is recomputed, so only :func:`committed` after a commit that
succeeded counts; :func:`rejected` counts and logs the rejection itself.

Log lines carry their instance's fields as ``extra`` (see :mod:`hutch.logs`); the logger is
``hutch.instances``, so ``hutch dev`` shows them even where it quiets ``hutch.worker``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from hutch import logs, metrics
from hutch.consumers.items import StepDone
from hutch.history import Record
from hutch.serialization import unpack
from hutch.status import FINISHED
from hutch.store.base import CommitResult, Transition
from prometheus_client import Counter, Histogram

log = logging.getLogger("hutch.instances")

_COMMITTED = metrics.COMMITS.labels("committed")


class _StepSeries(NamedTuple):
    ok: Counter
    error: Counter
    retries: Counter
    duration: Histogram


# The series of each (workflow, step), looked up once: labels() takes a lock and builds a key each time.
_STEPS: dict[tuple[str, str], _StepSeries] = {}


def _step_series(workflow: str, step: str) -> _StepSeries:
    series = _STEPS[(workflow, step)] = _StepSeries(
        metrics.STEP_ATTEMPTS.labels(workflow, step, "ok"),
        metrics.STEP_ATTEMPTS.labels(workflow, step, "error"),
        metrics.STEP_RETRIES.labels(workflow, step),
        metrics.STEP_DURATION.labels(workflow, step),
    )
    return series


class ObservedInstance(Protocol):
    """What is read of an instance's owner-side state (the consumers actor)."""

    workflow: str
    instance_id: str
    trace: str
    history: list[Record]


def fields(instance: ObservedInstance, **more: Any) -> dict[str, Any]:
    """The log ``extra`` of a line about ``instance``."""
    return {
        "workflow": instance.workflow,
        "instance_id": instance.instance_id,
        "trace_id": logs.trace_id(instance.trace),
        **more,
    }


def committed(instance: ObservedInstance, transition: Transition, inputs: Iterable[object]) -> None:
    """Count and log what a committed transition recorded; ``inputs`` are what it consumed.

    ``instance.history`` must end with the transition's records, as the owner appends them.
    """
    if not metrics.enabled():
        _log_committed(instance, transition)
        return
    _COMMITTED.inc()
    n = len(transition.history)
    records = instance.history[-n:] if n else []
    results = {(i.name, i.count, i.attempt): i for i in inputs if isinstance(i, StepDone)}
    workflow = instance.workflow
    for record in records:
        if record["k"] != "attend":
            continue
        step = record["n"]
        series = _STEPS.get((workflow, step)) or _step_series(workflow, step)
        (series.ok if record["ok"] else series.error).inc()
        done = results.get((step, record["c"], record["a"]))
        if done is not None:
            series.duration.observe(max(0, done.end_ms - done.start_ms) / 1000)
        if not record["ok"]:
            if "retry_at" in record:
                series.retries.inc()
            _log_failed_attempt(instance, record)
    if _finishes(transition):
        metrics.INSTANCES_FINISHED.labels(workflow, transition.status_to).inc()
        _log_finished(instance, transition)


def _log_committed(instance: ObservedInstance, transition: Transition) -> None:
    n = len(transition.history)
    for record in instance.history[-n:] if n else []:
        if record["k"] == "attend" and not record["ok"]:
            _log_failed_attempt(instance, record)
    if _finishes(transition):
        _log_finished(instance, transition)


def _finishes(transition: Transition) -> bool:
    return transition.status_to in FINISHED and transition.status_to != transition.status_from


def _log_failed_attempt(instance: ObservedInstance, record: Record) -> None:
    assert record["k"] == "attend"
    error = record.get("err") or {}
    retry_at = record.get("retry_at")
    if retry_at is not None:
        then = f"retrying in {max(0, retry_at - record['t']) / 1000:.3f} s"
    elif record.get("stop") == "retry_if":
        then = "not retried: its retry_if refused the error"
    else:
        then = "no retry left"
    log.warning(
        "step %r#%d attempt %d failed: %s: %s (%s)",
        record["n"],
        record["c"],
        record["a"],
        error.get("name", "Error"),
        error.get("message", ""),
        then,
        extra=fields(
            instance,
            step=record["n"],
            step_count=record["c"],
            attempt=record["a"],
            error_type=error.get("name"),
            error_message=error.get("message"),
            retry_at_ms=retry_at,
        ),
    )


def _log_finished(instance: ObservedInstance, transition: Transition) -> None:
    status = transition.status_to
    if status != "errored":
        log.info(
            "instance %s/%s %s", instance.workflow, instance.instance_id, status, extra=fields(instance, status=status)
        )
        return
    raw = transition.meta.get("error")
    error: Mapping[str, Any] = {}
    if isinstance(raw, bytes):
        decoded = unpack(raw)
        error = decoded if isinstance(decoded, dict) else {}
    log.error(
        "instance %s/%s errored: %s: %s",
        instance.workflow,
        instance.instance_id,
        error.get("name", "Error"),
        error.get("message", ""),
        extra=fields(instance, status=status, error_type=error.get("name"), error_message=error.get("message")),
    )


def rejected(instance: ObservedInstance, result: CommitResult, level: int) -> None:
    """Count and log one rejected commit (a conflict, or fenced: another worker owns the partition now)."""
    if metrics.enabled():
        metrics.COMMITS.labels(result.name.lower()).inc()
    log.log(
        level,
        "instance %s/%s: commit rejected (%s); reloading",
        instance.workflow,
        instance.instance_id,
        result.name,
        extra=fields(instance, commit=result.name.lower()),
    )


def dead_lettered(partition: int, reason: str, workflow: str | None = None, instance_id: str | None = None) -> None:
    """Count and log one message the worker dead-letters."""
    if metrics.enabled():
        metrics.DEAD_LETTERS.inc()
    log.warning(
        "dead-lettering a message on partition %d: %s",
        partition,
        reason,
        extra={"partition": partition, **({"workflow": workflow, "instance_id": instance_id} if workflow else {})},
    )
