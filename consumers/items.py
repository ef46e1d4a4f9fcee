"""What a partition owner processes besides broker messages: results of local step attempts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StepDone:
    """One attempt of a step finished on this worker (success or failure)."""

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
    retryable: bool = True
