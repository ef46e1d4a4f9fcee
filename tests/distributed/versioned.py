"""Two versions of one workflow for the rolling-deploy test (tests/distributed/test_rolling_deploy.py).

The second renames the first step: replaying an instance of one on the other's code raises
``NondeterminismError``, so an instance that completes proves it ran on the version it started on
(each also returns its own version).
"""

from __future__ import annotations

from typing import Any

from hutch import WorkflowEntrypoint


async def _rest(step: Any, params: dict[str, Any]) -> None:
    await step.sleep("nap", params.get("sleep", 0))
    await step.wait_for_event("go", "go", "1 hour")


class OrderV1(WorkflowEntrypoint):
    version = "1"

    async def run(self, event: Any, step: Any) -> dict[str, Any]:
        reserved = await step.do("reserve", lambda: "v1")
        await _rest(step, event.payload or {})
        return {"version": "1", "reserved": reserved}


class OrderV2(WorkflowEntrypoint):
    version = "2"

    async def run(self, event: Any, step: Any) -> dict[str, Any]:
        reserved = await step.do("reserve stock", lambda: "v2")
        await _rest(step, event.payload or {})
        return {"version": "2", "reserved": reserved}
