"""Fleet control over REST (SPEC §12): search across workflows and bulk actions as durable jobs.

=====  ====================================================  ==================================
GET    /api/instances                                        search every workflow's instances
PUT    /api/workflows/{name}/instances/terminate             terminate all (optionally by status): a bulk job
POST   /api/bulk                                             start a bulk job {action, filter}
GET    /api/bulk/{id}                                        its progress (done / total / failed)
DELETE /api/bulk/{id}                                        cancel it
=====  ====================================================  ==================================

The per-workflow listing (``GET /api/workflows/{name}/instances``, routes.py) takes the same
filters. Both accept Cloudflare's forms too: ``date_start``/``date_end`` for the creation range and
``page``/``per_page`` (page numbers are walked with the cursor: prefer ``cursor`` beyond a few pages).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from hutch import BulkJobNotFound, Client, InvalidInputError, Status
from hutch.bulk import BulkAction, BulkProgress
from hutch.gateway.api.deps import WorkflowNames, get_client, get_workflow_names
from hutch.gateway.api.envelope import CursorInfo, Envelope, ListEnvelope, ok
from hutch.gateway.api.models import WORKFLOW_NAME_SCHEMA, InstanceSummary
from hutch.gateway.api.views import instance_summaries
from hutch.search import Order, SearchFilter, SearchHit, SearchPage
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter(tags=["fleet"])

MAX_PAGE = 100
"""The highest ``page`` number accepted (each page before it is read to reach it)."""


class SearchQuery:
    """The search filters of a listing, as query parameters (Cloudflare's names where it has them)."""

    def __init__(
        self,
        status: Status | None = Query(default=None, description="Only instances in this status."),
        date_start: str | None = Query(
            default=None, description="Created at or after (ISO 8601).", json_schema_extra={"format": "date-time"}
        ),
        date_end: str | None = Query(
            default=None, description="Created before (ISO 8601).", json_schema_extra={"format": "date-time"}
        ),
        id_prefix: str | None = Query(default=None, min_length=1, max_length=200, description="Ids starting so."),
        version: str | None = Query(default=None, min_length=1, max_length=200, description="Started on this version."),
        order: Order = Query(default="desc", description="`desc` newest first, `asc` oldest first."),
        cursor: str | None = Query(
            default=None, max_length=400, description="`result_info.cursor` of the previous page; empty: the first."
        ),
        page: int | None = Query(default=None, ge=1, le=MAX_PAGE, description="Cloudflare's page number (from 1)."),
        per_page: int = Query(default=50, ge=1, le=100),
    ) -> None:
        self.status = status
        self.created_after = _moment("date_start", date_start)
        self.created_before = _moment("date_end", date_end)
        self.id_prefix = id_prefix
        self.version = version
        self.order = order
        self.cursor = cursor or None
        self.page = page
        self.per_page = per_page

    async def run(self, client: Client, workflow: str | None) -> tuple[list[SearchHit], str | None]:
        """The page asked for: by cursor, or the ``page``-th by walking the cursor from the first."""
        cursor = self.cursor
        page: SearchPage | None = None
        for _ in range(1 if self.page is None or cursor is not None else self.page):
            page = await client.search(
                workflow=workflow,
                status=self.status,
                created_after=self.created_after,
                created_before=self.created_before,
                id_prefix=self.id_prefix,
                version=self.version,
                limit=self.per_page,
                cursor=cursor,
                order=self.order,
            )
            cursor = page.cursor
            if cursor is None:
                break
        assert page is not None
        return page.instances, page.cursor


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time of the query (Cloudflare's form); a 400 naming it otherwise."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{name} {value!r} is not an ISO 8601 date or date-time") from None


async def summaries(client: Client, hits: list[SearchHit]) -> list[InstanceSummary]:
    """The listing rows of search hits, in the hits' order (instances gone since are dropped)."""
    by_workflow: dict[str, list[str]] = defaultdict(list)
    for hit in hits:
        by_workflow[hit.workflow].append(hit.id)
    rows: dict[tuple[str, str], InstanceSummary] = {}
    for workflow, ids in by_workflow.items():
        for row in await instance_summaries(client, workflow, ids):
            rows[(workflow, row.id)] = row
    return [rows[(h.workflow, h.id)] for h in hits if (h.workflow, h.id) in rows]


async def listing(client: Client, query: SearchQuery, workflow: str | None) -> dict[str, Any]:
    """The envelope of a search listing."""
    hits, cursor = await query.run(client, workflow)
    rows = await summaries(client, hits)
    return {**ok(rows), "result_info": CursorInfo(count=len(rows), per_page=query.per_page, cursor=cursor)}


@router.get("/instances", response_model=ListEnvelope[InstanceSummary], summary="Search instances")
async def search_instances(
    workflow: str | None = Query(
        default=None, description="Only this workflow's.", json_schema_extra=WORKFLOW_NAME_SCHEMA
    ),
    query: SearchQuery = Depends(),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Instances of every workflow (or one) matching the filters, newest first, from the status indexes."""
    if workflow is not None:
        await names.require(workflow)
    return await listing(client, query, workflow)


class BulkRequest(BaseModel):
    """A bulk action and the search filter choosing its instances."""

    model_config = ConfigDict(extra="forbid")

    action: BulkAction
    filter: SearchFilter = Field(default_factory=SearchFilter)


async def _progress(client: Client, job_id: str) -> BulkProgress:
    try:
        return await client.bulk_job(job_id).progress()
    except BulkJobNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/bulk", response_model=Envelope[BulkProgress], status_code=202, summary="Start a bulk action")
async def start_bulk(body: BulkRequest, client: Client = Depends(get_client)) -> dict[str, Any]:
    """Start a durable background job doing ``action`` to every instance ``filter`` matches; poll its progress."""
    job = await client.bulk(body.action, body.filter)
    return ok(await job.progress())


@router.get("/bulk/{job_id}", response_model=Envelope[BulkProgress], summary="A bulk job's progress")
async def bulk_progress(job_id: str = Path(max_length=64), client: Client = Depends(get_client)) -> dict[str, Any]:
    """State, total, done, skipped, failed and the first failures of a bulk job."""
    return ok(await _progress(client, job_id))


@router.delete("/bulk/{job_id}", response_model=Envelope[BulkProgress], summary="Cancel a bulk job")
async def cancel_bulk(job_id: str = Path(max_length=64), client: Client = Depends(get_client)) -> dict[str, Any]:
    """Stop a bulk job: no batch starts after this (a finished job is left as it is)."""
    await _progress(client, job_id)
    return ok(await client.bulk_job(job_id).cancel())


@router.put(
    "/workflows/{name}/instances/terminate",
    response_model=Envelope[BulkProgress],
    status_code=202,
    summary="Terminate all instances",
)
async def terminate_all(
    name: str = Path(description="Workflow name.", json_schema_extra=WORKFLOW_NAME_SCHEMA),
    status: Status | None = Query(default=None, description="Only instances in this status."),
    client: Client = Depends(get_client),
    names: WorkflowNames = Depends(get_workflow_names),
) -> dict[str, Any]:
    """Terminate every instance of the workflow (in ``status``, if given) as a bulk job (Cloudflare's terminate-all)."""
    await names.require(name)
    job = await client.bulk("terminate", SearchFilter(workflow=name, status=status))
    return ok(await job.progress())
