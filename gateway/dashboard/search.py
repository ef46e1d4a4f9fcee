"""The instances page's search and bulk actions, on the client's search and durable bulk jobs (SPEC §12).

The page's filters are a :class:`~hutch.search.SearchFilter` (one workflow or all of them, status,
creation range, id prefix, version), read a page at a time with :meth:`hutch.Client.search` — the
per-partition status indexes, never a scan — and its cursor. A bulk action is a job of
:meth:`hutch.Client.bulk` over the same filter (everything it matches) or over the instances
selected on the page: durable, resumed by another runner if this gateway stops, cancellable; the
page follows its progress over server-sent events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal

from hutch import BulkJobNotFound, Client, Status
from hutch.bulk import MAX_IDS, BulkAction, BulkProgress
from hutch.errors import InvalidInputError
from hutch.gateway.api.fleet import summaries
from hutch.gateway.api.models import InstanceSummary
from hutch.search import SearchFilter, search_filter
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

Order = Literal["newest", "oldest"]

PROGRESS_POLL_S = 0.5
"""How often a bulk job's progress stream re-reads the job's record (one hash read) while it runs."""


class SearchFilters(BaseModel):
    """What the instances page filters by; every field is optional (no workflow: every workflow)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: str | None = Field(default=None, max_length=200)
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None
    id_prefix: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=200)

    def where(self) -> SearchFilter:
        """The client's filter (``since`` included, ``until`` excluded); an invalid one is a 400."""
        return search_filter(
            workflow=self.workflow or None,
            status=self.status,
            created_after=self.since,
            created_before=self.until,
            id_prefix=self.id_prefix or None,
            version=self.version or None,
        )


class SearchPage(BaseModel):
    """One page of matches, and the cursor of the next (None: no more match).

    A page may be short, even empty, and still have a cursor: a sparse filter (a rare id prefix
    or version) examines a bounded number of index rows per request.
    """

    instances: list[InstanceSummary]
    cursor: str | None


async def search(client: Client, filters: SearchFilters, *, order: Order, cursor: str | None, limit: int) -> SearchPage:
    """A page of the instances ``filters`` match, newest or oldest first, from ``cursor``."""
    where = filters.where()
    page = await client.search(
        **where.model_dump(), limit=limit, cursor=cursor, order="desc" if order == "newest" else "asc"
    )
    return SearchPage(instances=await summaries(client, page.instances), cursor=page.cursor)


class BulkRequest(BaseModel):
    """A bulk action on everything ``filter`` matches, or on the instances selected (``ids`` of ``filter.workflow``)."""

    model_config = ConfigDict(extra="forbid")

    action: BulkAction
    filter: SearchFilters = Field(default_factory=SearchFilters)
    ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_IDS)


async def start_bulk(client: Client, body: BulkRequest) -> BulkProgress:
    """Start the durable job; its first progress."""
    if body.ids is not None:
        if not body.filter.workflow:
            raise InvalidInputError("acting on selected instances needs their workflow")
        job = await client.bulk(body.action, SearchFilter(workflow=body.filter.workflow), ids=body.ids)
    else:
        job = await client.bulk(body.action, body.filter.where())
    return await job.progress()


async def bulk_progress(client: Client, job_id: str) -> BulkProgress:
    """A job's progress; 404 for an unknown (or long finished) job."""
    try:
        return await client.bulk_job(job_id).progress()
    except BulkJobNotFound as exc:
        raise HTTPException(404, str(exc)) from None


async def progress_changes(client: Client, job_id: str, poll_s: float = PROGRESS_POLL_S) -> AsyncIterator[str]:
    """The job's progress as JSON now and on each change, ending with the job (done or cancelled)."""
    last = ""
    while True:
        progress = await bulk_progress(client, job_id)
        text = progress.model_dump_json()
        if text != last:
            yield text
            last = text
        if progress.finished:
            return
        await asyncio.sleep(poll_s)
