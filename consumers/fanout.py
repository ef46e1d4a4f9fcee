"""One broker delivery that carries inputs for many instances (``ControlBatch``), settled once for all of them.

The orchestrator settles each input through its own :class:`~hutch.broker.transports.base.Delivery`
(consumers/settlement.py): the parts of a fanned-out delivery are :class:`PartDelivery` objects
that report their outcome here, and once every part has one the real delivery is settled: requeued
if any part must be retried (every part is idempotent, so redoing the others changes nothing),
dead-lettered with the first reason if one can never be processed (the others were applied; a
redriven copy applies nothing twice), else acknowledged. A part never settled (its turn failed, its
partition went elsewhere) leaves the delivery unsettled, and the broker delivers it again once its
channel closes, as for any other delivery.
"""

from __future__ import annotations

import logging

from hutch.broker.transports.base import Delivery

log = logging.getLogger("hutch.worker")


class Fanout:
    """The shared settlement of one delivery split into ``parts`` inputs."""

    __slots__ = ("_left", "_reason", "_requeue", "delivery")

    def __init__(self, delivery: Delivery, parts: int) -> None:
        self.delivery = delivery
        self._left = parts
        self._requeue = False
        self._reason: str | None = None

    def part(self) -> PartDelivery:
        """The delivery one part is settled through."""
        return PartDelivery(self)

    async def _settled(self, *, requeue: bool = False, reason: str | None = None) -> None:
        self._requeue |= requeue
        if reason is not None and self._reason is None:
            self._reason = reason
        self._left -= 1
        if self._left > 0:
            return
        if self._requeue:
            await self.delivery.nack()
        elif self._reason is not None:
            await self.delivery.reject(self._reason)
        else:
            await self.delivery.ack()


class PartDelivery(Delivery):
    """One part of a fanned-out delivery: settling it reports to its :class:`Fanout`."""

    __slots__ = ("_fanout", "_settled")

    def __init__(self, fanout: Fanout) -> None:
        whole = fanout.delivery
        self._fanout = fanout
        self._settled = False
        self.partition = whole.partition
        self.body = b""  # the whole body is the real delivery's; a part is its input alone
        self.headers = whole.headers
        self.redelivered = whole.redelivered
        self.published_ms = whole.published_ms

    async def ack(self) -> None:
        """This part is done."""
        await self._report()

    async def nack(self) -> None:
        """This part must be retried: the whole delivery is requeued once every part is settled."""
        await self._report(requeue=True)

    async def reject(self, reason: str) -> None:
        """This part can never be processed: the whole delivery is dead-lettered with ``reason``."""
        await self._report(reason=reason)

    async def _report(self, *, requeue: bool = False, reason: str | None = None) -> None:
        if self._settled:  # Settlement settles each delivery once; a second report is a bug
            raise RuntimeError(f"a part of a delivery on partition {self.partition} was settled twice")
        self._settled = True
        await self._fanout._settled(requeue=requeue, reason=reason)
