"""The REST API under ``/api``, mirroring Cloudflare's Workflows REST paths.

=====  ====================================================  ==================================
GET    /api/workflows                                        workflows and their instance counts
GET    /api/workflows/{name}                                 one workflow
GET    /api/workflows/{name}/instances                       instances, newest first, filtered (fleet.py)
POST   /api/workflows/{name}/instances                       create one instance
POST   /api/workflows/{name}/instances/batch                 create up to 100, skipping taken ids
POST   /api/workflows/{name}/instances/create_or_send        create if absent, send an event either way
GET    /api/workflows/{name}/instances/{id}                  instance detail with every step
GET    /api/workflows/{name}/instances/{id}/status           status, output, error
PATCH  /api/workflows/{name}/instances/{id}/status           pause | resume | terminate | restart
POST   /api/workflows/{name}/instances/{id}/events/{type}    send an event (body = payload; ?event_id= key)
=====  ====================================================  ==================================

Search across workflows and bulk jobs: fleet.py, included below.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from hutch import Client, InstanceDetail, InstanceStatus, Status
from hutch.config import check_instance_id
from hutch.gateway.api import fleet
from hutch.gateway.api.auth import require_token
from hutch.gateway.api.deps import WorkflowNames, check_request, get_client, get_workflow_names
from hutch.gateway.api.envelope import Envelope, ErrorEnvelope, ListEnvelope, ok
from hutch.gateway.api.lifecycle import EVENT_BODY_OPENAPI, event_payload, not_applied
from hutch.gateway.api.models import (
    EVENT_ID_SCHEMA,
    EVENT_TYPE_SCHEMA,
    INSTANCE_ID_SCHEMA,
    WORKFLOW_NAME_SCHEMA,
    BatchInfo,
    CreatedOrSent,
    CreateInstance,
    CreateOrSend,
    EventSent,
    InstanceRef,
    InstanceSummary,
    StatusChange,
    StatusChanged,
    WorkflowSummary,
    json_safe,
)
from hutch.gateway.api.views import instance_counts


class BatchEnvelope(Envelope[list[InstanceRef]]):
    """The instances a batch created, and the ids it skipped."""

    result_info: BatchInfo


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid input: the message names the field and the rule."),
    401: _error("Missing or invalid bearer token."),
    413: _error("The request body is over the size limit (1 MiB by default)."),
    422: _error("The request does not match the schema."),
    503: _error("Redis or RabbitMQ is unreachable; retry."),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("Unknown workflow or instance.")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _error("Duplicate instance id, or a lifecycle change the instance's status does not allow.")
}
NOT_APPLIED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": Envelope[StatusChanged],
        "description": "Accepted, not applied yet: no worker applied the change within the wait; it stays queued.",
    }
}
NOT_JSON: dict[int | str, dict[str, Any]] = {415: _error("The body is sent with a Content-Type other than JSON.")}

router = APIRouter(
    prefix="/api",
    tags=["workflows"],
    dependencies=[Depends(require_token), Depends(check_request)],
    responses=COMMON_RESPONSES,
    strict_content_type=False,  # a JSON body without a Content-Type header is still JSON
)

WorkflowName = Path(description="Workflow name.", json_schema_extra=WORKFLOW_NAME_SCHEMA)
InstanceId = Path(description="Instance id.", json_schema_extra=INSTANCE_ID_SCHEMA)


@router.get("/workflows", response_model=Envelope[list[WorkflowSummary]], summary="List workflows")
async def list_workflows(
    client: Client = Depends(get_client), names: WorkflowNames = Depends(get_workflow_names)
) -> dict[str, Any]:
    """Every workflow (registered, or with instances) and how many instances it has in each status."""
    all_names = await names.all()
    counts = await instance_counts(client, all_names)
    return ok([WorkflowSummary(name=n, instances=counts[n]) for n in all_names])


@router.get(
    "/workflows/{name}", response_model=Envelope[WorkflowSummary], responses=NOT_FOUND, summary="Get a workflow"
)
async def get_workflow(
    name: str = WorkflowName,
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """One workflow and its instance counts by status."""
    await names.require(name)
    counts = await instance_counts(client, [name])
    return ok(WorkflowSummary(name=name, instances=counts[name]))


@router.get(
    "/workflows/{name}/instances",
    response_model=ListEnvelope[InstanceSummary],
    responses=NOT_FOUND,
    summary="List instances",
)
async def list_instances(
    name: str = WorkflowName,
    query: fleet.SearchQuery = Depends(),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Instances of a workflow matching the filters of ``GET /api/instances``, newest first, a page at a time."""
    await names.reader(name)
    return await fleet.listing(client, query, name)


