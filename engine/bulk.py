"""Bulk actions by filter: terminate, restart, pause, resume or delete every instance a search matches (SPEC §12).

A bulk job is a record in Redis (:meth:`Keys.bulk_job` and its sibling keys, under the job's own
hash tag), advanced in batches by a :class:`BulkRunner` (in the process that accepted the job — a
gateway, or any client — or in any other process running one). It goes through two phases:

1. *collecting*: the search is run page by page and the matching instances appended to the job's
   item list, the search cursor checkpointed with each page; the total is then exact and the set
   fixed (instances created later are not acted on).
2. *running*: items are taken a batch at a time; after each batch one script records the
   outcomes (done, failed, the first failures) and the new position together.

Each write of a runner is fenced by its lease (:meth:`Keys.bulk_lease`), renewed with every
checkpoint: a runner that crashed (or stalled past its lease) loses the job to the next runner, which
resumes from the last checkpoint and redoes at most the batch in flight. Every action is idempotent
so that redoing it is harmless — terminate, pause and resume of an instance already so are no-ops
at its owner, a delete of a deleted instance finds nothing — except restart, which would run an
instance from the start again: a restart is marked per job and instance with its run number then
before it is sent, and fenced to that run (applied only while the instance is still on it). A
redone batch counts the marked restarts that were applied (the run moved on) and sends the others
again, fenced: one the dead runner did send is applied once, whichever copy comes first. (Sent one
message per instance, while a worker predating ``ControlBatch`` runs, a restart carries no fence: a
redone batch then never sends it again and waits for it to be applied.) While a batch is acted on,
its runner renews its lease (for at most ``HOLD_S``), so a slow batch is not taken over by another
runner while this one still works on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from hutch.dispatch import CONTROL_BATCH
from hutch.errors import BulkJobNotFound, InvalidInputError, WaitTimeout
from hutch.search import SearchFilter
from hutch.status import FINISHED, Action
from pydantic import BaseModel
from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from hutch.client import Client
    from hutch.keys import Keys
    from hutch.store.base import CheckpointStore
    from redis.asyncio import Redis

log = logging.getLogger("hutch.bulk")

BulkAction = Literal["terminate", "restart", "pause", "resume", "delete"]
"""What a bulk job does to each instance."""

BULK_ACTIONS: tuple[str, ...] = ("terminate", "restart", "pause", "resume", "delete")

BATCH = 2000
"""Instances acted on between two checkpoints (a crash redoes at most these)."""

MAX_IDS = 5000
"""The most instances a job over given ids may name (``Client.bulk(ids=...)``)."""

FAILURES_KEPT = 100
"""How many failures a job records (with their reasons); the count covers them all."""

APPLY_WAIT_S = 10.0
"""How long a delete waits for the instances it terminated, and a redone restart for its earlier request
(sent one message per instance, unfenced: a worker predates ``ControlBatch``)."""

HOLD_S = 120.0
"""The longest a runner keeps renewing its lease while it acts on one batch (a stuck one is then taken over)."""


def check_action(action: object) -> BulkAction:
    """A bulk action, checked."""
    if action not in BULK_ACTIONS:
        raise InvalidInputError(f"bulk action {action!r} must be one of {', '.join(BULK_ACTIONS)}")
    return action  # type: ignore[return-value]


class BulkState(StrEnum):
    """Where a bulk job is."""

    COLLECTING = "collecting"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


ACTIVE = frozenset({BulkState.COLLECTING, BulkState.RUNNING})


class BulkFailure(BaseModel):
    """An instance a bulk job could not act on, and why."""

    workflow: str
    id: str
    reason: str


class BulkProgress(BaseModel):
    """A bulk job's record.

    Attributes:
        id: the job id.
        action: what it does to each instance.
        filter: which instances (a search filter, fixed when the job was created).
        state: collecting (running the search), running, done or cancelled.
        total: instances the search matched (grows while collecting).
        done: instances handled: acted on, or nothing to do (terminating a terminated instance).
        skipped: of those, the ones with nothing to do.
        failed: instances that could not be acted on (see ``failures``, the first 100).
        created_ms: when the job was created (epoch ms).
        updated_ms: its last checkpoint (epoch ms).
    """

    id: str
    action: BulkAction
    filter: SearchFilter
    state: BulkState
    total: int
    done: int
    skipped: int
    failed: int
    created_ms: int
    updated_ms: int
    failures: list[BulkFailure] = []

    @property
    def finished(self) -> bool:
        """Whether the job is done or cancelled."""
        return self.state not in ACTIVE


# Fenced by the lease: KEYS job, lease, items, failures; ARGV token, lease ms, now ms, then the fields.
_CHECKPOINT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
local what = ARGV[4]
if what == 'page' then
  -- ARGV 5 the next search cursor ('' = the search is complete), 6.. the members found
  if state ~= 'collecting' then return -2 end
  if #ARGV > 5 then
    redis.call('RPUSH', KEYS[3], unpack(ARGV, 6))
    redis.call('HINCRBY', KEYS[1], 'total', #ARGV - 5)
  end
  redis.call('HSET', KEYS[1], 'scursor', ARGV[5])
  if ARGV[5] == '' then redis.call('HSET', KEYS[1], 'state', 'running') end
else
  -- ARGV 5 new position, 6 done, 7 skipped, 8 failed, 9 failures kept at most, 10.. failure records
  if state ~= 'running' and state ~= 'cancelled' then return -2 end
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[8])
  redis.call('HSET', KEYS[1], 'pos', ARGV[5])
  local room = tonumber(ARGV[9]) - redis.call('LLEN', KEYS[4])
  for i = 10, math.min(#ARGV, 9 + room) do redis.call('RPUSH', KEYS[4], ARGV[i]) end
  if state == 'running' and tonumber(ARGV[5]) >= redis.call('LLEN', KEYS[3]) then
    redis.call('HSET', KEYS[1], 'state', 'done'); state = 'done'
  end
end
redis.call('HSET', KEYS[1], 'updated', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if state == 'running' or state == 'collecting' then return 1 end
return 0
"""

