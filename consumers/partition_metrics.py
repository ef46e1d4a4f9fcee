"""The partition gauges of a worker: partitions owned, queue depth and age of the oldest waiting message.

Sampled every ``interval_s`` (``HUTCH_METRICS_SAMPLE_S``, 15 s by default), never on the path of
a message: the depth is what the broker reports for each owned queue (``ready_count``, whose
round trip is also the broker latency sample), and the age comes from deliveries the worker
receives anyway — while messages wait behind the last one delivered, none of them is older
than it, so its age now bounds theirs (0 once the queue is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from hutch import metrics
from hutch.broker.transports.base import Delivery, Transport
from hutch.cancelling import cancel_requested

log = logging.getLogger("hutch.worker")


class PartitionSampler:
    """Samples the gauges of the partitions ``owned()`` returns, for as long as :meth:`run` runs.

    Args:
        transport: the broker the partition queues live on.
        owned: the partitions this worker owns right now.
        interval_s: seconds between samples.
    """

    def __init__(self, transport: Transport, owned: Callable[[], Iterable[int]], interval_s: float) -> None:
        self._transport = transport
        self._owned = owned
        self._interval_s = interval_s
        self._published_ms: dict[int, int] = {}  # partition → publish time of the last message delivered
        self._labelled: set[int] = set()

    def delivered(self, delivery: Delivery) -> None:
        """Note a delivery's publish time (no I/O: called for every message)."""
        published = delivery.published_ms
        if published is not None:
            self._published_ms[delivery.partition] = published

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a failed sample is logged and retried next time."""
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
                # aiormq cancels the RPC of a channel it closes (a broker that stalled under load):
                # that stray cancellation is a failed sample, not a reason to stop the worker.
                log.debug("sampling the partition metrics was cut short by the broker client")
            except Exception as exc:  # a gauge left stale must never stop the worker
                log.debug("sampling the partition metrics failed: %r", exc)
            await asyncio.sleep(self._interval_s)

    async def sample(self) -> None:
        """Read every owned partition's queue depth once and set the gauges."""
        owned = sorted(self._owned())
        metrics.PARTITIONS_OWNED.set(len(owned))
        for gone in self._labelled - set(owned):
            self._published_ms.pop(gone, None)
            for gauge in (metrics.QUEUE_DEPTH, metrics.OLDEST_MESSAGE_AGE):
                with contextlib.suppress(KeyError):  # never set (no sample or no dated delivery yet)
                    gauge.remove(str(gone))
        self._labelled = set(owned)
        for partition in owned:
            started = time.perf_counter()
            depth = await self._transport.ready_count(partition)
            metrics.BROKER_ROUND_TRIP.observe(time.perf_counter() - started)
            metrics.QUEUE_DEPTH.labels(str(partition)).set(depth)
            published = self._published_ms.get(partition)
            if published is not None:
                age_s = max(0.0, time.time() - published / 1000) if depth else 0.0
                metrics.OLDEST_MESSAGE_AGE.labels(str(partition)).set(age_s)
