"""Publishing under publisher confirms on a RabbitMQ cluster: confirmed by a live node, or a clear error.

A publish returns once the broker confirmed every message of its batch. The batch is written at
once on one channel and its confirms gathered, so it costs about one round trip.

What can go wrong while a node of the cluster goes away, and what :class:`ConfirmedPublisher` does:

- The connection drops (the node was the client's): the messages whose confirms were lost are
  published again once the robust connection is back on another node.
- The broker *nacks* (``basic.nack``; aiormq raises ``DeliveryError``). A quorum queue whose leader
  went away refuses the publish until a new leader is elected, and a channel can stay stuck
  refusing one queue after that: RabbitMQ keeps a per-channel, per-queue enqueuer state that a
  leader change does not always reset, while a new channel works at once. So a nack retires the
  channel and the nacked messages go again, after a short backoff, on a new one.
- A confirm never comes, on a connection that is otherwise fine: a publish in flight while the
  queue's leader stopped can be left unanswered for as long as RabbitMQ's own command timeout
  (``net_ticktime`` + 5 s, over a minute). So an attempt that hears nothing back for
  ``confirm_timeout_s`` (doubled after each attempt that timed out, so a slow but healthy broker
  is not flooded) retires the channel and publishes the unconfirmed messages again on a new one —
  unless the broker is merely behind: a queue confirms its messages in the order it took them, so
  while each of the attempt's queues keeps confirming, on that channel, messages published before
  the attempt's (other publishes', queued ahead), the attempt waits on. Retiring the channel then
  would fail every publish in flight on it and send them all again, and under a sustained load
  that outruns the broker for a moment (W8) each such round added a second copy of everything in
  flight, which only made the broker slower.

Nothing is given up before ``publish_timeout_s`` (then ``TimeoutError`` says how many messages
were not confirmed and the broker's last answer). A message published again may reach its queue
twice: delivery is at-least-once and consumers deduplicate. A message that the broker returned as
unroutable (``PublishError``: the topology is missing) fails the publish at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import aiormq
from hutch.broker.connection import CONNECTION_ERRORS, ClusterConnection
from hutch.broker.transports.base import stray_cancel
from pamqp import commands as spec
from pamqp.common import FieldTable

log = logging.getLogger("hutch.broker.transports.rabbitmq")

_PERSISTENT = 2
# The first retry waits _BACKOFF_S, each further one twice as long, up to _MAX_BACKOFF_S: a queue
# electing a leader nacks at once, for a second or two.
_BACKOFF_S = 0.02
_MAX_BACKOFF_S = 0.5


@dataclass(slots=True, frozen=True)
class Publish:
    """One message to publish: where to, and what."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str]


class _NoConfirm(Exception):
    """The broker did not confirm a message within the attempt's wait."""


