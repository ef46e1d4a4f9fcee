"""Restart from a step: which step (:class:`FromStep`) and where its command sits in history.

``instance.restart(from_step=("charge", 1))`` keeps every history record before that step's
command — so replay returns the earlier steps' recorded results without running them — and runs
the workflow again from that step (Cloudflare's ``restart({from: {name, count, type}})``). The
client checks the step against history before it sends the request, and the instance's owner
looks it up again when it applies it: both with :func:`command_position`, the one copy of the rule.
"""

from __future__ import annotations

from typing import Literal

from hutch.errors import InvalidInputError
from hutch.history import Record
from pydantic import BaseModel, ConfigDict, Field, ValidationError

StepType = Literal["do", "sleep", "waitForEvent"]
"""Cloudflare's names of the commands a restart may start from: ``step.do``, ``step.sleep``, ``step.wait_for_event``."""

_KIND: dict[StepType, str] = {"do": "step", "sleep": "sleep", "waitForEvent": "wait"}


class FromStep(BaseModel):
    """The step a restart runs again from: the ``count``-th command named ``name`` (of ``type`` when given)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=256, description="The step's name.")
    count: int = Field(default=1, ge=1, description="Which command of that name, from 1 (a name used in a loop).")
    type: StepType | None = Field(default=None, description="Only a command of this type (any, when omitted).")

    def text(self) -> str:
        """How the step reads in messages: ``step 'charge'#1``."""
        kind = "step" if self.type is None else self.type
        return f"{kind} {self.name!r}#{self.count}"


def command_position(history: list[Record], step: FromStep) -> int | None:
    """The index in ``history`` of the command ``step`` names (None: the current run never issued it).

    Only the workflow's own commands count: none after a terminate's rollback began (its undo
    steps are not the workflow's to restart from).
    """
    kind = None if step.type is None else _KIND[step.type]
    for i, record in enumerate(history):
        if record["k"] == "life":
            if record["what"] == "rollback":
                return None
        elif record["k"] == "step" or record["k"] == "sleep" or record["k"] == "wait" or record["k"] == "invoke":
            if (kind is None or record["k"] == kind) and record["n"] == step.name and record["c"] == step.count:
                return i
    return None


StepSpec = FromStep | str | tuple[str, int] | tuple[str, int, StepType | None]
"""What ``restart(from_step=...)`` takes: a :class:`FromStep`, a name (its first command), ``(name, count)`` or
``(name, count, type)``."""


def from_step_of(value: StepSpec) -> FromStep:
    """``value`` as a :class:`FromStep`; raises :class:`InvalidInputError` naming what is wrong."""
    if isinstance(value, FromStep):
        return value
    try:
        if isinstance(value, str):
            return FromStep(name=value)
        if isinstance(value, tuple) and len(value) in (2, 3):
            return FromStep(name=value[0], count=value[1], type=value[2] if len(value) == 3 else None)
    except ValidationError as exc:
        raise InvalidInputError(f"from_step {value!r} is not valid: {exc}") from None
    raise InvalidInputError(f"from_step {value!r} must be a step name, (name, count) or (name, count, type)")
