"""A dead connection to RabbitMQ or Redis is noticed within 2 s, and the transport says so.

A connection cut by a reset is noticed at once; the hard case is a silent one (a network partition,
a frozen server): the socket stays open and nothing arrives. An in-test TCP proxy (tests/tcp_proxy.py)
plays that partition with :meth:`TCPProxy.pause` in front of the shared servers, which are never
touched. Each test prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hutch.broker.transports.base import Delivery, PartitionListener
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.consumers.runtime import open_store
from hutch.settings import Settings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.conftest import AMQP_URL
from tests.helpers import unique
from tests.tcp_proxy import TCPProxy


class Listener(PartitionListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_delivery(self, delivery: Delivery) -> None:
        pass  # nothing is published in these tests

    async def on_assigned(self, partition: int) -> None:
        self.events.append(("assigned", partition))

    async def on_revoked(self, partition: int) -> None:
        self.events.append(("revoked", partition))


class Consumability:
    """Records the transport's consumability changes with the time each was reported."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        self.transport = transport
        self.changes: list[tuple[float, bool]] = []
        self._changed = asyncio.Event()
        transport.on_consumability(self._on_change)

    def _on_change(self) -> None:
        self.changes.append((asyncio.get_running_loop().time(), self.transport.can_consume))
        self._changed.set()

    async def until(self, can_consume: bool, *, after: float, timeout: float) -> float:
        """The time the transport first reported ``can_consume`` after ``after`` (a loop time)."""
        async with asyncio.timeout(timeout):
            while True:
                for at, value in self.changes:
                    if at >= after and value is can_consume:
                        return at
                self._changed.clear()
                await self._changed.wait()


def _proxied(proxy: TCPProxy) -> str:
    return AMQP_URL.replace(":5672", f":{proxy.port}")


@pytest.fixture
async def two_proxies(amqp_url: str) -> AsyncIterator[tuple[TCPProxy, TCPProxy]]:
    """Two "nodes": two proxies in front of the one test broker."""
    async with TCPProxy("127.0.0.1", 5672) as first, TCPProxy("127.0.0.1", 5672) as second:
        yield first, second


async def _delete(transport: RabbitMQTransport) -> None:
    cleaner = RabbitMQTransport(AMQP_URL, partitions=transport.partitions, namespace=transport.namespace)
    await cleaner.start()
    try:
        await cleaner.delete_topology()
    finally:
        await cleaner.close()


@pytest.mark.rabbitmq
async def test_a_silent_broker_is_noticed_within_2_s_and_the_transport_moves_to_another_node(
    two_proxies: tuple[TCPProxy, TCPProxy],
) -> None:
    transport = RabbitMQTransport(
        [_proxied(proxy) for proxy in two_proxies],
        partitions=2,
        namespace=unique("hutch-test"),
        reconnect_interval_s=0.1,
        connect_timeout_s=1.0,
    )
    await transport.start()
    try:
        listener = Listener()
        await transport.subscribe([0, 1], listener, prefetch=10)
        recorded = Consumability(transport)
        assert transport.can_consume and transport.cannot_consume == frozenset()
        on = next(proxy for proxy in two_proxies if f":{proxy.port}/" in (transport.node or ""))
        other = next(proxy for proxy in two_proxies if proxy is not on)
        loop = asyncio.get_running_loop()

        on.pause()  # its "node" is partitioned away: nothing flows, nothing is closed
        paused_at = loop.time()
        noticed_at = await recorded.until(False, after=paused_at, timeout=5)
        back_at = await recorded.until(True, after=noticed_at, timeout=10)
        noticed_s, moved_s = noticed_at - paused_at, back_at - paused_at
        print(f"\nsilent AMQP connection noticed after {noticed_s:.2f} s; consuming again after {moved_s:.2f} s")
        assert noticed_s <= 2.25, f"noticed after {noticed_s:.2f} s"
        assert f":{other.port}/" in (transport.node or "")
        assert ("revoked", 0) in listener.events and ("revoked", 1) in listener.events
        assert listener.events[-2:] == [("assigned", 0), ("assigned", 1)]
        assert transport.can_consume and transport.cannot_consume == frozenset()
    finally:
        for proxy in two_proxies:
            proxy.resume()
        await transport.close()
        await _delete(transport)
    assert not transport.can_consume  # closed


@pytest.mark.rabbitmq
async def test_a_reset_broker_connection_is_noticed_at_once(amqp_url: str) -> None:
    async with TCPProxy("127.0.0.1", 5672) as proxy:
        transport = RabbitMQTransport(
            _proxied(proxy), partitions=1, namespace=unique("hutch-test"), reconnect_interval_s=0.1
        )
        await transport.start()
        try:
            await transport.subscribe([0], Listener(), prefetch=10)
            recorded = Consumability(transport)
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            assert await proxy.disconnect_all() >= 1
            noticed_at = await recorded.until(False, after=cut_at, timeout=2)
            await recorded.until(True, after=noticed_at, timeout=10)
            print(f"\nreset AMQP connection noticed after {noticed_at - cut_at:.3f} s")
            assert noticed_at - cut_at < 0.5
        finally:
            await transport.close()
            await _delete(transport)


@pytest.mark.redis
async def test_a_silent_redis_connection_is_noticed_within_2_s(redis_url: str) -> None:
    async with TCPProxy("127.0.0.1", 6379) as proxy:
        settings = Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", namespace=unique("hutch-test"))
        # The runtime's client takes the settings' timeouts...
        store = open_store(settings)
        try:
            await store.redis.ping()
            pool_options = store.redis.connection_pool.connection_kwargs
            assert pool_options["socket_timeout"] == settings.redis_timeout_s == 2.0
            assert pool_options["socket_connect_timeout"] == 2.0
            assert pool_options["health_check_interval"] == settings.redis_health_check_s
            assert pool_options["socket_keepalive"] is True
        finally:
            await store.close()
        # ...and with them a call on a connection that went silent fails within redis_timeout_s, so
        # the runtime's retries (left out here, to time one attempt) go to a new connection.
        redis = Redis(host="127.0.0.1", port=proxy.port, retry=Retry(NoBackoff(), 0), **settings.redis_socket_options())
        try:
            await redis.ping()
            proxy.pause()
            loop = asyncio.get_running_loop()
            paused_at = loop.time()
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await redis.get("anything")
            noticed_s = loop.time() - paused_at
            print(f"\nsilent Redis connection noticed after {noticed_s:.2f} s")
            assert noticed_s <= 2.25
        finally:
            proxy.resume()
            await redis.aclose()