# KEYS job, marks; ARGV member, run, member, run... Marks the restarts not marked yet; 1 where it marked.
_MARK = """
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
return out
"""

# KEYS job, items; ARGV n, then n record fields and values, then the members. A job over given instances.
_CREATE_GIVEN = """
local n = tonumber(ARGV[1])
redis.call('RPUSH', KEYS[2], unpack(ARGV, n + 2))
redis.call('HSET', KEYS[1], unpack(ARGV, 2, n + 1))
return 1
"""

# KEYS the meta hashes of instances of one partition (one hash tag). Each one's status and run, as one
# string ("<status> <run>" lines; an absent instance's status is empty): a reply parsed at once, where
# a pipeline of HMGETs costs the runner a parse per instance.
_METAS = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'status', 'run')
  out[i] = (v[1] or '') .. ' ' .. (v[2] or '0')
end
return table.concat(out, '\\n')
"""

# KEYS lease; ARGV token, lease ms. Renews the lease if it is still this runner's; 1 if it did.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS lease; ARGV token. Releases the lease if it is still this runner's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

JOB_TTL_S = 86_400
"""A finished job's record is kept this long."""


class BulkJobs:
    """The bulk job records of one deployment: create, read, cancel (the runner advances them)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.redis: Redis = store.redis
        self.keys: Keys = store.keys
        self._checkpoint = self.redis.register_script(_CHECKPOINT)
        self._mark = self.redis.register_script(_MARK)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._create_given = self.redis.register_script(_CREATE_GIVEN)
        self._metas = self.redis.register_script(_METAS)

    async def create(
        self, action: str, where: SearchFilter, now_ms: int, *, members: Sequence[str] | None = None
    ) -> str:
        """Record a new job; its id.

        Args:
            action: what to do to each instance.
            where: the search filter choosing the instances.
            now_ms: the creation time.
            members: instances given as ``workflow:id`` instead of a search: the job starts running on
                exactly these (``where`` then only describes them); None: the search is run.
        """
        check_action(action)
        job_id = uuid.uuid4().hex
        given = list(dict.fromkeys(members)) if members is not None else None
        record: dict[str | bytes, str | int] = {
            "action": action,
            "filter": where.model_dump_json(exclude_none=True),
            "state": (BulkState.COLLECTING if given is None else BulkState.RUNNING).value,
            "total": 0 if given is None else len(given),
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "pos": 0,
            "scursor": "",
            "created": now_ms,
            "updated": now_ms,
        }
        if given:  # the items and the record in one script (one hash tag): never running without its items
            fields = [x for pair in record.items() for x in pair]
            await self._create_given(
                [self.keys.bulk_job(job_id), self.keys.bulk_items(job_id)], [len(fields), *fields, *given]
            )
        else:
            await self.redis.hset(self.keys.bulk_job(job_id), mapping=record)  # type: ignore[arg-type]
        await self.redis.zadd(self.keys.bulk_jobs(), {job_id: now_ms})
        return job_id

    async def read(self, job_id: str) -> BulkProgress:
        """The job's record; raises :class:`BulkJobNotFound`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.bulk_job(job_id))
        pipe.lrange(self.keys.bulk_failures(job_id), 0, -1)
        raw, failures = await pipe.execute()
        if not raw:
            raise BulkJobNotFound(job_id)
        f = {_text(k): _text(v) for k, v in raw.items()}
        return BulkProgress(
            id=job_id,
            action=check_action(f["action"]),
            filter=SearchFilter.model_validate_json(f["filter"]),
            state=BulkState(f["state"]),
            total=int(f["total"]),
            done=int(f["done"]),
            skipped=int(f["skipped"]),
            failed=int(f["failed"]),
            created_ms=int(f["created"]),
            updated_ms=int(f["updated"]),
            failures=[BulkFailure.model_validate_json(x) for x in failures],
        )

    async def cancel(self, job_id: str) -> BulkProgress:
        """Stop the job: no batch starts after this; a finished job is left as it is."""
        progress = await self.read(job_id)
        if not progress.finished:
            await self.redis.hset(self.keys.bulk_job(job_id), "state", BulkState.CANCELLED.value)
            await self._finished(job_id)
        return await self.read(job_id)

    async def active(self) -> list[str]:
        """Ids of the jobs not finished, oldest first."""
        return [_text(i) for i in await self.redis.zrange(self.keys.bulk_jobs(), 0, -1)]

    async def _finished(self, job_id: str) -> None:
        await self.redis.zrem(self.keys.bulk_jobs(), job_id)
        for key in (self.keys.bulk_job(job_id), self.keys.bulk_failures(job_id)):
            await self.redis.expire(key, JOB_TTL_S)
        await self.redis.delete(self.keys.bulk_items(job_id), self.keys.bulk_marks(job_id))


