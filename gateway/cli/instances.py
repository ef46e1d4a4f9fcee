"""``hutch instances list|describe|step|pause|resume|terminate|restart`` (through a gateway's REST API).

A lifecycle change the API accepted but no worker applied within its wait (HTTP 202) exits 3.
``restart --from-step-name/--from-step-count/--from-step-type`` and ``terminate --rollback`` are
wrangler's flags (the API's ``from`` and ``rollback`` fields).
"""

from __future__ import annotations

from typing import Any

import click
from hutch import Status
from hutch.gateway.cli import render
from hutch.gateway.cli.formatting import json_text
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.options import remote_options
from hutch.gateway.cli.remote import ApiFailed, Remote, resolve_instance
from hutch.gateway.http_client import GatewayClient
from hutch.status import Action

EXIT_NOT_APPLIED = 3
"""A lifecycle change the API accepted but no worker applied within its wait (HTTP 202): not an error,
yet a script must not assume the change happened."""


@click.group(cls=LazyGroup, lazy_subcommands={"export": "hutch.gateway.cli.verify:export"})
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
        return await api.describe_instance(name, await resolve_instance(api, name, instance_id))

    result = remote.call(request)
    remote.show(result, lambda console: render.instance_view(result, console))


@instances.command("step")
@click.argument("name")
@click.argument("instance_id", metavar="ID|latest")
@click.argument("step_name", metavar="STEP")
@click.option("--count", type=click.IntRange(1), default=1, show_default=True, help="Which run of a repeated name.")
@remote_options
def instances_step(name: str, instance_id: str, step_name: str, count: int, remote: Remote) -> None:
    """Print the full output of step STEP of instance ID of workflow NAME, as JSON (uncut).

    With --json, the step's whole record: type, times, attempts, output or error.
    """

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.describe_instance(name, await resolve_instance(api, name, instance_id))

    detail = remote.call(request)
    steps = detail.get("steps") or []
    found = next((s for s in steps if s.get("name") == step_name and s.get("count", 1) == count), None)
    if found is None:
        known = ", ".join(sorted({f"{s.get('name')!r}" for s in steps})) or "none"
        raise ApiFailed(
            f"instance {detail.get('id', instance_id)!r} has no step {step_name!r} #{count}; its steps: {known}"
        )
    if remote.as_json:
        click.echo(json_text(found))
    elif found.get("error") is not None and found.get("success") is False:
        click.echo(json_text({"error": found["error"]}))
    else:
        click.echo(json_text(found.get("output")))


def _apply(remote: Remote, name: str, instance_id: str, action: Action, **body: Any) -> None:
    """Send one lifecycle change and print what the API answered (exit 3 when no worker applied it yet)."""

    async def request(api: GatewayClient) -> tuple[str, dict[str, Any]]:
        iid = await resolve_instance(api, name, instance_id)
        return iid, await api.change_status(name, iid, action, **body)

    iid, result = remote.call(request)
    remote.show(result, lambda console: render.status_changed_text(name, iid, action, result))
    if result.get("applied") is False:
        click.get_current_context().exit(EXIT_NOT_APPLIED)


_LATER = "(ID may be 'latest'). Exit status 3: no worker applied it within the gateway's wait (it stays queued)."


def _control_command(action: Action, summary: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @remote_options
    def command(name: str, instance_id: str, remote: Remote) -> None:
        _apply(remote, name, instance_id, action)

    command.__doc__ = f"{summary} {_LATER}"
    return click.command(action)(command)


CONTROL_COMMANDS: tuple[tuple[Action, str], ...] = (
    ("pause", "Pause instance ID of workflow NAME; a running step finishes first"),
    ("resume", "Resume a paused instance ID of workflow NAME"),
)
for _action, _summary in CONTROL_COMMANDS:
    instances.add_command(_control_command(_action, _summary))


@instances.command("terminate", help=f"Terminate instance ID of workflow NAME for good {_LATER}")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option(
    "--rollback",
    is_flag=True,
    help="First run the undos of its completed rollback steps (last first), then end terminated.",
)
@remote_options
def instances_terminate(name: str, instance_id: str, rollback: bool, remote: Remote) -> None:
    """Terminate the instance (after its rollback, with ``--rollback``)."""
    _apply(remote, name, instance_id, "terminate", rollback=rollback)


@instances.command(
    "restart",
    help="Restart instance ID of workflow NAME with the same params: from the beginning, or from a step "
    f"(--from-step-name), keeping the results of the steps before it {_LATER}",
)
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--from-step-name", default=None, help="Run again from the step of this name.")
@click.option(
    "--from-step-count", type=click.IntRange(1), default=None, help="Which step of that name, from 1 [default: 1]."
)
@click.option(
    "--from-step-type",
    type=click.Choice(["do", "sleep", "waitForEvent"]),
    default=None,
    help="Only a step of this type (step.do, step.sleep, step.wait_for_event).",
)
@remote_options
def instances_restart(
    name: str,
    instance_id: str,
    from_step_name: str | None,
    from_step_count: int | None,
    from_step_type: str | None,
    remote: Remote,
) -> None:
    """Restart the instance from the beginning, or from the step that ``--from-step-*`` names."""
    if from_step_name is None:
        if from_step_count is not None or from_step_type is not None:
            raise click.UsageError("--from-step-count and --from-step-type need --from-step-name")
        _apply(remote, name, instance_id, "restart")
        return
    from_step: dict[str, Any] = {"name": from_step_name, "count": from_step_count or 1}
    if from_step_type is not None:
        from_step["type"] = from_step_type
    _apply(remote, name, instance_id, "restart", from_step=from_step)