class ConfirmedPublisher:
    """Publishes batches under publisher confirms on a channel of its own, replaced whenever it fails.

    Args:
        connection: the robust cluster connection; each channel is opened on whichever node it is on.
        ready: returns once the connection is up and the topology declared again after a
            reconnect (a publish before that could find its queue missing).
        confirm_timeout_s: the longest the first attempt waits without any confirm (each later
            attempt after one that timed out waits twice as long as the one before).
        publish_timeout_s: the longest a publish keeps trying before raising ``TimeoutError``.
        close_timeout_s: bound on closing a retired channel.
        display_url: the broker's URL(s), password hidden, for error messages.
    """

    def __init__(
        self,
        connection: ClusterConnection,
        *,
        ready: Callable[[], Awaitable[None]],
        confirm_timeout_s: float,
        publish_timeout_s: float,
        close_timeout_s: float,
        display_url: str,
    ) -> None:
        if confirm_timeout_s <= 0:
            raise ValueError(f"confirm_timeout_s must be positive, got {confirm_timeout_s}")
        self._connection = connection
        self._ready = ready
        self.confirm_timeout_s = confirm_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.close_timeout_s = close_timeout_s
        self._display_url = display_url
        self._channel: aiormq.Channel | None = None
        self._opening = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        # channel -> routing key -> the number of the latest-published message confirmed there: how
        # far each queue has got through what was published on the channel.
        self._confirmed: dict[aiormq.Channel, dict[str, int]] = {}
        self._published = 0  # numbers this publisher's messages in the order they are published
        self.channels_retired = 0  # how often a channel nacked, went silent or was lost (tests, logs)

    async def publish(self, batch: Sequence[Publish]) -> None:
        """Publish ``batch`` persistently; returns once the broker confirmed every message.

        Raises:
            TimeoutError: not every message was confirmed within ``publish_timeout_s``.
            aiormq.exceptions.PublishError: the broker could not route a message (topology missing).
        """
        pending = list(batch)
        cause = "no answer"
        failed_attempts = 0
        timed_out = 0
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                while pending:
                    wait_s = self.confirm_timeout_s * 2 ** min(timed_out, 6)
                    channel = await self._current()
                    if isinstance(channel, BaseException):  # its connection closed under the open
                        failures = [(item, channel) for item in pending]
                    else:
                        failures = await self._attempt(channel, pending, wait_s)
                        if not failures:
                            return
                        self._retire(channel)
                    pending = [item for item, _ in failures]
                    errors = [exc for _, exc in failures]
                    cause = _describe(errors[0])
                    failed_attempts += 1
                    log.warning(
                        "republishing %d of %d message(s) on a new channel (attempt %d): %s",
                        len(pending),
                        len(batch),
                        failed_attempts + 1,
                        cause,
                    )
                    if any(isinstance(exc, _NoConfirm) for exc in errors):
                        timed_out += 1  # it waited already; a slow broker gets longer next time
                    else:
                        await asyncio.sleep(min(_BACKOFF_S * 2 ** (failed_attempts - 1), _MAX_BACKOFF_S))
        except TimeoutError:
            raise TimeoutError(
                f"RabbitMQ did not confirm {len(pending)} of {len(batch)} message(s) within "
                f"{self.publish_timeout_s} s (last: {cause}); is the broker at {self._display_url} reachable?"
            ) from None

    async def close(self) -> None:
        """Close the current channel and wait for the retired ones to close; idempotent."""
        channel, self._channel = self._channel, None
        if channel is not None:
            self._retire(channel)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # ----------------------------------------------------------------- channels
    async def _current(self) -> aiormq.Channel | BaseException:
        """The channel to publish on: the current one, or a new one on the connection's current node.

        Returns the error instead when the connection went away while the channel was opened.
        """
        async with self._opening:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            if channel is not None:
                self._confirmed.pop(channel, None)  # closed with its connection: forget what it confirmed
            await self._ready()  # reconnecting: bounded by the caller's deadline
            transport = self._connection.transport
            if transport is None:
                return aiormq.exceptions.ChannelInvalidStateError("the connection is reconnecting")
            try:
                opened = await transport.connection.channel(publisher_confirms=True, on_return_raises=True)
            except _OPEN_ERRORS as exc:  # aiormq: RuntimeError("... closed") once the connection closed
                return exc
            except asyncio.CancelledError as exc:
                if not stray_cancel(exc):
                    raise
                return aiormq.exceptions.ChannelInvalidStateError("the connection closed while opening a channel")
            channel = cast(aiormq.Channel, opened)
            self._channel = channel
            return channel

    def _retire(self, channel: aiormq.Channel) -> None:
        # Closed in the background: the retry must not wait for a broker that may not answer. The
        # confirms still pending on it (other publishes') fail with it, and those publish again.
        if self._channel is channel:
            self._channel = None
            self.channels_retired += 1
        self._confirmed.pop(channel, None)
        if channel.is_closed:
            return
        task = asyncio.get_running_loop().create_task(self._close(channel), name="hutch-amqp-retire-channel")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close(self, channel: aiormq.Channel) -> None:
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await channel.close()
        except _CLOSE_ERRORS:
            pass  # gone with its connection, or the broker does not answer: either way it is closed for us
        except asyncio.CancelledError as exc:
            if not stray_cancel(exc):
                raise
            # aiormq abandoned the close RPC because the connection closed: the channel is gone

    # ----------------------------------------------------------------- one attempt
    async def _attempt(
        self, channel: aiormq.Channel, items: list[Publish], wait_s: float
    ) -> list[tuple[Publish, BaseException]]:
        """Publish ``items`` on ``channel``; the ones that failed, each with why.

        Waits as long as answers keep coming: a large batch on a busy broker takes a while, but a
        channel that answers nothing for ``wait_s`` is given up on.
        """
        first = self._published + 1
        self._published += len(items)
        confirmed = self._confirmed.setdefault(channel, {})
        tasks = [asyncio.ensure_future(self._publish_one(channel, item, first + n)) for n, item in enumerate(items)]
        try:
            waiting: set[asyncio.Future[None]] = set(tasks)
            seen = {item.routing_key: confirmed.get(item.routing_key, 0) for item in items}
            while waiting:
                done, waiting = await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    continue
                # Silent for wait_s: stuck, unless each queue still waited for is working through
                # what was published ahead (checked against the last silence, or the attempt's start).
                queues = {item.routing_key for item, task in zip(items, tasks, strict=True) if task in waiting}
                if not _behind(confirmed, {key: seen[key] for key in queues}, first):
                    break
                seen = {key: confirmed.get(key, 0) for key in queues}
        finally:
            for task in tasks:
                task.cancel()  # a no-op for the finished ones; a late confirm is ignored by aiormq
            await asyncio.gather(*tasks, return_exceptions=True)
        failures: list[tuple[Publish, BaseException]] = []
        for item, task in zip(items, tasks, strict=True):
            if task.cancelled():
                failures.append((item, _NoConfirm(f"no confirm for {wait_s:g} s")))
                continue
            exc = task.exception()
            if exc is None:
                continue
            if isinstance(exc, _RETRYABLE) and not isinstance(exc, aiormq.exceptions.PublishError):
                failures.append((item, exc))
            else:
                raise exc  # unroutable (a DeliveryError too, but no new channel routes it), or a bug
        return failures

    async def _publish_one(self, channel: aiormq.Channel, item: Publish, published: int) -> None:
        await _publish_one(channel, item)
        confirmed = self._confirmed.get(channel)
        if confirmed is not None and published > confirmed.get(item.routing_key, 0):
            confirmed[item.routing_key] = published


