"""The ``hutch`` command line, modelled on ``wrangler workflows``: nouns, then verbs.

Servers and local runs:

* ``hutch run FILE[:Class] --params JSON`` runs one instance to completion on the embedded runtime
  (in this process, no servers needed) and shows its progress live (:mod:`hutch.gateway.progress`);
* ``hutch dev`` (:mod:`hutch.gateway.dev`), ``hutch gateway`` (:mod:`hutch.gateway.serve_gateway`) and
  ``hutch worker`` (:mod:`hutch.gateway.worker_command`) run until SIGINT/SIGTERM;
* ``hutch admin repartition`` (:mod:`hutch.gateway.admin_command`) changes a stopped deployment's
  partition count.

Clients of a gateway's REST API (``--url``/``HUTCH_URL``, ``--token``/``HUTCH_TOKEN``), so they work
against ``hutch dev`` and a remote deployment alike: ``hutch workflows list|trigger``, ``hutch
instances list|describe|pause|resume|terminate|restart``, ``hutch events send``. Each prints a
table (:mod:`hutch.gateway.render`) or, with ``--json``, the API's ``result`` as JSON. Exit status: 0 ok,
1 the API answered with an error (404, 409, 401...), 2 bad usage or the gateway cannot be reached,
3 a lifecycle change accepted but not applied yet (no worker applied it within the gateway's wait).

Commands stay thin: parse the arguments, call the API (:mod:`hutch.gateway.http_client`), render.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import httpx
import hutch
from hutch import InvalidInputError, Settings, Status, WorkflowEntrypoint
from hutch.gateway import render
from hutch.gateway.http_client import (
    DEFAULT_URL,
    ApiRequestError,
    GatewayClient,
    GatewayError,
    GatewayUnreachable,
)
from hutch.gateway.loader import TargetError, load_workflow, workflow_name
from hutch.gateway.progress import HumanSink, JsonSink, ProgressSink, RunResult, follow
from hutch.status import Action
from pydantic import ValidationError
from rich.console import Console, RenderableType

T = TypeVar("T")

EXIT_INTERRUPTED = 130
EXIT_NOT_APPLIED = 3
"""A lifecycle change the API accepted but no worker applied within its wait (HTTP 202): not an error,
yet a script must not assume the change happened."""


class LazyGroup(click.Group):
    """A click group that imports some subcommands only when they are used.

    The server commands pull in uvicorn, FastAPI, aio-pika and the whole runtime; a REST command
    such as ``hutch instances list`` needs none of it and starts much faster without it.

    Args:
        lazy_subcommands: command name → ``"module:attribute"`` of its :class:`click.Command`.
    """

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, eager and lazy, sorted."""
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command called ``cmd_name``, importing it first if it is lazy."""
        target = self.lazy_subcommands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    lazy_subcommands={
        "admin": "hutch.gateway.admin_command:admin",
        "dev": "hutch.gateway.dev:dev",
        "gateway": "hutch.gateway.serve_gateway:gateway",
        "worker": "hutch.gateway.worker_command:worker",
    },
)
# hutch.__version__: the installed distribution's, as pyproject.toml declared it at install time.
@click.version_option(hutch.__version__, prog_name="hutch", message="%(prog)s %(version)s")
def main() -> None:
    """Hutch: durable workflows on RabbitMQ and Redis.

    \b
    Local:     hutch run, hutch dev
    Servers:   hutch worker, hutch gateway
    Operating: hutch admin repartition --to N
    REST API:  hutch workflows, hutch instances, hutch events
               (--url / HUTCH_URL, default http://127.0.0.1:8787; --token / HUTCH_TOKEN)
    """


@main.command()
@click.argument("target", metavar="FILE_OR_MODULE[:CLASS]")
@click.option("--params", "params_json", default="null", metavar="JSON", help="The instance's params, as JSON.")
@click.option("--id", "instance_id", default=None, help="Instance id (a random uuid when omitted).")
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON lines (one per progress event, then the result) instead of the live view.",
)
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
    params = _parse_json(params_json, "--params")
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


def _parse_json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {text!r}", param_hint=option) from None


def _parse_event(spec: str) -> tuple[str, Any]:
    event_type, sep, payload = spec.partition("=")
    if not event_type.strip():
        raise click.BadParameter(
            f"{spec!r} must look like TYPE=JSON, e.g. approval='{{\"ok\": true}}'", param_hint="--event"
        )
    return event_type.strip(), _parse_json(payload, f"--event {event_type}") if sep else None


# --------------------------------------------------------------------------- REST API commands
class ApiFailed(click.ClickException):
    """The API answered with an error (exit status 1)."""

    exit_code = 1


class Unreachable(click.ClickException):
    """The gateway could not be reached, or something else answered (exit status 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Remote:
    """Where a REST command sends its request, and how it prints the answer.

    Attributes:
        url: the gateway's base URL.
        token: the bearer token, if any.
        as_json: print the API's ``result`` as JSON instead of tables.
    """

    url: str
    token: str | None
    as_json: bool

    def call(self, request: Callable[[GatewayClient], Awaitable[T]], *, instead: Mapping[int, str] | None = None) -> T:
        """Run ``request`` against the gateway; API errors exit 1, connection failures exit 2.

        ``instead`` maps an HTTP status to what to print in place of the API's message, where the
        command knows better: the API's hints name REST requests, a CLI user needs the command's options.
        """

        async def go() -> T:
            async with GatewayClient(self.url, self.token) as api:
                return await request(api)

        try:
            return asyncio.run(go())
        except ApiRequestError as exc:
            raise ApiFailed(_api_error_message(exc, (instead or {}).get(exc.status_code))) from None
        except GatewayUnreachable as exc:
            raise Unreachable(f"{exc}. Is hutch dev or hutch gateway running there? (--url / HUTCH_URL)") from None
        except GatewayError as exc:
            raise Unreachable(str(exc)) from None

    def show(self, result: Any, human: Callable[[Console], RenderableType]) -> None:
        """Print ``result`` as JSON (``--json``) or what ``human`` renders from it."""
        if self.as_json:
            click.echo(render.json_text(result))
            return
        console = Console(highlight=False)
        console.print(human(console))


def _api_error_message(exc: ApiRequestError, message: str | None = None) -> str:
    codes = ", ".join(str(c) for c in exc.codes if c)
    text = f"{message or exc} (HTTP {exc.status_code}" + (f", code {codes})" if codes else ")")
    if exc.status_code == 401:
        text += "; pass the gateway's API token with --token or HUTCH_TOKEN"
    return text


def _check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{url!r} is not a URL: {exc}", param_hint="--url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(f"{url!r} must be an http:// or https:// URL with a host", param_hint="--url")
    return url


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
    @click.option("--json", "as_json", is_flag=True, help="Print the API's result as JSON.")
    @functools.wraps(command)
    def wrapper(*args: Any, url: str, token: str | None, as_json: bool, **kwargs: Any) -> None:
        command(*args, remote=Remote(_check_url(url), token or None, as_json), **kwargs)

    return wrapper


async def _resolve(api: GatewayClient, name: str, instance_id: str) -> str:
    """``latest`` means the workflow's newest instance; any other value is an instance id."""
    if instance_id != "latest":
        return instance_id
    latest = await api.latest_instance_id(name)
    if latest is None:
        raise ApiFailed(f"workflow {name!r} has no instances yet, so there is no latest one")
    return latest


@main.group(cls=LazyGroup, lazy_subcommands={"diagram": "hutch.gateway.diagram_command:diagram"})
def workflows() -> None:
    """List workflows and trigger instances (through a gateway's REST API); draw a workflow's diagram."""


@workflows.command("list")
@remote_options
def workflows_list(remote: Remote) -> None:
    """List the workflows and how many instances each has, by status."""
    result = remote.call(lambda api: api.list_workflows())
    remote.show(result, lambda console: render.workflows_table(result))


@workflows.command("trigger")
@click.argument("name")
@click.argument("params_json", metavar="[PARAMS_JSON]", required=False)
@click.option("--id", "instance_id", default=None, help="Instance id (a random uuid when omitted).")
@remote_options
def workflows_trigger(name: str, params_json: str | None, instance_id: str | None, remote: Remote) -> None:
    """Create an instance of workflow NAME with PARAMS_JSON as its params.

    \b
    Example:
      hutch workflows trigger order '{"orderId": "A-1", "items": []}' --id order-A-1
    """
    params = None if params_json is None else _parse_json(params_json, "PARAMS_JSON")
    # A 409 on create can only be a taken id (the API's own hint names its batch endpoint).
    taken = f"instance {instance_id!r} of workflow {name!r} already exists; pass another --id, or none for a random one"
    result = remote.call(lambda api: api.create_instance(name, params, id=instance_id), instead={409: taken})
    remote.show(result, lambda console: render.created_text(result))


@main.group()
def instances() -> None:
    """List, inspect and control instances (through a gateway's REST API)."""


@instances.command("list")
@click.argument("name")
@click.option("--status", type=click.Choice([s.value for s in Status]), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=25, show_default=True, help="At most this many.")
@remote_options
def instances_list(name: str, status: str | None, limit: int, remote: Remote) -> None:
    """List the instances of workflow NAME, newest first."""
    result = remote.call(lambda api: api.recent_instances(name, status=status, limit=limit))
    remote.show(result, lambda console: render.instances_table(name, result))


@instances.command("describe")
@click.argument("name")
@click.argument("instance_id", metavar="[ID|latest]", default="latest")
@remote_options
def instances_describe(name: str, instance_id: str, remote: Remote) -> None:
    """Show an instance of NAME (default: the latest) and the timeline of its steps, sleeps and waits."""

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.describe_instance(name, await _resolve(api, name, instance_id))

    result = remote.call(request)
    remote.show(result, lambda console: render.instance_view(result, console))


def _control_command(action: Action, summary: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @remote_options
    def command(name: str, instance_id: str, remote: Remote) -> None:
        async def request(api: GatewayClient) -> tuple[str, dict[str, Any]]:
            iid = await _resolve(api, name, instance_id)
            return iid, await api.change_status(name, iid, action)

        iid, result = remote.call(request)
        remote.show(result, lambda console: render.status_changed_text(name, iid, action, result))
        if result.get("applied") is False:
            click.get_current_context().exit(EXIT_NOT_APPLIED)

    command.__doc__ = (
        f"{summary} (ID may be 'latest'). Exit status 3: no worker applied it within the gateway's wait "
        "(it stays queued)."
    )
    return click.command(action)(command)


CONTROL_COMMANDS: tuple[tuple[Action, str], ...] = (
    ("pause", "Pause instance ID of workflow NAME; a running step finishes first"),
    ("resume", "Resume a paused instance ID of workflow NAME"),
    ("terminate", "Terminate instance ID of workflow NAME for good"),
    ("restart", "Restart instance ID of workflow NAME from the beginning, with the same params"),
)
for _action, _summary in CONTROL_COMMANDS:
    instances.add_command(_control_command(_action, _summary))


@main.group()
def events() -> None:
    """Send events to instances (through a gateway's REST API)."""


@events.command("send")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.argument("event_type", metavar="TYPE")
@click.argument("payload_json", metavar="[PAYLOAD_JSON]", required=False)
@remote_options
def events_send(name: str, instance_id: str, event_type: str, payload_json: str | None, remote: Remote) -> None:
    """Send an event of type TYPE with PAYLOAD_JSON to instance ID of workflow NAME.

    The event waits in the instance's buffer until a step.wait_for_event for TYPE takes it.

    \b
    Example:
      hutch events send approval PR-7 approval '{"approved": true, "approver": "grace"}'
    """
    payload = None if payload_json is None else _parse_json(payload_json, "PAYLOAD_JSON")

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.send_event(name, await _resolve(api, name, instance_id), event_type, payload)

    result = remote.call(request)
    remote.show(result, lambda console: render.event_sent_text(name, result))


if __name__ == "__main__":
    main()
