"""Order processing: validate, reserve inventory (with a retry), charge the card, cool down, ship.

Run it (from the repository root)::

    hutch run examples/order.py:OrderWorkflow --params '{"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}'

The inventory service in this example is down on the first attempt, so the progress view shows
a failed attempt, the retry being scheduled, and the second attempt succeeding. The services
(inventory, payments, shipping) are simulated by the small functions at the bottom of the file;
in a real application they would be HTTP calls or database writes, reached through ``self.env``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from hutch import NonRetryableError, StepContext, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

# Unit prices in cents; an unknown SKU is rejected by the validation step.
PRICES_CENTS = {"X": 1250, "Y": 499, "Z": 9900}


class OrderWorkflow(WorkflowEntrypoint):
    """Takes an order ``{"orderId": str, "items": [{"sku": str, "qty": int}, ...]}`` to shipment."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        """Validate, reserve, charge, cool down, ship; returns a summary of the order."""

        # A sync step: bad input can never succeed, so it raises NonRetryableError and the
        # instance fails at once instead of burning retries.
        @step.do("validate order")
        def validate_order() -> dict[str, Any]:
            return validate(event.payload)

        order = await validate_order()

        # Decorator form with an explicit retry policy. The step takes ``ctx`` to learn which
        # attempt this is; the simulated inventory service fails the first one.
        @step.do(
            "reserve inventory",
            config={"retries": {"limit": 3, "delay": "200 milliseconds", "backoff": "exponential"}, "timeout": "10 s"},
        )
        async def reserve_inventory(ctx: StepContext) -> dict[str, Any]:
            return await reserve(order["orderId"], order["items"], attempt=ctx.attempt)

        reservation = await reserve_inventory()

        # Call form with a sync function (it runs in the worker's thread pool). The idempotency
        # key makes a re-executed attempt (e.g. after a worker crash) safe to send again.
        charge = await step.do(
            "charge card",
            lambda: charge_card(order["orderId"], order["totalCents"], idempotency_key=f"order-{order['orderId']}"),
            config={"retries": {"limit": 2, "delay": "1 second"}},
        )

        # A durable sleep: the instance holds no worker memory while it waits. A real shop might
        # give the customer 30 minutes to cancel; the example keeps it short.
        await step.sleep("cool down", "1 second")

        shipment = await step.do("ship", lambda: ship(order["orderId"], reservation["reservationId"]))

        return {
            "orderId": order["orderId"],
            "status": "shipped",
            "totalCents": order["totalCents"],
            "chargeId": charge["chargeId"],
            "reservationId": reservation["reservationId"],
            "trackingNumber": shipment["trackingNumber"],
        }


# --------------------------------------------------------------------------- simulated services
def validate(payload: Any) -> dict[str, Any]:
    """Check the params and price the order; raises NonRetryableError for bad input."""
    if not isinstance(payload, Mapping):
        raise NonRetryableError('params must be an object like {"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}')
    order_id = payload.get("orderId")
    if not isinstance(order_id, str) or not order_id:
        raise NonRetryableError("params need an 'orderId' string")
    items = payload.get("items")
    if not items:
        raise NonRetryableError(f"order {order_id} has no items")
    lines = []
    for item in items:
        if not isinstance(item, Mapping):
            raise NonRetryableError(f"order {order_id}: each item must be an object with 'sku' and 'qty'")
        sku, qty = item.get("sku"), item.get("qty")
        if sku not in PRICES_CENTS:
            raise NonRetryableError(f"order {order_id}: unknown SKU {sku!r}")
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            raise NonRetryableError(f"order {order_id}: quantity of {sku!r} must be a positive integer")
        lines.append({"sku": sku, "qty": qty})
    total = sum(PRICES_CENTS[line["sku"]] * line["qty"] for line in lines)
    return {"orderId": order_id, "items": lines, "totalCents": total}


async def reserve(order_id: str, items: list[dict[str, Any]], *, attempt: int) -> dict[str, Any]:
    """Reserve stock; unavailable on the first attempt to show a retry."""
    if attempt == 1:
        raise ConnectionError("inventory service unavailable (simulated outage on the first attempt)")
    return {"reservationId": f"res-{order_id}", "skus": [item["sku"] for item in items]}


def charge_card(order_id: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
    """Charge the customer's card (a payment provider call in real life)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
    return {"chargeId": f"ch_{digest}", "amountCents": amount_cents, "orderId": order_id}


def ship(order_id: str, reservation_id: str) -> dict[str, Any]:
    """Hand the reserved goods to the carrier."""
    digest = hashlib.sha256(f"{order_id}/{reservation_id}".encode()).hexdigest()[:10].upper()
    return {"trackingNumber": f"TRK{digest}", "carrier": "example-post"}
