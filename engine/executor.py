"""Runs one instance's ``run()`` against its history: the replay executor.

A :class:`WorkflowRun` owns the instance's :class:`WorkflowLoop`. Workflow code issues
*commands* (``step.do``, ``step.sleep``, ``step.wait_for_event``); the run checks each against
the recorded command at the same position while replaying, and collects the ones beyond
history as new work for the consumer. *Resolutions* (a step result, a sleep that ended, an
event) are delivered in the groups they were committed in, and after each group the loop runs
until workflow code is blocked again — so live execution and replay see the same interleaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hutch import logs
from hutch.blobs import BlobRef, BlobsNeeded, record_ref, stored_ref
from hutch.children import InvokeConfig, derived_child_id
from hutch.config import Limits, StepConfig, check_instance_id, check_step_name, check_workflow_name
from hutch.errors import (
    EventTimeoutError,
    HutchError,
    NondeterminismError,
    StepLimitExceeded,
    WorkflowCodeError,
    error_from_record,
)
from hutch.events import ReceivedEvent, WorkflowEvent, ms_to_datetime
from hutch.history import (
    CancelCommand,
    Command,
    InvokeCommand,
    Issued,
    Key,
    PatchMarker,
    Record,
    Resolution,
    StepCommand,
    TimerCommand,
    TimerCommandKind,
    describe_command,
    is_issued,
    key_of,
)
from hutch.loop import WorkflowLoop
from hutch.serialization import check_depth, encode_value, unpack
from hutch.step import WorkflowStep

if TYPE_CHECKING:
    from hutch.entrypoint import WorkflowEntrypoint


@dataclass(slots=True)
class StepCall:
    """What the consumer needs to execute a step's attempts."""

    name: str
    count: int
    fn: Callable[..., Any]
    config: StepConfig


# StepConfig objects used again and again (the default, module-level ones) -> their recorded form.
_RECORDED_CONFIGS: dict[int, tuple[StepConfig, dict[str, Any]]] = {}
_RECORDED_CONFIGS_MAX = 256


def _recorded_config(config: StepConfig, *, reusable: bool) -> dict[str, Any]:
    """``config.model_dump()``, the form history records, computed once per reused config object.

    Most steps share a config object, and dumping it again costs a few microseconds per step. The
    dict returned is shared: records are never modified once built.
    """
    if not reusable:
        return config.model_dump()
    cached = _RECORDED_CONFIGS.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    if len(_RECORDED_CONFIGS) >= _RECORDED_CONFIGS_MAX:
        _RECORDED_CONFIGS.clear()
    dumped = config.model_dump()
    _RECORDED_CONFIGS[id(config)] = (config, dumped)
    return dumped


