"""What an instance's owner keeps between transitions, and how it is rebuilt from history.

:class:`ActorState` is the bookkeeping an :class:`~hutch.consumers.actor.InstanceActor` decides
from: the steps, sleeps and waits in flight, their timers (armed, or suspended while paused),
buffered events and the resolution group. A new owner, or an owner that evicted the instance,
rebuilds it from the stored history and events (:meth:`ActorState.rebuild`), exactly as the
transitions that wrote them left it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hutch.config import StepConfig
from hutch.consumers.transition import Turn
from hutch.history import (
    AttemptEnded,
    AttemptStarted,
    CancelCommand,
    EventRecord,
    InvokeCommand,
    Kind,
    Record,
    Resolution,
    TimerKind,
)
from hutch.serialization import pack, unpack
from hutch.status import FINISHED, Status

StepKey = tuple[str, int]  # (name, count)
Member = Callable[[TimerKind, str, int], bytes]  # (kind, name, count) -> the timer's member in Redis


def timer_member(kind: TimerKind, workflow: str, instance_id: str, run_no: int, name: str, count: int) -> bytes:
    """The timer set member of a sleep, wait or retry (what a ``TimerFired`` carries back)."""
    return pack([kind, workflow, instance_id, run_no, name, count])


@dataclass(slots=True)
class StepState:
    """One issued step: its config, attempts so far, and whether one runs or a retry is armed."""

    config: StepConfig | None
    cfg: dict[str, Any]
    attempts: int = 0
    running: bool = False
    retry_member: bytes | None = None

    def resolved_config(self) -> StepConfig:
        """The step's config (validated from its stored form on first use after a rebuild)."""
        if self.config is None:
            self.config = StepConfig.model_validate(self.cfg)
        return self.config


