"""The checkpoint store on Redis (redis-py asyncio); fakeredis in embedded mode runs the same code."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple, cast

from hutch import keys
from hutch.blobs import BlobAddress, BlobRef, BlobStore
from hutch.config import Limits
from hutch.errors import DeploymentMismatch
from hutch.history import HISTORY_FORMAT, Record, decode_history, encode_history, encode_record
from hutch.keys import Keys
from hutch.search import Order, Position, SearchFilter, SearchHit
from hutch.serialization import unpack
from hutch.status import FINISHED
from hutch.store.base import CommitResult, Snapshot, Transition
from hutch.store.search import search_page
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    ConnectionError,
    OSError,
    TimeoutError,
    # A Redis Cluster's: no node reachable, a slot without a node or a node down during a failover
    # (CLUSTERDOWN, MASTERDOWN), redirections without end or TRYAGAIN while a slot moves.
    redis_exceptions.RedisClusterUnreachableError,
    redis_exceptions.SlotNotCoveredError,
    redis_exceptions.ClusterError,
    redis_exceptions.TryAgainError,
)
"""Errors that mean Redis is unreachable right now (retry later), as opposed to a bug."""

ANNOUNCED_BLOB_MAX = 4096
"""Created instances whose creation record (member, params, trigger...) is larger are announced by member only."""

PRUNE_PER_FINISH = 8
"""How many status index entries of instances whose retention ended each finish removes at most.

More than one, so the cleaning catches up after a burst: a partition that finishes n instances a
second removes up to 8n expired ones a second, while only n a second can expire in steady state.
"""

_RECORD_DEPLOYMENT = """
redis.call('HSETNX', KEYS[1], 'partitions', ARGV[1])
redis.call('HSETNX', KEYS[1], 'limits', ARGV[2])
return redis.call('HMGET', KEYS[1], 'partitions', 'limits', 'repartition')
"""

HISTORY_FORMAT_FIELD = "history_format"
"""The key of a deployment's recorded limits (JSON) that says which history format its processes write.

In the limits record rather than a field of its own so that a process of a version before format 2
refuses to start against a deployment whose histories it could not read: it compares every recorded
limit with its own and finds one it lacks (DeploymentMismatch). A record without it (a deployment
recorded before format 2) is format 1: its processes keep writing format 1, which every version
reads, until ``hutch admin history-format --to 2`` once none older runs (see that command).
"""
"""Records a deployment's settings unless recorded, and returns the record: one script, so two first
processes starting at once cannot leave a record that mixes their settings. The record's
``repartition`` field is the progress of a running (or interrupted) ``hutch admin repartition``
(engine/store/repartition.py)."""

_TEXT_FIELDS = frozenset({"wf", "id", "status"})
_INT_FIELDS = frozenset({"seq", "run", "created", "started", "ended"})


def _script(name: str) -> str:
    """A Lua script without its comment lines: fakeredis compiles the text on every call (Redis caches it)."""
    text = resources.files("hutch.store").joinpath(name).read_text()
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def decode_meta(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """Turn a raw meta hash into Python values (ints, strs, unpacked msgpack fields)."""
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if key in _TEXT_FIELDS:
            meta[key] = v.decode()
        elif key in _INT_FIELDS:
            # A restart clears "ended" by writing msgpack nil (there is no field delete in a transition).
            meta[key] = None if v == b"\xc0" else int(v)
        else:
            meta[key] = unpack(v)
    return meta


def meta_from_fields(fields: Mapping[str, bytes | str | int | float]) -> dict[str, Any]:
    """The meta a load returns for fields as they were written (what ``create`` stores)."""
    return decode_meta({name.encode(): _raw(value) for name, value in fields.items()})


def _raw(value: bytes | str | int | float) -> bytes:
    """A value as Redis stores it (encoded as redis-py does)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot store a {type(value).__name__} in Redis")


def _finished_ms(t: Transition) -> int:
    """When a finishing transition finished: its "ended" field, on the engine's clock (tests control it)."""
    ended = t.meta.get("ended")
    if isinstance(ended, int) and not isinstance(ended, bool):
        return ended
    return time.time_ns() // 1_000_000  # a transition that does not say (none of the engine's)