class WorkflowRun:
    """One live (or replaying) execution of an instance's ``run()``."""

    def __init__(
        self,
        workflow: WorkflowEntrypoint,
        event: WorkflowEvent,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        run_no: int = 0,
    ) -> None:
        self.workflow = workflow
        self.event = event
        self.limits = limits
        self.run_no = run_no  # the instance's run number: part of the ids ``step.invoke`` derives
        self._now_ms = now_ms
        # Abstract for mypy: the loop implements only what tasks and futures use.
        self.loop = WorkflowLoop(on_code_error=self._code_error)  # type: ignore[abstract]
        self.step = WorkflowStep(self)
        self._recorded: list[Issued] = []
        self._cursor = 0
        self._new: list[Issued] = []
        self._patches: dict[str, bool] = {}  # patch id → what patched() answered in this run
        self._pending: dict[Key, asyncio.Future[Any]] = {}
        self._counts: dict[str, int] = {}
        self._steps_issued = 0
        self.steps: dict[tuple[str, int], StepCall] = {}
        self.failure: HutchError | None = None
        self.group = 0
        self._task: asyncio.Task[Any] | None = None
        # A terminate with rollback: the undos run in a task of their own and the workflow's code gets
        # nothing more; ``_rollback_at`` (replay) is the position in history where they began.
        self.rolling_back = False
        self._rollback_task: asyncio.Task[Any] | None = None
        self._rollback_at: int | None = None
        self.replaying = False
        # Values stored by reference that replay may deliver (key → msgpack bytes): see deliver().
        self.blobs: Mapping[str, bytes] = {}

    # ----------------------------------------------------------------- driving
    def start(self) -> None:
        """Start ``run()`` and let it run until it blocks."""
        with logs.running(self):  # what run() logs carries the instance, and nothing while it replays
            self._task = self.loop.create_task(self.workflow.run(self.event, self.step))
        self.loop.run_until_quiescent()

    def replay(self, history: list[Record]) -> None:
        """Rebuild the run's state by re-running ``run()`` against recorded history."""
        self._recorded = [r for r in history if is_issued(r)]
        groups: dict[int, list[Resolution]] = {}
        rollback_group: int | None = None
        for record in history:
            if record["k"] == "res":
                groups.setdefault(record["g"], []).append(record)
            elif record["k"] == "life" and record["what"] == "rollback" and rollback_group is None:
                rollback_group = record.get("g", 0)
                self._rollback_at = _issued_before(history, record)
        self.replaying = True
        try:
            self.start()
            for g in sorted(groups):
                if rollback_group is not None and g >= rollback_group and not self.rolling_back:
                    self.begin_rollback()
                self.deliver(groups[g])
                self.group = g + 1
            if rollback_group is not None and not self.rolling_back:
                self.begin_rollback()
        finally:
            self.replaying = False
        self._skip_markers()
        if self.failure is None and self._cursor < len(self._recorded):
            self._fail(self._diverged(None))

    def deliver(self, resolutions: list[Resolution]) -> None:
        """Settle the commands these resolutions refer to, then run until blocked.

        Raises:
            BlobsNeeded: a value this delivers is stored by reference and not in :attr:`blobs`
                (raised before anything is delivered; the caller fetches them and replays again).
        """
        self._check_blobs(resolutions)
        for record in resolutions:
            future = self._pending.pop(key_of(record), None)
            if future is None or future.done():
                continue
            if record["ok"]:
                future.set_result(self._value(record))
            else:
                future.set_exception(error_from_record(record["err"]))
        if self.failure is None:
            self.loop.run_until_quiescent()

    def begin_rollback(self) -> None:
        """A terminate with rollback: run the undos of the completed rollback steps, and nothing more of ``run()``.

        The workflow's pending commands never settle now, and what it issued beyond history is
        dropped (never recorded); the undos run as durable steps (:meth:`hutch.saga.Saga.rollback_all`,
        every undo even when some fail), and :attr:`finished` waits for them.
        """
        self._new.clear()
        self._pending.clear()
        self.rolling_back = True
        self._rollback_task = self.loop.create_task(self.step._saga.terminated())
        if self.failure is None:
            self.loop.run_until_quiescent()

    def take_commands(self) -> list[Issued]:
        """The commands (and patch markers) issued beyond history since the last call."""
        new, self._new = self._new, []
        return new

    @property
    def finished(self) -> bool:
        """Whether ``run()`` returned or raised (or the run failed for the engine's reasons)."""
        task = self._rollback_task if self.rolling_back else self._task
        return self.failure is not None or (task is not None and task.done())

    def outcome(self) -> tuple[bool, Any]:
        """``(True, output)`` or ``(False, exception)`` once :attr:`finished`."""
        if self.failure is not None:
            return False, self.failure
        task = self._rollback_task if self.rolling_back else self._task
        assert task is not None and task.done()
        if task.cancelled():
            return False, WorkflowCodeError("run() was cancelled by workflow code")
        exc = task.exception()
        if exc is None:
            return True, task.result()
        return False, exc

    def close(self) -> None:
        """Drop the coroutine and everything it holds (eviction, terminate, restart)."""
        for task in self.loop.tasks():
            task.cancel()
        # Let cancelled tasks unwind so their frames are freed now, without issuing commands.
        self.failure = self.failure or _Closed("closed")
        self.loop.run_until_quiescent()
        self.loop.close()
        self._pending.clear()

    # ----------------------------------------------------------------- commands
    def issue_step(
        self, name: str | None, fn: Callable[..., Any], config: Any, *, deps: Sequence[str] = ()
    ) -> asyncio.Future[Any]:
        """``step.do`` in call form: issue (or replay) a step and return its future.

        ``deps`` names the steps a DAG step depends on; it is recorded for ``describe()``.
        """
        if not callable(fn):
            raise TypeError(f"step.do needs a callable, got {type(fn).__name__}")
        name = check_step_name(name if name is not None else getattr(fn, "__name__", None), self.limits)
        resolved = StepConfig.resolve(config)
        self._steps_issued += 1
        if self._steps_issued > self.limits.max_steps:
            raise StepLimitExceeded(f"The limit of {self.limits.max_steps} steps has been reached")
        count = self._next_count(name)
        record: StepCommand = {
            "k": "step",
            "n": name,
            "c": count,
            "g": self.group,
            "t": self._now_ms(),
            "cfg": _recorded_config(resolved, reusable=config is None or config is resolved),
        }
        if deps:
            record["deps"] = list(deps)
        future, issued = self._issue(record)
        self.steps[(name, issued["c"])] = StepCall(name, issued["c"], fn, resolved)
        return future

    def issue_timer(
        self, kind: TimerCommandKind, name: str, due_ms: int, event_type: str | None = None, *, issued_ms: int
    ) -> asyncio.Future[Any]:
        """``step.sleep`` / ``step.wait_for_event``: issue (or replay) a timer-backed command.

        ``issued_ms`` is the instant ``due_ms`` was computed from: the command is stamped with it,
        so a 1 s sleep reads as 1 s even when the clock ticked between the two.
        """
        check_step_name(name, self.limits)
        count = self._next_count(name)
        record: TimerCommand
        if kind == "wait":
            assert event_type is not None, "a wait command needs its event type"
            record = {
                "k": kind,
                "n": name,
                "c": count,
                "g": self.group,
                "t": issued_ms,
                "due": due_ms,
                "type": event_type,
            }
        else:
            record = {"k": kind, "n": name, "c": count, "g": self.group, "t": issued_ms, "due": due_ms}
        future, _ = self._issue(record)
        return future

    def issue_invoke(
        self, name: str, workflow: str, params: Any, instance_id: str | None, config: Any
    ) -> asyncio.Future[Any]:
        """``step.invoke``: issue (or replay) a child workflow and return the future of its output.

        Replay takes the child's id from history, so a replayed invoke always names the child the
        first run created.
        """
        check_step_name(name, self.limits)
        check_workflow_name(workflow, self.limits)
        resolved = InvokeConfig.resolve(config)
        data, decoded = encode_value(
            params, what=f"params of child workflow {name!r}", limit=self.limits.max_payload_bytes
        )
        check_depth(decoded, what=f"params of child workflow {name!r}")
        count = self._next_count(name)
        if instance_id is None:
            child_id = derived_child_id(
                self.event.instance_id, name, count, self.run_no, self.limits.max_instance_id_length
            )
        else:
            child_id = check_instance_id(instance_id, self.limits)
        record: InvokeCommand = {
            "k": "invoke",
            "n": name,
            "c": count,
            "g": self.group,
            "t": self._now_ms(),
            "wf": workflow,
            "id": child_id,
            "pb": data,
            "close": resolved.parent_close,
        }
        future, _ = self._issue(record)
        return future

    def patched(self, patch_id: str, *, deprecated: bool = False) -> bool:
        """``step.patched`` / ``step.deprecate_patch``: whether this run takes the patch's new code path.

        Temporal's semantics. Beyond history (the run reaches this point live) a marker is recorded
        and the answer is True. While replaying, it is True only if history has this patch's
        marker here (among the markers before the next recorded command): an instance that passed
        this point on code without the patch recorded a command instead, and takes the old path.
        The answer is memoized per patch id for the run, as the first call gave it.
        ``deprecated``: the old path is gone; recorded like a marker, and a history without the
        marker replays too (the caller takes the new path whatever is answered).
        """
        check_step_name(patch_id, self.limits)
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        if self.failure is not None or self._past_rollback():
            return True
        answer = True
        if self._cursor < len(self._recorded):
            answer = False
            at = self._cursor
            while at < len(self._recorded) and self._recorded[at]["k"] == "patch":
                if self._recorded[at]["n"] == patch_id:
                    answer = True
                    break
                at += 1
        else:
            marker: PatchMarker = {"k": "patch", "n": patch_id, "g": self.group, "t": self._now_ms()}
            if deprecated:
                marker["dep"] = True
            self._new.append(marker)
        self._patches[patch_id] = answer
        return answer

    def _skip_markers(self) -> None:
        """Move the replay cursor past the markers at it: a command comes next, or history ends.

        Markers no ``patched`` call took are of patches whose calls were removed from the code once
        deprecated; every other command is still checked.
        """
        recorded = self._recorded
        while self._cursor < len(recorded) and recorded[self._cursor]["k"] == "patch":
            self._cursor += 1

    def _past_rollback(self) -> bool:
        """Whether what is issued now is the workflow's code past the point a terminate's rollback began.

        Once the undos run, only their task issues; while replay has not reached them, anything
        issued at or beyond their recorded position is the workflow's (which, live, got nothing more).
        """
        if self.rolling_back:
            return asyncio.current_task(self.loop) is not self._rollback_task
        return self._rollback_at is not None and self._cursor >= self._rollback_at

    def now_ms(self) -> int:
        """The clock commands are stamped with (history keeps what it was when first issued)."""
        return self._now_ms()

    def _next_count(self, name: str) -> int:
        """The count of the next command named ``name`` (steps, sleeps and waits share one per name)."""
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        return count

    def _issue(self, record: Command) -> tuple[asyncio.Future[Any], Command]:
        """Check ``record`` against history at the cursor (replay) or collect it as new; the command as issued."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.failure is not None:
            return future, record
        self._skip_markers()
        if self._past_rollback():
            return future, record  # the workflow's code after its terminate's rollback began: never recorded
        if self._cursor < len(self._recorded):
            expected = self._recorded[self._cursor]
            assert expected["k"] != "patch"  # skipped above
            if expected["k"] != record["k"] or expected["n"] != record["n"] or expected.get("ref") != record.get("ref"):
                self._fail(self._diverged(record))
                return future, record
            self._cursor += 1
            record = expected
        else:
            self._new.append(record)
        if record["k"] != "cancel":
            self._pending[key_of(record)] = future
            future.add_done_callback(self._on_done)
        return future, record

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() or self.failure is not None:
            return
        # Workflow code cancelled a pending command (e.g. the loser of asyncio.wait): record it
        # so the consumer disarms the timer or wait and replay cancels at the same point.
        for key, pending in self._pending.items():
            if pending is future:
                del self._pending[key]
                kind, name, count = key
                cancel: CancelCommand = {
                    "k": "cancel",
                    "ref": kind,
                    "n": name,
                    "c": count,
                    "g": self.group,
                    "t": self._now_ms(),
                }
                self._issue(cancel)
                return

    def _fail(self, error: HutchError) -> None:
        self.failure = error

    def _diverged(self, asked: Command | None) -> NondeterminismError:
        """Replay asked for ``asked`` (None: for nothing more) where history has the command at the cursor."""
        return NondeterminismError.diverged(
            workflow=self.event.workflow_name,
            instance_id=self.event.instance_id,
            position=self._cursor + 1,
            expected=describe_command(self._recorded[self._cursor]),
            actual=None if asked is None else describe_command(asked),
        )

    def _code_error(self, error: WorkflowCodeError) -> None:
        # Raised into workflow code by the loop; failing the run here means catching it changes nothing.
        if self.failure is None:
            self.failure = error

    def _check_blobs(self, resolutions: list[Resolution]) -> None:
        # Only values delivered to a pending command are fetched: replay loads a large value when
        # the code receives it, never for loading a history.
        missing = []
        for record in resolutions:
            stored = record_ref(record)
            if stored is not None and stored.key not in self.blobs:
                future = self._pending.get(key_of(record))
                if future is not None and not future.done():
                    missing.append(stored)
        if missing:
            raise BlobsNeeded(missing)

    def _value(self, record: Resolution) -> Any:
        ref = record["ref"]
        if ref == "step" or ref == "invoke":
            if "v" in record:  # the live path hands over the decoded value it already has
                return record["v"]
            if "vb" not in record:
                return None
            stored = stored_ref(record["vb"])
            return unpack(record["vb"] if stored is None else self.blobs[stored.key])
        if ref == "wait":
            event = record["ev"]
            payload = event.get("payload")
            if isinstance(payload, BlobRef):  # a large payload, stored by reference (hutch.blobs)
                payload = unpack(self.blobs[payload.key])
            return ReceivedEvent(event["type"], payload, ms_to_datetime(event["ts"]))
        return None


def _issued_before(history: list[Record], marker: Record) -> int:
    """How many commands and markers ``history`` holds before ``marker``."""
    count = 0
    for record in history:
        if record is marker:
            return count
        count += is_issued(record)
    return count


class _Closed(HutchError):
    """Marks a run that was closed; never surfaces to users."""


def timeout_error(name: str, count: int, event_type: str) -> dict[str, str]:
    """The error record of a wait that timed out."""
    return {
        "name": EventTimeoutError.__name__,
        "message": f"wait_for_event {name!r}#{count} timed out waiting for an event of type {event_type!r}",
    }
