"""A publish the broker nacks is published again on a new channel until the broker takes it.

A quorum queue whose leader went away nacks publishes, and a channel can go on nacking one queue
after a new leader took over (tests/distributed/test_broker_node_loss.py shows it on a cluster).
Here the shared broker nacks for a plainer reason it gives the same answer for: the partition
queue is replaced by one that is full (``x-max-length`` 1, ``reject-publish``), then emptied.
"""

from __future__ import annotations

import asyncio

import aiormq
import pytest
from hutch.broker import names
from hutch.broker.transports.base import Outgoing
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.helpers import eventually, unique

pytestmark = [pytest.mark.rabbitmq]


async def _full_partition_queue(amqp_url: str, transport: RabbitMQTransport) -> aiormq.abc.AbstractChannel:
    """Replace partition 0's queue by one holding one message at most, and fill it; a channel to empty it."""
    connection = await aiormq.connect(amqp_url)
    channel = await connection.channel()
    queue = names.partition_queue(transport.namespace, 0)
    await channel.queue_delete(queue)
    full: dict[str, aiormq.abc.FieldValue] = {
        "x-queue-type": "quorum",
        "x-max-length": 1,
        "x-overflow": "reject-publish",
    }
    await channel.queue_declare(queue, durable=True, arguments=full)
    await channel.queue_bind(queue, names.work_exchange(transport.namespace), routing_key=queue)
    # A quorum queue rejects publishes once it is *over* its limit: the second message takes it there.
    await transport.publish([Outgoing(0, b"first"), Outgoing(0, b"over")])
    return channel


async def test_a_nacked_publish_goes_again_on_a_new_channel_until_the_broker_takes_it(amqp_url: str) -> None:
    transport = RabbitMQTransport(amqp_url, partitions=1, namespace=unique("hutch-test"), publish_timeout_s=20.0)
    await transport.start()
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        channel = await _full_partition_queue(amqp_url, transport)
        loop = asyncio.get_running_loop()
        began = loop.time()
        second = asyncio.create_task(transport.publish([Outgoing(0, b"second")]))
        await eventually(lambda: _true(transport.publish_channels_replaced >= 2), timeout=10)
        assert not second.done()  # nacked, and published again rather than failed
        await channel.queue_purge(names.partition_queue(transport.namespace, 0))
        await asyncio.wait_for(second, timeout=5)
        replaced = transport.publish_channels_replaced
        print(f"\nconfirmed {loop.time() - began:.2f} s after the publish began, after {replaced} new channels")
        assert await transport.ready_count(0) == 1
    finally:
        if channel is not None:
            await channel.connection.close()
        await transport.delete_topology()
        await transport.close()


async def test_a_publish_nacked_until_its_deadline_fails_saying_so(amqp_url: str) -> None:
    transport = RabbitMQTransport(amqp_url, partitions=1, namespace=unique("hutch-test"), publish_timeout_s=1.0)
    await transport.start()
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        channel = await _full_partition_queue(amqp_url, transport)
        refused = r"did not confirm 1 of 1 message\(s\) within 1.0 s \(last: the broker refused"
        with pytest.raises(TimeoutError, match=refused):
            await transport.publish([Outgoing(0, b"second")])
    finally:
        if channel is not None:
            await channel.connection.close()
        await transport.delete_topology()
        await transport.close()


async def _true(value: bool) -> bool:
    return value
