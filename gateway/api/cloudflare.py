"""Cloudflare's Workflows REST API, served under ``/client/v4`` so Cloudflare's own tools drive Hutch.

``wrangler workflows ...`` (with ``CLOUDFLARE_API_BASE_URL=http://<gateway>/client/v4``) and the
``cloudflare`` SDK (``Cloudflare(base_url=...)``) work unchanged. Any account id is accepted (a
Hutch deployment is one account); the bearer token is the REST API's (:mod:`.auth`). Responses
and errors use Cloudflare's envelope ``{success, errors, messages, result, result_info}``.

======  ==================================================  ======================================
GET     /accounts/{a}/workflows                             workflows, by page (``search``: name)
GET     /accounts/{a}/workflows/{name}                      one workflow with instance counts
DELETE  /accounts/{a}/workflows/{name}                      refused while instances are unfinished
GET     /accounts/{a}/workflows/{name}/versions             versions its recent instances run
GET     /accounts/{a}/workflows/{name}/instances            instances, newest first (cursor or page)
POST    /accounts/{a}/workflows/{name}/instances            create one
POST    /accounts/{a}/workflows/{name}/instances/batch      create many, skipping taken ids
PUT     /accounts/{a}/workflows/{name}/instances/terminate  a bulk job terminating all (``status``)
GET     /accounts/{a}/workflows/{name}/instances/{id}       Cloudflare's instance detail
GET     /accounts/{a}/workflows/{name}/instances/{id}/step  one step's full output
PATCH   /accounts/{a}/workflows/{name}/instances/{id}/status  pause | resume | terminate | restart
POST    /accounts/{a}/workflows/{name}/instances/{id}/events/{type}  send an event (body = payload)
======  ==================================================  ======================================
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from hutch import BulkJobNotFound, Client, Instance, InvalidInputError, Status
from hutch.bulk import BulkJobs, BulkProgress
from hutch.config import check_instance_id
from hutch.gateway.api.auth import require_token
from hutch.gateway.api.cloudflare_models import (
    CfCreateInstance,
    CfDeleted,
    CfEventSent,
    CfInstanceCreated,
    CfInstanceDetail,
    CfInstanceRow,
    CfPageInfo,
    CfStatusChange,
    CfStatusChanged,
    CfStepResult,
    CfTerminateJob,
    CfVersion,
    CfWorkflow,
    TerminableStatus,
    workflow_id,
)
from hutch.gateway.api.cloudflare_views import (
    Listing,
    cf_error,
    instance_detail,
    newest_created,
    recent_versions,
    utc,
)
from hutch.gateway.api.deps import WorkflowNames, check_request, get_client, get_workflow_names
from hutch.gateway.api.envelope import Envelope, ok
from hutch.gateway.api.lifecycle import EVENT_BODY_OPENAPI, event_payload, not_applied
from hutch.gateway.api.models import EVENT_TYPE_SCHEMA, INSTANCE_ID_SCHEMA, WORKFLOW_NAME_SCHEMA, InstanceCounts
from hutch.gateway.api.routes import COMMON_RESPONSES, CONFLICT, NOT_FOUND
from hutch.gateway.api.views import instance_counts
from hutch.search import SearchFilter
from starlette.exceptions import HTTPException

PREFIX = "/client/v4/accounts/{account_id}/workflows"

STARTED = datetime.now(UTC)
"""When this gateway process started: ``created_on`` of every workflow (see :class:`CfWorkflow`)."""

UNFINISHED: tuple[Status, ...] = (
    Status.QUEUED,
    Status.RUNNING,
    Status.PAUSED,
    Status.WAITING_FOR_PAUSE,
    Status.WAITING,
)


class WorkflowBusy(HTTPException):
    """A workflow cannot be deleted while instances of it are unfinished (409, in the error envelope)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class CfListEnvelope(Envelope[list[Any]]):
    """A listing with Cloudflare's ``result_info``."""

    result_info: CfPageInfo


router = APIRouter(
    prefix=PREFIX,
    tags=["cloudflare"],
    dependencies=[Depends(require_token), Depends(check_request)],
    responses=COMMON_RESPONSES,
    strict_content_type=False,
)

AccountId = Path(description="Any account id: a Hutch deployment is one account.", max_length=100)
WorkflowName = Path(description="Workflow name.", json_schema_extra=WORKFLOW_NAME_SCHEMA)
InstanceId = Path(description="Instance id.", json_schema_extra=INSTANCE_ID_SCHEMA)
DATE: dict[str, Any] = {"format": "date-time"}


