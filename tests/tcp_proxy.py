"""An in-test TCP proxy for fault injection between a client and a real server (RabbitMQ, Redis).

Modelled on aiomisc's ``TCPProxy`` (the fixture aio-pika's robust-connection tests use): point the
client at ``proxy.port`` instead of the server, then cut every connection with
:meth:`TCPProxy.disconnect_all`, stall traffic with :meth:`TCPProxy.pause` (a network partition: the
sockets stay open, nothing flows), or add latency with :meth:`TCPProxy.slowdown`. The shared servers
themselves are never touched. New connections are accepted again right after a cut, so a client
that reconnects by itself gets through.

Example::

    async with TCPProxy("127.0.0.1", 5672) as proxy:
        transport = RabbitMQTransport(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        ...
        await proxy.disconnect_all()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

_CHUNK = 64 * 1024


class _Link:
    """One proxied connection: the client side, the server side and the two pumps between them."""

    __slots__ = ("client", "pumps", "server")

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        # abort() rather than close(): the peer sees a reset, like a dead network, not a polite FIN.
        for writer in (self.client, self.server):
            writer.transport.abort()


class TCPProxy:
    """Forwards TCP connections from ``127.0.0.1:port`` to ``target_host:target_port``.

    Args:
        target_host: where the real server listens.
        target_port: its port.
        listen_host: the proxy's listening address.
        listen_port: the proxy's port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay_s = 0.0
        self.connections_made = 0

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._server is None:
            raise RuntimeError("the proxy is not started; call await proxy.start() first")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_connections(self) -> int:
        """How many proxied connections are open right now."""
        return len(self._links)

    async def start(self) -> TCPProxy:
        """Start listening; returns the proxy."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.listen_host, self._listen_port)
        return self

    async def disconnect_all(self) -> int:
        """Reset every open connection (new ones are still accepted); returns how many were cut."""
        links = list(self._links)
        self._links.difference_update(links)
        for link in links:
            link.abort()
        await self._reap([task for link in links for task in link.pumps])
        return len(links)

    def pause(self) -> None:
        """Stop forwarding bytes in both directions; connections stay open (a network partition)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward bytes again after :meth:`pause`."""
        self._flowing.set()

    def slowdown(self, delay_s: float) -> None:
        """Delay every forwarded chunk by ``delay_s`` seconds (0 restores full speed)."""
        self._delay_s = delay_s

    async def close(self) -> None:
        """Stop listening and cut every connection; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        await self.disconnect_all()
        # Handlers end by themselves once their links are cut; cancelling one that is still
        # connecting upstream makes asyncio log an error, so that is only the fallback.
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=1.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> TCPProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                client_writer.transport.abort()
                return
            link = _Link(client_writer, server_writer)
            self._links.add(link)
            self.connections_made += 1
            link.pumps = [
                asyncio.create_task(self._pump(client_reader, server_writer), name="tcp-proxy-upstream"),
                asyncio.create_task(self._pump(server_reader, client_writer), name="tcp-proxy-downstream"),
            ]
            try:
                # Either side closing ends the link: tear down the other side too.
                await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                link.abort()
                await self._reap(link.pumps)
                self._links.discard(link)
        finally:
            self._handlers.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                writer.write(data)
                await writer.drain()

    @staticmethod
    async def _reap(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
