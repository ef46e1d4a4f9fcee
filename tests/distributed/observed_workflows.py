"""Workflows whose logs and metrics tests/distributed/test_observability.py reads from a ``hutch worker``."""

from __future__ import annotations

import logging
from typing import Any

from hutch import NonRetryableError, WorkflowEntrypoint
from hutch.context import StepContext
from hutch.events import WorkflowEvent
from hutch.step import WorkflowStep

log = logging.getLogger("tests.observed")

FAST_RETRY = {"retries": {"limit": 3, "delay": "50 ms", "backoff": "constant"}}


class FlakyWorkflow(WorkflowEntrypoint):
    """A step that fails its first attempt, then a sleep long enough to evict the instance (so it replays)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def flaky(ctx: StepContext) -> int:
            if ctx.attempt == 1:
                raise RuntimeError("the first attempt fails")
            log.info("the flaky step succeeded")  # from the step body: carries the attempt's fields
            return ctx.attempt

        attempts = await step.do("flaky", flaky, config=FAST_RETRY)
        log.info("run() got past the flaky step")  # replayed after the sleep: must not log again
        await step.sleep("nap", "3 seconds")
        return attempts


class DoomedWorkflow(WorkflowEntrypoint):
    """A step that fails for good, so the instance errors."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def doomed() -> None:
            raise NonRetryableError("no way")

        return await step.do("doomed", doomed)