@router.post(
    "/workflows/{name}/instances",
    status_code=201,
    response_model=Envelope[InstanceRef],
    responses={**NOT_FOUND, **CONFLICT, **NOT_JSON},
    summary="Create an instance",
)
async def create_instance(
    name: str = WorkflowName,
    body: CreateInstance | None = Body(default=None),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Create and start an instance; 409 if the id is taken."""
    workflow = await names.creator(name)
    body = body or CreateInstance()
    retention = None if body.instance_retention is None else body.instance_retention.retention()
    instance = await workflow.create(id=body.id, params=body.params, priority=body.priority, retention=retention)
    return ok(InstanceRef(id=instance.id, workflow=name, status=Status.QUEUED))


@router.post(
    "/workflows/{name}/instances/batch",
    status_code=201,
    response_model=BatchEnvelope,
    responses={**NOT_FOUND, **NOT_JSON},
    summary="Create instances in a batch",
)
async def create_batch(
    name: str = WorkflowName,
    body: list[CreateInstance] = Body(description="At most 100 instances.", json_schema_extra={"maxItems": 100}),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Create up to 100 instances at once; ids that already exist are skipped and listed in ``result_info``."""
    workflow = await names.creator(name)
    created = await workflow.create_batch([item.item() for item in body])
    fresh = {instance.id for instance in created}
    skipped = [item.id for item in body if item.id is not None and item.id not in fresh]
    refs = [InstanceRef(id=i.id, workflow=name, status=Status.QUEUED) for i in created]
    return {**ok(refs), "result_info": BatchInfo(count=len(refs), skipped=skipped)}


@router.post(
    "/workflows/{name}/instances/create_or_send",
    response_model=Envelope[CreatedOrSent],
    responses={
        **NOT_FOUND,
        **NOT_JSON,
        201: {"model": Envelope[CreatedOrSent], "description": "Created, with the event buffered."},
    },
    summary="Create an instance if absent and send it an event",
)
async def create_or_send(
    body: CreateOrSend,
    response: Response,
    name: str = WorkflowName,
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Create the instance unless it exists and deliver the event to it either way (Temporal's signal-with-start).

    201: this request created it, and it starts with the event; 200: it existed and was sent the
    event (``instance_finished``: it had finished, so the event is ignored). Concurrent requests
    for one id create one instance and deliver every event once. Give ``event_id`` to retry safely.
    """
    workflow = await names.creator(name)
    done = await workflow.create_or_send(body.id, body.params, body.event_type, body.payload, event_id=body.event_id)
    if done.created:
        response.status_code = 201
    return ok(
        CreatedOrSent(
            id=body.id,
            workflow=name,
            created=done.created,
            event_type=body.event_type,
            instance_finished=done.instance_finished,
        )
    )


@router.get(
    "/workflows/{name}/instances/{instance_id}",
    response_model=Envelope[InstanceDetail],
    responses=NOT_FOUND,
    summary="Describe an instance",
)
async def describe_instance(
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Status, params, trigger, timestamps, output, error and every step with its attempts."""
    workflow = await names.reader(name)
    instance = await workflow.get(instance_id)
    return ok(json_safe((await instance.describe()).model_dump()))


@router.get(
    "/workflows/{name}/instances/{instance_id}/status",
    response_model=Envelope[InstanceStatus],
    responses=NOT_FOUND,
    summary="Get an instance's status",
)
async def instance_status(
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """``{status, output, error}`` of an instance."""
    workflow = await names.reader(name)
    instance = await workflow.get(instance_id)
    return ok(json_safe((await instance.status()).model_dump()))


@router.patch(
    "/workflows/{name}/instances/{instance_id}/status",
    response_model=Envelope[StatusChanged],
    responses={**NOT_FOUND, **CONFLICT, **NOT_JSON, **NOT_APPLIED},
    summary="Pause, resume, terminate or restart an instance",
)
async def change_status(
    body: StatusChange,
    response: Response,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Apply a lifecycle change: 200 once the partition owner applied it, 202 if none did in time.

    ``terminate``, ``pause`` and ``resume`` of a finished instance are 409; ``restart`` works
    in any status; ``pause`` of a paused and ``resume`` of an unpaused instance change nothing (200).
    ``restart`` with ``from: {name, count, type}`` runs again from that step, keeping the earlier
    steps' results (409 when the instance's history has no such step); ``terminate`` with
    ``rollback: true`` runs the undos of its completed rollback steps first (applied once they began).
    202 (``applied: false``): no worker applied it within the wait (10 s); it stays queued and is
    applied when a worker takes the instance's partition, so sending it again is not needed.
    """
    workflow = await names.reader(name)
    instance = await workflow.get(instance_id)
    if body.status == "restart":
        result = await instance.restart(from_step=body.from_step)
    elif body.status == "terminate":
        result = await instance.terminate(rollback=body.rollback)
    else:
        result = await (instance.pause if body.status == "pause" else instance.resume)()
    envelope = ok(StatusChanged(status=result.status, applied=result.applied, timestamp=datetime.now(UTC)))
    if not result.applied:
        response.status_code = 202
        envelope["messages"] = [not_applied(body.status, instance_id)]
    return envelope


@router.post(
    "/workflows/{name}/instances/{instance_id}/events/{event_type}",
    response_model=Envelope[EventSent],
    responses=NOT_FOUND,
    summary="Send an event to an instance",
    openapi_extra=EVENT_BODY_OPENAPI,
)
async def send_event(
    request: Request,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    event_type: str = Path(description="Event type, matched by `wait_for_event`.", json_schema_extra=EVENT_TYPE_SCHEMA),
    event_id: str | None = Query(
        default=None,
        description="Idempotency key of the event: a request repeated with the same key does not deliver it twice "
        "(while the instance holds the event). Without one, a retried request may deliver it twice.",
        json_schema_extra=EVENT_ID_SCHEMA,
    ),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Send an event; it is buffered until a matching ``wait_for_event`` takes it.

    ``instance_finished`` in the result says the instance had already finished, so nothing will take it.
    Give ``event_id`` to retry safely.
    """
    workflow = await names.reader(name)
    check_instance_id(instance_id, request.app.state.client.limits)
    payload = event_payload(await request.body())
    accepted = await workflow.get(instance_id)
    result = await accepted.send_event(event_type, payload, event_id=event_id)
    return ok(EventSent(instance_id=instance_id, type=event_type, instance_finished=result.instance_finished))


router.include_router(fleet.router, responses=NOT_FOUND)  # search and bulk jobs (fleet.py), under /api with its auth
