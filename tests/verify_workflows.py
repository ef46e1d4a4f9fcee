"""Workflow versions for tests/test_verify.py: the deployed code, a compatible change, breaking changes.

``hutch workflows verify --code tests/verify_workflows.py:<Class>`` loads them by file, as a user's
CI would load the new code. Step bodies count their calls in ``BODY_CALLS``: replay must leave it alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hutch import WorkflowEntrypoint, WorkflowEvent, WorkflowStep

BODY_CALLS: Counter[str] = Counter()
"""Step body calls by class name: a replay that ran a step body would show up here."""


def _body(owner: str, value: Any) -> Any:
    BODY_CALLS[owner] += 1
    return value


class Deployed(WorkflowEntrypoint):
    """The code the instances started on: two steps, a long sleep, a last step."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """Reserve and charge, then wait an hour before shipping (params ``{"quick": true}``: stop after charging)."""
        reserved = await step.do("reserve", lambda: _body("Deployed", {"sku": event.payload.get("sku", "X")}))
        charged = await step.do("charge", lambda: _body("Deployed", {"ok": True, **reserved}))
        if event.payload.get("quick"):
            return charged
        await step.sleep("cool down", "1 hour")
        return await step.do("ship", lambda: _body("Deployed", "shipped"))


class Compatible(WorkflowEntrypoint):
    """New step bodies, a new step after the sleep: instances already in flight replay unchanged."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """The deployed commands in the same order; different bodies; one more step at the end."""
        reserved = await step.do("reserve", lambda: _body("Compatible", {"sku": "changed"}))
        charged = await step.do("charge", lambda: _body("Compatible", {"ok": True, **reserved, "v": 2}))
        if event.payload.get("quick"):
            return charged
        await step.sleep("cool down", "1 hour")
        await step.do("ship", lambda: _body("Compatible", "shipped"))
        return await step.do("notify", lambda: _body("Compatible", "notified"))


class RenamedStep(WorkflowEntrypoint):
    """``charge`` renamed: every instance past it diverges at position 2."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """The deployed workflow with its second step renamed."""
        reserved = await step.do("reserve", lambda: _body("RenamedStep", {"sku": "X"}))
        charged = await step.do("charge card", lambda: _body("RenamedStep", {"ok": True, **reserved}))
        if event.payload.get("quick"):
            return charged
        await step.sleep("cool down", "1 hour")
        return await step.do("ship", lambda: _body("RenamedStep", "shipped"))


class Reordered(WorkflowEntrypoint):
    """The sleep moved before the steps: diverges at position 1."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """Sleep first, then the steps."""
        await step.sleep("cool down", "1 hour")
        await step.do("reserve", lambda: _body("Reordered", {}))
        await step.do("charge", lambda: _body("Reordered", {}))
        return await step.do("ship", lambda: _body("Reordered", "shipped"))


class StopsEarly(WorkflowEntrypoint):
    """Returns after ``reserve``: history has more commands than the code asks for."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """Only the first step."""
        return await step.do("reserve", lambda: _body("StopsEarly", {}))
