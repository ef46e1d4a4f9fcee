"""Child workflows that return: an order invokes a billing workflow per shipment and sums the invoices.

Run it: ``python -m examples.billing``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hutch
from hutch import ChildWorkflowError, WorkflowEntrypoint


class InvoiceWorkflow(WorkflowEntrypoint):
    """Bills one shipment; refuses an empty one."""

    async def run(self, event: Any, step: Any) -> Any:
        lines = event.payload["lines"]
        if not lines:
            raise ValueError("nothing to bill")
        total = await step.do("price lines", lambda: sum(line["qty"] * line["cents"] for line in lines))
        return {"shipment": event.payload["shipment"], "cents": total}


class ShippedOrderWorkflow(WorkflowEntrypoint):
    """Invokes one billing child per shipment, concurrently, and returns what was billed and what failed."""

    async def run(self, event: Any, step: Any) -> Any:
        shipments = event.payload["shipments"]
        calls = [
            step.invoke(f"bill {s['id']}", self.env.BILLING, {"shipment": s["id"], "lines": s["lines"]})
            for s in shipments
        ]
        billed, failed = [], []
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, ChildWorkflowError):
                failed.append({"child": outcome.instance_id, "error": outcome.message})
            else:
                billed.append(outcome)
        return {"cents": sum(b["cents"] for b in billed), "billed": billed, "failed": failed}


SAMPLE = {
    "shipments": [
        {"id": "s1", "lines": [{"qty": 2, "cents": 1250}]},
        {"id": "s2", "lines": [{"qty": 1, "cents": 499}]},
        {"id": "s3", "lines": []},
    ]
}


async def main() -> None:
    async with await hutch.connect({"order": ShippedOrderWorkflow, "billing": InvoiceWorkflow}) as client:
        order = await client.workflow("order").create(id="order-7", params=SAMPLE)
        print((await order.wait(timeout=30)).output)


if __name__ == "__main__":
    asyncio.run(main())
