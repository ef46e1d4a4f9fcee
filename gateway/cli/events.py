"""``hutch events send|create-or-send`` (through a gateway's REST API)."""

from __future__ import annotations

from typing import Any

import click
from hutch.gateway.cli import render
from hutch.gateway.cli.options import event_id_option, parse_json, remote_options
from hutch.gateway.cli.remote import Remote, resolve_instance
from hutch.gateway.http_client import GatewayClient


@click.group()
def events() -> None:
    """Send events to instances, creating an instance first if needed (through a gateway's REST API)."""


@events.command("send")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.argument("event_type", metavar="TYPE")
@click.argument("payload_json", metavar="[PAYLOAD_JSON]", required=False)
@event_id_option
@remote_options
def events_send(
    name: str, instance_id: str, event_type: str, payload_json: str | None, event_id: str | None, remote: Remote
) -> None:
    """Send an event of type TYPE with PAYLOAD_JSON to instance ID of workflow NAME.

    The event waits in the instance's buffer until a step.wait_for_event for TYPE takes it.

    \b
    Example:
      hutch events send approval PR-7 approval '{"approved": true, "approver": "grace"}'
    """
    payload = None if payload_json is None else parse_json(payload_json, "PAYLOAD_JSON")

    async def request(api: GatewayClient) -> dict[str, Any]:
        iid = await resolve_instance(api, name, instance_id)
        return await api.send_event(name, iid, event_type, payload, event_id=event_id)

    result = remote.call(request)
    remote.show(result, lambda console: render.event_sent_text(name, result))


@events.command("create-or-send")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.argument("event_type", metavar="TYPE")
@click.argument("payload_json", metavar="[PAYLOAD_JSON]", required=False)
@click.option("--params", "params_json", metavar="JSON", default=None, help="The params if this creates the instance.")
@event_id_option
@remote_options
def events_create_or_send(
    name: str,
    instance_id: str,
    event_type: str,
    payload_json: str | None,
    params_json: str | None,
    event_id: str | None,
    remote: Remote,
) -> None:
    """Send an event of type TYPE with PAYLOAD_JSON to instance ID of workflow NAME, creating it first if absent.

    One atomic request (Temporal's signal-with-start): an instance this creates starts with the event
    already buffered; concurrent calls for one ID create one instance and deliver every event once.

    \b
    Example:
      hutch events create-or-send cart user-7 add '{"sku": "X"}' --params '{"user": 7}' --event-id req-19
    """
    payload = None if payload_json is None else parse_json(payload_json, "PAYLOAD_JSON")
    params = None if params_json is None else parse_json(params_json, "--params")
    result = remote.call(
        lambda api: api.create_or_send(name, instance_id, event_type, payload, params=params, event_id=event_id)
    )
    remote.show(result, lambda console: render.created_or_sent_text(result))
