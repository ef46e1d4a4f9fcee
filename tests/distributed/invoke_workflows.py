"""Workflows of the ``step.invoke`` crash tests (tests/distributed/test_invoke.py), run by worker processes.

Step bodies count their attempts and apply their side effect once through the ledger of
tests/distributed/workflows.py, so the test can tell what ran how often across a SIGKILL.
"""

from __future__ import annotations

from hutch import ChildWorkflowError, WorkflowEntrypoint

from tests.distributed.workflows import _body

_RETRIES = {"retries": {"limit": 3, "delay": "100 milliseconds", "backoff": "constant"}}


class InvokeChild(WorkflowEntrypoint):
    """One step of ``seconds``; then fails, or waits for a "go" event, when asked."""

    async def run(self, event, step):
        iid, p = event.instance_id, event.payload
        done = await step.do("work", lambda: _body(iid, "work", float(p.get("seconds", 0))), config=_RETRIES)
        if p.get("fail"):
            raise ValueError("the child failed")
        if p.get("wait"):
            await step.wait_for_event("go", "go", timeout="1 hour")
        return {"child": iid, "did": done["step"]}


class InvokeParent(WorkflowEntrypoint):
    """Invokes one child (id and params from its own params), then records that it got the outcome."""

    async def run(self, event, step):
        p = event.payload
        try:
            out = await step.invoke("child", "invchild", p["child"], id=p["child_id"])
        except ChildWorkflowError as exc:
            out = {"error": [exc.instance_id, exc.error_name, exc.message]}
        await step.do("received", lambda: _body(event.instance_id, "received", 0.0), config=_RETRIES)
        return out
