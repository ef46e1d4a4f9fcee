"""Structured logs: JSON lines carrying the instance and step they are about (SPEC §13).

Whatever runs for an instance binds its fields in a context variable (:func:`bound`): the worker
around a step attempt (workflow, instance id, step name and count, attempt, trace id), the
executor around ``run()``. :class:`ContextFilter` copies them onto every record logged there —
the user's own ``logging`` calls in a step body included — and drops the records ``run()``
logs while it is being replayed, so a replay logs nothing twice (temporal's
``log_during_replay``). :class:`JsonFormatter` writes one JSON object per line.

:func:`configure` sets up the root logger for the ``hutch`` commands: JSON by default when
stderr is not a terminal, text otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")

FIELDS = ("workflow", "instance_id", "step", "step_count", "attempt", "trace_id")
"""The context fields a record carries, when known where it was logged."""

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("hutch_log_context", default=MappingProxyType({}))
_RUN: ContextVar[RunningWorkflow | None] = ContextVar("hutch_log_run", default=None)
# What every LogRecord has: anything else on a record was passed as ``extra`` and is written out.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _Event(Protocol):
    @property
    def workflow_name(self) -> str: ...

    @property
    def instance_id(self) -> str: ...


class RunningWorkflow(Protocol):
    """What the filter reads of an executing ``run()`` (:class:`hutch.executor.WorkflowRun`)."""

    @property
    def replaying(self) -> bool:
        """True while ``run()`` is re-run against recorded history."""
        ...

    @property
    def event(self) -> _Event:
        """The instance's event (its workflow name and instance id)."""
        ...


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """While inside (and in tasks and threads started from here), records carry ``fields``."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: Any) -> None:
    """Records carry ``fields`` for the rest of the current task (whose context is its own) and what it starts."""
    _CONTEXT.set({**_CONTEXT.get(), **fields})


@contextlib.contextmanager
def running(run: RunningWorkflow) -> Iterator[None]:
    """Tasks created inside belong to ``run``: their records carry its instance and are dropped while it replays."""
    token = _RUN.set(run)
    try:
        yield
    finally:
        _RUN.reset(token)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-01``), None without one."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


class ContextFilter(logging.Filter):
    """Adds the bound context fields to each record, and drops what a replaying ``run()`` logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record of a replay; otherwise True, with the context fields the record lacks."""
        run = _RUN.get()
        if run is not None:
            if run.replaying:
                return False
            _set_missing(record, {"workflow": run.event.workflow_name, "instance_id": run.event.instance_id})
        context = _CONTEXT.get()
        if context:
            _set_missing(record, context)
        return True


def _set_missing(record: logging.LogRecord, fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if value is not None and key not in record.__dict__:
            setattr(record, key, value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, then the context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (an exception's traceback under ``exc``)."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """The text format, with the context fields a record carries appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={record.__dict__[k]}" for k in FIELDS if k in record.__dict__)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # after the message, before a traceback
        return f"{head} [{extras}]{sep}{tail}"


def default_format() -> LogFormat:
    """JSON when stderr is not a terminal (a container, a pipe, a file), text on a terminal."""
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str | int = logging.INFO, fmt: LogFormat | None = None) -> None:
    """Log to stderr at ``level`` in ``fmt`` (default :func:`default_format`), replacing the root's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if (fmt or default_format()) == "json" else _TextFormatter(_TEXT))
    # On the handler, not a logger: a filter on a logger misses records of its child loggers.
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
