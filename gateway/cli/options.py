"""The click options several ``hutch`` commands share, and the parsing of their values.

Each decorator adds one option with its name, environment variable and default, so every command
that takes it takes it the same way; a command whose option means something narrower (``hutch
dev``'s ``--redis-url`` replaces the embedded store) passes its own help text.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import httpx
from hutch.entrypoint import WorkflowEntrypoint
from hutch.gateway.cli.remote import Remote
from hutch.gateway.http_client import DEFAULT_URL
from hutch.gateway.loader import TargetError, load_workflow
from hutch.logs import LOG_FORMATS
from hutch.settings import Settings
from hutch.versions import WorkflowClasses
from pydantic import ValidationError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING")
REDIS_HELP = "Redis URL [env HUTCH_REDIS_URL]."
AMQP_HELP = "RabbitMQ URL [env HUTCH_AMQP_URL]."


# --------------------------------------------------------------------------- server commands
def workflow_option(help: str) -> Callable[[F], F]:
    """``--workflow NAME=TARGET`` (repeatable), received as ``workflows``; :func:`parse_workflows` reads it."""
    return click.option("--workflow", "workflows", multiple=True, metavar="NAME=TARGET", help=help)


def parse_workflows(values: tuple[str, ...]) -> dict[str, WorkflowClasses] | None:
    """The classes ``--workflow`` names, by workflow name; None when none was given (use hutch.toml's).

    A name given several times is registered with each class as a version, oldest first (the last
    is the newest: new instances start on it).

    Raises:
        click.BadParameter: a value is not ``NAME=TARGET``, or its target does not load.
    """
    if not values:
        return None
    out: dict[str, list[type[WorkflowEntrypoint]]] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise click.BadParameter(f"{value!r} must look like NAME=path/to/file.py:Class or NAME=module:Class")
        try:
            out.setdefault(name, []).append(load_workflow(target))
        except TargetError as exc:
            raise click.BadParameter(str(exc)) from None
    return {name: classes[0] if len(classes) == 1 else classes for name, classes in out.items()}


def backend_options(redis_help: str = REDIS_HELP, amqp_help: str = AMQP_HELP) -> Callable[[F], F]:
    """``--redis-url`` and ``--amqp-url`` (env ``HUTCH_REDIS_URL``, ``HUTCH_AMQP_URL``), received as such."""

    def decorate(command: F) -> F:
        command = click.option("--amqp-url", envvar="HUTCH_AMQP_URL", help=amqp_help)(command)
        return click.option("--redis-url", envvar="HUTCH_REDIS_URL", help=redis_help)(command)

    return decorate


def log_level_option(command: F) -> F:
    """``--log-level`` (default INFO), received as ``log_level``."""
    return click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS))(command)


def log_format_option(command: F) -> F:
    """``--log-format json|text`` (env ``HUTCH_LOG_FORMAT``; default JSON off a terminal), as ``log_format``."""
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        envvar="HUTCH_LOG_FORMAT",
        default=None,
        help="Log lines as JSON objects or text [env HUTCH_LOG_FORMAT; default: json unless stderr is a terminal].",
    )(command)


def access_log_option(command: F) -> F:
    """``--access-log/--no-access-log`` (default on), received as ``access_log``."""
    flag = click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
    return flag(command)


def tokens_option(help: str) -> Callable[[F], F]:
    """``--token`` (repeatable), received as ``tokens``; :func:`token_list` cleans it."""
    return click.option("--token", "tokens", multiple=True, help=help)


def token_list(tokens: tuple[str, ...]) -> list[str]:
    """The ``--token`` values given, blanks dropped."""
    return [t.strip() for t in tokens if t.strip()]


@contextlib.contextmanager
def invalid_settings() -> Iterator[None]:
    """Inside: settings that do not validate (HUTCH_ environment, hutch.toml) are a usage error (exit 2)."""
    try:
        yield
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None


def load_settings(redis_url: str | None, amqp_url: str | None) -> Settings:
    """The process's settings, with ``--redis-url``/``--amqp-url`` over the environment and hutch.toml.

    Raises:
        click.UsageError: the settings do not validate.
    """
    overrides = {k: v for k, v in {"redis_url": redis_url, "amqp_url": amqp_url}.items() if v}
    with invalid_settings():
        return Settings(**overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- values
def json_option(help: str) -> Callable[[F], F]:
    """``--json`` (a flag), received as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def instance_id_option(command: F) -> F:
    """``--id`` for a new instance, received as ``instance_id``."""
    return click.option("--id", "instance_id", default=None, help="Instance id (a random uuid when omitted).")(command)


def event_id_option(command: F) -> F:
    """``--event-id`` (an event's idempotency key), received as ``event_id``."""
    return click.option(
        "--event-id",
        default=None,
        metavar="KEY",
        help="Idempotency key of the event: sending again with the same key does not deliver it twice "
        "(so a command whose outcome is unknown can be run again).",
    )(command)


def parse_json(text: str, option: str) -> Any:
    """``text`` parsed as JSON.

    Raises:
        click.BadParameter: it is not JSON (naming ``option``).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {text!r}", param_hint=option) from None


# --------------------------------------------------------------------------- REST commands
def remote_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--url``, ``--token`` and ``--json`` to a command, which receives them as ``remote``."""

    @click.option(
        "--url",
        envvar="HUTCH_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The gateway's URL [env HUTCH_URL].",
    )
    @click.option("--token", envvar="HUTCH_TOKEN", default=None, help="API bearer token [env HUTCH_TOKEN].")
    @json_option("Print the API's result as JSON.")
    @functools.wraps(command)
    def wrapper(*args: Any, url: str, token: str | None, as_json: bool, **kwargs: Any) -> None:
        command(*args, remote=Remote(_check_url(url), token or None, as_json), **kwargs)

    return wrapper


def _check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{url!r} is not a URL: {exc}", param_hint="--url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(f"{url!r} must be an http:// or https:// URL with a host", param_hint="--url")
    return url
