"""Live instance pages: one reader per watched instance, however many browsers watch it.

Each instance shown on an open instance page has one follower task. It reads the instance's
``seq`` (a counter every commit of the instance bumps: one ``HGET``), and only when that changed
reads the instance's detail (``describe()``) and hands the new snapshot to every page watching
it, which receives it as a server-sent event. Between reads the follower waits on the client's
:class:`~hutch.watch.InstanceWatch`:

* In ``hutch dev`` (embedded) the worker notifies that watch on every commit, so an instance costs
  one ``seq`` read and one ``describe()`` per change, and nothing while it does not change (a
  safety re-read every :attr:`LiveInstances.quiet_s`).
* A client whose watch hears only final statuses (``hutch gateway``: Redis pub/sub announces
  finishes, not every commit), or that has none, re-reads ``seq`` every
  :attr:`LiveInstances.poll_s`: one small read per second per watched instance, not per viewer,
  and still one ``describe()`` per change.

The follower stops when the last page watching the instance goes away.
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


class LiveInstances:
    """The followers of the instances open in dashboards; see the module docstring.

    Args:
        client: the gateway's client.
        snapshot: builds the page's view of an instance (its detail, diagram states...).
        poll_s: between ``seq`` reads when the client's watch does not hear every commit.
        quiet_s: between ``seq`` reads when it does (a safety net: a notification can be lost).
    """

    def __init__(self, client: Client, snapshot: Snapshot, *, poll_s: float = 1.0, quiet_s: float = 30.0) -> None:
        self._client = client
        self._snapshot = snapshot
        self.poll_s = poll_s
        self.quiet_s = quiet_s
        self._followed: dict[tuple[str, str], _Followed] = {}
        self.snapshots_read = 0  # describe() calls made, for tests and the curious

    @property
    def hears_every_commit(self) -> bool:
        """Whether the client's watch is notified by this process's worker on every commit."""
        watch = self._client._watch
        orchestrator = getattr(self._client.runtime_worker, "orchestrator", None)
        return watch is not None and getattr(orchestrator, "watch", None) is watch

    async def stream(self, workflow: str, instance_id: str) -> AsyncIterator[str]:
        """The instance's snapshots as JSON text: the current one first, then one per change."""
        key = (workflow, instance_id)
        followed = self._followed.setdefault(key, _Followed())
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        followed.viewers.add(queue)
        if followed.latest is not None:
            queue.put_nowait(followed.latest)
        if followed.task is None:
            followed.task = asyncio.get_running_loop().create_task(self._follow(key, followed), name="hutch-live")
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
                seq = await store.redis.hget(meta_key, "seq")
                if seq != last_seq:
                    last_seq = seq
                    text = await self._read(workflow, instance_id)
                    if text != followed.latest:
                        followed.latest = text
                        for queue in followed.viewers:
                            _replace(queue, text)
                await changed
            except Exception:  # a store hiccup: the page keeps its last snapshot; try again
                log.warning("live view of %s/%s: read failed", workflow, instance_id, exc_info=True)
                await asyncio.sleep(self.poll_s)
            finally:
                if not changed.done():
                    changed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await changed

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
