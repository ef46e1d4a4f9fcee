"""Concurrency limits on the partition owner: an instance takes its slots before it runs, gives them back as it parks.

A slot is held while an instance is ``running`` or ``waitingForPause`` (hutch.concurrency). The
orchestrator calls :meth:`SlotGate.before` ahead of an instance's transition and
:meth:`SlotGate.after` once the transition is computed and before it commits:

- *before*: an instance not known to hold its slots takes them (one script per limit, on the
  limit's own Redis slot). Denied, it waits in the limit's queue and the actor is told
  (``slot_denied``): a queued instance does not start, a woken one stops before its next step.
- *after*: an instance that now holds no slot (it sleeps, waits, paused or finished) gives its
  slots back — before its commit, so no crash can leave a parked instance holding a slot: if the
  worker dies between the two, the instance is still ``running`` in Redis, and the partition's next
  owner re-drives it and takes the slot again.

A slot is held under the token of the partition owner that took it, and given back only under
that token, so an owner that lost the partition cannot give back the slot its successor's run
holds. The limit's script cannot read the partition's token (another Redis Cluster slot); this
module reads it where it matters and the script compare-and-sets on what was read: a slot found
under another token passes to this owner only if the partition's token is ours (an older owner's
slot, taken over), and is left alone otherwise (we are the stale owner). A slot taken in a turn
whose commit does not land is given back at once (:meth:`SlotGate.undo`), and a refused waiter
gives back slots left under a token that lost its partition by an instance that does not run (the
double fault of an owner dying before its undo). docs/scaling.md has the argument.

Every take and give-back returns the waiters a free slot is for; the orchestrator wakes them (a
re-drive on their partition), and each takes its slot by its own acquire, in priority then FIFO
order. A wake lost to a crash costs latency only: every instance waiting here is re-driven every
:data:`RECHECK_S` seconds, and a new owner re-drives the waiting instances of its partitions (they
are queued or running, so in its active set). A workflow without limits never reaches this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hutch.broker.envelopes import Control
from hutch.broker.partitioning import partition_of
from hutch.concurrency import PRIORITY_FIELD, SLOT_WAIT_FIELD, ConcurrencyConfig, concurrency_of, waiter_score
from hutch.consumers.templates import MessageContext, Template, TemplateError
from hutch.keys import instance_member
from hutch.serialization import pack
from hutch.status import FINISHED, Status
from hutch.store.slots import Code, SlotAnswer, SlotCall, SlotStore

if TYPE_CHECKING:
    from hutch.consumers.actor import InstanceActor
    from hutch.store.base import Transition
    from hutch.versions import WorkflowVersions

log = logging.getLogger("hutch.worker")

RECHECK_S = 5.0
"""How often an instance waiting for a slot on this worker tries again (a wake may have been lost)."""

HOLDING = frozenset({Status.RUNNING, Status.WAITING_FOR_PAUSE})
"""The statuses in which an instance holds its slots."""

_HOLDING_TEXT = frozenset(str(s.value) for s in HOLDING)

REAP_PAGE = 200
"""Holders a refused waiter checks for leaked slots at a time (one HSCAN page, then one pipelined read)."""

_PARAMS = "params"

_Limit = tuple[str | None, int]  # (concurrency key value or None for the workflow-wide limit, slots)


class _Config:
    __slots__ = ("config", "template")

    def __init__(self, config: ConcurrencyConfig) -> None:
        self.config = config
        self.template = Template(config.concurrency_key, roots=frozenset({_PARAMS})) if config.concurrency_key else None


class SlotGate:
    """The limits of this worker's workflows and the slots their instances take and give back.

    Args:
        workflows: the registered workflows; the limits are their newest classes'.
        store: builds where slots are kept (called once, when a workflow has limits).
        partitions: the deployment's partition count (to find a waiter's instance).
    """

    def __init__(
        self, workflows: dict[str, WorkflowVersions], store: Callable[[], SlotStore], partitions: Callable[[], int]
    ) -> None:
        self._configs: dict[str, _Config] = {}
        for name, versions in workflows.items():
            config = concurrency_of(versions.newest)
            if config is not None:
                self._configs[name] = _Config(config)
        self._store = store() if self._configs else None
        self._partitions = partitions
        self.wakes: set[str] = set()  # instance members to wake once the turn ends
        self.waiting: dict[tuple[str, str], int] = {}  # instances waiting here for a slot -> partition
        # Instances that took slots in a turn whose commit has not landed yet -> how to give them back (undo).
        self.taken: dict[tuple[str, str], set[SlotCall]] = {}
        self._reap_cursor: dict[tuple[str, str | None], tuple[int, float]] = {}  # limit -> (HSCAN cursor, next at)

    def limited(self, workflow: str) -> bool:
        """Whether instances of ``workflow`` take slots (a dict lookup: no cost for the others)."""
        return workflow in self._configs

    def limits_of(self, workflow: str, params: Any) -> list[_Limit]:
        """The limits an instance of ``workflow`` with these params counts against."""
        entry = self._configs[workflow]
        limits: list[_Limit] = []
        if entry.config.max_concurrency is not None:
            limits.append((None, entry.config.max_concurrency))
        if entry.template is not None:
            try:
                key = entry.template.render(MessageContext(body={_PARAMS: params}))
            except TemplateError as exc:
                # The params do not name a key: the instance shares the key "" with every such one.
                log.warning("workflow %s: concurrency_key %s: %s; using the key ''", workflow, entry.template, exc)
                key = ""
            limits.append((key, entry.config.max_concurrency_per_key))
        return limits

    async def before(self, actor: InstanceActor, inputs: Sequence[Any], token: str) -> None:
        """Take the instance's slots unless it holds them or cannot run; denied, it waits (``slot_denied``)."""
        if actor.slot_held:
            return
        restart = any(isinstance(i, Control) and i.action == "restart" for i in inputs)
        if actor.status in FINISHED and not restart:
            actor.slot_denied = False
            return
        member = instance_member(actor.workflow, actor.instance_id)
        limits = self.limits_of(actor.workflow, actor.params_value())
        score = waiter_score(actor.priority, actor.created_ms)
        calls = [SlotCall("acquire", actor.workflow, key, n, member, token, score) for key, n in limits]
        answers, stale = await self._acquire(actor.partition, calls, token)
        taken = {i for i, answer in enumerate(answers) if answer.code is Code.TAKEN}
        denied = [(call, answer) for call, answer in zip(calls, answers, strict=True) if not answer.granted]
        if denied and not stale and (await self._forget_stale(denied) | await self._reap(c for c, _ in denied)):
            answers, stale = await self._acquire(actor.partition, calls, token)
            taken |= {i for i, answer in enumerate(answers) if answer.code is Code.TAKEN}
            denied = [(call, answer) for call, answer in zip(calls, answers, strict=True) if not answer.granted]
        for answer in answers:
            self.wakes.update(answer.wake)
        key = (actor.workflow, actor.instance_id)
        if not denied and not stale:
            actor.slot_held, actor.slot_denied, actor.slot_token = True, False, token
            self.waiting.pop(key, None)
            if taken:  # given back should this turn's commit not land (undo)
                self.taken.setdefault(key, set()).update(_giving_back(calls[i]) for i in taken)
            return
        # No slot of one limit while holding another's would let two instances each hold what the
        # other waits for: the slots it got go back, and it waits in the queues that refused it.
        # (A stale owner gives back only what is under its own token, and commits nothing more.)
        granted = [call for call, answer in zip(calls, answers, strict=True) if answer.granted]
        await self._release(granted)
        call = denied[0][0] if denied else calls[0]
        actor.slot_denied = True
        limit = "max_concurrency" if call.key is None else "max_concurrency_per_key"
        actor.slot_wait = {"limit": limit, "key": call.key}
        self.waiting[key] = actor.partition

    async def _acquire(self, partition: int, calls: list[SlotCall], token: str) -> tuple[list[SlotAnswer], bool]:
        """Run the acquires, taking over slots held under an older owner's token; (answers, whether we are stale).

        A slot held under another token was taken by an earlier owner of the partition (which died
        or handed it over: the instance is re-driven here) or by a later one (this owner lost the
        partition and has not noticed yet). Only the partition's token in Redis tells which, and the
        limit's script cannot read it (another slot on a cluster), so this reads it: ours, the slot
        passes to us, still only if held under that same token (``takeover``); not ours, we are the
        stale owner and leave the slot alone (our commit will be fenced). A stale owner that
        re-stamped the slot with its token would leave it held forever once the new owner gave it
        back under its own.
        """
        assert self._store is not None
        answers = await self._store.run(calls)
        for _ in range(3):  # each round needs another owner's move in between: a few at most
            foreign = [i for i, answer in enumerate(answers) if answer.code is Code.FOREIGN]
            if not foreign:
                return answers, False
            if await self._store.owner(partition) != token:
                return answers, True
            takeovers = [replace(calls[i], op="takeover", expected=answers[i].holder or "") for i in foreign]
            for i, answer in zip(foreign, await self._store.run(takeovers), strict=True):
                answers[i] = answer
        return answers, any(answer.code is Code.FOREIGN for answer in answers)

    async def _reap(self, calls: Iterable[SlotCall]) -> bool:
        """Give back slots leaked by owners that lost their partition; whether any was.

        A slot is held under the token of the owner that took it. When that token is no longer
        its partition's (it can never commit again: tokens are never reused) and the instance does
        not run (not ``running`` or ``waitingForPause``: nobody's commit can make it run without
        taking a slot again), nobody will ever give the slot back — its owner died right after
        taking it for a commit that was then refused, say. ``reap`` removes it only if it is still
        under that token: a new owner taking it over meanwhile keeps it. Run by a waiter refused a
        slot, at most every :data:`RECHECK_S` per limit on this worker, a page of holders each time.
        """
        assert self._store is not None
        reaped = False
        now = time.monotonic()
        for call in {(c.workflow, c.key): c for c in calls}.values():
            limit = (call.workflow, call.key)
            cursor, due = self._reap_cursor.get(limit, (0, 0.0))
            if now < due:
                continue
            cursor, page = await self._store.holders_page(call.workflow, call.key, cursor, REAP_PAGE)
            self._reap_cursor[limit] = (cursor, now if cursor else now + RECHECK_S)
            if not page:
                continue
            partitions = self._partitions()
            instances = [(w, i) for w, _, i in (m.partition(":") for m in page)]
            states = await self._store.runs_under([(partition_of(w, i, partitions), w, i) for w, i in instances])
            leaked = [
                replace(call, op="reap", member=member, token="", expected=holder)
                for (member, holder), (owner, status) in zip(page.items(), states, strict=True)
                if owner != holder and status not in _HOLDING_TEXT
            ]
            if leaked:
                answers = await self._store.run(leaked)
                gone = [c.member for c, a in zip(leaked, answers, strict=True) if a.code is Code.REAPED]
                if gone:
                    log.warning("gave back concurrency slots leaked by owners that lost their partition: %s", gone)
                    reaped = True
                for answer in answers:
                    self.wakes.update(answer.wake)
        return reaped

    async def _forget_stale(self, denied: list[tuple[SlotCall, SlotAnswer]]) -> bool:
        """Take out of the queues the waiters a free slot is for that will never take it; whether any was.

        Denied while a slot is free means waiters ahead were told to take it. Normally they are about
        to; one deleted (or finished) while it waited never will, and at the head of the queue it
        would block the limit forever: so the first waiter that finds it there removes it. A waiter
        misjudged in a race (restarted meanwhile) is back in the queue at its next acquire.
        """
        assert self._store is not None
        ahead = [(call, member) for call, answer in denied for member in answer.wake]
        if not ahead:
            return False
        partitions = self._partitions()
        instances = [(w, i) for w, _, i in (m.partition(":") for _, m in ahead)]
        statuses = await self._store.statuses([(partition_of(w, i, partitions), w, i) for w, i in instances])
        stale = [
            SlotCall("forget", call.workflow, call.key, call.limit, member, "")
            for (call, member), status in zip(ahead, statuses, strict=True)
            if status is None or status in FINISHED or status == Status.PAUSED
        ]
        if stale:
            log.warning("left concurrency queues for instances gone or finished: %s", [c.member for c in stale])
            await self._store.run(stale)
        return bool(stale)

    def after(self, actor: InstanceActor, transition: Transition | None) -> tuple[Transition | None, bool]:
        """What to give back once the transition is computed: (the transition, whether to release now).

        The transition gets the instance's ``slotwait`` field when it changes (one is made if the
        batch changed nothing else); the release itself is :meth:`release`, run before the commit.
        """
        holds = actor.status in HOLDING and not actor.slot_denied
        waits = actor.slot_denied and (actor.status == Status.QUEUED or actor.status in HOLDING)
        release = (actor.slot_held and not holds) or (actor.slot_denied and not waits)
        wait = actor.slot_wait if waits else None
        if wait != actor.slot_wait_recorded:
            if transition is None:
                transition = actor.empty_transition()
            transition.meta[SLOT_WAIT_FIELD] = pack(wait)
            actor.slot_wait_recorded = wait
        return transition, release

    async def release(self, actor: InstanceActor, token: str) -> None:
        """Give back the instance's slots and leave the queues (idempotent).

        Under the token they were taken with, if this owner took them (it may hold its partition
        under a newer one since, re-claimed after a lost broker channel), else under ``token``.
        """
        member = instance_member(actor.workflow, actor.instance_id)
        limits = self.limits_of(actor.workflow, actor.params_value())
        token = actor.slot_token if actor.slot_held and actor.slot_token else token
        await self._release([SlotCall("release", actor.workflow, key, n, member, token) for key, n in limits])
        actor.slot_held = actor.slot_denied = False
        key = (actor.workflow, actor.instance_id)
        self.waiting.pop(key, None)
        self.taken.pop(key, None)

    def landed(self, workflow: str, instance_id: str) -> None:
        """The turn that took the instance's slots ended as it should (committed, or nothing to commit)."""
        self.taken.pop((workflow, instance_id), None)

    async def undo(self, workflow: str, instance_id: str) -> None:
        """Give back the slots the instance took in a turn that did not land (commit refused, instance gone).

        A queued instance deleted as it was granted a slot (its create undone), or an instance a
        stale owner took a slot for, would otherwise hold it forever: nobody runs it here again.
        Only a slot still under the token it was taken with goes back (a new owner's stays); one
        this instance still needs is taken again by its next turn.
        """
        calls = self.taken.pop((workflow, instance_id), None)
        if calls:
            await self._release(sorted(calls, key=lambda c: c.key or ""))

    async def _release(self, calls: list[SlotCall]) -> None:
        assert self._store is not None
        for answer in await self._store.run(calls):
            self.wakes.update(answer.wake)

    def take_wakes(self) -> list[tuple[str, str]]:
        """The (workflow, instance id) of the waiters to wake, collected since the last call."""
        if not self.wakes:
            return []
        wakes, self.wakes = self.wakes, set()
        return [(w, i) for w, _, i in (m.partition(":") for m in sorted(wakes))]


def _giving_back(call: SlotCall) -> SlotCall:
    return replace(call, op="release", score=0)


def priority_of(meta: dict[str, Any]) -> int:
    """An instance's priority from its meta (0 when it was created without one)."""
    return int(meta.get(PRIORITY_FIELD) or 0)


__all__ = ["HOLDING", "RECHECK_S", "SlotGate", "priority_of"]
