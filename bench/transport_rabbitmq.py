"""RabbitMQ transport micro-benchmark: one partition, publisher confirms, manual acks.

Prints (never asserts) three figures for a single partition queue (quorum, single active consumer):

- round trip: ``publish([one])`` (returns on the confirm) → ``on_delivery`` → ``ack``, one message
  at a time; p50 / p99 in ms;
- confirmed publish throughput: batches published back to back, nobody consuming;
- publish + consume throughput: the same batches while a subscriber acknowledges every delivery.

Usage::

    python -m bench.transport_rabbitmq [--url amqp://guest:guest@127.0.0.1:5672/] [--messages 20000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from hutch.broker.transports.base import Delivery, Outgoing, PartitionListener
from hutch.broker.transports.rabbitmq import RabbitMQTransport


class _Acker(PartitionListener):
    """Acknowledges every delivery from one task, counting them and stamping arrivals."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self.received = 0
        self.done = asyncio.Event()
        self.expected = 0
        self.arrived: asyncio.Queue[float] = asyncio.Queue()

    def on_delivery(self, delivery: Delivery) -> None:
        self.arrived.put_nowait(time.perf_counter())
        self.inbox.put_nowait(delivery)

    async def on_assigned(self, partition: int) -> None:
        pass

    async def on_revoked(self, partition: int) -> None:
        pass

    async def run(self) -> None:
        while True:
            delivery = await self.inbox.get()
            await delivery.ack()
            self.received += 1
            if self.expected and self.received >= self.expected:
                self.done.set()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(url: str, messages: int, batch: int, round_trips: int) -> None:
    """Run the three measurements on a fresh namespace and delete it afterwards."""
    transport = RabbitMQTransport(url, partitions=1, namespace=f"hutch-bench-{uuid.uuid4().hex[:8]}")
    await transport.start()
    body = b"x" * 200  # about the size of an encoded envelope
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    try:
        # Round trip, one message at a time.
        acker = _Acker()
        subscription = await transport.subscribe([0], acker, prefetch=1000)
        async with asyncio.TaskGroup() as tasks:
            acking = tasks.create_task(acker.run())
            latencies: list[float] = []
            for i in range(round_trips + 50):
                started = time.perf_counter()
                await transport.publish([Outgoing(0, body, headers)])
                arrived = await acker.arrived.get()
                if i >= 50:  # warm-up
                    latencies.append((arrived - started) * 1000)
            confirm: list[float] = []
            for _ in range(round_trips):
                started = time.perf_counter()
                await transport.publish([Outgoing(0, body, headers)])
                confirm.append((time.perf_counter() - started) * 1000)
                await acker.arrived.get()
            acking.cancel()
        await subscription.close()
        for label, values in (("round trip publish→deliver", latencies), ("publish confirm, 1 message", confirm)):
            print(f"{label:28}  p50 {statistics.median(values):.3f} ms  p99 {_percentile(values, 0.99):.3f} ms")

        # Confirmed publish throughput, nobody consuming.
        batches = [[Outgoing(0, body, headers) for _ in range(batch)] for _ in range(messages // batch)]
        started = time.perf_counter()
        for chunk in batches:
            await transport.publish(chunk)
        elapsed = time.perf_counter() - started
        print(f"publish only      {messages / elapsed:8.0f} msg/s  ({messages} messages, batches of {batch})")

        # Drain what was just published, then publish + consume together.
        acker = _Acker()
        acker.expected = messages
        async with asyncio.TaskGroup() as tasks:
            acking = tasks.create_task(acker.run())
            subscription = await transport.subscribe([0], acker, prefetch=1000)
            started = time.perf_counter()
            await acker.done.wait()
            elapsed = time.perf_counter() - started
            print(f"consume only      {messages / elapsed:8.0f} msg/s  (prefetch 1000, one ack per message)")
            acker.received, acker.done = 0, asyncio.Event()
            started = time.perf_counter()
            for chunk in batches:
                await transport.publish(chunk)
            await acker.done.wait()
            elapsed = time.perf_counter() - started
            acking.cancel()
        await subscription.close()
        print(f"publish + consume {messages / elapsed:8.0f} msg/s  (one process, confirms and acks)")
    finally:
        await transport.delete_topology()
        await transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--round-trips", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.messages, args.batch, args.round_trips))
