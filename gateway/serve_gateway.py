"""``hutch gateway``: the REST API over HTTP for a distributed deployment, and the server both commands share.

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
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
import hutch
import uvicorn
from fastapi import APIRouter, FastAPI
from hutch import Client, tracing
from hutch.broker.transports.rabbitmq import CONNECTION_ERRORS
from hutch.errors import HutchError
from hutch.gateway.api.envelope import ErrorCode, error_response
from hutch.gateway.app import create_app
from hutch.gateway.settings import GatewaySettings
from hutch.gateway.webhooks import webhook_router
from hutch.settings import Settings
from hutch.store.redis import STORE_ERRORS
from pydantic import ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gateway")

GRACEFUL_SHUTDOWN_S = 10
LOG_LEVELS = ("DEBUG", "INFO", "WARNING")
BACKEND_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, *STORE_ERRORS, TimeoutError)
"""Failures to reach Redis or RabbitMQ while a server command starts."""


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
    """uvicorn's "auto" choice (httptools when installed, else h11), answering bad requests in the envelope."""
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


@contextlib.contextmanager
def stop_on_signals(server: GatewayServer) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM shut ``server`` down (the first gracefully, the second at once)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, server.shutdown)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def build_app(client: Client, settings: Settings, *, tokens: Sequence[str], max_body_bytes: int) -> FastAPI:
    """The app ``hutch gateway`` and ``hutch dev`` serve: the REST API plus the routers of ``settings``.

    Args:
        client: the client the API goes through; the caller closes it.
        settings: the process's settings (``hutch.toml`` routes such as ``[[webhooks]]`` come from here).
        tokens: the valid bearer tokens.
        max_body_bytes: request bodies over this size get 413.
    """
    routers: list[APIRouter] = []
    if settings.webhooks:
        # Webhook senders authenticate by signature, not bearer token; deliveries dedupe in Redis.
        routers.append(
            webhook_router(client, settings.webhooks, dedupe_redis=client._store.redis, namespace=settings.namespace)
        )
    return create_app(client, tokens=tokens, extra_routers=routers, max_body_bytes=max_body_bytes)


def configure_logging(level: str) -> None:
    """Log lines to stderr: ``time level logger: message``."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def backend_failure(exc: BaseException, settings: Settings) -> str:
    """A sentence for a failure to reach the backends at start-up."""
    return (
        f"cannot connect to Redis ({settings.redacted(settings.redis_url)}) or RabbitMQ "
        f"({settings.redacted(settings.amqp_url)}): {type(exc).__name__}: {exc}"
    )


# --------------------------------------------------------------------------- the command
@click.command("gateway")
@click.option("--host", default=None, help="Address to listen on [env HUTCH_GATEWAY_HOST; default 127.0.0.1].")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port [env HUTCH_GATEWAY_PORT; default 8787]."
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    help="A valid API bearer token (repeatable, for rotation) [default: HUTCH_GATEWAY_TOKENS, comma separated].",
)
@click.option("--redis-url", envvar="HUTCH_REDIS_URL", help="Redis URL [env HUTCH_REDIS_URL].")
@click.option("--amqp-url", envvar="HUTCH_AMQP_URL", help="RabbitMQ URL [env HUTCH_AMQP_URL].")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS))
def gateway(
    host: str | None,
    port: int | None,
    tokens: tuple[str, ...],
    redis_url: str | None,
    amqp_url: str | None,
    access_log: bool,
    log_level: str,
) -> None:
    """Serve the REST API for a distributed deployment (workers run elsewhere) until SIGTERM or SIGINT.

    The gateway talks to the Redis and RabbitMQ the workers use (HUTCH_REDIS_URL, HUTCH_AMQP_URL or
    hutch.toml) and creates instances of the [[workflows]] in hutch.toml; it needs no workflow code.
    Every /api request needs 'Authorization: Bearer <token>' with one of the tokens.

    \b
    Example:
      HUTCH_GATEWAY_TOKENS=s3cret hutch gateway --host 0.0.0.0 --port 8787
    """
    configure_logging(log_level)
    tracing.configure_from_env("hutch-gateway")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    overrides = {k: v for k, v in {"redis_url": redis_url, "amqp_url": amqp_url}.items() if v}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        gateway_settings = GatewaySettings()
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None
    if not (settings.redis_url and settings.amqp_url):
        raise click.UsageError(
            "hutch gateway serves a distributed deployment: set HUTCH_REDIS_URL and HUTCH_AMQP_URL "
            "(or --redis-url/--amqp-url); to run everything in one process, use hutch dev"
        )
    token_list = [t.strip() for t in tokens if t.strip()] or gateway_settings.token_values()
    if not token_list:
        raise click.UsageError("hutch gateway needs at least one API token: set HUTCH_GATEWAY_TOKENS or pass --token")
    try:
        server = GatewayServer(
            host=host or gateway_settings.host,
            port=gateway_settings.port if port is None else port,
            access_log=access_log,
            log_level=log_level,
        )
    except BindError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(asyncio.run(_serve(server, settings, token_list, gateway_settings.max_body_bytes)))


async def _serve(server: GatewayServer, settings: Settings, tokens: list[str], max_body_bytes: int) -> int:
    with stop_on_signals(server):
        try:
            client = await hutch.connect(settings=settings)
        except BACKEND_ERRORS as exc:
            server.close()
            click.echo(f"Error: {backend_failure(exc, settings)}", err=True)
            return 2
        except HutchError as exc:
            server.close()
            click.echo(f"Error: {exc}", err=True)
            return 2
        try:
            app = build_app(client, settings, tokens=tokens, max_body_bytes=max_body_bytes)

            def ready(url: str) -> None:
                names = ", ".join(spec.name for spec in settings.workflows) or "none (add [[workflows]] to hutch.toml)"
                click.echo(
                    f"hutch gateway listening on {url} (Redis {settings.redacted(settings.redis_url)}, RabbitMQ "
                    f"{settings.redacted(settings.amqp_url)}, namespace {settings.namespace!r}; workflows: {names}; "
                    f"{len(tokens)} API token{'s' if len(tokens) != 1 else ''})"
                )
                sys.stdout.flush()

            await server.run(app, on_ready=ready)
        finally:
            await client.close()
    click.echo("hutch gateway stopped")
    return 0
