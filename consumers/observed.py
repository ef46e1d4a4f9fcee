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
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from hutch import logs, metrics
from hutch.consumers.items import StepDone
from hutch.history import Record
from hutch.serialization import unpack
from hutch.status import FINISHED
from hutch.store.base import CommitResult, Transition
from prometheus_client import Histogram

log = logging.getLogger("hutch.instances")

_COMMITTED = metrics.COMMITS.labels("committed")


class _StepSeries:
    """The series of one (workflow, step), looked up once, and what a turn counted for them so far."""

    __slots__ = ("dirty", "duration", "durations", "error", "n_error", "n_ok", "n_retries", "ok", "retries")

    def __init__(self, workflow: str, step: str) -> None:
        # labels() takes a lock and builds a key each time: once per series, not per attempt.
        self.ok = metrics.STEP_ATTEMPTS.labels(workflow, step, "ok")
        self.error = metrics.STEP_ATTEMPTS.labels(workflow, step, "error")
        self.retries = metrics.STEP_RETRIES.labels(workflow, step)
        self.duration = metrics.STEP_DURATION.labels(workflow, step)
        self.n_ok = self.n_error = self.n_retries = 0
        self.durations: list[float] = []
        self.dirty = False

    def flush(self) -> None:
        if self.n_ok:
            self.ok.inc(self.n_ok)
        if self.n_error:
            self.error.inc(self.n_error)
        if self.n_retries:
            self.retries.inc(self.n_retries)
        if self.durations:
            _observe_all(self.duration, self.durations)
        self.n_ok = self.n_error = self.n_retries = 0
        self.durations = []
        self.dirty = False


_STEPS: dict[tuple[str, str], _StepSeries] = {}


class _Tally:
    """What the transitions committed since the last :func:`flush` counted, not yet in the metrics.

    Counting into plain ints and adding them to the Prometheus series once per turn (an
    orchestrator turn commits up to a few dozen transitions) keeps the locks and label lookups
    of prometheus_client off the per-step path (issue 14: metrics within 5 % of W1 without them).
    """

    __slots__ = ("committed", "finished", "steps")

    def __init__(self) -> None:
        self.committed = 0
        self.steps: list[_StepSeries] = []  # the series counted into since the last flush
        self.finished: dict[tuple[str, str], int] = {}  # (workflow, status) -> instances


_tally = _Tally()


def flush() -> None:
    """Add what was counted since the last flush to the metrics (the orchestrator calls it after each turn)."""
    tally = _tally
    if tally.committed:
        _COMMITTED.inc(tally.committed)
        tally.committed = 0
    if tally.steps:
        for series in tally.steps:
            series.flush()
        tally.steps = []
    if tally.finished:
        for (workflow, status), n in tally.finished.items():
            metrics.INSTANCES_FINISHED.labels(workflow, status).inc(n)
        tally.finished = {}


def _observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one lock per bucket touched rather than two per value.

    prometheus_client has no bulk observe; this adds to the buckets and the sum it keeps (its
    ``_upper_bounds``, ``_buckets`` and ``_sum``, stable since 0.4), and falls back to
    ``observe`` if a version keeps them otherwise. tests/test_metrics.py checks both give the same.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        i = bisect_left(bounds, value)  # the first bound >= value, as observe() picks it (+Inf last)
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)


class ObservedInstance(Protocol):
    """What is read of an instance's owner-side state (the consumers actor)."""

    workflow: str
    instance_id: str
    trace: str
    history: list[Record]
    appended: int  # how many records at the end of history the committed transition added


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

    ``instance.history`` must end with the ``instance.appended`` records the transition added, as
    the owner appends them.
    """
    if not metrics.enabled():
        _log_committed(instance, transition)
        return
    tally = _tally
    tally.committed += 1
    n = instance.appended
    workflow = instance.workflow
    results: dict[tuple[str, int, int], StepDone] | None = None
    for record in instance.history[-n:] if n else ():
        if record["k"] != "attend":
            continue
        if results is None:
            results = {(i.name, i.count, i.attempt): i for i in inputs if isinstance(i, StepDone)}
        _count_attempt(workflow, record, results.get((record["n"], record["c"], record["a"])))
        if not record["ok"]:
            _log_failed_attempt(instance, record)
    if _finishes(transition):
        key = (workflow, transition.status_to)
        tally.finished[key] = tally.finished.get(key, 0) + 1
        _log_finished(instance, transition)


def _count_attempt(workflow: str, record: Record, done: StepDone | None) -> None:
    """Count one ended attempt (``done``: its result, when this worker ran it) into the tally."""
    assert record["k"] == "attend"
    step = record["n"]
    series = _STEPS.get((workflow, step))
    if series is None:
        series = _STEPS[(workflow, step)] = _StepSeries(workflow, step)
    if not series.dirty:
        series.dirty = True
        _tally.steps.append(series)
    if done is not None:
        series.durations.append(max(0, done.end_ms - done.start_ms) / 1000)
    if record["ok"]:
        series.n_ok += 1
    else:
        series.n_error += 1
        if "retry_at" in record:
            series.n_retries += 1


def _log_committed(instance: ObservedInstance, transition: Transition) -> None:
    n = instance.appended
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
