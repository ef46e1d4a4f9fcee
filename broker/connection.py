"""Connections to a RabbitMQ cluster that outlive the loss of a node.

A connection goes to any live node at start and to the next live node after a loss, and a dead
connection is noticed within seconds.

aio-pika's robust connection reconnects to the one URL it was given, so a worker whose node fails
would wait for that node to come back. :class:`ClusterConnection` is that robust connection with
every node's URL: each failed attempt or lost connection moves it to the next node, and it pauses
(``reconnect_interval_s``) only once every node failed in a row. Everything aio-pika restores on a
reconnect — channels, their publisher confirms, the queues and exchanges declared through them, and
consumers, single-active-consumer subscriptions included — is restored on whichever node answers.

A cut connection can go unnoticed for a long time: a network partition sends no reset, and aio-pika
gives up on a silent broker only after three heartbeats plus one (at least 6 s). So the connection
probes the broker itself (a ``basic.qos`` on a channel of its own, every quarter of
``dead_after_s``) and drops a connection that has not answered for ``dead_after_s``; the reconnect
then goes to another node. A connection the broker blocks (a memory or disk alarm: it stops reading
from publishing connections until the alarm clears) is left alone meanwhile. The trade-off: an
event loop blocked for longer than ``dead_after_s`` also misses the answers, and a healthy
connection is dropped and made again (its partitions revoked and re-assigned meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aio_pika
import aiormq
from hutch.errors import BrokerUnavailable
from hutch.settings import parse_amqp_urls, redact_url
from pamqp.common import FieldTable
from yarl import URL

if TYPE_CHECKING:
    from hutch.settings import Settings

log = logging.getLogger("hutch.broker")

T = TypeVar("T")

#: Exceptions that mean "the connection or channel went away", not "the request was wrong".
#: Operations that fail with one of these are retried (publish) or were made moot by the broker
#: requeueing the message (ack, nack) once the robust connection recovers.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,  # the broker closed or reset the connection
    aiormq.exceptions.ChannelInvalidStateError,  # the channel closed under a pending operation
    aiormq.exceptions.ChannelClosed,  # the broker closed the channel
    OSError,  # socket failures: reset, refused, unreachable (ConnectionError is a subclass)
)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How Hutch connects to RabbitMQ (the ``amqp_*`` settings).

    Attributes:
        heartbeat_s: the AMQP heartbeat proposed unless a URL sets ``heartbeat``; the broker drops
            a connection it has heard nothing from for about twice this, and with it the consumers
            that kept a partition from another worker (single active consumer).
        dead_after_s: a connection whose broker has not answered a probe for this long is dropped
            and another node tried; 0 turns the probe off.
        connect_timeout_s: how long one attempt to one node may take (TCP connect and handshake).
        reconnect_interval_s: the pause after every node failed in a row.
    """

    heartbeat_s: int = 1
    dead_after_s: float = 2.0
    connect_timeout_s: float = 5.0
    reconnect_interval_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionOptions:
        """The options the ``HUTCH_AMQP_*`` settings ask for; the reconnect pause keeps its default."""
        return cls(
            heartbeat_s=settings.amqp_heartbeat_s,
            dead_after_s=settings.amqp_dead_after_s,
            connect_timeout_s=settings.amqp_connect_timeout_s,
        )

    def node_urls(self, amqp_url: str | Sequence[str]) -> list[URL]:
        """Every node's URL, each with the heartbeat proposed (unless it sets one itself)."""
        urls = []
        for raw in parse_amqp_urls(amqp_url):
            url = URL(raw)
            if "heartbeat" not in url.query:
                url = url.update_query(heartbeat=self.heartbeat_s)
            urls.append(url)
        if not urls:
            raise BrokerUnavailable("no RabbitMQ URL given (amqp_url / HUTCH_AMQP_URL is empty)")
        return urls


