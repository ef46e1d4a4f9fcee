"""How a REST command reaches the gateway and prints its answer, and the exit statuses that says.

Exit status: 0 ok, 1 the API answered with an error (404, 409, 401...), 2 bad usage or the
gateway cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from hutch.gateway.cli.formatting import json_text
from hutch.gateway.http_client import ApiRequestError, GatewayClient, GatewayError, GatewayUnreachable
from rich.console import Console, RenderableType

T = TypeVar("T")


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
            click.echo(json_text(result))
            return
        console = Console(highlight=False)
        console.print(human(console))


def _api_error_message(exc: ApiRequestError, message: str | None = None) -> str:
    codes = ", ".join(str(c) for c in exc.codes if c)
    text = f"{message or exc} (HTTP {exc.status_code}" + (f", code {codes})" if codes else ")")
    if exc.status_code == 401:
        text += "; pass the gateway's API token with --token or HUTCH_TOKEN"
    return text


async def resolve_instance(api: GatewayClient, name: str, instance_id: str) -> str:
    """``latest`` means the workflow's newest instance; any other value is an instance id.

    Raises:
        ApiFailed: ``latest`` of a workflow with no instances.
    """
    if instance_id != "latest":
        return instance_id
    latest = await api.latest_instance_id(name)
    if latest is None:
        raise ApiFailed(f"workflow {name!r} has no instances yet, so there is no latest one")
    return latest
