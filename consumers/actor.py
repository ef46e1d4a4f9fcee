"""One instance's state machine on its partition owner.

An :class:`InstanceActor` turns a batch of inputs (broker messages and local step results)
into one :class:`~engine.store.base.Transition` — the history records, timers, buffered events
and meta fields to commit atomically — plus the effects to carry out once that commit
succeeded (step attempts to start, local executions to cancel). It holds the live
``WorkflowRun`` while the instance runs; waiting, paused and finished instances are evicted
and rebuilt from Redis (replay) when their next input arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hutch import tracing
from hutch.broker.envelopes import Control, EventReceived, InstanceCreated, Message, Redrive, TimerFired
from hutch.config import Limits, StepConfig
from hutch.consumers.items import CreatedNotice, StepDone
from hutch.entrypoint import Env, WorkflowEntrypoint
from hutch.errors import HutchError, WorkerLostError, error_record
from hutch.events import WorkflowEvent
from hutch.executor import StepCall, WorkflowRun, timeout_error
from hutch.history import Record
from hutch.serialization import encode_value, pack, unpack
from hutch.status import FINISHED
from hutch.store.base import Snapshot, Transition

_ACTIVE = frozenset({"queued", "running", "waitingForPause"})


@dataclass(slots=True)
class _StepState:
    config: StepConfig | None
    cfg: dict[str, Any]
    attempts: int = 0
    running: bool = False
    retry_member: bytes | None = None

    def resolved_config(self) -> StepConfig:
        if self.config is None:
            self.config = StepConfig.model_validate(self.cfg)
        return self.config


@dataclass(slots=True)
class Effects:
    """What to do after the transition committed."""

    execute: list[tuple[StepCall, int]] = field(default_factory=list)
    cancel: list[tuple[str, int]] = field(default_factory=list)
    cancel_all: bool = False
    evict: bool = False


Input = Message | StepDone | CreatedNotice


class InstanceActor:
    """State and transitions of one instance, owned by one worker at a time."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        partition: int,
        workflow_cls: type[WorkflowEntrypoint],
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
        self.status: str = meta["status"]
        self.run_no: int = meta.get("run", 0)
        self.created_ms: int = meta["created"]
        self.params: Any = meta.get("params")
        # The W3C context every span of this instance continues (stored at create), on any worker.
        self.trace = tracing.instance_traceparent(meta.get("trace"), self.workflow, self.instance_id, self.created_ms)
        self._workflow_cls = workflow_cls
        self._env = env
        self._limits = limits
        self._now_ms = now_ms
        self._is_executing = is_executing
        self._warm_ms = warm_ms
        # Built from its start message, not from Redis: the first commit also checks the stored
        # creation time, so a stale message of an instance with the same id cannot run.
        self._from_message = from_message
        self.history: list[Record] = snapshot.history
        self.run: WorkflowRun | None = None
        self._steps: dict[tuple[str, int], _StepState] = {}
        self._sleeps: dict[tuple[str, int], bytes] = {}
        self._waits: dict[tuple[str, int], tuple[str, bytes]] = {}
        self._timers: dict[bytes, int] = {}
        self._paused: dict[bytes, int] = dict(meta.get("paused") or {})
        self._buffer: list[tuple[bytes, dict[str, Any]]] = []
        self._seen_events: set[str] = set()
        self._group = 0
        # Set while the instance's partition is being handed over (see Orchestrator.hold): results
        # still commit, but no new attempt starts here; such steps wait in _deferred, recorded as
        # issued and not attempted, for the next owner's re-drive (or this one's, if the handover
        # is called off). Running one here would only have its result thrown away.
        self.hold = False
        self._deferred: dict[tuple[str, int], None] = {}
        self._rebuild_state(snapshot.events)

    # ------------------------------------------------------------------ loading
    def _rebuild_state(self, events: list[bytes]) -> None:
        pause_group: int | None = None  # the group results join while paused (histories before it: None)
        for r in self.history:
            k = r["k"]
            if k == "step":
                self._steps[(r["n"], r["c"])] = _StepState(None, r["cfg"])
            elif k == "att":
                st = self._steps.get((r["n"], r["c"]))
                if st is not None:
                    st.attempts, st.running = r["a"], True
                    if st.retry_member is not None:
                        # This attempt is the retry: its timer fired and the commit removed it.
                        self._timers.pop(st.retry_member, None)
                        st.retry_member = None
            elif k == "attend":
                st = self._steps.get((r["n"], r["c"]))
                if st is not None:
                    st.running = False
                    if "retry_at" in r:
                        st.retry_member = self._member("retry", r["n"], r["c"])
                        self._timers[st.retry_member] = r["retry_at"]
            elif k == "sleep":
                member = self._member("sleep", r["n"], r["c"])
                self._sleeps[(r["n"], r["c"])] = member
                self._timers[member] = r["due"]
            elif k == "wait":
                member = self._member("wait", r["n"], r["c"])
                self._waits[(r["n"], r["c"])] = (r["type"], member)
                self._timers[member] = r["due"]
            elif k == "retime":
                self._timers[self._member(r["ref"], r["n"], r["c"])] = r["due"]
            elif k in ("res", "cancel"):
                self._forget(r["ref"], (r["n"], r["c"]))
                if k == "res":
                    self._group = max(self._group, r["g"] + 1)
                    if "ev" in r:
                        self._seen_events.add(r["ev"]["id"])
            elif k == "life":
                pause_group = r.get("g") if r["what"] == "paused" else None
        for raw in events:
            event = unpack(raw)
            self._buffer.append((raw, event))
            self._seen_events.add(event["id"])
        for member in self._paused:
            self._timers.pop(member, None)
        if self.status in FINISHED:
            # Whatever history left unresolved ended with the instance (terminate, or run() returning
            # or raising with work in flight): nothing of it may resolve, retry or re-arm later.
            self._steps.clear()
            self._sleeps.clear()
            self._waits.clear()
            self._timers.clear()
        elif self.status in ("paused", "waitingForPause") and pause_group is not None:
            # Results committed during the pause join the group it recorded (see apply).
            self._group = pause_group

    def _forget(self, kind: str, key: tuple[str, int]) -> None:
        member: bytes | None = None
        if kind == "step":
            st = self._steps.pop(key, None)
            member = st.retry_member if st else None
        elif kind == "sleep":
            member = self._sleeps.pop(key, None)
        else:
            wait = self._waits.pop(key, None)
            member = wait[1] if wait else None
        if member is not None:
            self._timers.pop(member, None)

    # ------------------------------------------------------------------ one transition
    def apply(self, inputs: list[Input]) -> tuple[Transition | None, Effects]:
        """Fold a batch of inputs into one transition (None when nothing changed)."""
        self._now = self._now_ms()
        self._records: list[Record] = []
        self._res: list[Record] = []
        self._effects = Effects()
        self._tx = Transition(
            self.partition, self.workflow, self.instance_id, self.seq, self.created_ms, check_created=self._from_message
        )
        self._status_before = self.status
        for item in inputs:
            self._on_input(item)
        if self._res and self.status == "waiting":
            self._set_status("running")
        if self.status == "running":
            if self._deferred and not self.hold and self.run is not None:
                self._start_deferred()
            self._drive()
        # Resolved while not live (paused): every result of the pause joins one group, which replay
        # delivers at once on resume — the workflow sees them together, as if they had arrived in
        # one batch. A group per arrival would let the first wake the workflow before the others
        # exist for it: it could then cancel a command whose outcome is already committed, or
        # leave an event consumed by a wait it cancelled.
        self._res = []
        self._settle_status()
        return self._close_tx(), self._effects

    def committed(self, transition: Transition) -> None:
        """The transition is durable: advance the sequence number."""
        self.seq = transition.expected_seq + 1
        self._from_message = False

    def close(self) -> None:
        """Free the live coroutine (eviction)."""
        if self.run is not None:
            self.run.close()
            self.run = None

    def step_call(self, name: str, count: int) -> StepCall:
        """The callable and config of a step of the live run."""
        assert self.run is not None
        return self.run.steps[(name, count)]

    def _on_input(self, item: Input) -> None:
        if isinstance(item, StepDone):
            self._on_step_done(item)
        elif isinstance(item, TimerFired):
            self._on_timer(item.timer)
        elif isinstance(item, EventReceived):
            self._on_event(item)
        elif isinstance(item, Control):
            self._on_control(item.action)
        elif isinstance(item, InstanceCreated | Redrive):
            self._on_wake()
        elif isinstance(item, CreatedNotice) and self.status == "queued":
            self._on_wake()

    def _on_wake(self) -> None:
        if self.status == "queued":
            self._set_status("running")
            self._tx.meta["started"] = self._now
            self._record({"k": "life", "what": "started"})
        if self.status in ("running", "waiting") and self.run is None:
            self._set_status("running")
            self._ensure_run()

    # ------------------------------------------------------------------ the live run
    def _ensure_run(self) -> None:
        if self.run is not None:
            return
        event = WorkflowEvent.build(self.params, self.created_ms, self.instance_id, self.workflow)
        run = WorkflowRun(self._workflow_cls(self._env), event, limits=self._limits, now_ms=self._now_ms)
        run.replay(self.history)
        self.run = run
        # Replay delivered every recorded group, the one results joined while paused included:
        # whatever resolves from now on is a later group.
        self._group = max(self._group, run.group)
        # A copy: an attempt lost with the last allowed one resolves (removes) its step meanwhile.
        for (name, count), st in list(self._steps.items()):
            call = run.steps.get((name, count))
            if call is not None:
                st.config = call.config
            # The recorded attempt, not any attempt of the step: an earlier one still running here
            # (the partition moved away and back) was declared lost by the owner in between, so its
            # result can never be accepted, and the recorded one runs nowhere.
            if st.running and not self._is_executing(
                self.workflow, self.instance_id, self.run_no, name, count, st.attempts
            ):
                self._interrupted(name, count, st)
            elif not st.running and st.retry_member is None:
                # Issued and never attempted (its attempt was deferred by a handover) or its retry
                # came due during one: no timer will start it, so this owner does.
                self._start_attempt(name, count, st)

    def _interrupted(self, name: str, count: int, st: _StepState) -> None:
        # The worker running this attempt died (we are its successor): the attempt counts.
        error = {"name": WorkerLostError.__name__, "message": f"the worker running attempt {st.attempts} was lost"}
        st.running = False
        self._record({"k": "attend", "n": name, "c": count, "a": st.attempts, "ok": False, "err": error})
        if st.attempts < st.resolved_config().retries.limit + 1:
            self._start_attempt(name, count, st)
        else:
            self._resolve_step(name, count, ok=False, error=error)

    def _drive(self) -> None:
        self._ensure_run()
        run = self.run
        assert run is not None
        while True:
            if self._res:
                delivered, self._res = self._res, []
                run.deliver(delivered)
                self._group += 1
            for command in run.take_commands():
                self._on_command(command)
            if not self._res or run.finished:
                break
        if run.finished:
            self._finish(*run.outcome())

    def _on_command(self, cmd: Record) -> None:
        cmd["g"] = self._group  # the group whose delivery led to this command (informational)
        self._record(cmd)
        kind, key = cmd["k"], (cmd["n"], cmd["c"])
        if kind == "step":
            assert self.run is not None
            call = self.run.steps[key]
            st = _StepState(call.config, cmd["cfg"])
            self._steps[key] = st
            self._start_attempt(key[0], key[1], st)
        elif kind == "sleep":
            member = self._member("sleep", *key)
            self._sleeps[key] = member
            self._add_timer(cmd["due"], member)
        elif kind == "wait":
            for i, (raw, event) in enumerate(self._buffer):
                if event["type"] == cmd["type"]:
                    del self._buffer[i]
                    self._tx.events_remove.append(raw)
                    self._res.append(
                        self._record({"k": "res", "ref": "wait", "n": key[0], "c": key[1], "ok": True, "ev": event})
                    )
                    return
            member = self._member("wait", *key)
            self._waits[key] = (cmd["type"], member)
            self._add_timer(cmd["due"], member)
        elif kind == "cancel":
            if cmd["ref"] == "step" and key in self._steps:
                self._effects.cancel.append(key)
            self._drop_pending(cmd["ref"], key)

    def _drop_pending(self, kind: str, key: tuple[str, int]) -> None:
        member: bytes | None = None
        if kind == "step":
            st = self._steps.pop(key, None)
            member = st.retry_member if st else None
            # An attempt this transition scheduled (a re-drive of a lost one, say) must not start:
            # cancelling runs before executing once the transition committed.
            self._effects.execute = [(c, a) for c, a in self._effects.execute if (c.name, c.count) != key]
        elif kind == "sleep":
            member = self._sleeps.pop(key, None)
        else:
            wait = self._waits.pop(key, None)
            member = wait[1] if wait else None
        if member is not None:
            self._remove_timer(member)

    # ------------------------------------------------------------------ steps
    def _start_attempt(self, name: str, count: int, st: _StepState) -> None:
        if self.hold:
            st.running = False
            self._deferred[(name, count)] = None
            return
        self._deferred.pop((name, count), None)
        st.attempts += 1
        st.running = True
        self._record({"k": "att", "n": name, "c": count, "a": st.attempts})
        if self.run is not None:
            self._effects.execute.append((self.run.steps[(name, count)], st.attempts))

    def _start_deferred(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for key in deferred:
            st = self._steps.get(key)
            if st is not None and not st.running and st.retry_member is None:
                self._start_attempt(key[0], key[1], st)

    def _on_step_done(self, done: StepDone) -> None:
        st = self._steps.get((done.name, done.count))
        if st is None or done.run_no != self.run_no or done.attempt != st.attempts or not st.running:
            return  # a late result of a cancelled, terminated or restarted attempt
        st.running = False
        base: Record = {"k": "attend", "n": done.name, "c": done.count, "a": done.attempt, "ok": done.ok}
        if done.ok:
            self._record(base)
            self._steps.pop((done.name, done.count))
            res = self._record(
                {"k": "res", "ref": "step", "n": done.name, "c": done.count, "ok": True, "vb": done.value_bytes}
            )
            self._res.append({**res, "v": done.value})
            return
        assert done.error is not None
        base["err"] = done.error
        retries = st.resolved_config().retries
        if done.retryable and st.attempts < retries.limit + 1:
            due = self._now + round(retries.wait_before_retry(st.attempts) * 1000)
            base["retry_at"] = due
            self._record(base)
            st.retry_member = self._member("retry", done.name, done.count)
            self._add_timer(due, st.retry_member)
            return
        self._record(base)
        self._resolve_step(done.name, done.count, ok=False, error=done.error)

    def _resolve_step(self, name: str, count: int, *, ok: bool, error: dict[str, str]) -> None:
        self._steps.pop((name, count), None)
        self._res.append(self._record({"k": "res", "ref": "step", "n": name, "c": count, "ok": ok, "err": error}))

    # ------------------------------------------------------------------ timers and events
    def _member(self, kind: str, name: str, count: int) -> bytes:
        return pack([kind, self.workflow, self.instance_id, self.run_no, name, count])

    def _add_timer(self, due: int, member: bytes) -> None:
        if self.status in ("paused", "waitingForPause"):
            self._paused[member] = max(0, due - self._now)
            self._tx.meta["paused"] = pack(self._paused)
            return
        self._timers[member] = due
        tx = self._tx
        if member in tx.timers_remove:
            # Removed earlier in this transition (a pause, then a resume in the same batch): the
            # commit applies adds before removes, so the removal must go or the timer is lost.
            tx.timers_remove.remove(member)
        tx.timers_add.append((due, member))

    def _remove_timer(self, member: bytes) -> None:
        if self._paused.pop(member, None) is not None:
            self._tx.meta["paused"] = pack(self._paused or None)
        if self._timers.pop(member, None) is not None:
            self._tx.timers_remove.append(member)

    def _on_timer(self, member: bytes) -> None:
        if member in self._paused:
            return  # fired just before a pause suspended it; resume re-arms it
        self._tx.timers_remove.append(member)
        self._timers.pop(member, None)
        kind, _, _, run_no, name, count = unpack(member)
        key = (name, count)
        if run_no != self.run_no:
            return
        if kind == "sleep" and self._sleeps.get(key) == member:
            del self._sleeps[key]
            self._res.append(self._record({"k": "res", "ref": "sleep", "n": name, "c": count, "ok": True}))
        elif kind == "wait" and key in self._waits:
            event_type, _ = self._waits.pop(key)
            error = timeout_error(name, count, event_type)
            self._res.append(
                self._record({"k": "res", "ref": "wait", "n": name, "c": count, "ok": False, "err": error})
            )
        elif kind == "retry":
            st = self._steps.get(key)
            if st is not None and st.retry_member == member:
                if self.run is None and self.status in ("running", "waiting"):
                    self._set_status("running")
                    # Before the retry is marked due: rebuilding the run starts the attempts nothing
                    # else will, and this one is this timer's to start, once.
                    self._ensure_run()
                st.retry_member = None
                if self.run is not None:
                    self._start_attempt(name, count, st)

    def _on_event(self, message: EventReceived) -> None:
        if self.status in FINISHED or message.id in self._seen_events:
            return
        self._seen_events.add(message.id)
        event = {
            "type": message.event_type,
            "payload": unpack(message.payload),
            "ts": message.sent_ms,
            "id": message.id,
        }
        for key, (event_type, member) in self._waits.items():
            if event_type == message.event_type:
                del self._waits[key]
                self._remove_timer(member)
                res = {"k": "res", "ref": "wait", "n": key[0], "c": key[1], "ok": True, "ev": event}
                self._res.append(self._record(res))
                return
        raw = pack(event)
        self._buffer.append((raw, event))
        self._tx.events_push.append(raw)

    # ------------------------------------------------------------------ lifecycle
    def _on_control(self, action: str) -> None:
        if action == "restart":
            self._restart()
            return
        if self.status in FINISHED:
            return
        if action == "terminate":
            self._end("terminated", {"ended": self._now})
            self._record({"k": "life", "what": "terminated"})
        elif action == "pause" and self.status not in ("paused", "waitingForPause"):
            running = any(st.running for st in self._steps.values())
            self._set_status("waitingForPause" if running else "paused")
            for member, due in self._timers.items():
                self._paused[member] = max(0, due - self._now)
                self._tx.timers_remove.append(member)
            self._timers.clear()
            self._tx.meta["paused"] = pack(self._paused or None)
            # Every result that arrives during the pause joins this group (see apply); recorded, so
            # an actor rebuilt during the pause puts later ones there too.
            self._record({"k": "life", "what": "paused", "g": self._group})
            self.close()
        elif action == "resume" and self.status in ("paused", "waitingForPause"):
            self._set_status("running")
            for member, remaining in self._paused.items():
                due = self._now + remaining
                self._add_timer(due, member)
                kind, _, _, _, name, count = unpack(member)
                # A retry's too (describe() has no row for it and skips it): an actor rebuilt from
                # history must know the timer's new due time, or a later pause would compute the
                # time left from the old one.
                self._record({"k": "retime", "ref": kind, "n": name, "c": count, "due": due})
            self._paused.clear()
            self._tx.meta["paused"] = pack(None)
            self._record({"k": "life", "what": "resumed"})
            self._ensure_run()

    def _restart(self) -> None:
        was_finished = self.status in FINISHED
        self._end("running", {"started": self._now, "ended": pack(None), "output": pack(None), "error": pack(None)})
        self._tx.ttl_s = -1 if was_finished else 0
        self._tx.reset_history = True
        self._tx.events_push.clear()
        self._tx.events_remove.clear()
        self._records = [r for r in self._records if r["k"] == "life"]
        self.history = []
        self._res = []
        self._buffer.clear()
        self._seen_events.clear()
        self._group = 0
        self.run_no += 1
        self._tx.meta["run"] = self.run_no
        self._record({"k": "life", "what": "restarted"})
        self._ensure_run()

    def _end(self, status: str, meta: dict[str, Any]) -> None:
        """Stop everything in flight: cancel local attempts, disarm timers, drop the run."""
        self._effects.cancel_all = True
        self._effects.execute.clear()  # scheduled by this transition before it ended: never started
        for member in self._timers:
            self._tx.timers_remove.append(member)
        self._tx.timers_remove.extend(self._paused)
        self._timers.clear()
        if self._paused:
            self._paused.clear()
            self._tx.meta["paused"] = pack(None)
        self._steps.clear()
        self._sleeps.clear()
        self._waits.clear()
        self.close()
        self._set_status(status)
        self._tx.meta.update(meta)
        if status in FINISHED:
            self._tx.ttl_s = int(self._limits.retention.total_seconds())

    def _finish(self, ok: bool, value: Any) -> None:
        meta: dict[str, Any] = {"ended": self._now}
        if ok:
            try:
                data, _ = encode_value(
                    value, what=f"output of instance {self.instance_id!r}", limit=self._limits.max_payload_bytes
                )
                meta["output"] = data
            except HutchError as exc:
                ok, value = False, exc
        if not ok:
            meta["error"] = pack(error_record(value))
        self._end("complete" if ok else "errored", meta)

    # ------------------------------------------------------------------ status and the transition
    def _set_status(self, status: str) -> None:
        self.status = status

    def _settle_status(self) -> None:
        if self.status == "waitingForPause" and not any(st.running for st in self._steps.values()):
            self.status = "paused"
        elif self.status in ("running", "waiting"):
            if self._steps:
                self.status = "running"
            elif self._sleeps or self._waits:
                self.status = "waiting"
        before, after = self._status_before, self.status
        if before != after:
            self._tx.meta["status"] = after
            self._tx.status_from, self._tx.status_to = before, after
            if (before in _ACTIVE) != (after in _ACTIVE):
                self._tx.active = "+" if after in _ACTIVE else "-"
        if after == "waiting":
            # A short sleep (or retry, or a wait about to time out) keeps the live coroutine: when the
            # timer fires the run continues with no load and no replay. Anything longer leaves memory.
            warm = self._warm_ms > 0 and bool(self._timers) and min(self._timers.values()) <= self._now + self._warm_ms
            self._effects.evict = not warm
        else:
            self._effects.evict = after == "paused" or after in FINISHED

    def _record(self, record: Record) -> Record:
        record.setdefault("t", self._now)
        if record["k"] == "res":
            record["g"] = self._group
        self._records.append(record)
        return record

    def _close_tx(self) -> Transition | None:
        tx = self._tx
        if self._records:
            tx.history = [pack(r) for r in self._records]
            self.history.extend(self._records)
        if not (tx.history or tx.meta or tx.timers_add or tx.timers_remove or tx.events_push or tx.events_remove):
            return None
        return tx
