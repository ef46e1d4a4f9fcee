"""The dashboard's JSON endpoints and its live stream, under ``/ui/data`` and ``/ui/live``.

They take the session cookie (:mod:`hutch.gateway.dashboard.session`) rather than a bearer
header, and every ``POST`` passes the origin and CSRF checks. Failures are the API's error
envelope (``errors[0].message``), which the pages show as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from hutch import Client, Status
from hutch.errors import InvalidInputError
from hutch.gateway.api.deps import WorkflowNames, get_client, get_workflow_names
from hutch.gateway.api.envelope import ok
from hutch.gateway.api.models import check_json_value, json_safe
from hutch.gateway.dashboard.diagrams import diagram_of, node_states, workflow_class
from hutch.gateway.dashboard.live import LiveInstances
from hutch.gateway.dashboard.overview import overview
from hutch.gateway.dashboard.search import (
    BulkRequest,
    Order,
    SearchFilters,
    bulk_progress,
    progress_changes,
    search,
    start_bulk,
)
from hutch.gateway.dashboard.session import Sessions
from hutch.restart import StepType, from_step_of
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

Action = Literal["pause", "resume", "terminate", "restart", "restart_from"]


StepKind = Literal["step", "sleep", "waitForEvent", "invoke"]
"""A timeline row's ``type`` (``describe()``'s step types)."""

_FROM_TYPE: dict[StepKind, StepType | None] = {"step": "do", "sleep": "sleep", "waitForEvent": "waitForEvent"}
"""The restart type of each timeline row's type; a child (``invoke``) is matched by name and count alone."""


class ActionRequest(BaseModel):
    """An action button: the action, and for ``restart_from`` the step chosen on the timeline."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    step: str | None = Field(default=None, max_length=256)
    count: int | None = Field(default=None, ge=1)
    type: StepKind | None = None


class EventRequest(BaseModel):
    """The event form: a type and a JSON payload (already parsed by the page)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100)
    payload: JsonValue = None

    @field_validator("payload")
    @classmethod
    def _json(cls, value: JsonValue) -> JsonValue:
        return check_json_value(value, "the event payload")  # type: ignore[no-any-return]


def sessions(request: Request) -> Sessions:
    """The app's :class:`Sessions`."""
    found: Sessions = request.app.state.dashboard_sessions
    return found


def signed_in(request: Request, s: Sessions = Depends(sessions)) -> str:
    """FastAPI dependency: the request's session, else 401."""
    return s.require(request)


def state_change(request: Request, session: str = Depends(signed_in), s: Sessions = Depends(sessions)) -> None:
    """FastAPI dependency: a signed-in, same-origin request with its session's CSRF token, else 401/403."""
    s.check_state_change(request, session)


router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(signed_in)])


@router.get("/data/workflows")
async def workflows(client: Client = Depends(get_client), names: WorkflowNames = Depends(get_workflow_names)) -> Any:
    """Every workflow with its counts by status and its last hour's creations and completions."""
    rows = await overview(client, await names.all())
    return ok([row.model_dump(by_alias=True) for row in rows])


