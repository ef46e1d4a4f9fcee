"""What a partition owner processes besides broker messages: local step results, creation and event notices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hutch.broker.envelopes import Control, EventReceived


@dataclass(slots=True)
class StepDone:
    """One attempt of a step finished on this worker (success or failure); never modified once posted.

    Not frozen: one is built per step, and a frozen dataclass sets each of its 16 fields through
    ``object.__setattr__`` (several microseconds a step).
    """

    partition: int
    workflow: str
    instance_id: str
    run_no: int
    name: str
    count: int
    attempt: int
    start_ms: int
    end_ms: int
    ok: bool
    value: Any = None
    value_bytes: bytes = b""
    error: dict[str, str] | None = None
    retryable: bool = True  # False: NonRetryableError, or the step's retry_if refused the error
    refused: bool = False  # the step's retry_if refused the error (hutch.consumers.retry.judge_error)
    error_wait_ms: int | None = None  # the wait before a retry the error asked for (uncapped)


@dataclass(frozen=True, slots=True)
class CreatedNotice:
    """A client just created this instance (heard on the store's "created" channel).

    It starts a still-queued instance ahead of its start message, which only confirms it later;
    it does nothing to an instance already started.
    """

    partition: int
    workflow: str
    instance_id: str
    meta: dict[str, Any] | None  # as a load would return it, when the notice carried it


class BatchedControl(Control):
    """One target of a ``ControlBatch``, as its owner applies it: a :class:`Control` with a run fence.

    ``run`` (when set): applied only while the instance is still on that run, so a batch delivered
    again after its restart was committed restarts nothing twice.
    """

    run: int | None = None


@dataclass(frozen=True, slots=True)
class EventHeard:
    """An event announced by its sender (heard on the store's "events" channel), ahead of its broker message.

    Applied as that message would be, once the instance holds ``prev`` (the event the same sender
    sent it before; None: none known), so a lost notice never lets a later event overtake an
    earlier one. The broker message, trailing, is then a copy the instance ignores.
    """

    message: EventReceived
    prev: str | None
    traceparent: str | None = None  # the sender's, as its broker message's headers carry it
