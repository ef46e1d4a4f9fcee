"""Shared request dependencies: the client the app serves, and the cache of workflow names."""

from __future__ import annotations

from fastapi import Request

from engine import Client, WorkflowClient
from engine.config import check_workflow_name
from engine.errors import WorkflowNotFound


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