def _workflow(name: str, counts: InstanceCounts, triggered: datetime | None) -> CfWorkflow:
    return CfWorkflow(
        id=workflow_id(name),
        name=name,
        class_name=name,
        script_name="hutch",
        created_on=STARTED,
        modified_on=STARTED,
        triggered_on=triggered,
        instances=counts.model_dump(by_alias=True),
    )


async def _workflows(client: Client, names: list[str]) -> list[CfWorkflow]:
    counts = await instance_counts(client, names)
    triggered = await asyncio.gather(*(newest_created(client, n) for n in names))
    return [_workflow(n, counts[n], t) for n, t in zip(names, triggered, strict=True)]


@router.get("", response_model=CfListEnvelope, summary="List workflows (Cloudflare)")
async def list_workflows(
    account_id: str = AccountId,
    page: int = Query(default=1, ge=1),
    per_page: int = Query(default=10, ge=1, le=100),
    search: str | None = Query(default=None, max_length=100, description="Only names containing this."),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Workflows by name, one page at a time, with their instance counts by status."""
    matching = [n for n in await names.all() if search is None or search.lower() in n.lower()]
    chosen = matching[(page - 1) * per_page : page * per_page]
    rows = await _workflows(client, chosen)
    info = CfPageInfo(page=page, per_page=per_page, count=len(rows), total_count=len(matching))
    return {**ok(rows), "result_info": info}


@router.get("/{name}", response_model=Envelope[CfWorkflow], responses=NOT_FOUND, summary="Get a workflow (Cloudflare)")
async def get_workflow(
    account_id: str = AccountId,
    name: str = WorkflowName,
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """One workflow with its instance counts by status."""
    await names.require(name)
    return ok((await _workflows(client, [name]))[0])


@router.delete(
    "/{name}",
    response_model=Envelope[CfDeleted],
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a workflow (Cloudflare)",
)
async def delete_workflow(
    account_id: str = AccountId,
    name: str = WorkflowName,
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Retire a workflow: 409 while any of its instances is unfinished; otherwise nothing of it runs.

    A Hutch workflow is code its workers register, so there is no workflow record to delete: it
    stops being served when it is removed from the workers' configuration. Its finished instances
    stay readable until their retention ends (deleting them is the planned batch delete).
    """
    await names.require(name)
    counts = (await instance_counts(client, [name]))[name].model_dump(by_alias=True)
    unfinished = {s.value: counts[s.value] for s in UNFINISHED if counts[s.value]}
    if unfinished:
        listed = ", ".join(f"{n} {s}" for s, n in unfinished.items())
        raise WorkflowBusy(
            f"workflow {name!r} has unfinished instances ({listed}); terminate them first "
            f"(wrangler workflows instances terminate-all {name}, or PUT .../workflows/{name}/instances/terminate)"
        )
    envelope = ok(CfDeleted())
    envelope["messages"] = [
        f"nothing of workflow {name!r} runs; Hutch keeps no workflow record to delete: remove it from the "
        "workers' configuration to stop serving it; its finished instances stay readable until their retention ends"
    ]
    return envelope


@router.get(
    "/{name}/versions", response_model=CfListEnvelope, responses=NOT_FOUND, summary="List versions (Cloudflare)"
)
async def list_versions(
    account_id: str = AccountId,
    name: str = WorkflowName,
    page: int = Query(default=1, ge=1),
    per_page: int = Query(default=50, ge=1, le=100),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """The code versions the workflow's newest instances started on, newest first."""
    await names.require(name)
    versions: list[CfVersion] = await recent_versions(client, name, STARTED)
    chosen = versions[(page - 1) * per_page : page * per_page]
    info = CfPageInfo(page=page, per_page=per_page, count=len(chosen), total_count=len(versions))
    return {**ok(chosen), "result_info": info}


@router.get(
    "/{name}/instances", response_model=CfListEnvelope, responses=NOT_FOUND, summary="List instances (Cloudflare)"
)
async def list_instances(
    account_id: str = AccountId,
    name: str = WorkflowName,
    status: Status | None = Query(default=None),
    page: int | None = Query(default=None, ge=1, description="Page number; `cursor` is cheaper for deep pages."),
    per_page: int = Query(default=50, ge=1, le=100),
    cursor: str | None = Query(default=None, max_length=200),
    direction: Literal["asc", "desc"] = Query(default="desc"),
    date_start: str | None = Query(
        default=None, description="Only instances created at or after (ISO 8601, UTC).", json_schema_extra=DATE
    ),
    date_end: str | None = Query(
        default=None, description="Only instances created at or before (ISO 8601, UTC).", json_schema_extra=DATE
    ),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Instances newest first (``direction=asc``: oldest first), by cursor (``result_info.cursor``) or page number."""
    if page is not None and cursor:
        raise InvalidInputError("give cursor or page, not both: a cursor already says where the page starts")
    workflow = await names.reader(name)
    start = None if date_start is None else utc(date_start, "date_start")
    end = None if date_end is None else utc(date_end, "date_end")
    listing = Listing(client, workflow.name, status, direction, start, end)
    rows: list[CfInstanceRow] = []
    next_cursor: str | None = None
    skipped = cursor if cursor else await listing.skip(((page or 1) - 1) * per_page)
    if skipped is not False:  # False: the page is past the last row
        rows, next_cursor = await listing.page(skipped, per_page)
    info = CfPageInfo(page=None if cursor else page or 1, per_page=per_page, count=len(rows), cursor=next_cursor)
    return {**ok(rows), "result_info": info}


@router.post(
    "/{name}/instances",
    response_model=Envelope[CfInstanceCreated],
    responses={**NOT_FOUND, **CONFLICT},
    summary="Create an instance (Cloudflare)",
)
async def create_instance(
    account_id: str = AccountId,
    name: str = WorkflowName,
    body: CfCreateInstance | None = Body(default=None),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Create and start an instance; 409 if the id is taken."""
    workflow = await names.creator(name)
    item = (body or CfCreateInstance()).item()
    instance = await workflow.create(id=item["id"], params=item["params"], retention=item.get("retention"))
    return ok(_created(name, instance))


@router.post(
    "/{name}/instances/batch",
    response_model=Envelope[list[CfInstanceCreated]],
    responses=NOT_FOUND,
    summary="Create instances in a batch (Cloudflare)",
)
async def create_batch(
    account_id: str = AccountId,
    name: str = WorkflowName,
    body: list[CfCreateInstance] = Body(description="At most 100 instances.", json_schema_extra={"maxItems": 100}),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Create up to 100 instances at once; ids that already exist are skipped (not in the result)."""
    workflow = await names.creator(name)
    created = await workflow.create_batch([item.item() for item in body])
    return ok([_created(name, instance) for instance in created])


def _created(workflow: str, instance: Instance) -> CfInstanceCreated:
    return CfInstanceCreated(
        id=instance.id,
        status=Status.QUEUED,
        version_id="unknown",
        workflow_id=workflow_id(workflow),
        trigger_source="api",
    )


@router.put(
    "/{name}/instances/terminate",
    response_model=Envelope[CfTerminateJob],
    responses=NOT_FOUND,
    summary="Terminate all unfinished instances (Cloudflare)",
)
async def terminate_all(
    account_id: str = AccountId,
    name: str = WorkflowName,
    status: TerminableStatus | None = Query(default=None, description="Only instances in this status."),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Terminate every unfinished instance (or those in ``status``) in a durable background job, as Cloudflare does.

    ``ok``: a bulk job was started (``messages`` names it; ``GET /api/bulk/{id}`` follows its
    progress, and it resumes in another gateway if this one stops); ``already_running``: the same
    terminate-all is still running, and nothing new is started. The job acts on the instances that
    match when it starts (finished ones are skipped); instances created later are not included.
    """
    await names.require(name)
    where = SearchFilter(workflow=name, status=None if status is None else Status(status))
    running = await _running_job(client, where)
    if running is not None:
        envelope = ok(CfTerminateJob(status="already_running"))
        envelope["messages"] = [
            f"a terminate-all of {name!r} is already running: bulk job {running.id}, "
            f"{running.done} of {running.total} done (GET /api/bulk/{running.id})"
        ]
        return envelope
    job = await client.bulk("terminate", where)
    envelope = ok(CfTerminateJob(status="ok"))
    envelope["messages"] = [f"terminate-all of {name!r} started: bulk job {job.id} (GET /api/bulk/{job.id})"]
    return envelope


async def _running_job(client: Client, where: SearchFilter) -> BulkProgress | None:
    """The unfinished terminate job over exactly ``where``, if there is one (a repeated terminate-all)."""
    for job_id in await BulkJobs(client._store).active():
        try:
            progress = await client.bulk_job(job_id).progress()
        except BulkJobNotFound:  # finished and expired since it was listed
            continue
        if progress.action == "terminate" and progress.filter == where and not progress.finished:
            return progress
    return None


@router.get(
    "/{name}/instances/{instance_id}",
    response_model=Envelope[CfInstanceDetail],
    responses=NOT_FOUND,
    summary="Describe an instance (Cloudflare)",
)
async def describe_instance(
    account_id: str = AccountId,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    order: Literal["asc", "desc"] = Query(default="asc", description="Steps oldest first (asc) or newest first."),
    simple: Literal["true", "false"] = Query(default="false", description="true: no steps, only step_count."),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Status, params, trigger, times, output, error and every step with its attempts."""
    workflow = await names.reader(name)
    detail = await (await workflow.get(instance_id)).describe()
    return ok(instance_detail(detail, steps=simple == "false", newest_first=order == "desc"))


@router.get(
    "/{name}/instances/{instance_id}/step",
    response_model=Envelope[CfStepResult],
    responses=NOT_FOUND,
    summary="Get a step's full output (Cloudflare)",
)
async def step_output(
    account_id: str = AccountId,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    step: str = Query(alias="name", min_length=1, max_length=300, description="The step's name, as in `steps`."),
    type: Literal["step", "waitForEvent"] = Query(description="step (a step.do) or waitForEvent."),
    attempt: int | None = Query(default=None, ge=1, description="This attempt's outcome instead of the step's."),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """One step's status and full output (the latest run of a step name repeated in a loop)."""
    workflow = await names.reader(name)
    detail = await (await workflow.get(instance_id)).describe()
    matches = [s for s in detail.steps if s.type == type and s.name == step]
    if not matches:
        raise InvalidInputError(f"instance {instance_id!r} has no {type} named {step!r}")
    found = matches[-1]
    error = found.error
    success = found.success
    if attempt is not None:
        tried = [a for a in found.attempts if a.attempt == attempt]
        if not tried:
            raise InvalidInputError(f"step {step!r} of instance {instance_id!r} has no attempt {attempt}")
        error, success = tried[0].error, tried[0].success
    state: Literal["running", "waiting", "complete", "errored"]
    if success is None:
        state = "waiting" if type == "waitForEvent" else "running"
    else:
        state = "complete" if success else "errored"
    return ok(
        CfStepResult(
            status=state,
            output=found.output if state == "complete" else None,
            error=cf_error(error),
            event_type=found.event_type,
        )
    )


@router.patch(
    "/{name}/instances/{instance_id}/status",
    response_model=Envelope[CfStatusChanged],
    responses={**NOT_FOUND, **CONFLICT},
    summary="Pause, resume, terminate or restart an instance (Cloudflare)",
)
async def change_status(
    body: CfStatusChange,
    response: Response,
    account_id: str = AccountId,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Apply a lifecycle change: 200 once applied, 202 if no worker applied it within the wait (it stays queued).

    ``restart`` with ``from`` runs again from that step, keeping the earlier steps' results (409
    when the instance's history has no such step); ``terminate`` with ``rollback`` runs the undos
    of its completed rollback steps first.
    """
    workflow = await names.reader(name)
    instance = await workflow.get(instance_id)
    if body.status == "restart":
        result = await instance.restart(from_step=body.from_step)
    elif body.status == "terminate":
        result = await instance.terminate(rollback=body.rollback)
    else:
        result = await (instance.pause if body.status == "pause" else instance.resume)()
    envelope = ok(CfStatusChanged(status=result.status, timestamp=datetime.now(UTC)))
    if not result.applied:
        response.status_code = 202
        envelope["messages"] = [not_applied(body.status, instance_id)]
    return envelope


@router.post(
    "/{name}/instances/{instance_id}/events/{event_type}",
    response_model=Envelope[CfEventSent],
    responses=NOT_FOUND,
    summary="Send an event to an instance (Cloudflare)",
    openapi_extra=EVENT_BODY_OPENAPI,
)
async def send_event(
    request: Request,
    account_id: str = AccountId,
    name: str = WorkflowName,
    instance_id: str = InstanceId,
    event_type: str = Path(description="Event type, matched by `wait_for_event`.", json_schema_extra=EVENT_TYPE_SCHEMA),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Send an event; it is buffered until a matching ``wait_for_event`` takes it.

    Cloudflare ignores an event sent to a finished instance without a word; Hutch says so in ``messages``.
    """
    workflow = await names.reader(name)
    check_instance_id(instance_id, request.app.state.client.limits)
    payload = event_payload(await request.body())
    result = await (await workflow.get(instance_id)).send_event(event_type, payload)
    envelope = ok(CfEventSent(instance_id=instance_id, timestamp=datetime.now(UTC)))
    if result.instance_finished:
        envelope["messages"] = [f"instance {instance_id!r} has finished; nothing will take the event"]
    return envelope
