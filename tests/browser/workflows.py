"""Workflows the dashboard's browser tests drive through ``hutch dev``."""

from __future__ import annotations

from typing import Any

from hutch import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


class Gated(WorkflowEntrypoint):
    """Prepares, waits for a ``go`` event, then finishes with the params it got (HTML included)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """Prepare, wait for ``go``, finish."""
        await step.do("prepare", lambda: {"ready": True})
        go = await step.wait_for_event("wait for go", "go", timeout="1 hour")
        return await step.do("finish", lambda: {"params": event.payload, "go": go.payload})


class Sleeper(WorkflowEntrypoint):
    """Runs a step, then sleeps an hour: something to pause, resume, terminate and restart."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """One step, then a long sleep."""
        await step.do("first", lambda: 1)
        await step.sleep("nap", "1 hour")
        return "woke"


class Failing(WorkflowEntrypoint):
    """Fails with an error whose message is HTML, after one retry."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """A step that always fails."""

        def boom() -> None:
            raise ValueError("<img src=x onerror=alert(1)> went wrong")

        await step.do("explode", boom, config={"retries": {"limit": 1, "delay": 0.2}})