@dataclass(slots=True)
class _Outcomes:
    done: int = 0
    skipped: int = 0
    failures: list[BulkFailure] | None = None

    def skip(self) -> None:
        self.done += 1
        self.skipped += 1

    def fail(self, workflow: str, iid: str, reason: str) -> None:
        if self.failures is None:
            self.failures = []
        self.failures.append(BulkFailure(workflow=workflow, id=iid, reason=reason))


class BulkRunner:
    """Advances bulk jobs: the ones this process creates at once, and any whose runner's lease ran out.

    Args:
        client: the client whose store and broker the actions go through.
        lease_s: how long a job stays this runner's without a checkpoint; another runner takes a
            job whose runner crashed after this long.
        poll_s: how often it looks for jobs whose runner is gone.
        batch: instances per checkpoint.
    """

    def __init__(self, client: Client, *, lease_s: float = 15.0, poll_s: float = 1.0, batch: int = BATCH) -> None:
        self.client = client
        self.jobs = BulkJobs(client._store)
        self.lease_ms = int(lease_s * 1000)
        self.poll_s = poll_s
        self.batch = batch
        self.token = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._running: set[str] = set()

    def wake(self) -> None:
        """Look for jobs now (a job was just created)."""
        self._wake.set()

    async def run(self) -> None:
        """Run jobs until cancelled; each job in its own task, its lease released on the way out."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                for job_id in await self._claimable():
                    self._running.add(job_id)
                    tasks.create_task(self._run_job(job_id))
                # Not asyncio.wait_for: on Python 3.11 it can swallow the cancellation that stops the runner.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                self._wake.clear()

    async def _claimable(self) -> list[str]:
        out = []
        for job_id in await self.jobs.active():
            if job_id in self._running:
                continue
            if await self.jobs.redis.set(self.jobs.keys.bulk_lease(job_id), self.token, nx=True, px=self.lease_ms):
                out.append(job_id)
        return out

    async def _run_job(self, job_id: str) -> None:
        try:
            await self.advance(job_id)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_lease(job_id))
            raise
        except _LeaseLost:
            log.warning("bulk job %s: another runner took it over (this one stalled past its lease)", job_id)
        except Exception:
            log.exception("bulk job %s failed; another runner retries it when its lease ends", job_id)
        finally:
            self._running.discard(job_id)

    async def _release_lease(self, job_id: str) -> None:
        try:
            await self.jobs._release([self.jobs.keys.bulk_lease(job_id)], [self.token])
        except Exception:  # the lease expires by itself
            log.debug("could not release the lease of bulk job %s", job_id, exc_info=True)

    async def advance(self, job_id: str) -> None:
        """Run the job from its checkpoint to its end (this runner must hold its lease)."""
        progress = await self.jobs.read(job_id)
        raw = await self.jobs.redis.hmget(self.jobs.keys.bulk_job(job_id), ["scursor", "pos"])
        scursor = _text(raw[0])
        pos = int(raw[1] or 0)
        state = progress.state
        while state == BulkState.COLLECTING:
            state = await self._collect(job_id, progress.filter, scursor or None)
            if state == BulkState.COLLECTING:
                scursor = _text(await self.jobs.redis.hget(self.jobs.keys.bulk_job(job_id), "scursor"))
        while state == BulkState.RUNNING:
            items = self.jobs.keys.bulk_items(job_id)
            members = [_text(m) for m in await self.jobs.redis.lrange(items, pos, pos + self.batch - 1)]
            async with self._holding(job_id):
                outcomes = await self._act(job_id, progress.action, members)
            pos += len(members)
            state = await self._record(job_id, pos, outcomes)
        if state in (BulkState.DONE, BulkState.CANCELLED):
            await self.jobs._finished(job_id)
        await self._release_lease(job_id)

    @contextlib.asynccontextmanager
    async def _holding(self, job_id: str) -> AsyncIterator[None]:
        """Renew the job's lease every third of it while the body runs (for at most ``HOLD_S``).

        A batch may take longer than the lease (a delete waits for its terminations, a loaded broker
        confirms slowly): without this another runner would take the job over and redo the batch
        while this one still acts on it, and this one's checkpoint would then fail, again and again.
        """

        async def renew() -> None:
            lease, args = [self.jobs.keys.bulk_lease(job_id)], [self.token, str(self.lease_ms)]
            every = self.lease_ms / 3000
            for _ in range(max(1, int(HOLD_S / every))):
                await asyncio.sleep(every)
                if not await self.jobs._renew(lease, args):
                    return  # taken over: the checkpoint that ends the batch finds out and stops

        renewer = asyncio.get_running_loop().create_task(renew(), name=f"hutch-bulk-lease-{job_id}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer

    async def _collect(self, job_id: str, where: SearchFilter, cursor: str | None) -> BulkState:
        page = await self.client.search(**where.model_dump(), limit=1000, cursor=cursor)
        members = [f"{hit.workflow}:{hit.id}" for hit in page.instances]
        result = await self._call_checkpoint(job_id, ["page", page.cursor or "", *members])
        if result == 1 and page.cursor:
            return BulkState.COLLECTING
        return self._state_after(result)

    async def _record(self, job_id: str, pos: int, outcomes: _Outcomes) -> BulkState:
        failures = outcomes.failures or []
        args: list[Any] = ["batch", pos, outcomes.done, outcomes.skipped, len(failures), FAILURES_KEPT]
        args += [f.model_dump_json() for f in failures]
        return self._state_after(await self._call_checkpoint(job_id, args))

    @staticmethod
    def _state_after(result: int) -> BulkState:
        if result == 1:
            return BulkState.RUNNING
        if result == -1:
            raise _LeaseLost()
        return BulkState.DONE  # done or cancelled: finished either way

    async def _call_checkpoint(self, job_id: str, args: list[Any]) -> int:
        k = self.jobs.keys
        job_keys = [k.bulk_job(job_id), k.bulk_lease(job_id), k.bulk_items(job_id), k.bulk_failures(job_id)]
        now = self.client.clock.now_ms()
        return int(await self.jobs._checkpoint(job_keys, [self.token, self.lease_ms, now, *args]))

    # ------------------------------------------------------------------ the actions
    async def _act(self, job_id: str, action: BulkAction, members: Sequence[str]) -> _Outcomes:
        pairs = [tuple(m.split(":", 1)) for m in members]
        metas, batched = await self._metas(pairs, with_batching=True)
        out = _Outcomes()
        send: list[tuple[str, str]] = []
        for (wf, iid), meta in zip(pairs, metas, strict=True):
            status, _ = meta
            if status is None:  # gone: nothing to do
                out.skip()
            elif action == "delete" or action == "restart":
                send.append((wf, iid))
            elif action == "terminate" and status not in FINISHED:
                send.append((wf, iid))
            elif action == "pause" and status in ("queued", "running", "waiting"):
                send.append((wf, iid))
            elif action == "resume" and status in ("paused", "waitingForPause"):
                send.append((wf, iid))
            elif (action == "pause" and status in FINISHED) or (action == "resume" and status in FINISHED):
                out.fail(wf, iid, f"{status}: a finished instance cannot {action}")
            else:  # already as asked
                out.skip()
        by_pair = {p: m for p, m in zip(pairs, metas, strict=True)}
        if action == "restart":
            await self._restart(job_id, send, by_pair, out, batched=batched)
        elif action == "delete":
            await self._delete(send, by_pair, out, batched=batched)
        else:
            await self._control(action, send, out, batched=batched)
        return out

    async def _metas(
        self, pairs: Sequence[tuple[str, ...]], *, with_batching: bool = False
    ) -> tuple[list[tuple[str | None, int]], bool]:
        """Each instance's (status, run), and (``with_batching``) whether every worker takes batched controls.

        Batched controls (``ControlBatch``, one message per partition) go out only when every worker
        heartbeating (``Keys.workers``) also announces that it takes them: a worker of an older
        version, during a rolling deploy, would dead-letter one. No worker at all (the embedded
        runtime, whose workers are this process's) counts as every worker taking them.
        """
        store = self.client._store
        by_partition: dict[int, list[int]] = {}
        for n, (wf, iid) in enumerate(pairs):
            by_partition.setdefault(self.client._partition(wf, iid), []).append(n)
        calls = [[store.keys.meta(p, *pairs[n]) for n in ns] for p, ns in by_partition.items()]
        batched = False
        if with_batching:
            pipe = store.redis.pipeline(transaction=False)
            pipe.zrange(store.keys.workers(), 0, -1)
            pipe.zrange(store.keys.worker_feature(CONTROL_BATCH), 0, -1)
            (workers, capable), results = await asyncio.gather(pipe.execute(), self._read_metas(calls))
            batched = set(workers) <= set(capable)
        else:
            results = await self._read_metas(calls)
        out: list[tuple[str | None, int]] = [(None, 0)] * len(pairs)
        for ns, text in zip(by_partition.values(), results, strict=True):
            for n, line in zip(ns, _text(text).split("\n"), strict=True):
                status, _, run = line.partition(" ")
                out[n] = (status or None, int(run or 0))
        return out, batched

    async def _read_metas(self, calls: list[list[str]]) -> list[Any]:
        """The ``_METAS`` script over each key list, pipelined; loaded if the server lacks it (a read: all rerun)."""
        redis, script = self.jobs.redis, self.jobs._metas
        for attempt in range(2):
            pipe = redis.pipeline(transaction=False)
            for keys in calls:
                pipe.evalsha(script.sha, len(keys), *keys)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await redis.script_load(script.script)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")

    async def _control(
        self,
        action: Action,
        targets: Sequence[tuple[str, str]],
        out: _Outcomes,
        *,
        batched: bool,
        runs: Sequence[int | None] | None = None,
    ) -> None:
        # One confirmed batch: a failure to publish stops the job before its checkpoint, and the
        # next runner (this one, once the lease ends) redoes the batch, every action being idempotent.
        if targets:
            await self.client._dispatcher.control_many(targets, action, runs=runs, batched=batched)
        out.done += len(targets)

    async def _restart(
        self,
        job_id: str,
        targets: Sequence[tuple[str, str]],
        metas: dict[tuple[str, ...], tuple[str | None, int]],
        out: _Outcomes,
        *,
        batched: bool,
    ) -> None:
        if not targets:
            return
        keys = self.jobs.keys
        args: list[Any] = []
        for wf, iid in targets:
            args += [f"{wf}:{iid}", metas[(wf, iid)][1]]
        marked = await self.jobs._mark([keys.bulk_job(job_id), keys.bulk_marks(job_id)], args)
        fresh = [t for t, m in zip(targets, marked, strict=True) if int(m) == 1]
        runs = [metas[t][1] for t in fresh]
        redone = [t for t, m in zip(targets, marked, strict=True) if int(m) != 1]
        unapplied: list[tuple[tuple[str, str], int]] = []
        if redone:
            # Marked by an earlier run of this batch, which may or may not have sent it before it died.
            marks = [f"{wf}:{iid}" for wf, iid in redone]
            before = await self.jobs.redis.hmget(keys.bulk_marks(job_id), marks)
            for target, mark in zip(redone, before, strict=True):
                if metas[target][1] > int(mark or 0):
                    out.done += 1  # applied: its run moved past the mark
                else:
                    unapplied.append((target, int(mark or 0)))
        if batched:
            # Fenced to its marked run, a restart the dead runner may have sent already is sent again:
            # whichever copy arrives second finds the instance on a later run and is ignored.
            fresh += [target for target, _ in unapplied]
            runs += [mark for _, mark in unapplied]
            unapplied = []
        # Each fenced to the run it was marked at: a batch the broker delivers again restarts nothing twice.
        await self._control("restart", fresh, out, batched=batched, runs=runs)
        if unapplied:
            # One Control per instance (a worker predates ControlBatch) carries no run: never send it
            # again (that could restart the instance twice); count it once its run moved past the mark.
            await self._await_runs([t for t, _ in unapplied], [mark for _, mark in unapplied], out)

    async def _await_runs(self, targets: Sequence[tuple[str, str]], before: Sequence[int], out: _Outcomes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPLY_WAIT_S
        pending = dict(zip(targets, before, strict=True))
        while pending:
            metas, _ = await self._metas(list(pending))
            for target, (status, run) in zip(list(pending), metas, strict=True):
                if status is None or run > pending[target]:
                    del pending[target]
                    out.done += 1
            if pending and loop.time() >= deadline:
                for wf, iid in pending:
                    out.fail(wf, iid, "a restart sent before the job was interrupted was not applied in time")
                return
            if pending:
                await asyncio.sleep(0.05)

    async def _delete(
        self,
        targets: Sequence[tuple[str, str]],
        metas: dict[tuple[str, ...], tuple[str | None, int]],
        out: _Outcomes,
        *,
        batched: bool,
    ) -> None:
        # An unfinished instance is terminated first: its owner must stop it before its keys go.
        unfinished = [t for t in targets if metas[t][0] not in FINISHED]
        if unfinished:
            await self.client._dispatcher.control_many(unfinished, "terminate", batched=batched)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPLY_WAIT_S
        pending = list(targets)
        while pending:
            items = [(self.client._partition(wf, iid), wf, iid) for wf, iid in pending]
            results = await self.client._store.delete_finished(items)
            waiting = []
            for target, result in zip(pending, results, strict=True):
                if result == -1:
                    waiting.append(target)
                else:
                    out.done += 1
                    out.skipped += result == 0
            pending = waiting
            if pending and loop.time() >= deadline:
                for wf, iid in pending:
                    out.fail(wf, iid, f"not terminated within {APPLY_WAIT_S:g} s (is a worker running?)")
                return
            if pending:
                await asyncio.sleep(0.05)


def _text(value: Any) -> str:
    """A value Redis returned (bytes, or str on a decoding client), as text; None as ''."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


class _LeaseLost(Exception):
    """Another runner holds the job now (this one stalled past its lease): stop without writing."""


class BulkJob:
    """A handle on one bulk job (``Client.bulk()``, ``Client.bulk_job()``)."""

    def __init__(self, jobs: BulkJobs, job_id: str) -> None:
        self._jobs = jobs
        self.id = job_id

    def __repr__(self) -> str:
        return f"BulkJob({self.id!r})"

    async def progress(self) -> BulkProgress:
        """Its record: state, total, done, skipped, failed and the first failures."""
        return await self._jobs.read(self.id)

    async def cancel(self) -> BulkProgress:
        """Stop it: no batch starts after this (the batch in flight completes)."""
        return await self._jobs.cancel(self.id)

    async def wait(self, timeout: float = 300.0, *, poll_s: float = 0.05) -> BulkProgress:
        """Wait until it is done or cancelled; raises :class:`~hutch.errors.WaitTimeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            progress = await self.progress()
            if progress.finished:
                return progress
            if loop.time() >= deadline:
                raise WaitTimeout(f"bulk job {self.id!r} is still {progress.state.value} after {timeout} s")
            await asyncio.sleep(poll_s)
