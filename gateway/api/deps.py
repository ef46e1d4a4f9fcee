"""Shared request dependencies: the client the app serves, the cache of workflow names, request checks."""

from __future__ import annotations

import email.message

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from hutch import Client, WorkflowClient
from hutch.config import check_instance_id, check_workflow_name
from hutch.errors import InvalidInputError, WorkflowNotFound
from starlette.exceptions import HTTPException


class WorkflowNames:
    """The workflow names the gateway serves: those registered with the client plus those with instances.

    Registered names never change while the client lives, so a known name costs no round trip;
    an unknown one re-reads the store once before it is refused.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._known: frozenset[str] = frozenset()

    async def all(self) -> list[str]:
        """Every name, read afresh."""
        names = await self._client.workflows()
        self._known = frozenset(names)
        return names

    async def require(self, name: str) -> None:
        """Check the name's form (400) and that the workflow exists (404)."""
        check_workflow_name(name, self._client.limits)
        if name not in self._known and name not in await self.all():
            raise WorkflowNotFound(name)

    async def reader(self, name: str) -> WorkflowClient:
        """A client for reading and controlling instances of an existing workflow."""
        await self.require(name)
        return WorkflowClient(self._client, name)

    async def creator(self, name: str) -> WorkflowClient:
        """A client for creating instances: the workflow must be one the client has registered."""
        await self.require(name)
        return self._client.workflow(name)


def get_client(request: Request) -> Client:
    """The :class:`~engine.Client` this app serves (``app.state.client``); for routes in ``extra_routers`` too."""
    client: Client = request.app.state.client
    return client


def get_workflow_names(request: Request) -> WorkflowNames:
    """The app's :class:`WorkflowNames`."""
    names: WorkflowNames = request.app.state.workflow_names
    return names


async def check_request(request: Request) -> None:
    """FastAPI dependency: refuse what the route's schema does not allow, before anything is looked up.

    * A query parameter the route does not declare is a 400: a Cloudflare client paging with
      ``page`` (or filtering with ``date_start``) must not silently get the first page forever.
      So is a parameter given twice (which one would win is a guess).
    * The workflow name and instance id in the path are checked against the client's limits (the
      ones the schema publishes), so an invalid id is a 400 even where the workflow is unknown.
    * A body on a route that takes JSON must be sent as JSON (415): a ``text/plain`` body would
      otherwise be read as a string and refused for not being an object.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "no query parameters"
        hint = "; pages are followed with cursor (result_info.cursor of the previous page)" if "page" in unknown else ""
        raise InvalidInputError(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"{request.method} {route.path} takes {takes}{hint}"
        )
    # No route takes a list in its query, so a repeated parameter is a client mistake, not a choice of the last one.
    query = request.query_params
    repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
    if repeated:
        raise InvalidInputError(
            f"query parameter{'s' if len(repeated) > 1 else ''} {', '.join(map(repr, repeated))} given more than once: "
            f"{request.method} {route.path} takes each once"
        )
    limits = get_client(request).limits
    params = request.path_params
    if "name" in params:
        check_workflow_name(params["name"], limits)
    if "instance_id" in params:
        check_instance_id(params["instance_id"], limits)
    content_type = request.headers.get("content-type")
    if route.body_field is not None and content_type and not _is_json(content_type) and await request.body():
        raise HTTPException(415, f"send the body as JSON (Content-Type: application/json), not as {content_type!r}")


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route (its endpoint and every dependency) declares."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


def _is_json(content_type: str) -> bool:
    """Whether FastAPI parses a body of this media type as JSON (``application/json``, ``application/*+json``)."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
