"""Read-only views the REST API needs beyond the client API: listing rows and instance counts.

These read the store directly (one pipelined round trip each) because the client API has no
batch read of instance metadata and no per-status count; they are kept here, in one place,
so they can move behind the client API without touching the routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hutch import Client, Status
from hutch.events import ms_to_datetime
from hutch.gateway.api.models import InstanceCounts, InstanceSummary
from hutch.store.redis import decode_meta
from hutch.versions import META_FIELD as VERSION_FIELD

COUNTED_STATUSES = tuple(s for s in Status if s is not Status.UNKNOWN)


async def instance_summaries(client: Client, workflow: str, instance_ids: Sequence[str]) -> list[InstanceSummary]:
    """Status and timestamps of the listed instances, in order; ids whose data expired are dropped."""
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hgetall(store.keys.meta(client._partition(workflow, iid), workflow, iid))
    rows: list[InstanceSummary] = []
    for iid, raw in zip(instance_ids, await pipe.execute(), strict=True):
        if not raw:
            continue
        meta: dict[str, Any] = decode_meta(raw)
        rows.append(
            InstanceSummary(
                id=iid,
                workflow=workflow,
                status=Status(meta.get("status", "unknown")),
                created_on=ms_to_datetime(meta["created"]),
                started_on=_at(meta.get("started")),
                ended_on=_at(meta.get("ended")),
                version=meta.get(VERSION_FIELD),
            )
        )
    return rows


async def instance_counts(client: Client, workflows: Sequence[str]) -> dict[str, InstanceCounts]:
    """Per workflow, how many instances are in each status (from the status indexes)."""
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for workflow in workflows:
        for status in COUNTED_STATUSES:
            for partition in range(store.partitions):
                pipe.zcard(store.keys.status_index(partition, workflow, status.value))
    results = iter(await pipe.execute())
    counts: dict[str, InstanceCounts] = {}
    for workflow in workflows:
        by_status = {s.value: sum(int(next(results)) for _ in range(store.partitions)) for s in COUNTED_STATUSES}
        counts[workflow] = InstanceCounts.model_validate(by_status)
    return counts


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)
