"""Every Redis key Hutch uses, built in one place.

All keys of an instance live under its partition's hash tag (``{p7}``), together with the
partition's timers, active set, owner token and status indexes, so the one-script commit of a
transition stays in one slot on Redis Cluster. The partition count is therefore fixed for a
deployment (like Temporal's history shard count); it is recorded under :meth:`Keys.config`.
A namespace (default ``hutch``) prefixes everything, so several deployments or test runs can
share one Redis. The announcements (created and finished instances, every commit of a watched
instance) go to per-partition sharded pub/sub channels under the same tag, so on a cluster each is
published and heard on the node that holds its partition, not broadcast to every node. Only
:meth:`Keys.config`, :meth:`Keys.workflows` and the membership keys (:meth:`Keys.workers`,
:meth:`Keys.handovers`, :meth:`Keys.departures`) are namespace-wide; no script or transaction
writes them together with a partition's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from hutch.status import Status

ALL = "all"
"""Pseudo-status whose index lists every instance of a workflow."""

INDEXED_STATUSES: tuple[str, ...] = (*(s.value for s in Status), ALL)
"""Every status a status index may exist for (those an instance can be in, and :data:`ALL`)."""

FINISHED_SUFFIX = ":finished"
"""What follows a partition's prefix (``<namespace>:{pN}``) in its finished channel (:meth:`Keys.finished_channel`)."""

CREATED_SUFFIX = ":created"
"""What follows a partition's prefix in its created channel (:meth:`Keys.created_channel`)."""

CHANGED_SUFFIX = ":changed"
"""What follows a partition's prefix in its changed channel (:meth:`Keys.changed_channel`)."""

EVENTS_SUFFIX = ":events"
"""What follows a partition's prefix in its events channel (:meth:`Keys.events_channel`)."""


def instance_member(workflow: str, instance_id: str) -> str:
    """How an instance is named inside partition sets (neither part may contain ':')."""
    return f"{workflow}:{instance_id}"