def _shown(url: URL) -> str:
    # Without the heartbeat this module added to the query: what the user wrote, password hidden.
    return redact_url(str(url.without_query_params("heartbeat") if "heartbeat" in url.query else url))


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection over several nodes' URLs (see the module docstring).

    Build it with :func:`connect`, which also picks the first node that answers.
    """

    def __init__(self, urls: Sequence[URL], *, reconnect_interval_s: float, dead_after_s: float, **kwargs: Any):
        self._urls = list(urls)
        self._current = 0
        self._failed_in_a_row = 0
        self._pause_s = reconnect_interval_s
        self._dead_after_s = dead_after_s
        self._watchdog: asyncio.Task[None] | None = None
        self._probe: tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel] | None = None
        super().__init__(self._urls[0], reconnect_interval=reconnect_interval_s, **kwargs)

    @property
    def node(self) -> str:
        """The URL of the node this connection is on (or tries next), password hidden."""
        return _shown(self._urls[self._current])

    @property
    def broker_version(self) -> str | None:
        """The version the connected node announced (``"3.10.7"``); None while disconnected."""
        transport = self.transport
        properties = transport.connection.server_properties if transport is not None else None
        version = (properties or {}).get("version")
        if isinstance(version, bytes):
            version = version.decode()
        return version if isinstance(version, str) else None

    # aio-pika's reconnect loop sleeps ``reconnect_interval`` after every failed attempt. Until each
    # node has had its try since the last success there is another node to try at once.
    @property
    def reconnect_interval(self) -> float:
        """Seconds aio-pika waits before the next attempt: none while a node is still untried."""
        return 0.0 if self._failed_in_a_row % len(self._urls) else self._pause_s

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._pause_s = float(value)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called for a lost connection and for every failed attempt alike: the next attempt goes to
        # the next node.
        if len(self._urls) > 1 and not self._close_called:
            self._current = (self._current + 1) % len(self._urls)
            self.url = self._urls[self._current]
        self._failed_in_a_row += 1
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        reconnect = self.connection_attempt > 0
        await super()._on_connected()  # channels restored; raises (and closes) when they cannot be
        self._failed_in_a_row = 0
        if reconnect:
            log.warning("reconnected to RabbitMQ at %s", self.node)
        if self._watchdog is None and self._dead_after_s > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="hutch-amqp-liveness")

    async def close(self, exc: aiormq.abc.ExceptionType | None = asyncio.CancelledError) -> None:
        """Stop the liveness probe, then close the connection and its channels for good."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        await super().close(exc)

    # ------------------------------------------------------------------ liveness
    async def _watch(self) -> None:
        """Probe the broker every quarter of ``dead_after_s``; drop the connection when it stops answering."""
        interval_s = self._dead_after_s / 4
        while True:
            await asyncio.sleep(interval_s)
            transport = self.transport
            if transport is None or not self.connected.is_set():
                continue  # reconnecting: each attempt has its own timeout
            underlay = transport.connection
            if not await _unblocked(underlay):
                continue
            try:
                # The sleep is part of the allowance: no answer for dead_after_s since the last one.
                async with asyncio.timeout(self._dead_after_s - interval_s):
                    await self._ask(underlay)
            except TimeoutError:
                current = self.transport
                if current is not None and current.connection is underlay and not underlay.is_closed:
                    log.warning(
                        "RabbitMQ at %s has not answered for %.1f s; dropping the connection to reconnect",
                        self.node,
                        self._dead_after_s,
                    )
                    _abort(underlay)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # close()
                # aiormq fails the pending calls of a connection it closes with CancelledError
            except Exception:  # the connection is closing by itself; the reconnect is under way
                log.debug("liveness probe failed on a closing connection", exc_info=True)

    async def _ask(self, underlay: aiormq.abc.AbstractConnection) -> None:
        probe = self._probe
        if probe is None or probe[0] is not underlay or probe[1].is_closed:
            channel = await underlay.channel(publisher_confirms=False)
            self._probe = probe = (underlay, channel)
        # Answered by the channel's own process on the node: a round trip that touches no queue.
        await probe[1].basic_qos(prefetch_count=0)


