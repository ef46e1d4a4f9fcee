"""``hutch gateway``: the REST API over HTTP for a distributed deployment, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys

import click
import hutch
from hutch import tracing
from hutch.gateway.app import build_app
from hutch.gateway.cli.options import (
    access_log_option,
    backend_options,
    invalid_settings,
    load_settings,
    log_format_option,
    log_level_option,
    token_list,
    tokens_option,
)
from hutch.gateway.cli.serving import EXIT_START_FAILED, configure_logging, start_or_report, stop_on_signals
from hutch.gateway.server import BindError, GatewayServer
from hutch.gateway.settings import GatewaySettings
from hutch.logs import LogFormat
from hutch.settings import Settings


@click.command("gateway")
@click.option("--host", default=None, help="Address to listen on [env HUTCH_GATEWAY_HOST; default 127.0.0.1].")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port [env HUTCH_GATEWAY_PORT; default 8787]."
)
@tokens_option("A valid API bearer token (repeatable, for rotation) [default: HUTCH_GATEWAY_TOKENS, comma separated].")
@backend_options()
@access_log_option
@log_level_option
@log_format_option
def gateway(
    host: str | None,
    port: int | None,
    tokens: tuple[str, ...],
    redis_url: str | None,
    amqp_url: str | None,
    access_log: bool,
    log_level: str,
    log_format: LogFormat | None,
) -> None:
    """Serve the REST API for a distributed deployment (workers run elsewhere) until SIGTERM or SIGINT.

    The gateway talks to the Redis and RabbitMQ the workers use (HUTCH_REDIS_URL, HUTCH_AMQP_URL or
    hutch.toml) and creates instances of the [[workflows]] in hutch.toml; it needs no workflow code.
    Every /api request needs 'Authorization: Bearer <token>' with one of the tokens.

    \b
    Example:
      HUTCH_GATEWAY_TOKENS=s3cret hutch gateway --host 0.0.0.0 --port 8787
    """
    configure_logging(log_level, log_format)
    tracing.configure_from_env("hutch-gateway")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    settings = load_settings(redis_url, amqp_url)
    with invalid_settings():
        gateway_settings = GatewaySettings()
    if not (settings.redis_url and settings.amqp_url):
        raise click.UsageError(
            "hutch gateway serves a distributed deployment: set HUTCH_REDIS_URL and HUTCH_AMQP_URL "
            "(or --redis-url/--amqp-url); to run everything in one process, use hutch dev"
        )
    tokens_given = token_list(tokens) or gateway_settings.token_values()
    if not tokens_given:
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
    sys.exit(asyncio.run(_serve(server, settings, tokens_given, gateway_settings.body_limit(settings.limits))))


async def _serve(server: GatewayServer, settings: Settings, tokens: list[str], max_body_bytes: int) -> int:
    with stop_on_signals(server.shutdown):
        client = await start_or_report(server, settings, hutch.connect(settings=settings))
        if client is None:
            return EXIT_START_FAILED
        client.start_bulk_runner()  # runs the bulk jobs it accepts, and resumes any whose runner died
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