@router.get("/data/search")
async def search_instances(
    workflow: str | None = Query(default=None, max_length=200),
    status: Status | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    id_prefix: str | None = Query(default=None, max_length=200),
    version: str | None = Query(default=None, max_length=200),
    order: Order = "newest",
    cursor: str | None = Query(default=None, max_length=400),
    limit: int = Query(default=50, ge=1, le=500),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> Any:
    """A page of the instances (of one workflow, or of all) that pass the filters, and the next page's cursor."""
    if workflow:
        await names.require(workflow)
    filters = SearchFilters(
        workflow=workflow, status=status, since=since, until=until, id_prefix=id_prefix, version=version
    )
    page = await search(client, filters, order=order, cursor=cursor or None, limit=limit)
    return ok(page.model_dump(mode="json"))


@router.post("/data/bulk", dependencies=[Depends(state_change)])
async def bulk(
    body: BulkRequest, client: Client = Depends(get_client), names: WorkflowNames = Depends(get_workflow_names)
) -> Any:
    """Start a durable bulk job over the filter's matches or the selected instances; its first progress."""
    if body.filter.workflow:
        await names.require(body.filter.workflow)
    return ok((await start_bulk(client, body)).model_dump(mode="json"))


@router.post("/data/bulk/{job_id}/cancel", dependencies=[Depends(state_change)])
async def cancel_bulk(job_id: str = Path(max_length=64), client: Client = Depends(get_client)) -> Any:
    """Cancel a bulk job (no batch starts after this); its progress."""
    await bulk_progress(client, job_id)
    return ok((await client.bulk_job(job_id).cancel()).model_dump(mode="json"))


@router.get("/data/bulk/{job_id}/live")
async def live_bulk(job_id: str = Path(max_length=64), client: Client = Depends(get_client)) -> StreamingResponse:
    """Server-sent events: a ``progress`` event now and on each change of the job, until it ends."""
    await bulk_progress(client, job_id)  # 404 now, not an empty stream

    async def events() -> AsyncIterator[str]:
        async for text in progress_changes(client, job_id):
            yield f"event: progress\ndata: {text}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


async def instance_snapshot(client: Client, names: WorkflowNames, workflow: str, instance_id: str) -> dict[str, Any]:
    """What the instance page shows: the detail, the diagram and its nodes' states, the actions offered."""
    instance = await (await names.reader(workflow)).get(instance_id)
    detail = await instance.describe()
    cls = workflow_class(client, workflow, detail.version)
    diagram = diagram_of(cls) if cls is not None else None
    return {
        "detail": json_safe(detail.model_dump(mode="json")),
        "diagram": diagram.model_dump(mode="json", exclude_none=True) if diagram is not None else None,
        "states": node_states(diagram, detail) if diagram is not None else {},
    }


@router.get("/data/instance/{workflow}/{instance_id}")
async def instance_page_data(
    workflow: str,
    instance_id: str,
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> Any:
    """The instance page's snapshot, once (the live stream sends the same thing on each change)."""
    return ok(await instance_snapshot(client, names, workflow, instance_id))


@router.get("/live/{workflow}/{instance_id}")
async def live(workflow: str, instance_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: a ``snapshot`` event now and on each change of the instance."""
    names: WorkflowNames = request.app.state.workflow_names
    await (await names.reader(workflow)).get(instance_id)  # 404 now, not an empty stream
    hub: LiveInstances = request.app.state.dashboard_live

    async def events() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for text in hub.stream(workflow, instance_id):
            yield f"event: snapshot\ndata: {text}\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/data/instance/{workflow}/{instance_id}/action", dependencies=[Depends(state_change)])
async def act(
    workflow: str, instance_id: str, body: ActionRequest, names: WorkflowNames = Depends(get_workflow_names)
) -> Any:
    """Pause, resume, terminate, restart, or restart from a step; the new status and whether it was applied."""
    instance = await (await names.reader(workflow)).get(instance_id)
    if body.action == "restart_from":
        if body.step is None:
            raise InvalidInputError("restart from a step needs a step chosen on the timeline")
        kind = None if body.type is None else _FROM_TYPE.get(body.type)
        result = await instance.restart(from_step=from_step_of((body.step, body.count or 1, kind)))
    else:
        result = await getattr(instance, body.action)()
    return ok({"status": str(result.status), "applied": result.applied})


@router.post("/data/instance/{workflow}/{instance_id}/event", dependencies=[Depends(state_change)])
async def send_event(
    workflow: str, instance_id: str, body: EventRequest, names: WorkflowNames = Depends(get_workflow_names)
) -> Any:
    """Send an event with a JSON payload."""
    instance = await (await names.reader(workflow)).get(instance_id)
    result = await instance.send_event(body.type, body.payload)
    return ok({"instance_finished": result.instance_finished})
