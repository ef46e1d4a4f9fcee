"""The HTTP server ``hutch gateway`` and ``hutch dev`` run: uvicorn on a socket bound up front.

:class:`GatewayServer` serves an ASGI app with uvicorn on a socket it binds up front (so a
taken port is a clear error before anything else starts). Signals are the CLI entrypoint's
business: the commands install SIGINT/SIGTERM handlers that call :meth:`GatewayServer.shutdown`
(the first signal drains open requests, a second one closes them at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from hutch.gateway.api.envelope import ErrorCode, error_response
from uvicorn.protocols.http.h11_impl import H11Protocol

GRACEFUL_SHUTDOWN_S = 10


class BindError(Exception):
    """The address cannot be listened on (the port is taken, the host is not local, no permission)."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


_BAD_HTTP_MESSAGE = (
    "the request is not valid HTTP/1.1 (a malformed request line or header, such as a Content-Length "
    "that is not a number)"
)


def _write_bad_request(transport: asyncio.Transport) -> None:
    """Answer a request uvicorn could not parse with the API's error envelope, then close the connection."""
    body = error_response(400, ErrorCode.INVALID_INPUT, _BAD_HTTP_MESSAGE).body
    head = (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n"
    )
    transport.write(head + bytes(body))
    transport.close()


class _H11Protocol(H11Protocol):
    # uvicorn answers an unparseable request in plain text, before the app sees it; clients of the
    # API read every error from the envelope. The connection closes right after, so writing the
    # answer past h11's state machine is safe.
    def send_400_response(self, msg: str) -> None:
        _write_bad_request(self.transport)


def _http_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol uvicorn's "auto" picks (httptools, else h11), answering bad requests in the envelope."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _H11Protocol

    class _HttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            _write_bad_request(self.transport)

    return _HttpToolsProtocol


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (the CLI entrypoint owns signals) and with a start hook."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


class GatewayServer:
    """Serves an ASGI app over HTTP with uvicorn until :meth:`shutdown`.

    The socket is bound in the constructor, so a taken port fails before anything else starts.

    Args:
        host: the address to listen on.
        port: the port (0 picks a free one; :attr:`url` tells which).
        access_log: log one line per request (logger ``uvicorn.access``).
        log_level: uvicorn's log level.

    Raises:
        BindError: the address cannot be listened on.
    """

    def __init__(self, *, host: str, port: int, access_log: bool = True, log_level: str = "warning") -> None:
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._access_log = access_log
        self._log_level = log_level.lower()
        self._started = asyncio.Event()
        self._server: _Uvicorn | None = None
        self._stop_requested = False
        self._state = _State.NEW

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:8787``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(self, app: Any, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve ``app`` until :meth:`shutdown`; ``on_ready(url)`` is called once requests are accepted.

        Raises:
            RuntimeError: the server was already run (a server runs once).
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"a gateway server runs once (it is {self._state.value})")
        self._state = _State.RUNNING
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level=self._log_level,
            access_log=self._access_log,
            http=_http_protocol(),
            lifespan="auto",
            ws="none",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        if self._log_level != "debug":
            # uvicorn's start-up chatter repeats what the command prints once it is ready.
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Uvicorn(config, on_started=self._started.set)
        # A shutdown asked for before the server existed (a signal during start-up) still counts.
        self._server.should_exit = self._stop_requested
        try:
            async with asyncio.TaskGroup() as tasks:
                announce = tasks.create_task(self._announce(on_ready), name="gateway-ready")
                try:
                    await self._server.serve(sockets=[self._sock])
                finally:
                    announce.cancel()
        finally:
            self._state = _State.STOPPED
            self._sock.close()

    def close(self) -> None:
        """Release the socket of a server that will not run (idempotent)."""
        if self._state is _State.NEW:
            self._state = _State.STOPPED
            self._sock.close()

    async def wait_started(self) -> None:
        """Return once the server accepts requests."""
        await self._started.wait()

    def shutdown(self) -> None:
        """Stop: the first call lets open requests finish (up to 10 s), a second closes them now; idempotent."""
        server = self._server
        if server is None:
            self._stop_requested = True
            return
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    async def _announce(self, on_ready: Callable[[str], None] | None) -> None:
        await self._started.wait()
        if on_ready is not None:
            on_ready(self.url)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, _, proto, _, address = infos[0]
    # Keep getaddrinfo's protocol (TCP): asyncio turns Nagle off only on accepted sockets whose
    # protocol is TCP, and with Nagle on, every response on a kept-alive connection waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = " (is another hutch dev or gateway running? pick another with --port)" if exc.errno == 98 else ""
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