@dataclass(frozen=True, slots=True)
class PartitionSet:
    """A partition-wide set or sorted set whose members each name one instance of the partition.

    Attributes:
        key: the key.
        scored: a sorted set (the scores mean something and must be kept), else a plain set.
        timers: members are packed timer ids (msgpack ``[kind, workflow, instance id, ...]``);
            otherwise they are :func:`instance_member` names.
        names_every_instance: every instance of the partition (of the set's workflow) is a member.
    """

    key: str
    scored: bool
    timers: bool = False
    names_every_instance: bool = False


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one namespace."""

    namespace: str = "hutch"

    def _tag(self, partition: int) -> str:
        return f"{self.namespace}:{{p{partition}}}"

    def meta(self, partition: int, workflow: str, instance_id: str) -> str:
        """Hash with the instance's status, params, output, timestamps and sequence number."""
        return f"{self._tag(partition)}:i:{workflow}:{instance_id}:meta"

    def history(self, partition: int, workflow: str, instance_id: str) -> str:
        """List of the instance's history records (msgpack)."""
        return f"{self._tag(partition)}:i:{workflow}:{instance_id}:hist"

    def event_buffer(self, partition: int, workflow: str, instance_id: str) -> str:
        """List of events received before a matching wait (msgpack, FIFO)."""
        return f"{self._tag(partition)}:i:{workflow}:{instance_id}:evbuf"

    def blobs(self, partition: int, workflow: str, instance_id: str) -> str:
        """Hash of the instance's values stored by reference (field: the blob key; hutch.blobs).

        commit.lua expires it with the instance, building it from the history key: it must differ
        from :meth:`history` only by its ``:blobs`` suffix.
        """
        return f"{self._tag(partition)}:i:{workflow}:{instance_id}:blobs"

    def instance_keys(self, partition: int, workflow: str, instance_id: str) -> tuple[str, ...]:
        """Every key holding the instance's own data: what moving it to another partition takes.

        A key added per instance must be added here, or a repartition leaves it behind.
        """
        return (
            self.meta(partition, workflow, instance_id),
            self.history(partition, workflow, instance_id),
            self.event_buffer(partition, workflow, instance_id),
            self.blobs(partition, workflow, instance_id),
        )

    def timers(self, partition: int) -> str:
        """Sorted set of the partition's due timers (member: packed timer id, score: due epoch ms)."""
        return f"{self._tag(partition)}:timers"

    def active(self, partition: int) -> str:
        """Set of the partition's instances a new owner must re-drive (queued/running/waitingForPause).

        create.lua builds the partition's created channel from this key's prefix, so it must end in
        ``:active``.
        """
        return f"{self._tag(partition)}:active"

    def owner(self, partition: int) -> str:
        """The fencing token of the partition's current owner."""
        return f"{self._tag(partition)}:owner"

    def status_index(self, partition: int, workflow: str, status: str) -> str:
        """Sorted set of a workflow's instances in one status (score: creation epoch ms)."""
        return f"{self._tag(partition)}:idx:{workflow}:{status}"

    def retention(self, partition: int) -> str:
        """Sorted set of the partition's finished instances (member: instance, score: epoch ms their retention ends).

        Their data keys expire by themselves; this set is how a commit finds, without scanning, the
        status index entries they leave behind. commit.lua builds the instance keys of a member it
        prunes from this key's prefix (``<namespace>:{pN}``), so it must end in ``:retention`` and
        the meta and status index keys above must keep their layout.
        """
        return f"{self._tag(partition)}:retention"

    def watched(self, partition: int) -> str:
        """Sorted set of the partition's instances someone follows live (score: epoch ms the mark lapses).

        A commit of a member announces itself on :meth:`changed_channel`; nothing else is announced
        per commit. Written only by followers (a gateway's dashboard, :mod:`hutch.commits`), which
        keep their marks fresh and let them lapse: the key expires when none is refreshed, so it is
        no partition set a repartition moves (a follower marks the instance again at its new place).
        """
        return f"{self._tag(partition)}:watched"

    def partition_sets(self, partition: int, workflows: Iterable[str]) -> list[PartitionSet]:
        """Every partition-wide key whose members name instances, for these workflow names.

        The same position holds the same set in every partition's list, so ``partition_sets(q,
        ...)[i]`` is where an entry of ``partition_sets(p, ...)[i]`` goes when its instance moves
        from ``p`` to ``q``. The one other partition key, :meth:`owner`, names no instance: a
        partition's next owner writes it. A partition-wide key added here must be listed, or a
        repartition leaves its entries behind.
        """
        sets = [
            PartitionSet(self.timers(partition), scored=True, timers=True),
            PartitionSet(self.active(partition), scored=False),
            PartitionSet(self.retention(partition), scored=True),
        ]
        for workflow in sorted(set(workflows)):
            for status in INDEXED_STATUSES:
                index = self.status_index(partition, workflow, status)
                sets.append(PartitionSet(index, scored=True, names_every_instance=status == ALL))
        return sets

    def workflows(self) -> str:
        """Set of workflow names that have instances."""
        return f"{self.namespace}:workflows"

    def finished_channel(self, partition: int) -> str:
        """Sharded pub/sub channel on which commits announce the partition's instances reaching a final status.

        Published (``SPUBLISH``) by commit.lua, which builds it from the partition's prefix and
        :data:`FINISHED_SUFFIX`: on Redis Cluster a script's shard channel must hash to the script's
        slot, and the partition's hash tag sees to that.
        """
        return f"{self._tag(partition)}{FINISHED_SUFFIX}"

    def created_channel(self, partition: int) -> str:
        """Sharded pub/sub channel on which creates announce the partition's new instances (its owner starts them).

        Published by create.lua, built like :meth:`finished_channel` (:data:`CREATED_SUFFIX`).
        """
        return f"{self._tag(partition)}{CREATED_SUFFIX}"

    def changed_channel(self, partition: int) -> str:
        """Sharded pub/sub channel on which commits announce each commit of a :meth:`watched` instance.

        Published by commit.lua, built like :meth:`finished_channel` (:data:`CHANGED_SUFFIX`); a
        message is ``<seq> <member>``: the instance's sequence number after the commit, then its
        :func:`instance_member` name.
        """
        return f"{self._tag(partition)}{CHANGED_SUFFIX}"

    def events_channel(self, partition: int) -> str:
        """Sharded pub/sub channel on which senders announce events to the partition's instances (for its owner).

        Published by the client next to the event's broker message, which stays the durable path
        (hutch.store.announcements.EventNotice).
        """
        return f"{self._tag(partition)}{EVENTS_SUFFIX}"

    def limit_holders(self, workflow: str, key: str | None) -> str:
        """Hash of the instances holding a slot of a concurrency limit (field: instance, value: owner's token).

        ``key`` None is the workflow-wide limit, else the value of its ``concurrency_key``. Each
        limit has its own hash tag (not a partition's): its instances are spread over every
        partition, so taking a slot is a script on the limit's slot, apart from the instance's commit.
        """
        return f"{self._limit_tag(workflow, key)}:holders"

    def limit_waiters(self, workflow: str, key: str | None) -> str:
        """Sorted set of the instances waiting for a slot of a limit (score: hutch.concurrency.waiter_score)."""
        return f"{self._limit_tag(workflow, key)}:waiters"

    def _limit_tag(self, workflow: str, key: str | None) -> str:
        if key is None:
            return f"{self.namespace}:{{limit:{workflow}}}"
        # A brace would end the hash tag early: such a key is named by its digest.
        safe = key if "{" not in key and "}" not in key else "#" + hashlib.sha256(key.encode()).hexdigest()[:24]
        return f"{self.namespace}:{{limit:{workflow}:k:{safe}}}"

    def workers(self) -> str:
        """Sorted set of live workers' heartbeats (score: last heartbeat epoch ms)."""
        return f"{self.namespace}:workers"

    def worker_feature(self, feature: str) -> str:
        """Sorted set of the live workers that have ``feature`` (score: last heartbeat epoch ms, as :meth:`workers`).

        Kept with the heartbeat by workers of the version that has it: a sender checks that every
        worker in :meth:`workers` is here before it sends what older workers could not read.
        """
        return f"{self.namespace}:workers:{feature}"

    def handovers(self) -> str:
        """Hash of handover requests: partition → ``<worker id>|<holder's token>`` (consumers/membership.py)."""
        return f"{self.namespace}:handovers"

    def departures(self) -> str:
        """Hash of workers whose broker connection was seen closing: worker id → when (epoch ms)."""
        return f"{self.namespace}:departures"

    def bulk_jobs(self) -> str:
        """Sorted set of bulk jobs not finished yet (member: job id, score: created epoch ms; hutch.bulk)."""
        return f"{self.namespace}:bulk"

    def bulk_job(self, job_id: str) -> str:
        """Hash of a bulk job: its action, filter, state, progress and checkpoint.

        A job's keys share its own hash tag (``{bulk:<id>}``), so its checkpoint script stays in one slot.
        """
        return f"{self.namespace}:{{bulk:{job_id}}}:job"

    def bulk_items(self, job_id: str) -> str:
        """List of the instances a bulk job acts on (members ``workflow:id``), in the search's order."""
        return f"{self.namespace}:{{bulk:{job_id}}}:items"

    def bulk_marks(self, job_id: str) -> str:
        """Hash of the instances a bulk restart asked to restart: member → its run number before."""
        return f"{self.namespace}:{{bulk:{job_id}}}:marks"

    def bulk_failures(self, job_id: str) -> str:
        """List of a bulk job's failures (JSON ``{"workflow", "id", "reason"}``), the first ones only."""
        return f"{self.namespace}:{{bulk:{job_id}}}:failures"

    def bulk_lease(self, job_id: str) -> str:
        """The token of the process running a bulk job (expires unless renewed: a crashed runner's job is taken)."""
        return f"{self.namespace}:{{bulk:{job_id}}}:lease"

    def config(self) -> str:
        """Deployment-wide settings every process must agree with (partition count, limits).

        While ``hutch admin repartition`` runs, its progress is recorded here too (field
        ``repartition``), and no process starts.
        """
        return f"{self.namespace}:config"