@dataclass(slots=True)
class ActorState:
    """An instance's commands in flight, their timers, buffered events and the current group.

    Attributes:
        steps: issued steps not yet resolved.
        sleeps: unresolved sleeps and their timers.
        waits: unresolved event waits: the event type and the timeout's timer.
        invokes: unsettled ``step.invoke`` commands (their children run or are being created).
        timers: armed timers and their due times (epoch ms).
        paused: timers suspended by a pause and the time each had left (ms).
        buffer: events no wait took yet, packed and unpacked.
        seen_events: ids of every event taken or buffered (a redelivered one is dropped).
        group: the group the next resolution joins.
        deferred: steps issued while the partition was held (handover), not attempted yet.
    """

    steps: dict[StepKey, StepState] = field(default_factory=dict)
    sleeps: dict[StepKey, bytes] = field(default_factory=dict)
    waits: dict[StepKey, tuple[str, bytes]] = field(default_factory=dict)
    invokes: dict[StepKey, InvokeCommand] = field(default_factory=dict)
    timers: dict[bytes, int] = field(default_factory=dict)
    paused: dict[bytes, int] = field(default_factory=dict)
    buffer: list[tuple[bytes, EventRecord]] = field(default_factory=list)
    seen_events: set[str] = field(default_factory=set)
    group: int = 0
    deferred: dict[StepKey, None] = field(default_factory=dict)

    # ------------------------------------------------------------------ rebuilding
    @classmethod
    def rebuild(
        cls, history: list[Record], events: list[bytes], *, status: Status, paused: dict[bytes, int], member: Member
    ) -> ActorState:
        """The state the transitions that wrote ``history`` and ``events`` left."""
        state = cls(paused=paused)
        pause_group: int | None = None  # the group results join while paused (histories before it: None)
        for r in history:
            if r["k"] == "life":
                pause_group = r.get("g") if r["what"] == "paused" else None
                if r["what"] == "rollback":
                    # A terminate's rollback stopped the workflow's work: only its undo steps follow.
                    state.drop_all_pending()
                    state.timers.clear()
            else:
                state._replay(r, member)
        for raw in events:
            event: EventRecord = unpack(raw)
            state.buffer.append((raw, event))
            state.seen_events.add(event["id"])
        for suspended in state.paused:
            state.timers.pop(suspended, None)
        if status in FINISHED:
            # Whatever history left unresolved ended with the instance (terminate, or run() returning
            # or raising with work in flight): nothing of it may resolve, retry or re-arm later.
            state.drop_all_pending()
            state.timers.clear()
        elif status in (Status.PAUSED, Status.WAITING_FOR_PAUSE) and pause_group is not None:
            # Results committed during the pause join the group it recorded (see InstanceActor.apply).
            state.group = pause_group
        return state

    def _replay(self, r: Record, member: Member) -> None:
        """Apply one history record (other than a lifecycle one) to the state being rebuilt."""
        if r["k"] == "step":
            self.steps[(r["n"], r["c"])] = StepState(None, r["cfg"])
        elif r["k"] == "att":
            self._replay_attempt_started(r)
        elif r["k"] == "attend":
            self._replay_attempt_ended(r, member)
        elif r["k"] == "sleep":
            sleep = member("sleep", r["n"], r["c"])
            self.sleeps[(r["n"], r["c"])] = sleep
            self.timers[sleep] = r["due"]
        elif r["k"] == "wait":
            wait = member("wait", r["n"], r["c"])
            self.waits[(r["n"], r["c"])] = (r["type"], wait)
            self.timers[wait] = r["due"]
        elif r["k"] == "invoke":
            self.invokes[(r["n"], r["c"])] = r
        elif r["k"] == "retime":
            self.timers[member(r["ref"], r["n"], r["c"])] = r["due"]
        elif r["k"] == "res" or r["k"] == "cancel":
            self._replay_settled(r)

    def _replay_attempt_started(self, r: AttemptStarted) -> None:
        st = self.steps.get((r["n"], r["c"]))
        if st is not None:
            st.attempts, st.running = r["a"], True
            if st.retry_member is not None:
                # This attempt is the retry: its timer fired and the commit removed it.
                self.timers.pop(st.retry_member, None)
                st.retry_member = None

    def _replay_attempt_ended(self, r: AttemptEnded, member: Member) -> None:
        st = self.steps.get((r["n"], r["c"]))
        if st is not None:
            st.running = False
            if "retry_at" in r:
                st.retry_member = member("retry", r["n"], r["c"])
                self.timers[st.retry_member] = r["retry_at"]

    def _replay_settled(self, r: Resolution | CancelCommand) -> None:
        """A resolution or cancel: the command is no longer pending, its timer gone; a result moves the group on."""
        timer = self.pop_pending(r["ref"], (r["n"], r["c"]))
        if timer is not None:
            self.timers.pop(timer, None)
        if r["k"] == "res":
            self.group = max(self.group, r["g"] + 1)
            if "ev" in r:
                self.seen_events.add(r["ev"]["id"])

    # ------------------------------------------------------------------ commands in flight
    def pop_pending(self, kind: Kind, key: StepKey) -> bytes | None:
        """Forget the step, sleep or wait ``key``; the member of its timer, if it had one."""
        if kind == "step":
            st = self.steps.pop(key, None)
            return st.retry_member if st else None
        if kind == "sleep":
            return self.sleeps.pop(key, None)
        if kind == "invoke":
            self.invokes.pop(key, None)
            return None  # its outbox timers are not the instance's to disarm: they must run
        wait = self.waits.pop(key, None)
        return wait[1] if wait else None

    def drop_all_pending(self) -> None:
        """Forget every step, sleep, wait and invoke in flight (the instance ended or restarted)."""
        self.steps.clear()
        self.sleeps.clear()
        self.waits.clear()
        self.invokes.clear()

    def any_running(self) -> bool:
        """Whether an attempt of some step is running."""
        return any(st.running for st in self.steps.values())

    def take_buffered(self, event_type: str) -> tuple[bytes, EventRecord] | None:
        """The oldest buffered event of ``event_type``, taken out of the buffer (None: none)."""
        for i, (raw, event) in enumerate(self.buffer):
            if event["type"] == event_type:
                del self.buffer[i]
                return raw, event
        return None

    # ------------------------------------------------------------------ timers and pauses
    def arm(self, turn: Turn, due: int, member: bytes, *, paused: bool) -> None:
        """Arm a timer in this transition (while ``paused``: suspend it with the time it has left)."""
        if paused:
            self.paused[member] = max(0, due - turn.now_ms)
            turn.tx.meta["paused"] = pack(self.paused)
            return
        self.timers[member] = due
        tx = turn.tx
        if member in tx.timers_remove:
            # Removed earlier in this transition (a pause, then a resume in the same batch): the
            # commit applies adds before removes, so the removal must go or the timer is lost.
            tx.timers_remove.remove(member)
        tx.timers_add.append((due, member))

    def disarm(self, turn: Turn, member: bytes) -> None:
        """Remove a timer, armed or suspended, in this transition."""
        if self.paused.pop(member, None) is not None:
            turn.tx.meta["paused"] = pack(self.paused or None)
        if self.timers.pop(member, None) is not None:
            turn.tx.timers_remove.append(member)

    def suspend_timers(self, turn: Turn) -> None:
        """Pause: every armed timer is removed and keeps the time it had left, for the resume."""
        for member, due in self.timers.items():
            self.paused[member] = max(0, due - turn.now_ms)
            turn.tx.timers_remove.append(member)
        self.timers.clear()
        turn.tx.meta["paused"] = pack(self.paused or None)

    def disarm_all(self, turn: Turn) -> None:
        """Remove every timer, armed or suspended (the instance ends or restarts)."""
        tx = turn.tx
        for member in self.timers:
            tx.timers_remove.append(member)
        tx.timers_remove.extend(self.paused)
        self.timers.clear()
        if self.paused:
            self.paused.clear()
            tx.meta["paused"] = pack(None)
