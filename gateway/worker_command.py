"""``hutch worker``: run a distributed worker until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click
from hutch import tracing
from hutch.consumers.serve import serve
from hutch.consumers.worker import Worker
from hutch.errors import HutchError, ServiceUnavailable
from hutch.gateway.loader import TargetError, load_workflow
from hutch.settings import Settings
from pydantic import ValidationError


def _parse_workflows(values: tuple[str, ...]) -> dict[str, type] | None:
    if not values:
        return None
    out: dict[str, type] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise click.BadParameter(f"{value!r} must look like NAME=path/to/file.py:Class or NAME=module:Class")
        try:
            out[name] = load_workflow(target)
        except TargetError as exc:
            raise click.BadParameter(str(exc)) from None
    return out


@click.command("worker")
@click.option(
    "--workflow",
    "workflows",
    multiple=True,
    metavar="NAME=TARGET",
    help="A workflow to run (repeatable); default: the [[workflows]] of hutch.toml.",
)
@click.option("--redis-url", envvar="HUTCH_REDIS_URL", help="Redis URL [env HUTCH_REDIS_URL].")
@click.option("--amqp-url", envvar="HUTCH_AMQP_URL", help="RabbitMQ URL [env HUTCH_AMQP_URL].")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING"]))
def worker(workflows: tuple[str, ...], redis_url: str | None, amqp_url: str | None, log_level: str) -> None:
    """Run a worker: consume this worker's share of the partitions until SIGTERM or SIGINT.

    Settings come from HUTCH_* environment variables and hutch.toml (HUTCH_CONFIG). On a signal
    the worker stops taking messages, lets in-flight steps finish (HUTCH_SHUTDOWN_TIMEOUT_S),
    releases its partitions to the other workers and exits 0.
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    tracing.configure_from_env("hutch-worker")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    classes = _parse_workflows(workflows)
    overrides = {k: v for k, v in {"redis_url": redis_url, "amqp_url": amqp_url}.items() if v}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None
    try:
        asyncio.run(_run(settings, classes))
    except ServiceUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except HutchError as exc:
        raise click.UsageError(str(exc)) from None


async def _run(settings: Settings, classes: dict[str, type] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(w: Worker) -> None:
        click.echo(
            f"hutch worker {w.worker_id} connected to {settings.redacted(settings.redis_url)} and "
            f"{settings.redacted(settings.amqp_url)} (namespace {settings.namespace!r}, "
            f"{settings.partitions} partitions); owns partitions {w.partitions}",
            err=False,
        )
        sys.stdout.flush()

    await serve(settings, stop, workflows=classes, on_ready=ready)
    click.echo("hutch worker stopped")
