"""``hutch instances list|describe|pause|resume|terminate|restart`` (through a gateway's REST API).

A lifecycle change the API accepted but no worker applied within its wait (HTTP 202) exits 3.
"""

from __future__ import annotations

from typing import Any

import click
from hutch import Status
from hutch.gateway.cli import render
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.options import remote_options
from hutch.gateway.cli.remote import Remote, resolve_instance
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


def _control_command(action: Action, summary: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @remote_options
    def command(name: str, instance_id: str, remote: Remote) -> None:
        async def request(api: GatewayClient) -> tuple[str, dict[str, Any]]:
            iid = await resolve_instance(api, name, instance_id)
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
