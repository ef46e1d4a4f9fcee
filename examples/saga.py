"""A saga: book a trip in three steps and undo the finished ones, newest first, when a later one fails.

Run it (the card is declined, so the flight and hotel bookings are cancelled)::

    hutch run examples/saga.py:TripBookingWorkflow --params '{"tripId": "T-1", "declineCard": true}'

Each ``@step.with_rollback`` step registers an undo with ``@<step>.undo``. When a step fails,
``step.rollback_all(error)`` runs the undos of the steps that completed — each one a durable
step of its own (``rollback book hotel``, ``rollback book flight``), retried by its config and
never repeated once it succeeded, even if the worker crashes in the middle of the rollback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

QUICK_RETRIES = {"retries": {"limit": 3, "delay": "100 milliseconds", "backoff": "constant"}}


class TripBookingWorkflow(WorkflowEntrypoint):
    """Books a flight, a hotel and charges the card for ``{"tripId", "declineCard"}``; compensates on failure."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        """Run the bookings; on failure roll back what was booked and report why."""
        trip = event.payload if isinstance(event.payload, Mapping) else {}
        trip_id = str(trip.get("tripId", event.instance_id))

        @step.with_rollback("book flight", config=QUICK_RETRIES)
        async def flight() -> dict[str, str]:
            return {"flight": f"FL-{trip_id}"}  # the airline's API in real life

        @flight.undo
        async def cancel_flight(error: Exception, booking: dict[str, str]) -> dict[str, str]:
            return {"cancelled": booking["flight"], "because": str(error)}

        @step.with_rollback("book hotel", config=QUICK_RETRIES)
        async def hotel() -> dict[str, str]:
            return {"hotel": f"HT-{trip_id}"}

        # The undo may have its own retry policy; without one it runs with the step's config.
        @hotel.undo(config={"retries": {"limit": 10, "delay": "1 second", "backoff": "exponential"}})
        async def cancel_hotel(error: Exception, booking: dict[str, str]) -> dict[str, str]:
            return {"cancelled": booking["hotel"], "because": str(error)}

        @step.with_rollback("charge card", config=QUICK_RETRIES)
        async def charge() -> dict[str, str]:
            if trip.get("declineCard"):
                raise NonRetryableError("card declined")
            return {"charge": f"ch-{trip_id}"}

        try:
            booked = {**await flight(), **await hotel(), **await charge()}
        except Exception as error:
            # Undoes the hotel, then the flight (the charge never completed, so it has nothing to undo).
            await step.rollback_all(error)
            return {"tripId": trip_id, "status": "cancelled", "reason": str(error)}
        return {"tripId": trip_id, "status": "booked", **booked}
