"""``hutch workflows list|describe|trigger`` (through a gateway's REST API) and ``hutch workflows diagram``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
from hutch.concurrency import MAX_PRIORITY
from hutch.gateway.cli import render
from hutch.gateway.cli.formatting import list_table, parse_time, utc_clock
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.options import instance_id_option, parse_json, remote_options
from hutch.gateway.cli.remote import Remote
from hutch.gateway.http_client import GatewayClient
from rich.console import Group, RenderableType
from rich.text import Text

VERSION_SAMPLE = 100
"""How many of the newest instances `workflows describe` reads the versions of (no version registry exists)."""


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"diagram": "hutch.gateway.cli.diagram:diagram", "verify": "hutch.gateway.cli.verify:verify"},
)
def workflows() -> None:
    """List, describe and trigger workflows (through a gateway's REST API); draw a workflow's diagram."""


@workflows.command("list")
@remote_options
def workflows_list(remote: Remote) -> None:
    """List the workflows and how many instances each has, by status."""
    result = remote.call(lambda api: api.list_workflows())
    remote.show(result, lambda console: render.workflows_table(result))


@workflows.command("describe")
@click.argument("name")
@remote_options
def workflows_describe(name: str, remote: Remote) -> None:
    """Describe workflow NAME: its instances by status, the code versions its newest instances run, the newest one."""

    async def request(api: GatewayClient) -> dict[str, Any]:
        summary = await api.get_workflow(name)
        recent = await api.recent_instances(name, limit=VERSION_SAMPLE)
        versions = Counter(str(row["version"]) for row in recent if row.get("version"))
        counts: dict[str, int] = summary.get("instances") or {}
        return {
            "name": name,
            "instances": counts,
            "total": sum(counts.values()),
            "versions": [{"version": v, "instances": n} for v, n in versions.items()],
            "versions_of_newest": len(recent),
            "newest": None if not recent else {"id": recent[0]["id"], "created_on": recent[0].get("created_on")},
        }

    result = remote.call(request)
    remote.show(result, lambda console: _describe_view(result))


def _describe_view(result: dict[str, Any]) -> RenderableType:
    head = render.workflows_table([{"name": result["name"], "instances": result["instances"]}])
    versions = list_table(f"Code versions of the newest {result['versions_of_newest']} instances, newest first")
    versions.add_column("Version", no_wrap=True, overflow="ellipsis")
    versions.add_column("Instances", justify="right")
    for row in result["versions"]:
        versions.add_row(row["version"], str(row["instances"]))
    newest = result["newest"]
    if newest is None:
        return Group(head, Text("No instances yet.", style="dim"))
    created = utc_clock(parse_time(newest.get("created_on")))
    return Group(head, versions, Text(f"Newest instance: {newest['id']} (created {created} UTC)", overflow="ellipsis"))


@workflows.command("trigger")
@click.argument("name")
@click.argument("params_json", metavar="[PARAMS_JSON]", required=False)
@instance_id_option
@click.option(
    "--priority",
    type=click.IntRange(-MAX_PRIORITY, MAX_PRIORITY),
    default=None,
    help="Order among instances waiting for a concurrency slot: lower starts first (default 0).",
)
@remote_options
def workflows_trigger(
    name: str, params_json: str | None, instance_id: str | None, priority: int | None, remote: Remote
) -> None:
    """Create an instance of workflow NAME with PARAMS_JSON as its params.

    \b
    Example:
      hutch workflows trigger order '{"orderId": "A-1", "items": []}' --id order-A-1 --priority -5
    """
    params = None if params_json is None else parse_json(params_json, "PARAMS_JSON")
    # A 409 on create can only be a taken id (the API's own hint names its batch endpoint).
    taken = f"instance {instance_id!r} of workflow {name!r} already exists; pass another --id, or none for a random one"
    result = remote.call(
        lambda api: api.create_instance(name, params, id=instance_id, priority=priority), instead={409: taken}
    )
    remote.show(result, lambda console: render.created_text(result))
