"""``hutch worker``: run a distributed worker until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import sys

import click
from hutch import tracing
from hutch.consumers.serve import serve
from hutch.consumers.worker import Worker
from hutch.errors import HutchError, ServiceUnavailable
from hutch.gateway.cli.options import backend_options, load_settings, log_level_option, parse_workflows, workflow_option
from hutch.gateway.cli.serving import configure_logging, stop_on_signals
from hutch.settings import Settings


@click.command("worker")
@workflow_option("A workflow to run (repeatable); default: the [[workflows]] of hutch.toml.")
@backend_options()
@log_level_option
def worker(workflows: tuple[str, ...], redis_url: str | None, amqp_url: str | None, log_level: str) -> None:
    """Run a worker: consume this worker's share of the partitions until SIGTERM or SIGINT.

    Settings come from HUTCH_* environment variables and hutch.toml (HUTCH_CONFIG). On a signal
    the worker stops taking messages, lets in-flight steps finish (HUTCH_SHUTDOWN_TIMEOUT_S),
    releases its partitions to the other workers and exits 0.
    """
    configure_logging(log_level)
    tracing.configure_from_env("hutch-worker")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    classes = parse_workflows(workflows)
    settings = load_settings(redis_url, amqp_url)
    try:
        asyncio.run(_run(settings, classes))
    except ServiceUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except HutchError as exc:
        raise click.UsageError(str(exc)) from None


async def _run(settings: Settings, classes: dict[str, type] | None) -> None:
    stop = asyncio.Event()

    def ready(w: Worker) -> None:
        click.echo(
            f"hutch worker {w.worker_id} connected to {settings.redacted(settings.redis_url)} and "
            f"{settings.redacted(settings.amqp_url)} (namespace {settings.namespace!r}, "
            f"{settings.partitions} partitions); owns partitions {w.partitions}",
            err=False,
        )
        sys.stdout.flush()

    with stop_on_signals(stop.set):
        await serve(settings, stop, workflows=classes, on_ready=ready)
    click.echo("hutch worker stopped")
