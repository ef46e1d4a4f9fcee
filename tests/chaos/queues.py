"""Whether a run's partition queues drained, read from RabbitMQ itself.

Once every instance finished, nothing may wait in a partition queue, nor sit delivered to a consumer
that never acknowledges it (that blocks its partition's queue). RabbitMQ's counts of unacknowledged
quorum-queue messages are statistics that lag, so :func:`undrained` stops the workers first, which
hands back whatever they held, and then reads the queues exactly: they must hold nothing but their
lease (consumers/membership.py: one message per partition queue that its owner keeps
unacknowledged on purpose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import aiormq
from hutch.broker import names
from hutch.consumers import membership

from tests.distributed.procs import WorkerProcess
from tests.helpers import eventually

#: The header of the lease message each partition queue holds (consumers/membership.py).
LEASE_HEADER = getattr(membership, "LEASE_HEADER", "x-hutch-lease")


async def undrained(url: str, namespace: str, partitions: int, workers: Sequence[WorkerProcess]) -> int:
    """Kill ``workers`` and count the messages, leases aside, left in the namespace's partition queues.

    Called once every instance finished; ``url`` is one node's AMQP URL.
    """

    async def nothing_ready() -> bool:
        ready = sum(count for count, _ in await queue_counts(url, namespace, partitions))
        return ready <= partitions  # leases may be between owners

    with contextlib.suppress(AssertionError):
        await eventually(nothing_ready, timeout=15, interval=0.2)
    for worker in workers:  # killed, not closed: their output stays for the report
        if worker.proc is not None and worker.proc.returncode is None:
            worker.kill()
            await worker.wait(timeout=10)

    async def handed_back() -> bool:
        return not any(consumers for _, consumers in await queue_counts(url, namespace, partitions))

    with contextlib.suppress(AssertionError):
        await eventually(handed_back, timeout=15, interval=0.2)
    return await messages_but_leases(url, namespace, partitions)


async def queue_counts(url: str, namespace: str, partitions: int) -> list[tuple[int, int]]:
    """Ready messages and consumers of each partition queue (a passive declare: exact, not a statistic)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        counts = []
        for p in range(partitions):
            ok = await channel.queue_declare(names.partition_queue(namespace, p), passive=True)
            counts.append((int(ok.message_count or 0), int(ok.consumer_count or 0)))
        return counts
    finally:
        await connection.close()


async def messages_but_leases(url: str, namespace: str, partitions: int) -> int:
    """How many messages the partition queues hold besides their leases (when nobody consumes them).

    Read by consuming without acknowledging; closing the connection puts them back.
    """
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1000)
        seen: list[dict[str, Any]] = []
        expected = 0
        for p in range(partitions):
            queue = names.partition_queue(namespace, p)
            expected += int((await channel.queue_declare(queue, passive=True)).message_count or 0)

            async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                seen.append(dict(message.header.properties.headers or {}))

            await channel.basic_consume(queue, on_message, no_ack=False)

        async def all_seen() -> bool:
            return len(seen) >= expected

        with contextlib.suppress(AssertionError):
            await eventually(all_seen, timeout=10, interval=0.05)
        return sum(1 for headers in seen if LEASE_HEADER not in headers)
    finally:
        await connection.close()
