"""What the long-running commands (``hutch dev``, ``hutch gateway``, ``hutch worker``) share.

Logging to stderr, signals (the CLI entrypoint owns them: the first SIGINT/SIGTERM stops
gracefully, a second one at once) and how a failure to start is reported: one ``Error:`` line
naming the servers, with their passwords hidden, and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import click
from hutch import logs
from hutch.broker.transports.rabbitmq import CONNECTION_ERRORS
from hutch.errors import HutchError
from hutch.gateway.server import GatewayServer
from hutch.logs import LogFormat
from hutch.settings import Settings
from hutch.store.redis import STORE_ERRORS

T = TypeVar("T")

EXIT_START_FAILED = 2
BACKEND_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, *STORE_ERRORS, TimeoutError)
"""Failures to reach Redis or RabbitMQ while a server command starts."""


def configure_logging(level: str, fmt: LogFormat | None = None) -> None:
    """Log to stderr at ``level``: JSON lines, or ``time level logger: message`` text (see :mod:`hutch.logs`)."""
    logs.configure(level, fmt)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM call ``stop`` (each time one arrives)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def backend_failure(exc: BaseException, settings: Settings) -> str:
    """A sentence for a failure to reach the backends at start-up."""
    return (
        f"cannot connect to Redis ({settings.redacted(settings.redis_url)}) or RabbitMQ "
        f"({settings.redacted(settings.amqp_url)}): {type(exc).__name__}: {exc}"
    )


async def start_or_report(server: GatewayServer, settings: Settings, starting: Awaitable[T]) -> T | None:
    """``await starting``; if the backends cannot be reached or refuse, release ``server``, say why, and None.

    The caller then exits with :data:`EXIT_START_FAILED`.
    """
    try:
        return await starting
    except BACKEND_ERRORS as exc:
        message = backend_failure(exc, settings)
    except HutchError as exc:
        message = str(exc)
    server.close()
    click.echo(f"Error: {message}", err=True)
    return None
