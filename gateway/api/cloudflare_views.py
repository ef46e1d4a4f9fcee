"""What the Cloudflare-shaped API reads, and how Hutch's values become Cloudflare's shapes.

Listings go through instance search (:meth:`hutch.Client.search`: the per-partition status
indexes, cursor-paginated, newest or oldest first, the date range applied inside the index) plus
one pipelined read of the listed instances' meta. Page numbers (``page=N``, which Cloudflare keeps for
old clients) are reached by walking the cursor past ``(N - 1) * per_page`` rows: a deep page costs
a read per thousand rows skipped; ``cursor`` costs one read per page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hutch import Client, InstanceDetail, InvalidInputError, Status, WorkflowClient
from hutch.events import ms_to_datetime
from hutch.gateway.api.cloudflare_models import (
    TRIGGER_SOURCES,
    UNRECORDED_VERSION,
    CfAttempt,
    CfError,
    CfInstanceDetail,
    CfInstanceRow,
    CfStep,
    CfTermination,
    CfTrigger,
    CfVersion,
    TriggerSource,
    workflow_id,
)
from hutch.gateway.api.models import json_safe
from hutch.search import Order, SearchPage
from hutch.status import ErrorInfo, StepDetail
from hutch.store.redis import decode_meta
from hutch.versions import META_FIELD as VERSION_FIELD

SKIP_BATCH = 1000
"""Rows read per round trip while skipping to a page number (the client's largest page)."""

# Hutch trigger sources with no Cloudflare name: a queue message or a webhook delivery is an event;
# a child instance is created by its parent's code, as a binding call creates one on Cloudflare.
_TRIGGER_NAMES: dict[str, TriggerSource] = {"queue": "event", "webhook": "event", "workflow": "binding"}


def trigger_source(trigger: Any) -> TriggerSource:
    """Cloudflare's ``trigger.source`` for an instance's recorded trigger."""
    source = trigger.get("source") if isinstance(trigger, dict) else None
    if source in TRIGGER_SOURCES:
        return source  # type: ignore[no-any-return]
    return _TRIGGER_NAMES.get(str(source), "unknown")


async def read_metas(client: Client, workflow: str, instance_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """The meta of each instance, in order, in one pipelined round trip; None where it expired."""
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hgetall(store.keys.meta(client._partition(workflow, iid), workflow, iid))
    return [decode_meta(raw) if raw else None for raw in await pipe.execute()]


def instance_row(workflow: str, meta: dict[str, Any]) -> CfInstanceRow:
    """One row of an instance listing."""
    created = ms_to_datetime(meta["created"])
    started = _at(meta.get("started"))
    ended = _at(meta.get("ended"))
    return CfInstanceRow(
        id=meta["id"],
        status=Status(meta.get("status", "unknown")),
        created_on=created,
        # Hutch records no modification time: the latest of the times it does record.
        modified_on=max(t for t in (created, started, ended) if t is not None),
        started_on=started,
        ended_on=ended,
        version_id=meta.get(VERSION_FIELD) or UNRECORDED_VERSION,
        workflow_id=workflow_id(workflow),
        trigger_source=trigger_source(meta.get("trigger")),
    )


@dataclass(frozen=True)
class Listing:
    """What one Cloudflare listing asks for: a workflow's instances, filtered, in one order."""

    client: Client
    workflow: str
    status: Status | None
    order: Order
    date_start: datetime | None
    date_end: datetime | None

    async def page(self, cursor: str | None, per_page: int) -> tuple[list[CfInstanceRow], str | None]:
        """One page of rows and the cursor of the next (None: this was the last)."""
        page = await self._search(cursor, per_page)
        metas = await read_metas(self.client, self.workflow, [hit.id for hit in page.instances])
        return [instance_row(self.workflow, meta) for meta in metas if meta is not None], page.cursor

    async def skip(self, rows: int) -> str | Literal[False] | None:
        """The cursor after the first ``rows`` rows (None to start at the top); False if there are fewer rows."""
        cursor: str | None = None
        while rows > 0:
            page = await self._search(cursor, min(rows, SKIP_BATCH))
            if page.cursor is None:
                return False
            cursor, rows = page.cursor, rows - len(page.instances)
        return cursor

    async def _search(self, cursor: str | None, limit: int) -> SearchPage:
        # Cloudflare's date_end is inclusive; search's created_before is not.
        before = None if self.date_end is None else self.date_end + timedelta(milliseconds=1)
        return await self.client.search(
            self.workflow,
            self.status,
            created_after=self.date_start,
            created_before=before,
            limit=limit,
            cursor=cursor,
            order=self.order,
        )


async def newest_created(client: Client, workflow: str) -> datetime | None:
    """When the workflow's newest instance was created (None: it has none)."""
    page = await WorkflowClient(client, workflow).list(limit=1)
    metas = await read_metas(client, workflow, page.instances)
    return ms_to_datetime(metas[0]["created"]) if metas and metas[0] is not None else None


async def recent_versions(client: Client, workflow: str, started: datetime, *, sample: int = 50) -> list[CfVersion]:
    """The code versions the newest ``sample`` instances started on, newest first.

    Hutch keeps no registry of versions a workflow was deployed with; the instances record the one
    they started on. With none recorded yet, one ``unknown`` version stands for the code being served
    (Cloudflare always has a latest version, and ``wrangler workflows describe`` prints it).
    """
    page = await WorkflowClient(client, workflow).list(limit=sample)
    seen: dict[str, tuple[datetime, datetime]] = {}
    for meta in await read_metas(client, workflow, page.instances):
        version = meta.get(VERSION_FIELD) if meta is not None else None
        if meta is None or not version:
            continue
        created = ms_to_datetime(meta["created"])
        first, last = seen.get(version, (created, created))
        seen[version] = (min(first, created), max(last, created))
    if not seen:
        seen[UNRECORDED_VERSION] = (started, started)
    return [
        CfVersion(id=v, workflow_id=workflow_id(workflow), class_name=workflow, created_on=c, modified_on=m)
        for v, (c, m) in seen.items()
    ]


def instance_detail(detail: InstanceDetail, *, steps: bool = True, newest_first: bool = False) -> CfInstanceDetail:
    """Cloudflare's instance detail for Hutch's ``describe()``.

    ``success`` is set once the instance finished; a terminated instance ends its ``steps`` with a
    ``termination`` entry, as on Cloudflare.
    """
    entries: list[CfStep | CfTermination] = [_step(s) for s in detail.steps] if steps else []
    if steps and detail.status is Status.TERMINATED:
        entries.append(CfTermination(trigger={"source": "api"}))
    if newest_first:
        entries.reverse()
    return CfInstanceDetail(
        status=detail.status,
        params=json_safe(detail.params),
        trigger=CfTrigger(source=trigger_source(detail.trigger)),
        version_id=detail.version or UNRECORDED_VERSION,
        queued=detail.queued,
        start=detail.start,
        end=detail.end,
        success=(detail.status is Status.COMPLETE) if detail.status.finished else None,
        output=json_safe(detail.output),
        error=cf_error(detail.error),
        step_count=len(detail.steps),
        steps=entries,
    )


def _step(step: StepDetail) -> CfStep:
    if step.type == "sleep" or step.type == "waitForEvent":
        return CfStep(
            type=step.type,
            name=step.name,
            start=step.start,
            end=step.end or step.due,
            finished=step.end is not None,
            error=cf_error(step.error),
            event_type=step.event_type,
            output=json_safe(step.output),
        )
    return CfStep(
        type="step",
        name=step.name,
        start=step.start,
        end=step.end,
        success=step.success,
        attempts=[
            CfAttempt(start=a.start, end=a.end, success=a.success, error=cf_error(a.error)) for a in step.attempts
        ],
        config=step_config(step.config),
        output=json_safe(step.output),
        error=cf_error(step.error),
    )


def step_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A step's resolved config in Cloudflare's units: durations in milliseconds.

    An invoke (no retries of its own) gets an empty retry policy: Cloudflare's tools read
    ``config.retries`` of every running step.
    """
    config = config or {}
    retries = config.get("retries") or {}
    shaped: dict[str, Any] = {
        "retries": {
            "limit": retries.get("limit", 0),
            "delay": _ms(retries.get("delay", 0)),
            "backoff": retries.get("backoff", "constant"),
        },
        "timeout": _ms(config.get("timeout", 0)),
    }
    if retries.get("max_delay") is not None:
        shaped["retries"]["max_delay"] = _ms(retries["max_delay"])
    return shaped


def _ms(seconds: Any) -> Any:
    return round(seconds * 1000) if isinstance(seconds, int | float) else seconds


def cf_error(error: ErrorInfo | None) -> CfError | None:
    """An error record in Cloudflare's shape (its ``name`` and ``message``), None for no error."""
    return None if error is None else CfError(name=error.name, message=error.message)


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)


def utc(value: str, name: str) -> datetime:
    """A query's ISO 8601 date as an aware UTC datetime (Cloudflare's are UTC without an offset); 400 otherwise.

    Parsed here, not by pydantic, which would also take a number as a Unix time.
    """
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise InvalidInputError(
            f"{name} {value!r} is not an ISO 8601 date and time, like 2026-01-31T12:00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
