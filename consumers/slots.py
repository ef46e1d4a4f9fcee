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
  owner re-drives it and takes the slot again. Slots are fenced by the partition owner's token, so
  an owner that lost the partition cannot give back the slot its successor's run holds.

Every take and give-back returns the waiters a free slot is for; the orchestrator wakes them (a
re-drive on their partition), and each takes its slot by its own acquire, in priority then FIFO
order. A wake lost to a crash costs latency only: every instance waiting here is re-driven every
:data:`RECHECK_S` seconds, and a new owner re-drives the waiting instances of its partitions (they
are queued or running, so in its active set). A workflow without limits never reaches this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hutch.broker.envelopes import Control
from hutch.broker.partitioning import partition_of
from hutch.concurrency import PRIORITY_FIELD, SLOT_WAIT_FIELD, ConcurrencyConfig, concurrency_of, waiter_score
from hutch.consumers.templates import MessageContext, Template, TemplateError
from hutch.keys import instance_member
from hutch.serialization import pack
from hutch.status import FINISHED, Status
from hutch.store.slots import SlotAnswer, SlotCall, SlotStore

if TYPE_CHECKING:
    from hutch.consumers.actor import InstanceActor
    from hutch.store.base import Transition
    from hutch.versions import WorkflowVersions

log = logging.getLogger("hutch.worker")

RECHECK_S = 5.0
"""How often an instance waiting for a slot on this worker tries again (a wake may have been lost)."""

HOLDING = frozenset({Status.RUNNING, Status.WAITING_FOR_PAUSE})
"""The statuses in which an instance holds its slots."""

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
        assert self._store is not None
        member = instance_member(actor.workflow, actor.instance_id)
        limits = self.limits_of(actor.workflow, actor.params_value())
        score = waiter_score(actor.priority, actor.created_ms)
        calls = [SlotCall("acquire", actor.workflow, key, n, member, token, score) for key, n in limits]
        answers = await self._store.run(calls)
        denied = [(call, answer) for call, answer in zip(calls, answers, strict=True) if not answer.granted]
        if denied and await self._forget_stale(denied):
            answers = await self._store.run(calls)  # a holder's acquire only refreshes its token
            denied = [(call, answer) for call, answer in zip(calls, answers, strict=True) if not answer.granted]
        for answer in answers:
            self.wakes.update(answer.wake)
        key = (actor.workflow, actor.instance_id)
        if not denied:
            actor.slot_held, actor.slot_denied = True, False
            self.waiting.pop(key, None)
            return
        # No slot of one limit while holding another's would let two instances each hold what the
        # other waits for: the slots it got go back, and it waits in the queues that refused it.
        granted = [call for call, answer in zip(calls, answers, strict=True) if answer.granted]
        await self._release(granted)
        call = denied[0][0]
        actor.slot_denied = True
        limit = "max_concurrency" if call.key is None else "max_concurrency_per_key"
        actor.slot_wait = {"limit": limit, "key": call.key}
        self.waiting[key] = actor.partition

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
        """Give back the instance's slots and leave the queues (idempotent)."""
        member = instance_member(actor.workflow, actor.instance_id)
        limits = self.limits_of(actor.workflow, actor.params_value())
        await self._release([SlotCall("release", actor.workflow, key, n, member, token) for key, n in limits])
        actor.slot_held = actor.slot_denied = False
        self.waiting.pop((actor.workflow, actor.instance_id), None)

    async def _release(self, calls: list[SlotCall]) -> None:
        assert self._store is not None
        for answer in await self._store.run(calls):
            self.wakes.update(answer.wake)

    def take_wakes(self) -> list[tuple[str, str]]:
        """The (workflow, instance id) of the waiters to wake, collected since the last call."""
        wakes, self.wakes = self.wakes, set()
        return [(w, i) for w, _, i in (m.partition(":") for m in sorted(wakes))]


def priority_of(meta: dict[str, Any]) -> int:
    """An instance's priority from its meta (0 when it was created without one)."""
    return int(meta.get(PRIORITY_FIELD) or 0)


__all__ = ["HOLDING", "RECHECK_S", "SlotGate", "priority_of"]
