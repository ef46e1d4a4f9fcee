"""Live instance pages: one reader per watched instance, however many browsers watch it.

Each instance shown on an open instance page has one follower task, which reads the instance's
detail (``describe()``) once per change of the instance and hands the new snapshot to every page
watching it, as a server-sent event. What tells it of a change depends on the client:

* ``hutch dev`` (embedded, or a client colocated with its worker): the worker notifies the client's
  :class:`~hutch.watch.InstanceWatch` on every commit. The follower then reads the instance's
  ``seq`` (a counter every commit bumps: one ``HGET``) and, when it moved, the detail.
* ``hutch gateway`` (a remote client): the client's watch hears only final statuses, so the
  follower follows the instance's commits through the client's :class:`~hutch.commits.CommitFeed`:
  it marks the instance as watched in Redis and subscribes to its partition's changed channel, and
  the commit script then publishes every commit of that instance, with its new ``seq`` (and of no
  instance that nobody follows: an unwatched workflow's steps cost what they did). The follower
  reads the detail once per announced commit, and nothing while the instance is idle.
* A client with neither re-reads ``seq`` every :attr:`LiveInstances.poll_s`: one small read per
  second per watched instance, not per viewer, and one ``describe()`` per change.

Pub/sub can lose a message (a dropped connection), so where changes are pushed the follower also
re-reads ``seq`` every :attr:`LiveInstances.quiet_s` (30 s) as a safety net. Behind ``hutch
gateway`` it re-reads every :attr:`LiveInstances.poll_s` instead while the partition's channel is
not heard as of its last read (the subscription not confirmed yet, or lost and being made again)
or a worker of an earlier version, which does not announce commits, is live (a rolling deploy);
and each read also refreshes the instance's watched mark, which lapses two minutes after the last
page of the last gateway following the instance closed. Several gateways may follow one
instance: each hears its commits and reads them once. The follower stops when the last page
watching the instance on this gateway goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from hutch import Client
from hutch.cancelling import cancel_and_wait, cancel_requested
from hutch.errors import InstanceNotFound

log = logging.getLogger("hutch.dashboard")

CLOSE_TIMEOUT_S = 5.0
"""How long a stopping follower may take (a read in flight)."""

Snapshot = Callable[[str, str], Awaitable[dict[str, object]]]
"""Reads the JSON-ready snapshot a page shows of (workflow, instance id)."""


@dataclass(eq=False)
class _Followed:
    viewers: set[asyncio.Queue[str]] = field(default_factory=set)
    latest: str | None = None
    task: asyncio.Task[None] | None = None
    seq: int | None = None  # the instance's seq when its snapshot was last read (its read began)
    reading: bool = False  # a snapshot read is under way


class LiveInstances:
    """The followers of the instances open in dashboards; see the module docstring.

    Args:
        client: the gateway's client.
        snapshot: builds the page's view of an instance (its detail, diagram states...).
        poll_s: between ``seq`` reads when nothing tells the follower of each commit; also the
            pause after a failed read.
        quiet_s: between ``seq`` reads when commits are notified or announced (a safety net: a
            notification can be lost).
    """

    def __init__(self, client: Client, snapshot: Snapshot, *, poll_s: float = 1.0, quiet_s: float = 30.0) -> None:
        self._client = client
        self._snapshot = snapshot
        self.poll_s = poll_s
        self.quiet_s = quiet_s
        self._followed: dict[tuple[str, str], _Followed] = {}
        self.snapshots_read = 0  # describe() calls made, for tests and the curious
        self.seq_reads = 0  # reads of an instance's seq (with its watched mark, where commits are announced)

    @property
    def hears_every_commit(self) -> bool:
        """Whether the client's watch is notified by this process's worker on every commit."""
        watch = self._client._watch
        orchestrator = getattr(self._client.runtime_worker, "orchestrator", None)
        return watch is not None and getattr(orchestrator, "watch", None) is watch

    @property
    def fed_by(self) -> str:
        """What tells the followers of a change: ``worker`` (notified), ``announcements`` (pub/sub) or ``polling``."""
        if self.hears_every_commit:
            return "worker"
        return "announcements" if self._client._commits is not None else "polling"

    async def stream(self, workflow: str, instance_id: str) -> AsyncIterator[str]:
        """The instance's snapshots as JSON text: the current one first, then one per change."""
        key = (workflow, instance_id)
        followed = self._followed.setdefault(key, _Followed())
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        followed.viewers.add(queue)
        if followed.latest is not None:
            queue.put_nowait(followed.latest)
        if followed.task is None:
            follow = self._follow_commits if self.fed_by == "announcements" else self._follow
            followed.task = asyncio.get_running_loop().create_task(follow(key, followed), name="hutch-live")
        try:
            while True:
                yield await queue.get()
        finally:
            followed.viewers.discard(queue)
            if not followed.viewers:
                self._followed.pop(key, None)
                if followed.task is not None:
                    await cancel_and_wait(followed.task, CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        """Stop every follower (the app is shutting down)."""
        tasks = [f.task for f in self._followed.values() if f.task is not None]
        self._followed.clear()
        for task in tasks:
            await cancel_and_wait(task, CLOSE_TIMEOUT_S)

    async def _follow(self, key: tuple[str, str], followed: _Followed) -> None:
        """Notified by this process's worker (or polling): read ``seq`` on each wake, the detail when it moved."""
        workflow, instance_id = key
        watch = self._client._watch
        store = self._client._store
        meta_key = store.keys.meta(self._client._partition(workflow, instance_id), workflow, instance_id)
        wait_s = self.quiet_s if self.hears_every_commit else self.poll_s
        last_seq: object = object()
        while not cancel_requested():  # redis-py can swallow a cancellation (see hutch.cancelling)
            # Waiting starts before the read, so a commit between the read and the wait is not missed.
            changed = (
                asyncio.ensure_future(watch.changed(workflow, instance_id, wait_s))
                if watch is not None
                else asyncio.ensure_future(asyncio.sleep(wait_s))
            )
            try:
                self.seq_reads += 1
                seq = await store.redis.hget(meta_key, "seq")
                if seq != last_seq:
                    last_seq = seq
                    await self._show(followed, workflow, instance_id, None if seq is None else int(seq))
                await changed
            except Exception:  # a store hiccup: the page keeps its last snapshot; try again
                log.warning("live view of %s/%s: read failed", workflow, instance_id, exc_info=True)
                await asyncio.sleep(self.poll_s)
            finally:
                if not changed.done():
                    changed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await changed

    async def _follow_commits(self, key: tuple[str, str], followed: _Followed) -> None:
        """Every commit announced by the store (a remote client): the detail once per announced ``seq``."""
        workflow, instance_id = key
        commits = self._client._commits
        assert commits is not None
        partition = self._client._partition(workflow, instance_id)
        while not cancel_requested():  # redis-py can swallow a cancellation (see hutch.cancelling)
            try:
                self.seq_reads += 1  # follow() marks the instance and reads its seq
                async with commits.follow(partition, workflow, instance_id) as following:
                    shown: object = object()
                    while not cancel_requested():
                        if following.seq != shown:
                            shown = following.seq
                            await self._show(followed, workflow, instance_id, following.seq)
                        # A commit announced while the detail was read wakes this at once. Until the
                        # channel is heard (its subscription confirmed), poll; the mark must not lapse.
                        wait_s = min(self.quiet_s, commits.mark_ttl_s / 2) if following.heard else self.poll_s
                        if not await following.changed(wait_s):
                            self.seq_reads += 1
                            await following.check()
            except Exception:  # a store or pub/sub hiccup: the page keeps its last snapshot; try again
                log.warning("live view of %s/%s: following failed", workflow, instance_id, exc_info=True)
                await asyncio.sleep(self.poll_s)

    async def _show(self, followed: _Followed, workflow: str, instance_id: str, seq: int | None) -> None:
        """Read the instance's snapshot (at ``seq`` or later) and hand it to the pages watching it, if it changed."""
        followed.seq, followed.reading = seq, True
        try:
            text = await self._read(workflow, instance_id)
        finally:
            followed.reading = False
        if text != followed.latest:
            followed.latest = text
            for queue in followed.viewers:
                _replace(queue, text)

    async def _read(self, workflow: str, instance_id: str) -> str:
        self.snapshots_read += 1
        try:
            return json.dumps(await self._snapshot(workflow, instance_id), default=str)
        except InstanceNotFound as exc:
            return json.dumps({"gone": str(exc)})


def _replace(queue: asyncio.Queue[str], text: str) -> None:
    """Put ``text`` in a one-slot queue, dropping a snapshot the page has not taken yet (it is stale)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(text)
