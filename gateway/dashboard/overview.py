"""The workflows page's numbers: instances by status, and creations and completions over the last hour.

Both come from the store's indexes in one pipelined round trip each: creations from the
workflow's "all" index (scored by creation time), completions from each partition's retention
set (scored by when a finished instance's retention ends, so its end is that score minus the
retention; an instance that finished under another ``limits.retention`` is placed by today's).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from hutch import Client
from hutch.gateway.api.models import InstanceCounts
from hutch.gateway.api.views import instance_counts
from hutch.keys import ALL
from pydantic import BaseModel

HOUR_MS = 3_600_000


class WorkflowOverview(BaseModel):
    """One row of the workflows page."""

    name: str
    instances: InstanceCounts
    created_last_hour: int
    finished_last_hour: int


async def overview(client: Client, workflows: Sequence[str]) -> list[WorkflowOverview]:
    """Every workflow's counts and last-hour throughput, in the order given."""
    store = client._store
    now_ms = int(time.time() * 1000)
    counts = await instance_counts(client, workflows)
    pipe = store.redis.pipeline(transaction=False)
    for workflow in workflows:
        for p in range(store.partitions):
            pipe.zcount(store.keys.status_index(p, workflow, ALL), now_ms - HOUR_MS, "+inf")
    retention_ms = int(client.limits.retention.total_seconds() * 1000)
    for p in range(store.partitions):
        pipe.zrangebyscore(store.keys.retention(p), now_ms - HOUR_MS + retention_ms, "+inf")
    results = await pipe.execute()
    created: dict[str, int] = {}
    for i, workflow in enumerate(workflows):
        created[workflow] = sum(int(n) for n in results[i * store.partitions : (i + 1) * store.partitions])
    finished: Counter[str] = Counter()
    for members in results[len(workflows) * store.partitions :]:
        for member in members:
            finished[bytes(member).decode().split(":", 1)[0]] += 1
    return [
        WorkflowOverview(name=w, instances=counts[w], created_last_hour=created[w], finished_last_hour=finished[w])
        for w in workflows
    ]
