"""Reads instances' histories from a live deployment's Redis, for ``hutch workflows verify`` and export.

Read-only: nothing here writes to the store, not even the deployment record a client writes on
first use (a verify pointed at the wrong namespace must not claim it). The deployment's recorded
partition count and limits are used, whatever this process's settings say, because the count
places every key and the limits decide replay as the workers decide it.

Every read goes through the store's indexes and per-instance keys (status indexes, one
pipeline of meta and history reads per batch), so it works on Redis Cluster and never scans the
keyspace.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hutch.blobs import BlobAddress, BlobRef, fetch_blobs, refs_in
from hutch.broker.partitioning import partition_of
from hutch.config import Limits
from hutch.errors import DeploymentMismatch
from hutch.serialization import unpack
from hutch.status import FINISHED, Status
from hutch.store.base import Snapshot
from hutch.store.redis import HISTORY_FORMAT_FIELD, RedisStore
from hutch.testing.history_file import InstanceHistory

UNFINISHED = tuple(s.value for s in Status if s.value not in FINISHED and s is not Status.UNKNOWN)
PAGE = 500
"""Index rows listed per round trip."""
LOAD_BATCH = 100
"""Instances whose meta and history one pipeline reads."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a deployment recorded in its Redis: its partition count and the limits it enforces."""

    partitions: int
    limits: Limits


async def read_deployment(store: RedisStore) -> Deployment:
    """The deployment record of the store's namespace, read without writing.

    Raises:
        DeploymentMismatch: the namespace has no deployment (nothing ever ran there: check
            HUTCH_NAMESPACE and HUTCH_REDIS_URL), or it is being repartitioned.
    """
    namespace = store.keys.namespace
    partitions, limits, repartitioning = await store.redis.hmget(
        store.keys.config(), ["partitions", "limits", "repartition"]
    )
    if not partitions:
        raise DeploymentMismatch(
            f"namespace {namespace!r} has no deployment recorded in this Redis (no worker or client ever ran "
            "there): check HUTCH_NAMESPACE and HUTCH_REDIS_URL"
        )
    if repartitioning:
        raise DeploymentMismatch(
            f"the deployment in namespace {namespace!r} is being repartitioned (hutch admin repartition); "
            "its instances cannot be read until that is done"
        )
    recorded = json.loads(limits) if limits else {}
    recorded.pop(HISTORY_FORMAT_FIELD, None)  # how its histories are written, not a limit
    return Deployment(int(partitions), Limits.model_validate(recorded))


def on_deployment(store: RedisStore, deployment: Deployment) -> RedisStore:
    """The store laid out with the deployment's partition count (``store`` itself when it already is).

    The returned store shares ``store``'s client: close only one of them.
    """
    if store.partitions == deployment.partitions:
        return store
    return RedisStore(store.redis, deployment.partitions, namespace=store.keys.namespace, blobs=store.blobs)


async def unfinished_ids(store: RedisStore, workflow: str) -> list[str]:
    """Ids of ``workflow``'s instances in an unfinished status, newest first in each status."""
    seen: dict[str, None] = {}
    for status in UNFINISHED:
        before: tuple[int, str] | None = None
        while True:
            rows = await store.list_instances(workflow, status, before=before, limit=PAGE)
            # An instance moving between statuses while we page can be listed twice.
            seen.update(dict.fromkeys(iid for iid, _ in rows))
            if len(rows) < PAGE:
                break
            before = (rows[-1][1], rows[-1][0])
    return list(seen)


async def load_histories(store: RedisStore, workflow: str, ids: Sequence[str]) -> list[InstanceHistory]:
    """The histories of these instances (those that no longer exist are left out)."""
    out: list[InstanceHistory] = []
    for start in range(0, len(ids), LOAD_BATCH):
        batch = ids[start : start + LOAD_BATCH]
        items = [(partition_of(workflow, iid, store.partitions), workflow, iid) for iid in batch]
        snapshots = await store.load_many(items)
        out += [await _with_blobs(store, history_of(s)) for s in snapshots if s is not None]
    return out


async def unfinished_histories(
    store: RedisStore, workflow: str, *, sample: int | None = None, rng: random.Random | None = None
) -> tuple[int, list[InstanceHistory]]:
    """How many instances of ``workflow`` are unfinished, and the histories of all or ``sample`` of them.

    ``sample`` picks that many at random (``rng``, for a reproducible pick). An instance that
    finished between the listing and the read is left out.
    """
    ids = await unfinished_ids(store, workflow)
    total = len(ids)
    if sample is not None and sample < total:
        ids = (rng or random.Random()).sample(ids, sample)
    histories = await load_histories(store, workflow, ids)
    return total, [h for h in histories if h.status not in FINISHED]


async def instance_history(store: RedisStore, workflow: str, instance_id: str) -> InstanceHistory | None:
    """One instance's history, or None when it does not exist."""
    snapshot = await store.load(partition_of(workflow, instance_id, store.partitions), workflow, instance_id)
    return None if snapshot is None else await _with_blobs(store, history_of(snapshot))


async def _with_blobs(store: RedisStore, history: InstanceHistory) -> InstanceHistory:
    """The history with the values its records hold by reference, so that it replays (and exports) whole.

    Raises:
        BlobNotFound: one of them is not in the deployment's blob store.
    """
    refs = refs_in(history.history)
    params = history.params
    if not refs and not isinstance(params, BlobRef):
        return history
    workflow, instance_id = history.workflow, history.instance_id
    where = BlobAddress(partition_of(workflow, instance_id, store.partitions), workflow, instance_id)
    update: dict[str, Any] = {}
    if isinstance(params, BlobRef):  # params stored by reference: the history carries their value
        update["params"] = unpack((await fetch_blobs(store.blobs, where, [params]))[params.key])
    if refs:
        update["blobs"] = await fetch_blobs(store.blobs, where, refs)
    return history.model_copy(update=update)


def history_of(snapshot: Snapshot) -> InstanceHistory:
    """The history file contents of a loaded instance."""
    meta = snapshot.meta
    return InstanceHistory(
        workflow=meta["wf"],
        instance_id=meta["id"],
        created_ms=meta["created"],
        status=meta["status"],
        params=meta.get("params"),
        history=snapshot.history,
    )
