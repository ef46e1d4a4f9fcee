"""Concurrency limits and priorities of a workflow: what they are and how an instance waits for a slot.

A workflow class may cap how many of its instances run at once, across every worker::

    class Export(WorkflowEntrypoint):
        max_concurrency = 3                          # at most 3 instances running at a time
        concurrency_key = "{params.customerId}"      # and per customer...
        max_concurrency_per_key = 1                  # ...at most 1

A *slot* of a limit is held while an instance is ``running`` (or ``waitingForPause``); a queued,
sleeping, waiting, paused or finished instance holds none. An instance that finds a limit full
stays ``queued`` (or, woken from a sleep or wait, stops before its next step) and waits in that
limit's queue, ordered by priority (``create(..., priority=n)``: lower first, like DBOS and
Temporal; default 0), then by creation time. The slots live in Redis under the limit's own hash
tag (:meth:`hutch.keys.Keys.limit_holders`); consumers/slots.py takes and gives them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hutch.entrypoint import WorkflowEntrypoint
from hutch.errors import InvalidInputError

PRIORITY_FIELD = "priority"
"""The instance meta field holding its priority (absent: 0)."""

SLOT_WAIT_FIELD = "slotwait"
"""The instance meta field naming the limit it waits for (msgpack ``{"limit", "key"}``; None once it has a slot)."""

MAX_PRIORITY = 1000
"""Priorities range from ``-MAX_PRIORITY`` to ``MAX_PRIORITY`` (so a waiter's score stays an exact float)."""

_CREATED_BITS = 2**42
"""Creation times (epoch ms) stay below this until the year 2109: the waiter score's priority unit."""


def check_priority(priority: Any) -> int:
    """``priority`` as an int, checked; raises :class:`~hutch.errors.InvalidInputError` naming the range."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInputError(
            f"priority {priority!r} must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY} (lower starts first)"
        )
    return priority


def waiter_score(priority: int, created_ms: int) -> int:
    """Where an instance waits in a limit's queue: by priority (lower first), then by creation (older first)."""
    return priority * _CREATED_BITS + created_ms


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """A workflow's limits, read from its class.

    Attributes:
        max_concurrency: instances of the workflow running at once at most (None: no limit).
        concurrency_key: a template over the params (``"{params.customerId}"``) naming each
            instance's key; instances with the same key share ``max_concurrency_per_key`` slots.
        max_concurrency_per_key: the per-key limit (used with ``concurrency_key``).
    """

    max_concurrency: int | None = None
    concurrency_key: str | None = None
    max_concurrency_per_key: int = 1


def concurrency_of(cls: type[WorkflowEntrypoint]) -> ConcurrencyConfig | None:
    """The limits ``cls`` declares, or None when it declares none (it then pays nothing for them).

    Raises:
        InvalidInputError: a limit that is not a positive integer, or a key that is not a string.
    """
    limit = getattr(cls, "max_concurrency", None)
    template = getattr(cls, "concurrency_key", None)
    per_key = getattr(cls, "max_concurrency_per_key", None)
    if limit is None and template is None:
        return None
    name = cls.__qualname__
    for attr, value in (("max_concurrency", limit), ("max_concurrency_per_key", per_key)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidInputError(f"{name}.{attr} = {value!r}: it must be a positive integer")
    if template is not None and (not isinstance(template, str) or not template):
        raise InvalidInputError(f"{name}.concurrency_key = {template!r}: it must be a template such as '{{params.id}}'")
    return ConcurrencyConfig(limit, template, per_key if per_key is not None else 1)
