"""One instance's state machine on its partition owner.

An :class:`InstanceActor` turns a batch of inputs (broker messages and local step results)
into one :class:`~hutch.store.base.Transition` — the history records, timers, buffered events
and meta fields to commit atomically — plus the effects to carry out once that commit
succeeded (step attempts to start, local executions to cancel). It holds the live
``WorkflowRun`` while the instance runs; waiting, paused and finished instances are evicted
and rebuilt from Redis (replay) when their next input arrives.

The parts: :mod:`~hutch.consumers.actor_state` (the bookkeeping and its rebuild from history),
:mod:`~hutch.consumers.transition` (one batch's transition in the making),
:mod:`~hutch.consumers.lifecycle` (pause, resume, terminate, restart, the end of a run) and
:mod:`~hutch.consumers.retry` (the retry policy). This module drives the run with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hutch.blobs import BlobRef, BlobsNeeded
from hutch.broker.envelopes import ChildFinished, Control, EventReceived, InstanceCreated, Message, Redrive, TimerFired
from hutch.children import ParentLink
from hutch.concurrency import SLOT_WAIT_FIELD
from hutch.config import Limits
from hutch.consumers import lifecycle, tracing
from hutch.consumers.actor_state import ActorState, StepKey, StepState, timer_member
from hutch.consumers.children import (
    OUTBOX_KINDS,
    CloseChild,
    NotifyParent,
    OutboxKind,
    StartChild,
    child_finished,
    outbox_member,
)
from hutch.consumers.items import BatchedControl, CreatedNotice, EventHeard, StepDone
from hutch.consumers.retry import attempts_left, retry_due_ms
from hutch.consumers.slots import priority_of
from hutch.consumers.transition import Effects, Turn
from hutch.entrypoint import Env
from hutch.errors import ChildWorkflowError, WorkerLostError
from hutch.events import WorkflowEvent
from hutch.executor import StepCall, WorkflowRun, timeout_error
from hutch.history import AttemptEnded, EventRecord, InvokeCommand, Issued, Kind, Record, Resolution, TimerKind
from hutch.retention import META_FIELD as RETENTION_FIELD
from hutch.serialization import pack, unpack
from hutch.status import FINISHED, Status
from hutch.store.base import Snapshot, Transition
from hutch.versions import META_FIELD as VERSION_FIELD
from hutch.versions import WAITING_FIELD, WorkflowVersions

__all__ = ["Effects", "Input", "InstanceActor"]

Input = Message | StepDone | CreatedNotice | EventHeard

_LIVE = frozenset({Status.RUNNING, Status.WAITING})


class InstanceActor:
    """State and transitions of one instance, owned by one worker at a time."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        partition: int,
        versions: WorkflowVersions,
        env: Env,
        limits: Limits,
        now_ms: Callable[[], int],
        is_executing: Callable[[str, str, int, str, int, int], bool],
        warm_ms: int = 0,
        from_message: bool = False,
    ) -> None:
        meta = snapshot.meta
        self.partition = partition
        self.workflow: str = meta["wf"]
        self.instance_id: str = meta["id"]
        self.seq = snapshot.seq
        self.status = Status(meta["status"])
        self.run_no: int = meta.get("run", 0)
        self.created_ms: int = meta["created"]
        self.params: Any = meta.get("params")
        # Its own retention when finished ({"success", "error"}: seconds), if it was created with one.
        self.retention: dict[str, float] | None = meta.get(RETENTION_FIELD)
        # Set on a child created by step.invoke: its end is sent to this parent.
        self.parent: ParentLink | None = meta.get("parent")
        # The outcome a finished child sends its parent (lifecycle.finish sets them as it ends).
        self.output: bytes | None = pack(meta["output"]) if "output" in meta else None
        self.error: dict[str, str] | None = meta.get("error")
        # The W3C context every span of this instance continues (stored at create), on any worker.
        self.trace = tracing.instance_traceparent(meta.get("trace"), self.workflow, self.instance_id, self.created_ms)
        self.limits = limits
        self.versions = versions
        # The version this instance runs on, and its class here: None when this worker lacks it. Such
        # an instance is never run on other code: it waits (meta "vwait" says for what) for an owner
        # that has its version, recording only what arrives meanwhile (events, controls).
        started = self.status != Status.QUEUED
        self.version, self._workflow_cls = versions.resolve(meta.get(VERSION_FIELD), started=started)
        self._waiting_recorded = meta.get(WAITING_FIELD) is not None
        self._needs_version = False
        self._env = env
        self._now_ms = now_ms
        self._is_executing = is_executing
        self._warm_ms = warm_ms
        # Built from its start message, not from Redis: the first commit also checks the stored
        # creation time, so a stale message of an instance with the same id cannot run.
        self._from_message = from_message
        self.history: list[Record] = snapshot.history
        self.appended = 0  # records the last apply() appended to history
        self.run: WorkflowRun | None = None
        # Set while the instance's partition is being handed over (see Orchestrator.hold): results
        # still commit, but no new attempt starts here; such steps wait in state.deferred, recorded
        # as issued and not attempted, for the next owner's re-drive (or this one's, if the handover
        # is called off). Running one here would only have its result thrown away.
        self.hold = False
        # Values stored by reference that replay delivers, fetched by the orchestrator on demand
        # (hutch.blobs.BlobsNeeded): key → msgpack bytes.
        self.blobs: dict[str, bytes] = {}
        # Concurrency limits (consumers/slots.py): whether this owner knows the instance holds its
        # slots, or was refused one (then no step attempt starts and a queued instance stays queued).
        self.priority = priority_of(meta)
        self.slot_held = False
        self.slot_token = ""  # the owner's token the slots were taken under (given back under it)
        self.slot_denied = False
        self.slot_wait: dict[str, Any] | None = None
        self.slot_wait_recorded: dict[str, Any] | None = meta.get(SLOT_WAIT_FIELD)
        self.state = ActorState.rebuild(
            self.history,
            snapshot.events,
            status=self.status,
            paused=dict(meta.get("paused") or {}),
            member=self.member,
        )

    # ------------------------------------------------------------------ one transition
    def apply(self, inputs: list[Input]) -> tuple[Transition | None, Effects]:
        """Fold a batch of inputs into one transition (None when nothing changed)."""
        tx = Transition(
            self.partition, self.workflow, self.instance_id, self.seq, self.created_ms, check_created=self._from_message
        )
        turn = Turn(self._now_ms(), tx, self.status)
        for item in inputs:
            self._on_input(turn, item)
        if turn.res and self.status == Status.WAITING:
            self.status = Status.RUNNING
        if self.status == Status.RUNNING:
            if self.state.deferred and not self.hold and not self.slot_denied and self.run is not None:
                self._start_deferred(turn)
            self._drive(turn)
        # Resolved while not live (paused): every result of the pause joins one group, which replay
        # delivers at once on resume — the workflow sees them together, as if they had arrived in
        # one batch. A group per arrival would let the first wake the workflow before the others
        # exist for it: it could then cancel a command whose outcome is already committed, or
        # leave an event consumed by a wait it cancelled.
        turn.res = []
        self._settle_status(turn)
        if self._needs_version and not self._waiting_recorded and self.status not in FINISHED:
            turn.tx.meta[WAITING_FIELD] = pack(self.version)
            self._waiting_recorded = True
        transition = turn.close(self.history)
        # The records this batch appended to history: what the logs, metrics and spans of its commit
        # read (the store may fold them into fewer stored entries, so the transition cannot say).
        self.appended = len(turn.records)
        return transition, turn.effects

    def committed(self, transition: Transition) -> None:
        """The transition is durable: advance the sequence number."""
        self.seq = transition.expected_seq + 1
        self._from_message = False

    def empty_transition(self) -> Transition:
        """A transition of this instance that writes nothing yet (its fields are added by the caller)."""
        return Transition(
            self.partition, self.workflow, self.instance_id, self.seq, self.created_ms, check_created=self._from_message
        )

    def close(self) -> None:
        """Free the live coroutine (eviction)."""
        if self.run is not None:
            self.run.close()
            self.run = None

    def step_call(self, name: str, count: int) -> StepCall:
        """The callable and config of a step of the live run."""
        assert self.run is not None
        return self.run.steps[(name, count)]

    def member(self, kind: TimerKind, name: str, count: int) -> bytes:
        """The timer member of this run's sleep, wait or retry ``name``#``count``."""
        return timer_member(kind, self.workflow, self.instance_id, self.run_no, name, count)

    @property
    def awaiting_version(self) -> str | None:
        """The version this instance needs to go on and no class of this worker has (it is not run here)."""
        return self.version if self._needs_version else None

    def pin_newest(self, turn: Turn) -> None:
        """Run on the newest version from now on (a start, or a restart) and record it."""
        self.version, self._workflow_cls = self.versions.newest_version, self.versions.newest
        turn.tx.meta[VERSION_FIELD] = pack(self.version)

    def _on_input(self, turn: Turn, item: Input) -> None:
        if isinstance(item, TimerFired) and self._workflow_cls is None and self.status in _LIVE:
            # Left in Redis, unhandled: an owner with the version fires it again and runs on.
            self._needs_version = True
            return
        if isinstance(item, StepDone):
            self._on_step_done(turn, item)
        elif isinstance(item, TimerFired):
            self._on_timer(turn, item.timer)
        elif isinstance(item, EventReceived | EventHeard):
            self._on_event(turn, item)
        elif isinstance(item, Control):
            if isinstance(item, BatchedControl) and item.run is not None and item.run != self.run_no:
                return  # its batch was delivered again after this (restart) was committed: done already
            lifecycle.control(self, turn, item.action, from_step=item.from_step, rollback=item.rollback)
        elif isinstance(item, ChildFinished):
            self._on_child(turn, item)
        elif isinstance(item, InstanceCreated | Redrive):
            self._on_wake(turn)
        elif isinstance(item, CreatedNotice) and self.status == Status.QUEUED:
            self._on_wake(turn)

    def _on_wake(self, turn: Turn) -> None:
        if self.status == Status.QUEUED and self.slot_denied:
            return  # over a concurrency limit: it stays queued until a slot is its
        if self.status == Status.QUEUED:
            self.status = Status.RUNNING
            turn.tx.meta["started"] = turn.now_ms
            self.pin_newest(turn)
            turn.record({"k": "life", "what": "started", "t": turn.now_ms})
        if self.status in _LIVE and self.run is None:
            self.status = Status.RUNNING
            self.ensure_run(turn)

    # ------------------------------------------------------------------ the live run
    def params_value(self) -> Any:
        """The params the code reads; large ones are stored by reference (hutch.blobs) and loaded on demand.

        Raises:
            BlobsNeeded: the params are stored by reference and not fetched yet (the orchestrator
                fetches them and applies again).
        """
        params = self.params
        if not isinstance(params, BlobRef):
            return params
        data = self.blobs.get(params.key)
        if data is None:
            raise BlobsNeeded([params])
        return unpack(data)

    def ensure_run(self, turn: Turn) -> None:
        """Rebuild the live run by replay (if there is none) and restart the attempts it lost."""
        if self.run is not None:
            return
        if self._workflow_cls is None:
            self._needs_version = True
            return
        params = self.params_value()  # before anything changes: it may ask for the params' blob
        self._needs_version = False
        if self._waiting_recorded:
            turn.tx.meta[WAITING_FIELD] = pack(None)
            self._waiting_recorded = False
        event = WorkflowEvent.build(params, self.created_ms, self.instance_id, self.workflow)
        run = WorkflowRun(
            self._workflow_cls(self._env), event, limits=self.limits, now_ms=self._now_ms, run_no=self.run_no
        )
        run.blobs = self.blobs
        run.replay(self.history)
        self.run = run
        state = self.state
        # Replay delivered every recorded group, the one results joined while paused included:
        # whatever resolves from now on is a later group.
        state.group = max(state.group, run.group)
        # A copy: an attempt lost with the last allowed one resolves (removes) its step meanwhile.
        for (name, count), st in list(state.steps.items()):
            call = run.steps.get((name, count))
            if call is not None:
                st.config = call.config
            # The recorded attempt, not any attempt of the step: an earlier one still running here
            # (the partition moved away and back) was declared lost by the owner in between, so its
            # result can never be accepted, and the recorded one runs nowhere.
            if st.running and not self._is_executing(
                self.workflow, self.instance_id, self.run_no, name, count, st.attempts
            ):
                self._interrupted(turn, name, count, st)
            elif not st.running and st.retry_member is None:
                # Issued and never attempted (its attempt was deferred by a handover) or its retry
                # came due during one: no timer will start it, so this owner does.
                self._start_attempt(turn, name, count, st)

    def _interrupted(self, turn: Turn, name: str, count: int, st: StepState) -> None:
        # The worker running this attempt died (we are its successor): the attempt counts.
        error = {"name": WorkerLostError.__name__, "message": f"the worker running attempt {st.attempts} was lost"}
        st.running = False
        turn.record(
            {"k": "attend", "n": name, "c": count, "a": st.attempts, "ok": False, "err": error, "t": turn.now_ms}
        )
        if attempts_left(st.resolved_config().retries, st.attempts):
            self._start_attempt(turn, name, count, st)
        else:
            self._resolve_step(turn, name, count, error)

    def _drive(self, turn: Turn) -> None:
        self.ensure_run(turn)
        run = self.run
        if run is None:
            return  # this worker lacks the instance's version
        state = self.state
        while True:
            if turn.res:
                delivered, turn.res = turn.res, []
                run.deliver(delivered)
                state.group += 1
            for command in run.take_commands():
                self._on_command(turn, command)
            if not turn.res or run.finished:
                break
        if run.finished:
            lifecycle.finish(self, turn, *run.outcome())

    def _on_command(self, turn: Turn, cmd: Issued) -> None:
        state = self.state
        cmd["g"] = state.group  # the group whose delivery led to this command (informational)
        if cmd["k"] == "invoke" and len(cmd["pb"]) > self.limits.inline_threshold:
            # The child's large params are stored once under this instance (the orchestrator puts
            # them before this commits) and the command holds their reference: replay never reads
            # them, and the outbox copies them under the child when it creates it.
            ref = BlobRef.new(cmd["pb"])
            turn.tx.blobs[ref.key] = cmd["pb"]
            cmd["pb"] = ref.packed()
        turn.record(cmd)
        if cmd["k"] == "patch":
            return  # a marker: only recorded
        key = (cmd["n"], cmd["c"])
        if cmd["k"] == "step":
            assert self.run is not None
            call = self.run.steps[key]
            st = StepState(call.config, cmd["cfg"])
            state.steps[key] = st
            self._start_attempt(turn, key[0], key[1], st)
        elif cmd["k"] == "sleep":
            member = self.member("sleep", *key)
            state.sleeps[key] = member
            state.arm(turn, cmd["due"], member, paused=self.status in lifecycle.PAUSED)
        elif cmd["k"] == "wait":
            buffered = state.take_buffered(cmd["type"])
            if buffered is not None:
                raw, event = buffered
                turn.tx.events_remove.append(raw)
                turn.resolve(
                    {
                        "k": "res",
                        "ref": "wait",
                        "n": key[0],
                        "c": key[1],
                        "ok": True,
                        "ev": event,
                        "t": turn.now_ms,
                        "g": state.group,
                    }
                )
                return
            member = self.member("wait", *key)
            state.waits[key] = (cmd["type"], member)
            state.arm(turn, cmd["due"], member, paused=self.status in lifecycle.PAUSED)
        elif cmd["k"] == "invoke":
            state.invokes[key] = cmd
            self.outbox(turn, "child", *key)  # creates the child once this commit is durable
        else:
            if cmd["ref"] == "step" and key in state.steps:
                turn.effects.cancel.append(key)
            self._drop_pending(turn, cmd["ref"], key)

    def _drop_pending(self, turn: Turn, kind: Kind, key: StepKey) -> None:
        if kind == "invoke":
            invoke = self.state.invokes.get(key)
            if invoke is not None:
                self.close_child(turn, invoke)
        member = self.state.pop_pending(kind, key)
        if kind == "step":
            # An attempt this transition scheduled (a re-drive of a lost one, say) must not start:
            # cancelling runs before executing once the transition committed.
            effects = turn.effects
            effects.execute = [(c, a) for c, a in effects.execute if (c.name, c.count) != key]
        if member is not None:
            self.state.disarm(turn, member)

    # ------------------------------------------------------------------ steps
    def _start_attempt(self, turn: Turn, name: str, count: int, st: StepState) -> None:
        deferred = self.state.deferred
        if self.hold or self.slot_denied:
            st.running = False
            deferred[(name, count)] = None
            return
        deferred.pop((name, count), None)
        st.attempts += 1
        st.running = True
        turn.record({"k": "att", "n": name, "c": count, "a": st.attempts, "t": turn.now_ms})
        if self.run is not None:
            turn.effects.execute.append((self.run.steps[(name, count)], st.attempts))

    def _start_deferred(self, turn: Turn) -> None:
        state = self.state
        deferred, state.deferred = state.deferred, {}
        for key in deferred:
            st = state.steps.get(key)
            if st is not None and not st.running and st.retry_member is None:
                self._start_attempt(turn, key[0], key[1], st)

    def _on_step_done(self, turn: Turn, done: StepDone) -> None:
        state = self.state
        st = state.steps.get((done.name, done.count))
        if st is None or done.run_no != self.run_no or done.attempt != st.attempts or not st.running:
            return  # a late result of a cancelled, terminated or restarted attempt
        st.running = False
        now, name, count = turn.now_ms, done.name, done.count
        if done.ok:
            turn.record({"k": "attend", "n": name, "c": count, "a": done.attempt, "ok": True, "t": now})
            state.steps.pop((name, count))
            res: Resolution = {
                "k": "res",
                "ref": "step",
                "n": name,
                "c": count,
                "ok": True,
                "vb": done.value_bytes,
                "t": now,
                "g": state.group,
            }
            turn.record(res)
            turn.res.append({**res, "v": done.value})  # the live run takes the value as it is, not its bytes
            return
        assert done.error is not None
        error, attempt = done.error, done.attempt
        retry = retry_due_ms(
            st.resolved_config().retries,
            st.attempts,
            now,
            retryable=done.retryable,
            error_wait_ms=done.error_wait_ms,
            longest_ms=round(self.limits.max_sleep.total_seconds() * 1000),
        )
        if retry is None:
            final: AttemptEnded = {
                "k": "attend",
                "n": name,
                "c": count,
                "a": attempt,
                "ok": False,
                "err": error,
                "t": now,
            }
            if done.refused:
                final["stop"] = "retry_if"  # the verdict is recorded: replay never asks retry_if again
            turn.record(final)
            self._resolve_step(turn, name, count, error)
            return
        due, source = retry
        ended: AttemptEnded = {
            "k": "attend",
            "n": name,
            "c": count,
            "a": attempt,
            "ok": False,
            "err": error,
            "retry_at": due,
            "wait": source,
            "t": now,
        }
        turn.record(ended)
        st.retry_member = self.member("retry", name, count)
        state.arm(turn, due, st.retry_member, paused=self.status in lifecycle.PAUSED)

    def _resolve_step(self, turn: Turn, name: str, count: int, error: dict[str, str]) -> None:
        self.state.steps.pop((name, count), None)
        turn.resolve(
            {
                "k": "res",
                "ref": "step",
                "n": name,
                "c": count,
                "ok": False,
                "err": error,
                "t": turn.now_ms,
                "g": self.state.group,
            }
        )

    # ------------------------------------------------------------------ timers and events
    def _on_timer(self, turn: Turn, member: bytes) -> None:
        state = self.state
        if member in state.paused:
            return  # fired just before a pause suspended it; resume re-arms it
        fields = unpack(member)
        if fields[0] in OUTBOX_KINDS:
            self._on_outbox(turn, member, fields)
            return
        turn.tx.timers_remove.append(member)
        state.timers.pop(member, None)
        kind, _, _, run_no, name, count = fields
        key = (name, count)
        if run_no != self.run_no:
            return
        if kind == "sleep" and state.sleeps.get(key) == member:
            del state.sleeps[key]
            turn.resolve(
                {"k": "res", "ref": "sleep", "n": name, "c": count, "ok": True, "t": turn.now_ms, "g": state.group}
            )
        elif kind == "wait" and key in state.waits:
            event_type, _ = state.waits.pop(key)
            error = timeout_error(name, count, event_type)
            turn.resolve(
                {
                    "k": "res",
                    "ref": "wait",
                    "n": name,
                    "c": count,
                    "ok": False,
                    "err": error,
                    "t": turn.now_ms,
                    "g": state.group,
                }
            )
        elif kind == "retry":
            st = state.steps.get(key)
            if st is not None and st.retry_member == member:
                if self.run is None and self.status in _LIVE:
                    self.status = Status.RUNNING
                    # Before the retry is marked due: rebuilding the run starts the attempts nothing
                    # else will, and this one is this timer's to start, once.
                    self.ensure_run(turn)
                st.retry_member = None
                if self.run is not None:
                    self._start_attempt(turn, name, count, st)

    def _on_event(self, turn: Turn, item: EventReceived | EventHeard) -> None:
        state = self.state
        if isinstance(item, EventHeard):
            # Heard ahead of its broker message: only once the event sent before it is here.
            if item.prev is not None and item.prev not in state.seen_events:
                return
            item = item.message
        message = item
        if self.status in FINISHED or message.id in state.seen_events:
            return
        state.seen_events.add(message.id)
        event: EventRecord = {
            "type": message.event_type,
            "payload": unpack(message.payload),
            "ts": message.sent_ms,
            "id": message.id,
        }
        for key, (event_type, member) in state.waits.items():
            if event_type == message.event_type:
                del state.waits[key]
                state.disarm(turn, member)
                turn.resolve(
                    {
                        "k": "res",
                        "ref": "wait",
                        "n": key[0],
                        "c": key[1],
                        "ok": True,
                        "ev": event,
                        "t": turn.now_ms,
                        "g": state.group,
                    }
                )
                return
        raw = pack(event)
        state.buffer.append((raw, event))
        turn.tx.events_push.append(raw)

    # ------------------------------------------------------------------ children (step.invoke)
    def outbox(self, turn: Turn, kind: OutboxKind, a: str = "", b: Any = 0) -> None:
        """Have the owner carry out an effect once this transition is durable (see consumers/children.py)."""
        turn.tx.timers_add.append(
            (turn.now_ms, outbox_member(kind, self.workflow, self.instance_id, self.run_no, a, b))
        )

    def close_child(self, turn: Turn, invoke: InvokeCommand) -> None:
        """The invoke ends unsettled (cancelled, or this instance ended): apply its ``parent_close`` policy."""
        if invoke["close"] == "terminate":
            self.outbox(turn, "close", invoke["wf"], invoke["id"])

    def _on_outbox(self, turn: Turn, member: bytes, fields: list[Any]) -> None:
        kind, run_no, a, b = fields[0], fields[3], fields[4], fields[5]
        effects = turn.effects.outbox
        if kind == "close":
            effects.append(CloseChild(member, self.partition, a, b))
            return
        if kind == "child":
            invoke = self.state.invokes.get((a, b)) or self._abandoned_invoke(a, b)
            if invoke is not None and run_no == self.run_no:
                link: ParentLink = {"wf": self.workflow, "id": self.instance_id, "n": a, "c": b, "run": run_no}
                effects.append(StartChild(member, self.partition, link, invoke, self.trace))
                return
        elif self.parent is not None and run_no == self.run_no and self.status in FINISHED:
            message = child_finished(self.parent, self.workflow, self.instance_id, self.status, self.output, self.error)
            effects.append(NotifyParent(member, self.partition, message))
            return
        # Void: the invoke was settled or cancelled, or the child was restarted since it finished.
        turn.tx.timers_remove.append(member)

    def _abandoned_invoke(self, name: str, count: int) -> InvokeCommand | None:
        """The invoke ``name``#``count`` of this run if it is no longer pending and its child runs on (``abandon``).

        Cancelled, or this instance ended, before its child was created: the child must still exist
        and run. (A ``terminate`` child never created is as good as terminated: it never runs.)
        """
        for record in self.history:
            if record["k"] == "invoke" and record["n"] == name and record["c"] == count:
                return record if record["close"] == "abandon" else None
        return None

    def _on_child(self, turn: Turn, message: ChildFinished) -> None:
        state = self.state
        key = (message.name, message.count)
        invoke = state.invokes.get(key)
        if (
            invoke is None
            or message.run != self.run_no
            or (invoke["wf"], invoke["id"]) != (message.child_workflow, message.child_id)
        ):
            return  # a copy, a child of an earlier run, or an invoke no longer pending (cancelled, or we ended)
        del state.invokes[key]
        res: Resolution = {
            "k": "res",
            "ref": "invoke",
            "n": key[0],
            "c": key[1],
            "ok": message.status == "complete",
            "t": turn.now_ms,
            "g": state.group,
        }
        if message.status == "complete":
            if message.output is not None:
                res["vb"] = message.output
        else:
            error = message.error or {"name": "Terminated", "message": "the child instance was terminated"}
            failed = ChildWorkflowError(message.child_workflow, message.child_id, error["name"], error["message"])
            res["err"] = failed.record()
        turn.resolve(res)

    # ------------------------------------------------------------------ status
    def _settle_status(self, turn: Turn) -> None:
        state = self.state
        if self.status == Status.WAITING_FOR_PAUSE and not state.any_running():
            self.status = Status.PAUSED
        elif self.status in _LIVE:
            if state.steps:
                self.status = Status.RUNNING
            elif state.sleeps or state.waits or state.invokes:
                self.status = Status.WAITING
        after = self.status
        turn.set_status(after)
        if after == Status.WAITING:
            # A short sleep (or retry, or a wait about to time out) keeps the live coroutine: when the
            # timer fires the run continues with no load and no replay. Anything longer leaves memory.
            timers = state.timers
            warm = self._warm_ms > 0 and bool(timers) and min(timers.values()) <= turn.now_ms + self._warm_ms
            turn.effects.evict = not warm
        else:
            turn.effects.evict = after == Status.PAUSED or after in FINISHED
