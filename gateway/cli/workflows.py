"""``hutch workflows list|trigger`` (through a gateway's REST API) and ``hutch workflows diagram``."""

from __future__ import annotations

import click
from hutch.gateway.cli import render
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.options import instance_id_option, parse_json, remote_options
from hutch.gateway.cli.remote import Remote


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"diagram": "hutch.gateway.cli.diagram:diagram", "verify": "hutch.gateway.cli.verify:verify"},
)
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
@instance_id_option
@remote_options
def workflows_trigger(name: str, params_json: str | None, instance_id: str | None, remote: Remote) -> None:
    """Create an instance of workflow NAME with PARAMS_JSON as its params.

    \b
    Example:
      hutch workflows trigger order '{"orderId": "A-1", "items": []}' --id order-A-1
    """
    params = None if params_json is None else parse_json(params_json, "PARAMS_JSON")
    # A 409 on create can only be a taken id (the API's own hint names its batch endpoint).
    taken = f"instance {instance_id!r} of workflow {name!r} already exists; pass another --id, or none for a random one"
    result = remote.call(lambda api: api.create_instance(name, params, id=instance_id), instead={409: taken})
    remote.show(result, lambda console: render.created_text(result))
