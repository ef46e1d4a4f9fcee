"""A broker that is behind is waited for; only a queue that stopped confirming retires the channel.

A queue confirms the messages it takes in order. Under a sustained load that outruns the broker
for a moment (W8: hundreds of creates a second, each publishing its start message), a publish can
hear nothing back for longer than ``confirm_timeout_s`` while its queue is still confirming the
messages published ahead of it. Retiring the channel then fails every publish in flight on it and
sends them all again: each such round doubled what the broker had to take. Here a fake channel
confirms in publish order at a fixed pace, with no real broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hutch.broker.transports.confirms import ConfirmedPublisher, Publish
from pamqp import commands as spec


class _SlowChannel:
    """Confirms what is published on it one at a time, in publish order, every ``pace_s``; or never."""

    def __init__(self, pace_s: float, *, skip: set[bytes] | None = None) -> None:
        self.pace_s = pace_s
        self.skip = skip or set()  # bodies never confirmed (their queue lost them)
        self.is_closed = False
        self.published: list[bytes] = []
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[Any]]] = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._confirm())

    async def basic_publish(self, body: bytes, **_: Any) -> Any:
        self.published.append(body)
        confirmation: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((body, confirmation))
        return await confirmation

    async def _confirm(self) -> None:
        while True:
            body, confirmation = await self._queue.get()
            if body in self.skip:
                continue
            await asyncio.sleep(self.pace_s)
            if not confirmation.done():
                confirmation.set_result(spec.Basic.Ack())

    async def close(self) -> None:
        self.is_closed = True
        self._worker.cancel()


def _publisher(channel: _SlowChannel, confirm_timeout_s: float) -> ConfirmedPublisher:
    async def ready() -> None:
        return None

    publisher = ConfirmedPublisher(
        None,  # type: ignore[arg-type]  # never opens a channel: it is handed one
        ready=ready,
        confirm_timeout_s=confirm_timeout_s,
        publish_timeout_s=10.0,
        close_timeout_s=1.0,
        display_url="fake",
    )
    publisher._channel = channel  # type: ignore[assignment]
    return publisher


async def test_a_publish_behind_a_backlog_of_its_queue_waits_instead_of_publishing_everything_again() -> None:
    channel = _SlowChannel(pace_s=0.02)
    publisher = _publisher(channel, confirm_timeout_s=0.1)
    try:
        ahead = asyncio.create_task(publisher.publish([Publish("x", "q0", b"a%d" % n, {}) for n in range(20)]))
        await asyncio.sleep(0)
        # Queued behind 20 messages confirmed every 20 ms: about 0.4 s without a confirm of its own.
        await asyncio.wait_for(publisher.publish([Publish("x", "q0", b"behind", {})]), timeout=5)
        await asyncio.wait_for(ahead, timeout=5)
        assert publisher.channels_retired == 0
        assert len(channel.published) == 21  # each message published once
    finally:
        await channel.close()
        await publisher.close()


async def test_a_message_its_queue_skipped_is_published_again_on_a_new_channel() -> None:
    # The queue lost this one (its leader went away) and goes on confirming later messages: it will
    # never be confirmed on this channel.
    channel = _SlowChannel(pace_s=0.01, skip={b"lost"})
    publisher = _publisher(channel, confirm_timeout_s=0.1)
    fresh = _SlowChannel(pace_s=0.01)

    async def current() -> Any:
        return publisher._channel if publisher._channel is not None else fresh

    publisher._current = current  # type: ignore[method-assign]
    try:
        lost = asyncio.create_task(publisher.publish([Publish("x", "q0", b"lost", {})]))
        await asyncio.sleep(0)
        for n in range(30):  # later messages of the same queue keep being confirmed meanwhile
            await publisher.publish([Publish("x", "q0", b"later%d" % n, {})])
        await asyncio.wait_for(lost, timeout=5)
        assert publisher.channels_retired == 1
        assert fresh.published[:1] == [b"lost"]
    finally:
        await channel.close()
        await fresh.close()
        await publisher.close()
