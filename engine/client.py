"""The client API: create instances, read their status, control them, send them events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from hutch import metrics, tracing
from hutch.blobs import BlobAddress, BlobRef, by_reference, fetch_blobs, large_ref
from hutch.bulk import MAX_IDS as MAX_BULK_IDS
from hutch.bulk import BulkAction, BulkJob, BulkJobs, BulkRunner, check_action
from hutch.clock import Clock
from hutch.commits import CommitFeed
from hutch.concurrency import PRIORITY_FIELD, check_priority
from hutch.config import DEFAULT_LIMITS, Limits, check_instance_id, check_workflow_name
from hutch.dispatch import CreatedInstance, Dispatcher
from hutch.entrypoint import default_binding_name
from hutch.errors import (
    BatchTooLarge,
    IllegalTransition,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInputError,
    StepNotInHistory,
    WaitTimeout,
    WorkflowNotFound,
)
from hutch.restart import FromStep, StepSpec, command_position, from_step_of
from hutch.retention import META_FIELD as RETENTION_FIELD
from hutch.retention import RetentionSpec, retention_of
from hutch.runtime import EmbeddedRuntimeProbe
from hutch.search import Order, Position, SearchFilter, SearchPage, check_limit, check_order, search_filter
from hutch.serialization import check_depth, encode_value, pack, unpack
from hutch.status import FINISHED, Action, InstanceDetail, InstanceStatus, Status, build_detail, status_from_meta
from hutch.store.base import CheckpointStore
from hutch.watch import InstanceWatch
from pydantic import BaseModel

log = logging.getLogger("hutch.client")


class InstancePage(BaseModel):
    """One page of a listing, newest first; pass ``cursor`` back to get the next page."""

    instances: list[str]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class EventAccepted:
    """What ``send_event`` reports: whether the instance had already finished (the event is then ignored)."""

    instance_finished: bool


InstanceT = TypeVar("InstanceT", bound="Instance")


@dataclass(frozen=True, slots=True)
class CreatedOrSent(Generic[InstanceT]):
    """What ``create_or_send`` reports.

    Attributes:
        instance: the instance, whichever call created it.
        created: True when this call created it (it started with the event buffered); False when
            it existed and the event was sent to it.
        instance_finished: it existed and had already finished, so the event is ignored.
    """

    instance: InstanceT
    created: bool
    instance_finished: bool


@dataclass(frozen=True, slots=True)
class ControlAccepted:
    """What ``pause``, ``resume``, ``terminate`` and ``restart`` report.

    Attributes:
        applied: the instance's owner applied the change within the wait, or there was nothing to
            do (pausing a paused instance). False: no worker applied it in time (none is running,
            or the partition is changing hands). The request is durable: it stays queued and is
            applied when a worker takes the instance's partition, so do not send it again for this
            reason — a second restart would run the instance from the start twice.
        status: the instance's status when the call returned.
    """

    applied: bool
    status: Status


class Client:
    """Talks to Hutch: to an embedded runtime in this process or to Redis + RabbitMQ.

    Use :func:`hutch.connect` to make one.
    """

    def __init__(
        self,
        store: CheckpointStore,
        dispatcher: Dispatcher,
        *,
        workflows: Sequence[str] = (),
        limits: Limits = DEFAULT_LIMITS,
        clock: Clock | None = None,
        watch: InstanceWatch | None = None,
        commits: CommitFeed | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        control_timeout: float = 10.0,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._known = frozenset(workflows)
        self.limits = limits
        self.clock = clock or Clock()
        self._watch = watch
        # Every commit of an instance, for a live view, where the watch hears only final statuses
        # (a remote client's: hutch.commits); None where the watch hears every commit, or no Redis.
        self._commits = commits
        self._on_close = on_close
        self._closed = False
        # How long pause/resume/terminate/restart wait for the owner to apply them by default.
        self.control_timeout = control_timeout
        # What the testing toolkit reads of the embedded runtime behind this client (None otherwise).
        self.runtime: EmbeddedRuntimeProbe | None = None
        # Runs the bulk jobs this client creates, and any whose runner died (started on first use).
        self._bulk_runner: BulkRunner | None = None
        self._bulk_task: asyncio.Task[None] | None = None
        # The hutch.consumers Worker running in this client's process (embedded, or a colocated
        # distributed one), else None: `hutch dev` stops it and tests crash it. The engine does not
        # know the consumers layer's types, so callers narrow it (isinstance) before use.
        self.runtime_worker: object | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the embedded runtime (if any) and close connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.stop_bulk_runner()
        if self._on_close is not None:
            await self._on_close()

    def workflow(self, name: str) -> WorkflowClient:
        """The client of one workflow; raises :class:`WorkflowNotFound` for an unknown name."""
        check_workflow_name(name, self.limits)
        if self._known and name not in self._known:
            raise WorkflowNotFound(name)
        return WorkflowClient(self, name)

    async def workflows(self) -> list[str]:
        """Registered workflow names, plus any that have instances in the store."""
        return sorted(self._known | set(await self._store.workflow_names()))

    def _partition(self, workflow: str, instance_id: str) -> int:
        return self._dispatcher.partition_of(workflow, instance_id)

    # ------------------------------------------------------------------ fleet control (SPEC §12)
    async def search(
        self,
        workflow: str | None = None,
        status: Status | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        id_prefix: str | None = None,
        version: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        order: Order = "desc",
    ) -> SearchPage:
        """Instances across workflows (or of one) matching every filter given, newest first, a page at a time.

        Backed by the per-partition status indexes (hutch.search): no scan of the keyspace.

        Args:
            workflow: only this workflow's instances.
            status: only instances in this status.
            created_after: created at or after this time (a naive datetime is UTC; ISO strings accepted).
            created_before: created strictly before this time.
            id_prefix: only ids starting with this.
            version: only instances that started on this code version.
            limit: at most this many per page (1..1000).
            cursor: the ``cursor`` of the previous page (same filters and order).
            order: ``desc`` newest first, ``asc`` oldest first.

        Raises:
            InvalidInputError: a bad filter, limit, order or cursor.
            WorkflowNotFound: ``workflow`` is neither registered nor has instances, when the client knows its workflows.
        """
        where = search_filter(
            workflow=workflow,
            status=status,
            created_after=created_after,
            created_before=created_before,
            id_prefix=id_prefix,
            version=version,
        )
        check_limit(limit)
        order = check_order(order)
        after = Position.decode(cursor) if cursor is not None else None
        if where.workflow is None:
            workflows = await self.workflows()
        else:
            check_workflow_name(where.workflow, self.limits)
            # A workflow this client does not run may still have instances (another worker's, or older).
            if self._known and where.workflow not in self._known and where.workflow not in await self.workflows():
                raise WorkflowNotFound(where.workflow)
            workflows = [where.workflow]
        hits, nxt = await self._store.search(workflows, where, order=order, after=after, limit=limit)
        return SearchPage(instances=hits, cursor=nxt.encode() if nxt is not None else None)

    async def bulk(
        self,
        action: BulkAction,
        where: SearchFilter | None = None,
        *,
        ids: Sequence[str] | None = None,
        **filters: Any,
    ) -> BulkJob:
        """Start a durable background job doing ``action`` to every instance the filter matches.

        ``action`` is terminate, restart, pause, resume or delete; the filter is a
        :class:`~hutch.search.SearchFilter` or its fields as keywords (those of :meth:`search`).
        ``ids`` (at most :data:`~hutch.bulk.MAX_IDS`) acts on exactly those instances of the
        filter's ``workflow`` instead of running a search (the filter may then name nothing else).
        The job runs in this process (and goes on in any other process running a bulk runner,
        such as a gateway, if this one stops); the returned handle reads its progress, waits for
        it or cancels it. See :mod:`hutch.bulk` for how a crash mid-way is resumed.
        """
        if where is None:
            where = search_filter(**filters)
        elif filters:
            raise InvalidInputError("give the filter either as a SearchFilter or as keywords, not both")
        check_action(action)
        if where.workflow is not None:
            self.workflow(where.workflow)
        members = None if ids is None else self._bulk_members(where, ids)
        runner = self.start_bulk_runner()
        job_id = await runner.jobs.create(action, where, self.clock.now_ms(), members=members)
        runner.wake()
        return BulkJob(runner.jobs, job_id)

    def _bulk_members(self, where: SearchFilter, ids: Sequence[str]) -> list[str]:
        """The ``workflow:id`` items of a bulk job over given instances, checked."""
        if where.workflow is None or where != SearchFilter(workflow=where.workflow):
            raise InvalidInputError("a bulk job over given ids takes the workflow and no other filter")
        if isinstance(ids, str) or len(ids) > MAX_BULK_IDS:
            raise InvalidInputError(f"give at most {MAX_BULK_IDS} instance ids as a list (a filter selects more)")
        return [f"{where.workflow}:{check_instance_id(iid, self.limits)}" for iid in ids]

    def bulk_job(self, job_id: str) -> BulkJob:
        """A handle on a bulk job by its id (its ``progress()`` raises ``BulkJobNotFound`` for an unknown one)."""
        return BulkJob(BulkJobs(self._store), job_id)

    def start_bulk_runner(self) -> BulkRunner:
        """Run bulk jobs in this process from now on (idempotent): those it creates, and any whose runner died."""
        if self._bulk_runner is None:
            self._bulk_runner = BulkRunner(self)
            self._bulk_task = asyncio.get_running_loop().create_task(self._bulk_runner.run(), name="hutch-bulk")
        return self._bulk_runner

    async def stop_bulk_runner(self) -> None:
        """Stop running bulk jobs here; their leases are released, so another process resumes them at once."""
        task, self._bulk_task, self._bulk_runner = self._bulk_task, None, None
        # Cancelled again until it ends: a Redis read on Python 3.11 may swallow one cancellation.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.warning("the bulk runner had stopped with an error: %r", task.exception())


class WorkflowClient:
    """Creates and finds instances of one workflow (also ``self.env.BINDING`` inside workflows)."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def __repr__(self) -> str:
        return f"WorkflowClient({self.name!r})"

    async def create(
        self,
        id: str | None = None,
        params: Any = None,
        *,
        trigger: dict[str, Any] | None = None,
        priority: int | None = None,
        retention: RetentionSpec | None = None,
    ) -> Instance:
        """Create and start an instance; raises :class:`InstanceAlreadyExists` for a taken id.

        ``retention``: how long this instance is kept once it finished, instead of the deployment's
        ``retention`` (:class:`~hutch.retention.InstanceRetention`; numbers are seconds).

        ``priority`` orders the instances waiting for a slot of the workflow's concurrency limits
        (hutch.concurrency): lower starts first (from -1000 to 1000, default 0), then oldest first.
        """
        item: dict[str, Any] = {"id": id, "params": params}
        if priority is not None:
            item["priority"] = priority
        if retention is not None:
            item["retention"] = retention
        created = await self._create([item], trigger or {"source": "api"}, skip_existing=False)
        return created[0]

    async def create_or_send(
        self,
        id: str,
        params: Any,
        event_type: str,
        payload: Any = None,
        *,
        event_id: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> CreatedOrSent[Instance]:
        """Create the instance unless it exists, and deliver the event to it either way (signal-with-start).

        An instance this call creates starts with the event already buffered: both are one atomic
        write, so no crash can leave it without the event. An instance that exists is sent the
        event as by :meth:`Instance.send_event`. Callers racing on one new id get one instance,
        created by one of them, and each caller's event is delivered to it once.

        Args:
            id: the instance id.
            params: the instance's params if this call creates it (checked either way).
            event_type: the event's type, matched by ``wait_for_event``.
            payload: the event's payload.
            event_id: an idempotency key for the event: a call repeated with the same key (a retry
                after a timeout or a lost connection) does not deliver it again, as long as the
                instance still holds that event, buffered or taken by a wait (not after a restart,
                which forgets its events). Without one, every call is a new event, and retrying a
                call whose outcome is unknown may deliver it twice.
            trigger: the instance's recorded trigger if this call creates it (default ``{"source": "api"}``).

        Raises:
            InvalidInputError: an invalid id, event type, event id, params or payload (subclasses
                name which), checked before anything is written.
        """
        client = self._client
        check_instance_id(id, client.limits)
        data = _event_payload(event_type, payload, client.limits)
        where = BlobAddress(client._partition(self.name, id), self.name, id)
        data = await by_reference(client._store.blobs, where, data, client.limits.inline_threshold)
        event_id = _event_id(event_id)
        sent_ms = client.clock.now_ms()
        # The record an owner buffers for an event it receives (consumers/actor.py), so that an owner
        # that loads the instance takes this one exactly as if it had come as a message.
        record = pack({"type": event_type, "payload": unpack(data), "ts": sent_ms, "id": event_id})
        item = {"id": id, "params": params}
        with tracing.creating(self.name, 1) as traced:
            for _ in range(3):
                created = await self._create_rows(
                    [item], trigger or {"source": "api"}, skip_existing=True, trace=traced.traceparent, events=[record]
                )
                if created:
                    traced.created([id])
                    return CreatedOrSent(created[0], created=True, instance_finished=False)
                instance = Instance(client, self.name, id)
                meta = await client._store.read_meta(instance._partition, self.name, id)
                if meta is None:
                    continue  # gone since (its retention ended, or its creator undid it): create it
                await client._dispatcher.event(self.name, id, event_type, data, sent_ms, event_id)
                return CreatedOrSent(instance, created=False, instance_finished=meta["status"] in FINISHED)
        raise InstanceNotFound(self.name, id)  # created and deleted again three times over: give up

    async def create_batch(self, items: Sequence[dict[str, Any]]) -> list[Instance]:
        """Create 1 to 100 instances at once; ids that already exist are skipped (not returned).

        An empty batch is an error, as on Cloudflare.
        """
        if not items:
            raise InvalidInputError("create_batch needs at least one instance")
        if len(items) > self._client.limits.max_batch:
            raise BatchTooLarge(
                f"create_batch got {len(items)} instances; the limit is {self._client.limits.max_batch}"
            )
        return await self._create(list(items), {"source": "api"}, skip_existing=True)

    async def _create(
        self, items: list[dict[str, Any]], trigger: dict[str, Any], *, skip_existing: bool
    ) -> list[Instance]:
        # One trace per instance: it continues the caller's (an HTTP request, a queue message) and
        # every worker span of the instance continues the context stored here.
        with tracing.creating(self.name, len(items)) as traced:
            created = await self._create_rows(items, trigger, skip_existing=skip_existing, trace=traced.traceparent)
            traced.created([instance.id for instance in created])
            return created

    async def _create_rows(
        self,
        items: list[dict[str, Any]],
        trigger: dict[str, Any],
        *,
        skip_existing: bool,
        trace: str | None,
        events: list[bytes] | None = None,
    ) -> list[Instance]:
        """Create ``items``; ``events``, when given, are event records every one of them starts with."""
        client = self._client
        limits = client.limits
        now = client.clock.now_ms()
        rows: list[tuple[int, str, str, int, dict[str, Any]]] = []
        seen: set[str] = set()
        for item in items:
            unknown = set(item) - {"id", "params", "priority", "retention"}
            if unknown:
                raise InvalidInputError(
                    f"instance options {sorted(unknown)} are not known; use 'id', 'params', 'priority' and 'retention'"
                )
            iid = item.get("id")
            iid = str(uuid.uuid4()) if iid is None else check_instance_id(iid, limits)
            if iid in seen:
                raise InvalidInputError(f"instance id {iid!r} appears twice in one batch")
            seen.add(iid)
            data, params = encode_value(
                item.get("params"), what=f"params of instance {iid!r}", limit=limits.max_payload_bytes
            )
            check_depth(params, what=f"params of instance {iid!r}")
            fields = await self._creation_fields(iid, data, now, trigger, trace)
            if item.get("priority") is not None:
                fields[PRIORITY_FIELD] = pack(check_priority(item["priority"]))
            if item.get("retention") is not None:
                fields[RETENTION_FIELD] = pack(retention_of(item["retention"]).stored())
            rows.append((client._partition(self.name, iid), self.name, iid, now, fields))
        created = await client._store.create_many(rows, events=None if events is None else [events] * len(rows))
        fresh = [row for row, ok in zip(rows, created, strict=True) if ok]
        if not skip_existing and len(fresh) < len(rows):
            raise InstanceAlreadyExists(self.name, rows[0][2])
        if fresh:
            try:
                # An instance created with events starts from a load, which reads them: its start
                # message carries no fields to start it from (create.lua announces it by member only).
                await client._dispatcher.created(
                    [CreatedInstance(wf, iid, {} if events else fields) for _, wf, iid, _, fields in fresh]
                )
            except BaseException as exc:
                # The broker did not take the start messages: undo, so nothing is left queued
                # forever — except instances their owner already started from the create's
                # announcement, which run without one. Only if every instance runs did the call work.
                undone = [await client._store.delete_unstarted(p, wf, iid) for p, wf, iid, _, _ in fresh]
                if any(undone) or not isinstance(exc, Exception):
                    raise
                log.warning(
                    "%d instance(s) started from the create's announcement, but their start messages failed: %r",
                    len(fresh),
                    exc,
                )
        metrics.INSTANCES_CREATED.labels(self.name).inc(len(fresh))
        return [Instance(client, self.name, row[2]) for row in fresh]

    async def _creation_fields(
        self, instance_id: str, params: bytes, now_ms: int, trigger: dict[str, Any], trace: str | None
    ) -> dict[str, Any]:
        """:func:`creation_fields`, with large params stored before the create that refers to them commits."""
        client = self._client
        fields, ref = creation_fields(
            self.name, instance_id, params, now_ms, trigger, trace, client.limits.inline_threshold
        )
        if ref is not None:
            where = BlobAddress(client._partition(self.name, instance_id), self.name, instance_id)
            await client._store.blobs.put(where, ref, params)
        return fields

    async def get(self, id: str) -> Instance:
        """The instance with this id; raises :class:`InstanceNotFound`."""
        check_instance_id(id, self._client.limits)
        instance = Instance(self._client, self.name, id)
        await instance._meta()
        return instance

    async def list(
        self, status: Status | str | None = None, *, cursor: str | None = None, limit: int = 50
    ) -> InstancePage:
        """Instances newest first, optionally only those in ``status``, one page at a time."""
        if status is not None:
            status = Status(status)
        if not 1 <= limit <= 1000:
            raise InvalidInputError(f"limit {limit} must be between 1 and 1000")
        before = _parse_cursor(cursor)
        rows = await self._client._store.list_instances(
            self.name, status.value if status else None, before=before, limit=limit
        )
        ids = [iid for iid, _ in rows]
        next_cursor = f"{rows[-1][1]}:{rows[-1][0]}" if len(rows) == limit else None
        return InstancePage(instances=ids, cursor=next_cursor)


def creation_fields(
    workflow: str,
    instance_id: str,
    params: bytes,
    now_ms: int,
    trigger: dict[str, Any],
    trace: str | None,
    inline_threshold: int,
) -> tuple[dict[str, Any], BlobRef | None]:
    """The meta fields a new instance is written with: by a client, and by a partition owner for a child.

    Params over ``inline_threshold`` are recorded by reference (hutch.blobs): the meta holds the
    reference, and the caller stores ``params`` under it, in the instance's blob store, before
    the create commits. A blob whose create did not happen is harmless: one for an id that
    exists expires with that instance; one of an instance never created stays until its blob
    key is removed (see the README's claim check).

    Args:
        workflow: the workflow name.
        instance_id: the instance id.
        params: the params, already encoded (msgpack) and checked.
        now_ms: the creation time.
        trigger: what created it (``{"source": "api"}``, a cron, a queue, a parent workflow).
        trace: the W3C traceparent every span of the instance continues, if any.
        inline_threshold: the largest params kept in the meta itself (``Limits.inline_threshold``).

    Returns:
        The fields, and the reference to store ``params`` under (None: they are inline).
    """
    ref = large_ref(params, inline_threshold)
    fields: dict[str, Any] = {
        "wf": workflow,
        "id": instance_id,
        "status": Status.QUEUED.value,
        "seq": 0,
        "run": 0,
        "params": params if ref is None else ref.packed(),
        "created": now_ms,
        "trigger": pack(trigger),
    }
    if trace:
        fields[tracing.TRACE_META_FIELD] = pack(trace)
    return fields, ref


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if cursor is None:
        return None
    created, sep, iid = cursor.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInputError(f"cursor {cursor!r} is not one this API returned")
    return int(created), iid


class Instance:
    """A handle on one instance."""

    def __init__(self, client: Client, workflow: str, instance_id: str) -> None:
        self._client = client
        self.workflow = workflow
        self.id = instance_id
        self._partition = client._partition(workflow, instance_id)

    def __repr__(self) -> str:
        return f"Instance({self.workflow!r}, {self.id!r})"

    async def _meta(self) -> dict[str, Any]:
        meta = await self._client._store.read_meta(self._partition, self.workflow, self.id)
        if meta is None:
            raise InstanceNotFound(self.workflow, self.id)
        return meta

    async def status(self) -> InstanceStatus:
        """``{status, output, error}``; an output stored by reference (hutch.blobs) is loaded here."""
        status = status_from_meta(await self._meta())
        if isinstance(status.output, BlobRef):
            where = BlobAddress(self._partition, self.workflow, self.id)
            data = await fetch_blobs(self._client._store.blobs, where, [status.output])
            status = status.model_copy(update={"output": unpack(data[status.output.key])})
        return status

    async def describe(self) -> InstanceDetail:
        """The full detail: params, timestamps, output, error and every step with its attempts."""
        meta = await self._meta()
        store = self._client._store
        history = await store.history(self._partition, self.workflow, self.id)
        detail = build_detail(meta, history)
        wait = detail.waiting_for_slot
        if wait is not None:  # its place in the limit's queue, as of now
            key = None if wait.limit == "max_concurrency" else wait.key
            waiters = store.keys.limit_waiters(self.workflow, key)
            place = await store.redis.zrank(waiters, f"{self.workflow}:{self.id}")
            wait.position = None if place is None else int(place)  # type: ignore[arg-type]
        return detail

    async def pause(self, *, timeout: float | None = None) -> ControlAccepted:
        """Pause: ``waitingForPause`` while a step runs, then ``paused``.

        Waits up to ``timeout`` seconds (default ``Client.control_timeout``, 10 s) for the owner
        to apply it (see :class:`ControlAccepted`); raises :class:`IllegalTransition` for a
        finished instance.
        """
        return await self._control("pause", _PAUSABLE, lambda m: m["status"] in _PAUSED, timeout)

    async def resume(self, *, timeout: float | None = None) -> ControlAccepted:
        """Resume a paused instance (nothing to do for one that is not paused); like :meth:`pause` otherwise."""
        return await self._control("resume", _PAUSED, lambda m: m["status"] not in _PAUSED, timeout)

    async def terminate(self, *, rollback: bool = False, timeout: float | None = None) -> ControlAccepted:
        """Stop the instance for good; raises :class:`IllegalTransition` if it already finished.

        ``rollback``: first run the undos of its completed ``@step.with_rollback`` steps, last
        first, as durable steps (``rollback <step name>``, shown by ``describe()``; each receives a
        :class:`hutch.saga.TerminatedWithRollback`); it ends ``terminated`` once they all ran, with
        their errors as its error if some failed. Applied (``ControlAccepted.applied``) once the
        undos began.
        """
        if not rollback:
            return await self._control("terminate", _UNFINISHED, lambda m: m["status"] == Status.TERMINATED, timeout)
        return await self._control(
            "terminate",
            _UNFINISHED,
            lambda m: m["status"] == Status.TERMINATED or m.get("rollback") is not None,
            timeout,
            rollback=True,
        )

    async def restart(self, *, from_step: StepSpec | None = None, timeout: float | None = None) -> ControlAccepted:
        """Run again with the same params and timestamp, in any status: from the beginning, or from a step.

        ``from_step``: ``("charge", 1)`` (name and count, from 1), ``("wait", 1, "waitForEvent")``,
        a name (its first command) or a :class:`~hutch.restart.FromStep`. History keeps every
        record before that step's command, so replay returns the earlier steps' results without
        running them; that step and everything after it run again on the code version the
        instance ran. Raises :class:`StepNotInHistory` (nothing changed) when the current run
        never issued that step.
        """
        meta = await self._meta()
        before = meta.get("run", 0)
        step = None if from_step is None else from_step_of(from_step)
        if step is not None:
            history = await self._client._store.history(self._partition, self.workflow, self.id)
            if command_position(history, step) is None:
                raise StepNotInHistory(self.id, step.text(), meta["status"])
        return await self._control("restart", None, lambda m: m.get("run", 0) > before, timeout, from_step=step)

    async def send_event(self, type: str, payload: Any = None, *, event_id: str | None = None) -> EventAccepted:
        """Send an event; it is buffered until a matching ``wait_for_event`` takes it.

        ``event_id`` is an optional idempotency key, as for :meth:`WorkflowClient.create_or_send`:
        the instance ignores an event whose key it already holds (buffered, or taken by a wait).
        Returns whether the instance had already finished, in which case the event is ignored.
        """
        client = self._client
        data = _event_payload(type, payload, client.limits)
        event_id = _event_id(event_id)
        meta = await self._meta()
        if meta["status"] not in FINISHED:  # a finished one ignores it: nothing to store
            where = BlobAddress(self._partition, self.workflow, self.id)
            data = await by_reference(client._store.blobs, where, data, client.limits.inline_threshold)
        await client._dispatcher.event(self.workflow, self.id, type, data, client.clock.now_ms(), event_id)
        return EventAccepted(instance_finished=meta["status"] in FINISHED)

    async def wait(self, timeout: float = 60.0) -> InstanceStatus:
        """Wait until the instance is complete, errored or terminated; raises :class:`WaitTimeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        poll = 0.002
        status = await self.status()
        while not status.status.finished:
            remaining = deadline - loop.time()
            if remaining <= 0:
                status = await self.status()
                if status.status.finished:
                    break
                raise WaitTimeout(f"instance {self.id!r} is still {status.status.value} after {timeout} s")
            notified = await self._changed(min(remaining, poll))
            poll = min(poll * 2, 0.25)
            # A change notified with an unfinished status needs no read (in the embedded runtime a
            # long instance notifies on every step); a timeout, an unknown or a final status does.
            if notified is None or notified in FINISHED:
                status = await self.status()
        return status

    async def _changed(self, timeout: float) -> str | None:
        watch = self._client._watch
        if watch is not None:
            return await watch.changed(self.workflow, self.id, timeout)
        await asyncio.sleep(timeout)
        return None

    async def _control(
        self,
        action: Action,
        applies_to: frozenset[Status] | None,
        applied: Callable[[dict[str, Any]], bool],
        timeout: float | None,
        *,
        from_step: FromStep | None = None,
        rollback: bool = False,
    ) -> ControlAccepted:
        status = Status((await self._meta())["status"])
        if action != "restart" and status.finished:
            raise IllegalTransition(self.id, action, status.value)
        if applies_to is not None and status not in applies_to:
            return ControlAccepted(applied=True, status=status)  # already as asked
        await self._client._dispatcher.control(self.workflow, self.id, action, from_step=from_step, rollback=rollback)
        # Applied by the partition owner; return once it committed so status() sees the effect.
        # Without a live owner the request stays queued in the broker: say so rather than wait on.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._client.control_timeout if timeout is None else timeout)
        poll = 0.001
        while True:
            meta = await self._meta()
            status = Status(meta["status"])
            if applied(meta):
                return ControlAccepted(applied=True, status=status)
            if action != "restart" and status.finished:
                # It finished on its own first; its owner ignores the request.
                raise IllegalTransition(self.id, action, status.value)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ControlAccepted(applied=False, status=status)
            await self._changed(min(poll, remaining))
            poll = min(poll * 2, 0.1)


MAX_EVENT_ID_LENGTH = 200
"""The longest idempotency key ``create_or_send`` and ``send_event`` accept for an event."""


def _event_payload(event_type: object, payload: Any, limits: Limits) -> bytes:
    """An event's payload encoded for the wire, after checking its type and its size."""
    if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
        raise InvalidInputError(f"event type {event_type!r} must be a non-empty string of at most 100 characters")
    data, _ = encode_value(payload, what=f"payload of event {event_type!r}", limit=limits.max_payload_bytes)
    return data


def _event_id(event_id: object) -> str:
    """A caller's idempotency key for an event, checked; a new unique id when there is none."""
    if event_id is None:
        return uuid.uuid4().hex
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise InvalidInputError(
            f"event id {event_id!r} must be a non-empty string of at most {MAX_EVENT_ID_LENGTH} characters"
        )
    return event_id


_PAUSABLE = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING})
_PAUSED = frozenset({Status.PAUSED, Status.WAITING_FOR_PAUSE})
_UNFINISHED = _PAUSABLE | _PAUSED


def bindings(client: Client, workflows: Iterable[str], names: dict[str, str]) -> dict[str, Any]:
    """``self.env`` bindings: each workflow's client under its binding name."""
    return {names.get(name) or default_binding_name(name): client.workflow(name) for name in workflows}
