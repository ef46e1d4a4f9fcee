"""A DAG workflow: declare steps with ``depends=[...]`` and let Hutch run them in dependency order.

Run it::

    hutch run examples/dag.py:SalesReportWorkflow --params '{"region": "eu"}'

The graph is a diamond: ``fetch orders`` feeds both ``enrich orders`` and ``sum totals``, which
both feed ``build report``. Awaiting ``build report`` resolves the whole graph: the two fetches run
concurrently, ``fetch orders`` runs once although two steps depend on it, and each step receives
its dependencies' results as the parameters named after them. Every node is a durable step, so
after a crash the instance resumes without recomputing the finished ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch import WorkflowEntrypoint, WorkflowEvent, WorkflowStep

ORDERS = {
    "eu": [{"id": "o-1", "customer": "c-1", "cents": 1250}, {"id": "o-2", "customer": "c-2", "cents": 4999}],
    "us": [{"id": "o-3", "customer": "c-1", "cents": 800}],
}
CUSTOMERS = {"c-1": "Ada Lovelace", "c-2": "Grace Hopper"}


class SalesReportWorkflow(WorkflowEntrypoint):
    """Builds a sales report for ``{"region"}`` from orders and customers, as a diamond of steps."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        """Declare the graph, then await its sink: the dependencies run first."""
        payload = event.payload if isinstance(event.payload, Mapping) else {}
        region = str(payload.get("region", "eu"))

        @step.do("fetch orders")
        async def orders() -> list[dict[str, Any]]:
            return ORDERS.get(region, [])  # an API or database call in real life

        @step.do("fetch customers")
        async def customers() -> dict[str, str]:
            return CUSTOMERS

        # Results arrive by parameter name: ``orders`` and ``customers`` are the functions above.
        @step.do("enrich orders", depends=[orders, customers], concurrent=True)
        def enriched(orders: list[dict[str, Any]], customers: dict[str, str]) -> list[dict[str, Any]]:
            return [{**order, "name": customers.get(order["customer"], "unknown")} for order in orders]

        @step.do("sum totals", depends=[orders])
        def totals(orders: list[dict[str, Any]]) -> dict[str, int]:
            return {"orders": len(orders), "cents": sum(order["cents"] for order in orders)}

        @step.do("build report", depends=[enriched, totals], concurrent=True)
        def report(enriched: list[dict[str, Any]], totals: dict[str, int]) -> dict[str, Any]:
            lines = [f"{o['id']}: {o['name']} {o['cents'] / 100:.2f}" for o in enriched]
            return {"region": region, "lines": lines, **totals}

        return await report()