def _part(value: bytes | str | int | float, header: list[Any], parts: list[bytes]) -> None:
    """Append a value to a script blob and its byte length to the header."""
    data = _raw(value)
    header.append(len(data))
    parts.append(data)


@dataclass(slots=True)
class _ScriptCall:
    """One call of commit.lua or create.lua being built: the partitions it covers and the items in it."""

    order: list[int] = field(default_factory=list)  # positions of its items in the caller's list
    slots: dict[int, int] = field(default_factory=dict)  # partition -> its position in the call (1..P)
    shared: list[str] = field(default_factory=list)  # per partition: the script's partition-wide keys
    fences: list[str] = field(default_factory=list)  # per partition (commit.lua only)
    keys: list[str] = field(default_factory=list)  # per item
    args: list[Any] = field(default_factory=list)  # per item: header, blob
    instances: set[str] = field(default_factory=set)

    def slot(self, partition: int, shared: Callable[[int], list[str]], fence: str | None = None) -> int:
        """The partition's position in the call, adding the partition on first use."""
        slot = self.slots.get(partition)
        if slot is None:
            slot = self.slots[partition] = len(self.slots) + 1
            self.shared += shared(partition)
            if fence is not None:
                self.fences.append(fence)
        return slot

    def command(self, *head: Any) -> tuple[list[str], list[Any]]:
        """The call's KEYS and ARGV: P, the fences (commit.lua), then ``head``, then the items."""
        return self.shared + self.keys, [len(self.slots), *self.fences, *head, *self.args]


