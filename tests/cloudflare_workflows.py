"""A workflow for the Cloudflare API tests: two rollback steps, then a wait only an event ends.

Each booking returns a fresh id, so a restart from a step shows which results were kept (same id)
and which steps ran again (new id); a terminate with rollback shows its undos as steps.
"""

from __future__ import annotations

import uuid
from typing import Any

from hutch import WorkflowEntrypoint, WorkflowEvent, WorkflowStep

NO_RETRY = {"retries": {"limit": 0}}


class Trip(WorkflowEntrypoint):
    """Books a flight and a hotel, waits for ``confirm``, returns both bookings."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def booking(name: str) -> Any:
            @step.with_rollback(f"book {name}", config=NO_RETRY)
            def book() -> str:
                return f"{name}-{uuid.uuid4().hex}"

            @book.undo(config=NO_RETRY)
            def cancel(error: Exception, booked: str) -> str:
                return f"cancelled {booked}"

            return book

        flight = await booking("flight")()
        hotel = await booking("hotel")()
        await step.wait_for_event("confirm", "confirm", timeout="1 hour")
        return [flight, hotel]