def _behind(confirmed: dict[str, int], seen: dict[str, int], published: int) -> bool:
    """Whether every queue of ``seen`` confirmed, since ``seen``, messages published before number ``published`` only.

    Such a queue is working through what was queued ahead of the attempt's messages: slow, not stuck.
    One that confirmed nothing since, or a message published after them (theirs were skipped), is stuck.
    """
    for key, before in seen.items():
        now = confirmed.get(key, 0)
        if not before < now < published:
            return False
    return True


async def _publish_one(channel: aiormq.Channel, item: Publish) -> None:
    headers: FieldTable | None = dict(item.headers) if item.headers else None
    try:
        confirmation = await channel.basic_publish(
            item.body,
            exchange=item.exchange,
            routing_key=item.routing_key,
            # The timestamp dates the message for the worker's oldest-message-age gauge (no extra frame).
            properties=spec.Basic.Properties(delivery_mode=_PERSISTENT, headers=headers, timestamp=datetime.now(UTC)),
            mandatory=True,
            wait=False,  # queue the frames and move on: the batch shares the socket writes and the confirms
        )
    except asyncio.CancelledError as exc:
        # The channel closed under the publish (aiormq cancels its pending confirms then); a
        # cancellation of this task itself (the attempt's wait ran out) goes on as it is.
        if not stray_cancel(exc):
            raise
        raise aiormq.exceptions.ChannelInvalidStateError("the channel closed before the broker confirmed") from exc
    if not isinstance(confirmation, spec.Basic.Ack):
        raise aiormq.exceptions.DeliveryError(None, confirmation)  # type: ignore[arg-type]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return f"the broker refused it ({exc})"
    return str(exc) or type(exc).__name__


_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError, RuntimeError)
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RuntimeError)

# What makes a message worth publishing again on a new channel: a nack, no confirm in time, or the
# channel or connection lost under it.
_RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError, _NoConfirm)


__all__ = ["ConfirmedPublisher", "Publish"]