def _ungroup(total: int, calls: Sequence[_ScriptCall], grouped: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-call script results back in the caller's order."""
    out: list[Any] = [None] * total
    for call, results in zip(calls, grouped, strict=True):
        if len(results) != len(call.order):
            raise RuntimeError(f"a store script returned {len(results)} results for {len(call.order)} items")
        for n, result in zip(call.order, results, strict=True):
            out[n] = result
    return out


class Watched(NamedTuple):
    """What :meth:`RedisStore.mark_watched` read."""

    seq: int | None
    """The instance's sequence number (None: no such instance)."""
    every_worker: bool
    """Every live worker has the feature asked about (True when none was, or no worker is live)."""


class RedisStore:
    """Instances, histories, timers and indexes in Redis.

    Args:
        redis: a ``redis.asyncio.Redis`` (or fakeredis) or ``redis.asyncio.cluster.RedisCluster`` client
            with ``decode_responses=False``: one implementation for a single server and a cluster, whose
            scripts and MULTI-free pipelines never need two partitions' keys in one command.
        partitions: the deployment's partition count (fixed; part of every key's hash tag).
        namespace: prefix of every key, so deployments (or tests) can share a Redis.
        cross_slot: whether one script call may write several partitions. Every partition's keys
            share its hash tag, so a call per partition stays in one Redis Cluster slot; a
            standalone server has no slots, and a batch then costs one script call in all.
            Default: False for a ``RedisCluster`` client, True otherwise.
        announce_created: whether creates publish the new instances on their partition's "created"
            channel (sharded pub/sub), where the partition's owner hears of them and starts them
            without waiting for the start message's broker round trip (an embedded worker gets its
            messages at once).
        prune_per_finish: how many index entries of instances whose retention ended each finishing
            commit removes at most (see commit.lua); at least 1.
        blobs: where values over the inline threshold go (:mod:`hutch.blobs`); default: this
            Redis (:class:`RedisBlobs`).
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        partitions: int,
        *,
        namespace: str = "hutch",
        cross_slot: bool | None = None,
        announce_created: bool = False,
        prune_per_finish: int = PRUNE_PER_FINISH,
        blobs: BlobStore | None = None,
    ) -> None:
        if prune_per_finish < 1:
            raise ValueError(f"prune_per_finish must be at least 1, got {prune_per_finish}")
        # Typed as a Redis for the store's users: a RedisCluster has every command they call on it
        # (single-key commands, and pipelines without MULTI, which it splits by node).
        self.redis: Redis = cast("Redis", redis)
        self.partitions = partitions
        self.keys = Keys(namespace)
        self.cross_slot = not isinstance(redis, RedisCluster) if cross_slot is None else cross_slot
        # The channels' suffix: the scripts publish on each partition's own channel (keys.py).
        self._created_channel = keys.CREATED_SUFFIX if announce_created else ""
        self.announces = announce_created
        self._commit: AsyncScript = redis.register_script(_script("commit.lua"))
        self._create: AsyncScript = redis.register_script(_script("create.lua"))
        self._delete_unstarted: AsyncScript = redis.register_script(_script("delete_unstarted.lua"))
        self._list: AsyncScript = redis.register_script(_script("list.lua"))
        self._search: AsyncScript = redis.register_script(_script("search.lua"))
        self._delete_finished: AsyncScript = redis.register_script(_script("delete_finished.lua"))
        self.prune_per_finish = prune_per_finish
        self._record_deployment: AsyncScript = redis.register_script(_RECORD_DEPLOYMENT)
        self._named: set[str] = set()  # workflow names this store has recorded in the workflows set
        self.blobs: BlobStore = blobs if blobs is not None else RedisBlobs(self.redis, self.keys)
        # The history format commits write (hutch.history); check_deployment sets the deployment's.
        self.history_format = HISTORY_FORMAT

    async def close(self) -> None:
        """Close the client's connections (and the blob store's)."""
        await self.blobs.close()
        await self.redis.aclose()

    async def announce_event(self, partition: int, data: bytes) -> None:
        """Publish an event notice on the partition's events channel (nothing when this store announces nothing)."""
        if self.announces:
            await self.redis.spublish(self.keys.events_channel(partition), data)

    async def check_deployment(self, limits: Limits) -> None:
        """Record the partition count and the limits on first use; refuse to run with different ones.

        Workers call it at start and clients when they connect (one round trip), so a process
        configured unlike its deployment fails at once instead of stranding instances on
        partitions no worker consumes, or deciding the same replay differently.

        Raises:
            DeploymentMismatch: naming what differs and the recorded value, or saying that the
                deployment is being repartitioned (no process may run until that is done).
        """
        key = self.keys.config()
        mine = limits.model_dump(mode="json")
        # A new deployment is recorded with the newest history format (see HISTORY_FORMAT_FIELD).
        record = {**mine, HISTORY_FORMAT_FIELD: HISTORY_FORMAT}
        stored_partitions, stored_limits, repartitioning = await self._record_deployment(
            [key], [self.partitions, json.dumps(record, sort_keys=True)]
        )
        namespace = self.keys.namespace
        if repartitioning:
            # Keys and queues are half moved: a process on either partition count would miss some.
            plan = json.loads(repartitioning)
            raise DeploymentMismatch(
                f"the deployment in namespace {namespace!r} is being repartitioned from {plan.get('from')} to "
                f"{plan.get('to')} partitions (hutch admin repartition); nothing may run until it is done: run "
                f"hutch admin repartition --to {plan.get('to')} to finish it if it was interrupted, then start "
                f"every process with partitions = {plan.get('to')}"
            )
        stored = int(stored_partitions or self.partitions)
        if stored != self.partitions:
            raise DeploymentMismatch(
                f"this Redis holds data for {stored} partitions (namespace {namespace!r}) but this process has "
                f"HUTCH_PARTITIONS={self.partitions}; the partition count is part of every key: set partitions = "
                f"{stored} (HUTCH_PARTITIONS or hutch.toml), or change the deployment's with every process stopped: "
                f"hutch admin repartition --to {self.partitions}"
            )
        recorded: dict[str, Any] = json.loads(stored_limits) if stored_limits else dict(record)
        history_format = int(recorded.pop(HISTORY_FORMAT_FIELD, 1))
        if history_format > HISTORY_FORMAT:
            raise DeploymentMismatch(
                f"the deployment in namespace {namespace!r} writes histories in format {history_format}, which this "
                f"version (format {HISTORY_FORMAT} at most) cannot read: run a newer version of hutch"
            )
        self.history_format = history_format
        # A limit added after the deployment was recorded is absent from the record: its default holds there.
        recorded = {**Limits().model_dump(mode="json"), **recorded}
        differ = sorted(name for name in mine.keys() | recorded.keys() if mine.get(name) != recorded.get(name))
        if differ:
            theirs = ", ".join(f"{name}={recorded.get(name)!r}" for name in differ)
            ours = ", ".join(f"{name}={mine.get(name)!r}" for name in differ)
            raise DeploymentMismatch(
                f"the deployment in namespace {namespace!r} enforces the limits {theirs} but this process has {ours}; "
                "every client and worker of a deployment enforces the same limits: set them to the recorded values "
                "([limits] in hutch.toml or HUTCH_LIMITS__<NAME>), or change the deployment's with every process "
                f"stopped: delete the record (redis-cli HDEL {key} limits) and start with the new ones"
            )

    async def upgrade_history_format(self) -> tuple[int, int]:
        """Make the deployment's processes write the newest history format from their next start.

        Every version since format 2 reads both formats; one before it cannot, and from now on
        refuses to start against this deployment (see :data:`HISTORY_FORMAT_FIELD`). Run it once no
        such process runs. Processes running now go on writing what they wrote until they restart.

        Returns:
            The recorded format before and after.

        Raises:
            DeploymentMismatch: nothing was ever recorded in this namespace.
        """
        key = self.keys.config()
        stored = await self.redis.hget(key, "limits")
        if stored is None:
            raise DeploymentMismatch(f"namespace {self.keys.namespace!r} has no deployment recorded in this Redis")
        recorded = json.loads(stored)
        before = int(recorded.get(HISTORY_FORMAT_FIELD, 1))
        if before >= HISTORY_FORMAT:
            return before, before
        recorded[HISTORY_FORMAT_FIELD] = HISTORY_FORMAT
        # Read, then written whole: whatever else could write the record meanwhile writes only
        # when it is absent (a first process's check) or this same value (the command run twice).
        await self.redis.hset(key, "limits", json.dumps(recorded, sort_keys=True))
        return before, HISTORY_FORMAT

    # ------------------------------------------------------------------ creation
    async def create(
        self, partition: int, workflow: str, instance_id: str, created_ms: int, fields: dict[str, Any]
    ) -> bool:
        """Create the instance unless the id exists; True when it was created."""
        return (await self.create_many([(partition, workflow, instance_id, created_ms, fields)]))[0]

    async def create_many(
        self,
        items: Sequence[tuple[int, str, str, int, dict[str, Any]]],
        *,
        events: Sequence[Sequence[bytes]] | None = None,
    ) -> list[bool]:
        """Create several instances in one round trip; each is skipped if its id exists.

        One script call creates them all (one per partition on a Redis Cluster); the results
        come back in the order of ``items``. ``events``, one list per item, are event records
        (packed as an owner buffers them) the instance starts with, written by the same atomic
        script: an instance created with them never exists without them. Its start message and
        its announcement must then not carry its fields, so that its owner loads it, events included.
        """
        if not items:
            return []
        if events is not None and len(events) != len(items):
            raise ValueError(f"create_many got {len(events)} event lists for {len(items)} instances")
        calls: dict[int, _ScriptCall] = {}
        workflows = set()
        for n, (partition, workflow, instance_id, created_ms, fields) in enumerate(items):
            bucket = 0 if self.cross_slot else partition
            call = calls.get(bucket)
            if call is None:
                call = calls[bucket] = _ScriptCall()
            call.order.append(n)
            slot = call.slot(partition, lambda p: [self.keys.active(p)])
            call.keys += [
                self.keys.meta(partition, workflow, instance_id),
                self.keys.status_index(partition, workflow, "queued"),
                self.keys.status_index(partition, workflow, keys.ALL),
                self.keys.event_buffer(partition, workflow, instance_id),
            ]
            header: list[Any] = [slot, created_ms]
            parts: list[bytes] = []
            _part(keys.instance_member(workflow, instance_id), header, parts)
            for k, v in fields.items():
                _part(k, header, parts)
                _part(v, header, parts)
            first = events[n] if events is not None else ()
            for event in first:
                _part(event, header, parts)
            if first:
                header.append(f"e{len(first)}")
            call.args += [" ".join(map(str, header)), b"".join(parts)]
            workflows.add(workflow)
        # The deployment-wide set of workflow names (no partition tag: outside the script). Once
        # this store added a name it stays (nothing removes names), so it is sent once per name.
        new_names = workflows - self._named
        ordered = list(calls.values())
        results = await self._evalsha_many(
            self._create,
            [call.command(self._created_channel, ANNOUNCED_BLOB_MAX) for call in ordered],
            then=(lambda pipe: pipe.sadd(self.keys.workflows(), *new_names)) if new_names else None,
        )
        self._named |= new_names
        return [bool(r) for r in _ungroup(len(items), ordered, results)]

    async def delete_unstarted(self, partition: int, workflow: str, instance_id: str) -> bool:
        """Remove an instance entirely unless it has started; True when it was removed.

        The undo of a create whose start message could not be sent: an instance its owner started
        from the create's announcement needs no start message and is kept.
        """
        instance_keys = [
            self.keys.meta(partition, workflow, instance_id),
            self.keys.history(partition, workflow, instance_id),
            self.keys.event_buffer(partition, workflow, instance_id),
            self.keys.active(partition),
            self.keys.status_index(partition, workflow, "queued"),
            self.keys.status_index(partition, workflow, keys.ALL),
        ]
        return bool(await self._delete_unstarted(instance_keys, [keys.instance_member(workflow, instance_id)]))

    async def mark_watched(
        self,
        partition: int,
        workflow: str,
        instance_id: str,
        *,
        now_ms: int,
        until_ms: int,
        worker_feature: str | None = None,
    ) -> Watched:
        """Mark the instance as followed until ``until_ms`` and read its ``seq``, in one round trip.

        While marked, each of its commits is announced on :meth:`Keys.changed_channel
        <hutch.keys.Keys.changed_channel>` (commit.lua; see :mod:`hutch.commits`). The partition's
        marks that lapsed by ``now_ms`` are dropped, and neither the mark nor the set's expiry is
        ever shortened (another follower may hold it longer): the set expires once every mark in
        it lapsed, at the latest. The partition's keys are in one slot; on Redis Cluster the
        workers' sets (``worker_feature``) may be on another node, asked in parallel.

        Args:
            partition: the instance's partition.
            workflow: its workflow.
            instance_id: its id.
            now_ms: now, on the caller's clock: marks scored before are dropped.
            until_ms: when the mark lapses unless refreshed.
            worker_feature: also read whether every live worker has this feature
                (:meth:`Keys.worker_feature <hutch.keys.Keys.worker_feature>`).
        """
        watched = self.keys.watched(partition)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(watched, "-inf", now_ms)
        pipe.zadd(watched, {keys.instance_member(workflow, instance_id): until_ms}, gt=True)
        ttl_ms = max(1, until_ms - now_ms)
        pipe.pexpire(watched, ttl_ms, nx=True)  # the set was just made: it expires
        pipe.pexpire(watched, ttl_ms, gt=True)  # or lives on, as long as its longest mark at least
        pipe.hget(self.keys.meta(partition, workflow, instance_id), "seq")
        if worker_feature is not None:
            pipe.zrange(self.keys.workers(), 0, -1)
            pipe.zrange(self.keys.worker_feature(worker_feature), 0, -1)
        results = await pipe.execute()
        seq = results[4]
        every_worker = worker_feature is None or set(results[5]) <= set(results[6])
        return Watched(None if seq is None else int(seq), every_worker)

    # ------------------------------------------------------------------ reads
    async def read_meta(self, partition: int, workflow: str, instance_id: str) -> dict[str, Any] | None:
        """The instance's meta fields, or None if it does not exist."""
        raw = await self.redis.hgetall(self.keys.meta(partition, workflow, instance_id))
        return decode_meta(raw) if raw else None

    async def load(self, partition: int, workflow: str, instance_id: str) -> Snapshot | None:
        """Meta, history and buffered events in one round trip."""
        return (await self.load_many([(partition, workflow, instance_id)]))[0]

    async def load_many(self, items: Sequence[tuple[int, str, str]]) -> list[Snapshot | None]:
        """Several instances' snapshots in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for partition, workflow, instance_id in items:
            pipe.hgetall(self.keys.meta(partition, workflow, instance_id))
            pipe.lrange(self.keys.history(partition, workflow, instance_id), 0, -1)
            pipe.lrange(self.keys.event_buffer(partition, workflow, instance_id), 0, -1)
        raw = await pipe.execute()
        out: list[Snapshot | None] = []
        for i in range(len(items)):
            meta, history, events = raw[3 * i : 3 * i + 3]
            if not meta:
                out.append(None)
                continue
            fields = decode_meta(meta)
            out.append(Snapshot(fields, decode_history(history, fields["created"]), list(events)))
        return out

    async def history(self, partition: int, workflow: str, instance_id: str) -> list[Record]:
        """The instance's history records (none when it does not exist)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.meta(partition, workflow, instance_id), "created")
        pipe.lrange(self.keys.history(partition, workflow, instance_id), 0, -1)
        created, raw = await pipe.execute()
        # Format 2 times are relative to the creation: a history whose meta is gone (it expired
        # between the two reads) has nothing left to show.
        return decode_history(raw, int(created)) if created is not None else []

    # ------------------------------------------------------------------ commits
    async def commit_many(self, transitions: Sequence[Transition], fences: dict[int, str]) -> list[CommitResult]:
        """Apply transitions in one pipelined round trip; each is atomic and checked on its own.

        The batch costs one script call, not one per transition (on a Redis Cluster, one per
        partition: a partition's keys share its hash tag, so each call stays in one slot). The
        script applies the transitions in order, each sequence-checked and fenced by its
        partition's token in ``fences`` (no token: unfenced); one that fails its checks writes
        nothing. A second transition of an instance already in a call goes to a later call, so a
        call's transitions are of distinct instances (see commit.lua). Results come back in the
        order of ``transitions``.
        """
        if not transitions:
            return []
        calls: list[_ScriptCall] = []
        current: dict[int, _ScriptCall] = {}  # bucket (0, or the partition on a Cluster) -> its open call
        for n, t in enumerate(transitions):
            p = t.partition
            bucket = 0 if self.cross_slot else p
            call = current.get(bucket)
            ident = f"{t.workflow}:{t.instance_id}"
            if call is None or ident in call.instances:
                call = current[bucket] = _ScriptCall()
                calls.append(call)
            call.instances.add(ident)
            call.order.append(n)
            slot = call.slot(p, self._partition_keys, fences.get(p, ""))
            self._commit_call(t, slot, call)
        commands = [call.command(keys.FINISHED_SUFFIX, keys.CHANGED_SUFFIX, self.prune_per_finish) for call in calls]
        results = await self._evalsha_many(self._commit, commands)
        return [CommitResult(int(r)) for r in _ungroup(len(transitions), calls, results)]

    def _partition_keys(self, partition: int) -> list[str]:
        k = self.keys
        return [
            k.timers(partition),
            k.active(partition),
            k.owner(partition),
            k.retention(partition),
            k.watched(partition),
        ]

    async def _evalsha_many(
        self,
        script: AsyncScript,
        calls: Sequence[tuple[list[str], list[Any]]],
        *,
        then: Callable[[Pipeline], object] | None = None,
    ) -> list[Any]:
        """EVALSHA ``script`` once per (keys, args) in one pipelined round trip; the scripts' results.

        redis-py's ``Script`` objects make every pipeline that uses them send ``SCRIPT EXISTS``
        first — an extra round trip per commit. Here the script is loaded only when the
        server says it does not have it (first use, restart, ``SCRIPT FLUSH``): a NOSCRIPT
        EVALSHA ran nothing, so exactly those calls are sent again. ``then`` appends more
        commands to the first pipeline (their results are not returned).
        """
        if len(calls) == 1 and then is None:  # the common single call: no pipeline to build
            call_keys, args = calls[0]
            try:
                return [await self.redis.evalsha(script.sha, len(call_keys), *call_keys, *args)]
            except NoScriptError:
                await self.redis.script_load(script.script)
                return [await self.redis.evalsha(script.sha, len(call_keys), *call_keys, *args)]
        pipe = self.redis.pipeline(transaction=False)
        for call_keys, args in calls:
            pipe.evalsha(script.sha, len(call_keys), *call_keys, *args)
        if then is not None:
            then(pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results[: len(calls)]) if isinstance(r, NoScriptError)]
        if missing:
            await self.redis.script_load(script.script)
            pipe = self.redis.pipeline(transaction=False)
            for i in missing:
                call_keys, args = calls[i]
                pipe.evalsha(script.sha, len(call_keys), *call_keys, *args)
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results[: len(calls)]

    def _commit_call(self, t: Transition, slot: int, call: _ScriptCall) -> None:
        """Append one transition's keys and its two arguments (header, blob) to a commit.lua call."""
        p, wf, iid = t.partition, t.workflow, t.instance_id
        call.keys += [self.keys.meta(p, wf, iid), self.keys.history(p, wf, iid), self.keys.event_buffer(p, wf, iid)]
        old = t.status_from or t.status_to or keys.ALL
        new = t.status_to or t.status_from or keys.ALL
        if old != new:
            call.keys += [self.keys.status_index(p, wf, old), self.keys.status_index(p, wf, new)]
        history = t.history
        if t.records:
            if self.history_format >= 2:
                history = [*history, *encode_history(t.records, t.created_ms)]
            else:
                history = [*history, *map(encode_record, t.records)]
        header: list[Any] = [
            slot,
            t.expected_seq,
            t.created_ms if t.check_created else "-",
            t.active,
            t.created_ms,
            t.ttl_s,
            1 if t.reset_history else 0 if t.keep_history is None else f"k{t.keep_history}",
            len(t.meta) * 2,
            len(history),
            len(t.timers_add),
            len(t.timers_remove),
            len(t.events_push),
            len(t.events_remove),
            (2 if new in FINISHED else 1) if old != new else 0,
            _finished_ms(t) if t.ttl_s > 0 else 0,
        ]
        parts: list[bytes] = []
        _part(keys.instance_member(wf, iid), header, parts)
        for name, value in t.meta.items():
            _part(name, header, parts)
            _part(value, header, parts)
        timers = (member for _, member in t.timers_add)
        for raw in (*history, *timers, *t.timers_remove, *t.events_push, *t.events_remove):
            header.append(len(raw))
            parts.append(raw)
        header += (due for due, _ in t.timers_add)
        call.args += [" ".join(map(str, header)), b"".join(parts)]

    # ------------------------------------------------------------------ partitions
    async def claim(self, partition: int, token: str) -> None:
        """Make ``token`` the partition's fencing token: every commit of an older owner now fails."""
        await self.redis.set(self.keys.owner(partition), token)

    async def active_instances(self, partition: int) -> list[tuple[str, str]]:
        """(workflow, instance id) of the partition's instances a new owner must re-drive."""
        members: set[bytes] = await self.redis.smembers(self.keys.active(partition))  # type: ignore[assignment]
        pairs = (m.decode().split(":", 1) for m in members)
        return [(wf, iid) for wf, iid in pairs]

    async def due_timers(
        self, partitions: Iterable[int], now_ms: int, limit: int = 1000
    ) -> list[tuple[int, bytes, int]]:
        """Timers due by ``now_ms`` on these partitions: (partition, member, due ms)."""
        parts = list(partitions)
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(self.keys.timers(p), "-inf", now_ms, start=0, num=limit, withscores=True)
        out: list[tuple[int, bytes, int]] = []
        for p, rows in zip(parts, await pipe.execute(), strict=True):
            out += [(p, member, int(score)) for member, score in rows]
        return out

    async def remove_timers(self, partition: int, members: Sequence[bytes]) -> None:
        """Remove timers outside a transition: outbox timers whose effect was carried out."""
        if members:
            await self.redis.zrem(self.keys.timers(partition), *members)

    async def next_due(self, partitions: Iterable[int], *, after_ms: int) -> int | None:
        """The earliest timer due strictly after ``after_ms`` on these partitions (epoch ms), or None."""
        pipe = self.redis.pipeline(transaction=False)
        for p in partitions:
            pipe.zrangebyscore(self.keys.timers(p), f"({after_ms}", "+inf", start=0, num=1, withscores=True)
        firsts = [int(rows[0][1]) for rows in await pipe.execute() if rows]
        return min(firsts) if firsts else None

    # ------------------------------------------------------------------ listing
    async def workflow_names(self) -> list[str]:
        """Names of workflows that have (had) instances."""
        names: set[bytes] = await self.redis.smembers(self.keys.workflows())  # type: ignore[assignment]
        return sorted(m.decode() for m in names)

    async def list_instances(
        self, workflow: str, status: str | None, *, before: tuple[int, str] | None, limit: int
    ) -> list[tuple[str, int]]:
        """Instance ids of ``workflow`` (optionally in one status), newest first.

        ``before`` is the (created ms, id) of the last row of the previous page. Returns
        (instance id, created ms) pairs of instances that exist: index entries left by an
        instance whose retention ended (and that no finish has pruned yet) are skipped (list.lua).
        """
        status_key = status or keys.ALL
        calls: list[tuple[list[str], list[Any]]] = []
        for p in range(self.partitions):
            index = [self.keys.status_index(p, workflow, status_key)]
            # The meta key of a member, as a prefix and a suffix around it (keys.py has the layout).
            prefix, _, suffix = self.keys.meta(p, workflow, "x").rpartition(keys.instance_member(workflow, "x"))
            checks = [status or "", prefix, suffix]
            if before is None:
                calls.append((index, ["+inf", "-inf", limit, *checks]))
            else:
                # Rows sharing the cursor's millisecond (a create_batch shares one) can outnumber a page
                # and cannot be skipped by score: take them all, then a page of strictly older rows.
                calls.append((index, [before[0], before[0], 0, *checks]))
                calls.append((index, [f"({before[0]}", "-inf", limit, *checks]))
        rows: list[tuple[int, str]] = []
        for part in await self._evalsha_many(self._list, calls):
            for i in range(0, len(part), 2):
                iid = bytes(part[i]).decode().split(":", 1)[1]
                rows.append((int(float(part[i + 1])), iid))
        ordered = heapq.nlargest(len(rows), rows)
        if before is not None:
            ordered = [r for r in ordered if (r[0], r[1]) < before]
        return [(iid, created) for created, iid in ordered[:limit]]

    # ------------------------------------------------------------------ search and delete (fleet control)
    async def search(
        self, workflows: Sequence[str], where: SearchFilter, *, order: Order, after: Position | None, limit: int
    ) -> tuple[list[SearchHit], Position | None]:
        """One page of a search over the status indexes (hutch.store.search), and where the next starts."""
        return await search_page(self, workflows, where, order=order, after=after, limit=limit)

    async def search_calls(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run search.lua once per (keys, args), pipelined in one round trip."""
        return await self._evalsha_many(self._search, calls)

    async def delete_finished(self, items: Sequence[tuple[int, str, str]]) -> list[int]:
        """Delete finished (partition, workflow, id) instances for good: 1 deleted, 0 gone, -1 kept (unfinished)."""
        calls: list[tuple[list[str], list[Any]]] = []
        for p, wf, iid in items:
            k = self.keys
            data = [k.meta(p, wf, iid), k.history(p, wf, iid), k.event_buffer(p, wf, iid), k.blobs(p, wf, iid)]
            data.append(k.retention(p))
            indexes = [self.keys.status_index(p, wf, s) for s in (keys.ALL, "complete", "errored", "terminated")]
            calls.append((data + indexes, [keys.instance_member(wf, iid)]))
        return [int(r) for r in await self._evalsha_many(self._delete_finished, calls)] if calls else []


class RedisBlobs:
    """The default blob store: one hash per instance (field: the blob key), in the instance's partition slot.

    Its key is one of the instance's keys (:meth:`Keys.blobs`): it moves with the instance on a
    repartition and expires with it when its retention ends (commit.lua).
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def put(self, where: BlobAddress, ref: BlobRef, data: bytes) -> None:
        """Store the blob (HSET: storing it again rewrites the same bytes)."""
        key = self._keys.blobs(where.partition, where.workflow, where.instance_id)
        await self._redis.hset(key, ref.key, data)

    async def get_many(self, where: BlobAddress, refs: Sequence[BlobRef]) -> list[bytes | None]:
        """The blobs, in one round trip."""
        if not refs:
            return []
        key = self._keys.blobs(where.partition, where.workflow, where.instance_id)
        found: list[bytes | None] = await self._redis.hmget(key, [ref.key for ref in refs])  # type: ignore[assignment]
        return found

    async def close(self) -> None:
        """The checkpoint store closes the shared client."""
