"""``hutch run FILE[:Class] --params JSON``: one instance to completion on the embedded runtime, shown live.

It runs in this process, no servers needed, and shows the instance's progress as it goes
(:mod:`hutch.gateway.progress`, rendered by :mod:`hutch.gateway.cli.progress_view`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click
import hutch
from hutch import InvalidInputError, Settings, WorkflowEntrypoint
from hutch.gateway.cli.options import EXIT_INTERRUPTED, instance_id_option, json_option, parse_json
from hutch.gateway.cli.progress_view import HumanSink, JsonSink
from hutch.gateway.loader import TargetError, load_workflow, workflow_name
from hutch.gateway.progress import ProgressSink, RunResult, follow
from pydantic import ValidationError
from rich.console import Console


@click.command()
@click.argument("target", metavar="FILE_OR_MODULE[:CLASS]")
@click.option("--params", "params_json", default="null", metavar="JSON", help="The instance's params, as JSON.")
@instance_id_option
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="TYPE=JSON",
    help="Send this event when the instance waits for TYPE (repeatable).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Give up (exit 1) if the instance has not finished by then.",
)
@json_option("Print JSON lines (one per progress event, then the result) instead of the live view.")
@click.pass_context
def run(
    ctx: click.Context,
    target: str,
    params_json: str,
    instance_id: str | None,
    events: tuple[str, ...],
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run one instance of a workflow to completion on the embedded runtime, showing live progress.

    FILE_OR_MODULE[:CLASS] is a file (examples/order.py:OrderWorkflow) or a module
    (examples.order:OrderWorkflow); without :CLASS the one workflow class defined there is used.

    Exit status: 0 complete, 1 errored, terminated or timed out, 2 bad usage.

    \b
    Example:
      hutch run examples/order.py:OrderWorkflow \\
        --params '{"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}'
    """
    params = parse_json(params_json, "--params")
    # The live view shows each failed attempt and the outcome: their log lines would only repeat it.
    logging.getLogger("hutch.instances").setLevel(logging.CRITICAL)
    sends = [_parse_event(spec) for spec in events]
    try:
        cls = load_workflow(target)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE_OR_MODULE[:CLASS]") from None
    try:
        settings = Settings().model_copy(update={"redis_url": "", "amqp_url": ""})  # always embedded
    except ValidationError as exc:
        raise click.UsageError(f"invalid HUTCH_ settings in the environment: {exc}") from None
    sink: ProgressSink
    if as_json:
        sink = JsonSink(click.echo)
    else:
        sink = HumanSink(Console(highlight=False), label=target, event_types={t for t, _ in sends})
    try:
        result = asyncio.run(_run(cls, params, instance_id, sink, sends, timeout, settings))
    except InvalidInputError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(result.exit_code)


async def _run(
    cls: type[WorkflowEntrypoint],
    params: Any,
    instance_id: str | None,
    sink: ProgressSink,
    events: list[tuple[str, Any]],
    timeout: float | None,
    settings: Settings,
) -> RunResult:
    name = workflow_name(cls)
    async with hutch.connect({name: cls}, settings=settings) as client:
        instance = await client.workflow(name).create(id=instance_id, params=params)
        return await follow(instance, sink, events=events, timeout=timeout)


def _parse_event(spec: str) -> tuple[str, Any]:
    event_type, sep, payload = spec.partition("=")
    if not event_type.strip():
        raise click.BadParameter(
            f"{spec!r} must look like TYPE=JSON, e.g. approval='{{\"ok\": true}}'", param_hint="--event"
        )
    return event_type.strip(), parse_json(payload, f"--event {event_type}") if sep else None
