"""The context a step callable may accept as ``ctx``."""

from __future__ import annotations

from dataclasses import dataclass

from hutch.config import StepConfig


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Which step this is: its name and the 1-based count of calls with that name so far."""

    name: str
    count: int


@dataclass(frozen=True, slots=True)
class StepContext:
    """Passed to a step callable that takes a parameter: ``ctx.step.name``, ``ctx.attempt``, ``ctx.config``."""

    step: StepInfo
    attempt: int
    config: StepConfig