async def _unblocked(underlay: aiormq.abc.AbstractConnection) -> bool:
    """Wait while the broker blocks the connection; False if it closed meanwhile.

    A broker under a resource alarm (memory, disk) blocks the connections that publish: it stops
    reading from them until the alarm clears, so a probe could not be answered. That connection is
    not dead, and a new one would soon be blocked too.
    """
    ready = asyncio.ensure_future(underlay.ready())  # returns at once unless blocked
    closing = underlay.closing
    try:
        await asyncio.wait([ready, closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (ready, closing):
            future.cancel()
        await asyncio.gather(ready, return_exceptions=True)
    return not underlay.is_closed


def _abort(underlay: aiormq.abc.AbstractConnection) -> None:
    """Make aiormq treat the connection as lost now, without the closing handshake a silent peer never answers.

    Stopping its frame reader is what aiormq does itself when heartbeats stop; the connection then
    closes and the robust connection reconnects.
    """
    reader: Any = getattr(underlay, "_reader_task", None)  # an asyncio.Task or aiormq's wrapper of one
    if reader is not None and not reader.done():
        reader.cancel()
    else:  # another aiormq layout: a plain close (it waits up to 2 s for the broker's close-ok)
        closing = asyncio.ensure_future(underlay.close(ConnectionError("the broker stopped answering")))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[Any]] = set()  # referenced until done, or the loop may drop them


async def connect(
    amqp_url: str | Sequence[str],
    *,
    options: ConnectionOptions | None = None,
    name: str | None = None,
    shuffle: bool = True,
) -> ClusterConnection:
    """A robust connection to the first node of ``amqp_url`` that answers.

    Nodes are tried in a random order (so processes spread over the cluster) unless ``shuffle`` is
    false, each once with ``connect_timeout_s``.

    Raises:
        BrokerUnavailable: no node could be connected to; the message says why for each.
        InvalidInputError: ``amqp_url`` is malformed.
    """
    options = options or ConnectionOptions()
    urls = options.node_urls(amqp_url)

    async def attempt(start: int) -> ClusterConnection:
        connection = ClusterConnection(
            urls[start:] + urls[:start],  # then on to the next nodes, in order
            reconnect_interval_s=options.reconnect_interval_s,
            dead_after_s=options.dead_after_s,
            client_properties={"connection_name": name} if name else None,
        )
        try:
            # aio-pika's own timeout, never a cancellation from outside: a cancelled first attempt
            # would leave the robust connection reconnecting in the background. With fail_fast (the
            # default) the first failure ends the attempt; then the next node gets its turn.
            await connection.connect(timeout=options.connect_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    return await _first_live(urls, attempt, options.connect_timeout_s, shuffle=shuffle)


async def connect_once(
    amqp_url: str | Sequence[str],
    *,
    options: ConnectionOptions | None = None,
    name: str | None = None,
) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection to the first node of ``amqp_url`` that answers, in order.

    For short-lived tools that would rather fail than reconnect; same errors as :func:`connect`.
    """
    options = options or ConnectionOptions()
    urls = options.node_urls(amqp_url)

    async def attempt(index: int) -> aio_pika.abc.AbstractConnection:
        properties: FieldTable | None = {"connection_name": name} if name else None
        return await aio_pika.connect(urls[index], client_properties=properties, timeout=options.connect_timeout_s)

    return await _first_live(urls, attempt, options.connect_timeout_s, shuffle=False)


async def _first_live(urls: list[URL], attempt: Callable[[int], Awaitable[T]], timeout_s: float, *, shuffle: bool) -> T:
    """``attempt(i)`` for each node in turn until one connects; BrokerUnavailable naming each failure."""
    order = list(range(len(urls)))
    if shuffle:
        random.shuffle(order)
    failures: list[str] = []
    handshake_timeouts = 0
    for index in order:
        try:
            return await attempt(index)
        except TimeoutError:
            # The TCP connect succeeded (a refused one fails at once) but the broker never opened the
            # AMQP connection: a broker that ran out of file handles behaves exactly like this.
            handshake_timeouts += 1
            failures.append(f"{_shown(urls[index])} did not complete the AMQP handshake within {timeout_s:g} s")
        except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            failures.append(f"{_shown(urls[index])}: {exc}")
    hint = (
        "; check the broker's health and its file-handle limit (`rabbitmq-diagnostics status`; every "
        "quorum queue reserves file handles)"
        if handshake_timeouts
        else ""
    )
    if len(urls) == 1:
        if handshake_timeouts:
            raise BrokerUnavailable(f"RabbitMQ at {failures[0]}{hint}")
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {failures[0]}")
    shown = ", ".join(_shown(url) for url in urls)
    raise BrokerUnavailable(f"cannot connect to any RabbitMQ node of {shown}: {'; '.join(failures)}{hint}")


__all__ = ["CONNECTION_ERRORS", "ClusterConnection", "ConnectionOptions", "connect", "connect_once"]
