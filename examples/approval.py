"""Human approval: park the instance until a manager decides, escalate when nobody does.

Run it and approve from the command line (``hutch run`` sends the event once the instance
waits for it)::

    hutch run examples/approval.py:ApprovalWorkflow \\
        --params '{"requestId": "PR-7", "requester": "ada", "amountCents": 120000, "timeout": "1 hour"}' \\
        --event 'approval={"approved": true, "approver": "grace"}'

Or let the wait time out to see the escalation path::

    hutch run examples/approval.py:ApprovalWorkflow --params '{"requestId": "PR-8", "timeout": "2 seconds"}'

From application code, the decision arrives as an event sent to the instance::

    instance = await client.workflow("approval-workflow").get("PR-7")
    await instance.send_event("approval", {"approved": True, "approver": "grace"})

While it waits, the instance is ``waiting`` and holds no worker memory, for as long as the
timeout (default 24 hours; at most 365 days).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch import EventTimeoutError, NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

DEFAULT_TIMEOUT = "24 hours"
ESCALATION_CONTACT = "finance-leads@example.com"


class ApprovalWorkflow(WorkflowEntrypoint):
    """A purchase request ``{"requestId", "requester", "amountCents", "timeout"}`` awaiting a decision."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        """Notify the approver, wait for an ``approval`` event, then provision or reject."""
        request = await step.do("record request", lambda: record_request(event.payload, event.instance_id))

        await step.do("notify approver", lambda: notify(request["approver"], f"please review {request['requestId']}"))

        try:
            # The payload is whatever the sender put in the event: {"approved": bool, "approver": str}.
            decision = await step.wait_for_event("manager approval", "approval", timeout=request["timeout"])
        except EventTimeoutError:
            # Nobody decided in time: tell the escalation contact and auto-reject, so the
            # requester is not left waiting forever. The error is caught, so the instance
            # still completes (with a "rejected" outcome) rather than ending errored.
            await step.do(
                "escalate",
                lambda: notify(ESCALATION_CONTACT, f"{request['requestId']} had no decision in {request['timeout']}"),
            )
            return {"requestId": request["requestId"], "decision": "rejected", "reason": "timed out", "by": None}

        approved = bool(decision.payload.get("approved")) if isinstance(decision.payload, Mapping) else False
        approver = decision.payload.get("approver") if isinstance(decision.payload, Mapping) else None
        if approved:
            await step.do("provision", lambda: provision(request["requestId"], request["amountCents"]))
        else:
            await step.do("notify requester", lambda: notify(request["requester"], f"{request['requestId']} rejected"))
        return {
            "requestId": request["requestId"],
            "decision": "approved" if approved else "rejected",
            "reason": "decided",
            "by": approver,
        }


# --------------------------------------------------------------------------- simulated services
def record_request(payload: Any, instance_id: str) -> dict[str, Any]:
    """Store the request and pick its approver; bad params fail the instance at once."""
    if not isinstance(payload, Mapping):
        raise NonRetryableError('params must be an object like {"requestId": "PR-7", "timeout": "1 hour"}')
    amount = payload.get("amountCents", 0)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise NonRetryableError("'amountCents' must be a non-negative integer")
    timeout = payload.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, str | int | float) or isinstance(timeout, bool):
        raise NonRetryableError("'timeout' must be a duration like \"2 hours\" or a number of seconds")
    return {
        "requestId": payload.get("requestId") or instance_id,
        "requester": payload.get("requester", "unknown"),
        "amountCents": amount,
        # Larger amounts go to a more senior approver.
        "approver": "cfo@example.com" if amount >= 1_000_000 else "manager@example.com",
        "timeout": timeout,
    }


def notify(recipient: str, message: str) -> dict[str, str]:
    """Send a notification (an email or chat message in real life)."""
    return {"to": recipient, "message": message}


def provision(request_id: str, amount_cents: int) -> dict[str, Any]:
    """Carry out the approved request."""
    return {"requestId": request_id, "budgetReservedCents": amount_cents}
