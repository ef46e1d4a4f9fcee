"""How a partition owner settles its broker deliveries: one explicit outcome each, carried out once.

Modelled on aio-pika's ``ProcessContext``, for a turn that handles a batch: every path that
handles a delivery decides its :data:`Outcome` (:class:`Ack`, :class:`Requeue` or
:class:`DeadLetter` with the reason) on its :class:`Settlement`, and leaving the
``async with Settling(...)`` block carries out each decision once, in batch order. Acks thereby
follow the commit they depend on, and no delivery is acknowledged twice or answered with two
outcomes (deciding twice is a bug in the consumer and raises ``RuntimeError``).

A delivery with no outcome when the block is left (an exception ended the turn — Redis was
unreachable —, its partition is not owned here and it is parked, or its subscription is closed)
is left unsettled: the turn holds it and tries again, or the broker hands it out again once its
channel closes. It is never requeued by default, as each requeue counts toward the queue's
delivery limit, which is there for poison messages only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from hutch.broker.transports.base import Delivery

log = logging.getLogger("hutch.worker")


@dataclass(frozen=True, slots=True)
class Ack:
    """The delivery's effects are committed (or it needed none): remove it from its queue."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Hand the delivery back to its queue to be delivered again (counts toward its delivery limit)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Dead-letter the delivery: it can never be processed (``reason`` says why, for operators)."""

    reason: str


Outcome = Ack | Requeue | DeadLetter

ACK = Ack()
REQUEUE = Requeue()


class Settlement:
    """One delivery's settlement: decided once (:meth:`decide`), carried out once by :class:`Settling`."""

    __slots__ = ("delivery", "outcome", "settled")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.outcome: Outcome | None = None
        self.settled = False

    def decide(self, outcome: Outcome) -> None:
        """Decide how the delivery is settled when the :class:`Settling` block is left.

        Raises:
            RuntimeError: an outcome was decided already (a bug in the consumer, not in the message).
        """
        if self.outcome is not None:
            raise RuntimeError(
                f"a delivery on partition {self.delivery.partition} was to be settled as {outcome} after {self.outcome}"
            )
        self.outcome = outcome

    async def _carry_out(self) -> None:
        outcome = self.outcome
        if outcome is None or self.settled:
            return
        self.settled = True
        delivery = self.delivery
        try:
            if isinstance(outcome, Ack):
                await delivery.ack()
            elif isinstance(outcome, Requeue):
                await delivery.nack()
            else:
                await delivery.reject(outcome.reason)
        except Exception as exc:
            # The delivery's channel is gone (a broker reconnect or a released partition): the
            # broker requeues it by itself, and its effects are already committed or not at all.
            log.warning("could not settle a delivery on partition %d as %s: %r", delivery.partition, outcome, exc)


class Settling:
    """Carry out, on leaving the block, the outcome decided for each of ``settlements``, in order.

    Whether the block ends normally or by an exception, each decided outcome is carried out
    exactly once; undecided deliveries are left unsettled (see the module docstring).
    """

    __slots__ = ("_settlements",)

    def __init__(self, settlements: Sequence[Settlement | None]) -> None:
        self._settlements = settlements

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for settlement in self._settlements:
            if settlement is not None:
                await settlement._carry_out()
