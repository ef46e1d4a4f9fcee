"""``hutch events send`` (through a gateway's REST API)."""

from __future__ import annotations

from typing import Any

import click
from hutch.gateway.cli import render
from hutch.gateway.cli.options import parse_json, remote_options
from hutch.gateway.cli.remote import Remote, resolve_instance
from hutch.gateway.http_client import GatewayClient


@click.group()
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
    payload = None if payload_json is None else parse_json(payload_json, "PAYLOAD_JSON")

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.send_event(name, await resolve_instance(api, name, instance_id), event_type, payload)

    result = remote.call(request)
    remote.show(result, lambda console: render.event_sent_text(name, result))
