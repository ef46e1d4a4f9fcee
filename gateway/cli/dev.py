"""``hutch dev``: the whole stack in one process — gateway, worker and backends — on http://127.0.0.1:8787.

Like ``wrangler dev``: the backends are embedded (fakeredis and the in-process transport, so
instances live as long as the process) unless Redis and RabbitMQ URLs are given, in which case
the process runs a distributed worker on them next to the gateway.

Authentication: by default ``hutch dev`` accepts API requests without a token, and for that
reason refuses to listen on anything but a loopback address. ``--token`` (repeatable) turns
bearer-token checks on, exactly as ``hutch gateway`` does them.

Triggers: the ``[[triggers.crons]]`` of hutch.toml fire as they do under ``hutch worker``; its
``[[queues.consumers]]`` consume their queues when RabbitMQ is given, and without it ``hutch dev``
refuses to start rather than leave them unserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys

import click
import hutch
from hutch import Client, tracing
from hutch.clock import Clock
from hutch.consumers import gc_tuning
from hutch.consumers.runtime import start_distributed
from hutch.consumers.serve import start_triggers
from hutch.consumers.worker import Worker
from hutch.errors import HutchError, InvalidInputError
from hutch.gateway.api.auth import require_token
from hutch.gateway.app import build_app
from hutch.gateway.cli.options import (
    access_log_option,
    backend_options,
    invalid_settings,
    load_settings,
    log_format_option,
    log_level_option,
    parse_workflows,
    token_list,
    tokens_option,
    workflow_option,
)
from hutch.gateway.cli.serving import EXIT_START_FAILED, configure_logging, start_or_report, stop_on_signals
from hutch.gateway.http_client import DEFAULT_URL
from hutch.gateway.server import BindError, GatewayServer, is_loopback
from hutch.gateway.settings import GatewaySettings
from hutch.logs import LogFormat
from hutch.settings import Settings
from hutch.versions import Workflows

DEFAULT_PORT = 8787
EXIT_WORKER_DIED = 1


class StartRefused(click.ClickException):
    """Settings ``hutch dev`` cannot serve as given: one line on stderr, exit status 2 (bad usage)."""

    exit_code = 2


@click.command("dev")
@workflow_option(
    "A workflow to serve (repeatable), e.g. order=examples/order.py:OrderWorkflow; "
    "default: the [[workflows]] of hutch.toml."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port.")
@tokens_option("Require this API bearer token (repeatable); without it, API requests need no token.")
@backend_options(
    redis_help="Use this Redis instead of the embedded store.",
    amqp_help="Use this RabbitMQ instead of the in-process transport.",
)
@access_log_option
@log_level_option
@log_format_option
def dev(
    workflows: tuple[str, ...],
    host: str,
    port: int,
    tokens: tuple[str, ...],
    redis_url: str | None,
    amqp_url: str | None,
    access_log: bool,
    log_level: str,
    log_format: LogFormat | None,
) -> None:
    """Run gateway, worker and backends in one process until Ctrl-C, for local development.

    Serves the REST API (and /healthz, /readyz, /metrics, /docs) on http://127.0.0.1:8787, runs
    the workflows in the same process, and keeps their state in memory (embedded backends) unless
    HUTCH_REDIS_URL and HUTCH_AMQP_URL (or --redis-url/--amqp-url) are set. Drive it with the
    other hutch commands, e.g. 'hutch workflows trigger order'.

    \b
    Example:
      hutch dev --workflow approval=examples/approval.py:ApprovalWorkflow
      hutch workflows trigger approval '{"requestId": "PR-7"}' --id PR-7
      hutch events send approval PR-7 approval '{"approved": true}'
    """
    configure_logging(log_level, log_format)
    tracing.configure_from_env("hutch-dev")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    if log_level != "DEBUG":
        # One worker owns every partition here; a line per partition at start-up says nothing.
        logging.getLogger("hutch.worker").setLevel(logging.WARNING)
    classes = parse_workflows(workflows)
    settings = load_settings(redis_url, amqp_url)
    try:
        with invalid_settings():
            max_body_bytes = GatewaySettings().body_limit(settings.limits)
            if classes is None:
                classes = settings.workflow_classes()
    except HutchError as exc:
        raise click.UsageError(str(exc)) from None
    if not classes:
        raise click.UsageError("no workflows to serve: add [[workflows]] to hutch.toml or pass --workflow NAME=TARGET")
    if settings.queues.consumers and not settings.amqp_url:
        queues = ", ".join(repr(spec.queue) for spec in settings.queues.consumers)
        raise StartRefused(
            f"hutch.toml has [[queues.consumers]] (queue {queues}), which consume RabbitMQ queues, but hutch dev has "
            "no RabbitMQ: set HUTCH_REDIS_URL and HUTCH_AMQP_URL (or --redis-url and --amqp-url), or remove them"
        )
    tokens_given = token_list(tokens)
    if not tokens_given and not is_loopback(host):
        raise click.UsageError(
            f"without --token, hutch dev accepts every API request, so it only listens on a loopback address "
            f"(not {host!r}); pass --token to listen there"
        )
    try:
        server = GatewayServer(host=host, port=port, access_log=access_log, log_level=log_level)
    except BindError as exc:
        raise click.UsageError(str(exc)) from None
    gc_tuning.tune()  # this process runs the worker: collect garbage less often (see the module)
    sys.exit(asyncio.run(_serve(server, settings, classes, tokens_given, max_body_bytes)))


async def _serve(
    server: GatewayServer,
    settings: Settings,
    classes: Workflows,
    tokens: list[str],
    max_body_bytes: int,
) -> int:
    distributed = bool(settings.redis_url or settings.amqp_url)
    with stop_on_signals(server.shutdown):
        client = await start_or_report(server, settings, _open(settings, classes, distributed))
        if client is None:
            return EXIT_START_FAILED
        worker = client.runtime_worker
        # Both runtimes _open starts run their worker in this process.
        assert isinstance(worker, Worker), "hutch dev runs its worker in this process"
        try:
            # create_app insists on a token; in open mode it gets an unguessable one and the check is
            # replaced, so requests with no (or any) Authorization header are let in.
            app = build_app(
                client, settings, tokens=tokens or [secrets.token_urlsafe(32)], max_body_bytes=max_body_bytes
            )
            if not tokens:
                app.dependency_overrides[require_token] = _no_auth

            def ready(url: str) -> None:
                backends = (
                    f"Redis {settings.redacted(settings.redis_url)} and RabbitMQ {settings.redacted(settings.amqp_url)}"
                    if distributed
                    else "embedded backends (state lives in this process)"
                )
                auth = f"{len(tokens)} API token(s) required" if tokens else "no API token needed"
                served = "".join(f"; {trigger}" for trigger in triggers)
                click.echo(
                    f"hutch dev ready on {url}: workflows {', '.join(sorted(classes))}{served}; {backends}; {auth}"
                )
                flags = "" if url == DEFAULT_URL else f" --url {url}"
                click.echo(f"  try: hutch workflows list{flags}" + (" --token <token>" if tokens else ""))
                sys.stdout.flush()

            async with contextlib.AsyncExitStack() as running:
                starting = start_triggers(running, client, settings, connection_name="hutch/dev-queue-trigger")
                started = await start_or_report(server, settings, starting)
                if started is None:
                    return EXIT_START_FAILED
                triggers = started  # what ready() announces
                died = False
                async with asyncio.TaskGroup() as tasks:
                    watch = tasks.create_task(_watch_worker(worker, server), name="dev-worker-watch")
                    try:
                        await server.run(app, on_ready=ready)
                    finally:
                        died = watch.done() and watch.result()
                        watch.cancel()
            # The triggers stopped first (no more creations); embedded state dies with the process, so
            # there is nothing to drain for; a distributed worker lets its in-flight steps finish
            # (HUTCH_SHUTDOWN_TIMEOUT_S) before releasing partitions.
            await worker.shutdown(timeout=None if distributed else 0)
        finally:
            await client.close()
    if died:
        click.echo("Error: the worker stopped unexpectedly (see the log above); hutch dev stopped", err=True)
        return EXIT_WORKER_DIED
    click.echo("hutch dev stopped")
    return 0


async def _open(settings: Settings, classes: Workflows, distributed: bool) -> Client:
    """A client with a worker running in this process: embedded, or on the configured Redis and RabbitMQ."""
    if not distributed:
        return await hutch.connect(classes, settings=settings, bindings=settings.binding_names())
    if not (settings.redis_url and settings.amqp_url):
        raise InvalidInputError(
            "hutch dev needs both HUTCH_REDIS_URL and HUTCH_AMQP_URL (or --redis-url and --amqp-url) for the "
            "distributed backends; give neither for the embedded ones"
        )
    client, _ = await start_distributed(
        classes,
        settings=settings,
        limits=settings.limits,
        clock=Clock(),
        resources={},
        binding_names=settings.binding_names(),
    )
    return client


async def _watch_worker(worker: Worker, server: GatewayServer) -> bool:
    """Stop the server if the worker stops on its own (a crashed internal task); True when that happened."""
    await worker.wait_stopped()
    server.shutdown()
    return True


async def _no_auth() -> None:
    """Stands in for the bearer-token check when ``hutch dev`` runs without ``--token``."""
