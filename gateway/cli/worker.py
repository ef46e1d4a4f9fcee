"""``hutch worker``: run a distributed worker until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import sys

import click
import prometheus_client
from hutch import tracing
from hutch.consumers import gc_tuning
from hutch.consumers.serve import serve
from hutch.consumers.worker import Worker
from hutch.errors import HutchError, ServiceUnavailable
from hutch.gateway.cli.options import (
    backend_options,
    load_settings,
    log_format_option,
    log_level_option,
    parse_workflows,
    workflow_option,
)
from hutch.gateway.cli.serving import configure_logging, stop_on_signals
from hutch.logs import LogFormat
from hutch.settings import Settings
from hutch.versions import Workflows


@click.command("worker")
@workflow_option("A workflow to run (repeatable); default: the [[workflows]] of hutch.toml.")
@backend_options()
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    envvar="HUTCH_METRICS_PORT",
    default=None,
    help="Serve Prometheus /metrics on this port [env HUTCH_METRICS_PORT; default: not served].",
)
@click.option(
    "--metrics-host",
    envvar="HUTCH_METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on [env HUTCH_METRICS_HOST].",
)
@log_level_option
@log_format_option
def worker(
    workflows: tuple[str, ...],
    redis_url: str | None,
    amqp_url: str | None,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    log_format: LogFormat | None,
) -> None:
    """Run a worker: consume this worker's share of the partitions until SIGTERM or SIGINT.

    Settings come from HUTCH_* environment variables and hutch.toml (HUTCH_CONFIG). On a signal
    the worker stops taking messages, lets in-flight steps finish (HUTCH_SHUTDOWN_TIMEOUT_S),
    releases its partitions to the other workers and exits 0.
    """
    configure_logging(log_level, log_format)
    tracing.configure_from_env("hutch-worker")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    classes = parse_workflows(workflows)
    settings = load_settings(redis_url, amqp_url)
    if metrics_port is not None:
        _serve_metrics(metrics_host, metrics_port)
    gc_tuning.tune()  # this process is the worker's: collect garbage less often (see the module)
    try:
        asyncio.run(_run(settings, classes))
    except ServiceUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except HutchError as exc:
        raise click.UsageError(str(exc)) from None


def _serve_metrics(host: str, port: int) -> None:
    """Serve the default Prometheus registry on ``host:port`` from a daemon thread, for the life of the process.

    Raises:
        click.ClickException: the address cannot be bound (in use, or not an address of this host).
    """
    try:
        # A thread, not the event loop: a scrape is answered even while the loop is busy.
        prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    click.echo(f"hutch worker serving metrics on http://{host}:{port}/metrics")


async def _run(settings: Settings, classes: Workflows | None) -> None:
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
