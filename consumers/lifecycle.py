"""Lifecycle control of an instance on its owner: pause, resume, terminate, restart, and the end of a run.

Each function folds one control action (or the run's end) into the batch's :class:`Turn`:
which timers to suspend, re-arm or remove, which attempts to cancel, what to record and which
meta fields to write. Instances that finished take no control but a restart.

A restart from a step (:func:`restart_from`) cuts history to the records before that step's
command, in the same commit that starts the new run; a terminate with rollback
(:func:`start_rollback`) stops the workflow's work and runs its saga's undos as durable steps, ending
``terminated`` when they are done (:func:`finish`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hutch.blobs import BlobRef
from hutch.consumers.actor_state import ActorState
from hutch.errors import HutchError, error_record
from hutch.history import Record
from hutch.restart import FromStep, command_position
from hutch.serialization import encode_value, pack, unpack
from hutch.status import FINISHED, Action, Status

if TYPE_CHECKING:
    from hutch.consumers.actor import InstanceActor
    from hutch.consumers.transition import Turn

log = logging.getLogger("hutch.lifecycle")

PAUSED = frozenset({Status.PAUSED, Status.WAITING_FOR_PAUSE})


def control(
    actor: InstanceActor, turn: Turn, action: Action, *, from_step: FromStep | None = None, rollback: bool = False
) -> None:
    """Apply a control action (``pause``, ``resume``, ``terminate`` or ``restart``).

    ``from_step`` (restart): run again from that step; ``rollback`` (terminate): run the undos first.
    """
    if action == "restart":
        if from_step is None:
            restart(actor, turn)
        else:
            restart_from(actor, turn, from_step)
        return
    if actor.status in FINISHED:
        return
    if action == "terminate" and rollback:
        start_rollback(actor, turn)
    elif action == "terminate":
        end(actor, turn, Status.TERMINATED, {"ended": turn.now_ms})
        turn.record({"k": "life", "what": "terminated", "t": turn.now_ms})
    elif action == "pause" and actor.status not in PAUSED:
        pause(actor, turn)
    elif action == "resume" and actor.status in PAUSED:
        resume(actor, turn)


def pause(actor: InstanceActor, turn: Turn) -> None:
    """Suspend the timers and drop the live run; running attempts finish (``waitingForPause``)."""
    state = actor.state
    actor.status = Status.WAITING_FOR_PAUSE if state.any_running() else Status.PAUSED
    state.suspend_timers(turn)
    # Every result that arrives during the pause joins this group (see InstanceActor.apply);
    # recorded, so an actor rebuilt during the pause puts later ones there too.
    turn.record({"k": "life", "what": "paused", "g": state.group, "t": turn.now_ms})
    actor.close()


def resume(actor: InstanceActor, turn: Turn) -> None:
    """Re-arm the suspended timers with the time each had left, and run again."""
    state = actor.state
    actor.status = Status.RUNNING
    for member, remaining in state.paused.items():
        due = turn.now_ms + remaining
        state.arm(turn, due, member, paused=False)
        kind, _, _, _, name, count = unpack(member)
        # A retry's too (describe() has no row for it and skips it): an actor rebuilt from
        # history must know the timer's new due time, or a later pause would compute the
        # time left from the old one.
        turn.record({"k": "retime", "ref": kind, "n": name, "c": count, "due": due, "t": turn.now_ms})
    state.paused.clear()
    turn.tx.meta["paused"] = pack(None)
    turn.record({"k": "life", "what": "resumed", "t": turn.now_ms})
    actor.ensure_run(turn)


def restart(actor: InstanceActor, turn: Turn) -> None:
    """Start the instance over: a new run number, empty history and events, from ``running``."""
    was_finished = actor.status in FINISHED
    end(actor, turn, Status.RUNNING, _RUN_AGAIN | {"started": turn.now_ms})
    tx = turn.tx
    tx.ttl_s = -1 if was_finished else 0
    tx.reset_history = True
    tx.events_push.clear()
    tx.events_remove.clear()
    turn.records = [r for r in turn.records if r["k"] == "life"]
    turn.res = []
    actor.history = []
    state = actor.state
    state.buffer.clear()
    state.seen_events.clear()
    state.group = 0
    actor.run_no += 1
    tx.meta["run"] = actor.run_no
    turn.record({"k": "life", "what": "restarted", "t": turn.now_ms})
    actor.pin_newest(turn)  # a run from the start runs the newest code
    actor.ensure_run(turn)


# What a new run clears of the last one's meta (a transition writes fields; it deletes none).
_RUN_AGAIN: dict[str, Any] = {"ended": pack(None), "output": pack(None), "error": pack(None), "rollback": pack(None)}


def restart_from(actor: InstanceActor, turn: Turn, step: FromStep) -> None:
    """Run again from ``step``: history keeps the records before its command, the rest starts over.

    Replay returns the earlier steps' recorded results; the command at ``step`` and everything
    after it run again, in a new run (late results of the old one are ignored). Buffered events
    stay buffered; events taken by the waits cut off are not given back (the waits wait again).
    The instance keeps the code version its history was written by. A step the history lacks
    changes nothing (the client checks before it sends the request).
    """
    keep = command_position(actor.history, step)
    if keep is None:
        log.warning("restart of %s/%s from %s ignored: no such step", actor.workflow, actor.instance_id, step.text())
        return
    was_finished = actor.status in FINISHED
    buffer = actor.state.buffer
    end(actor, turn, Status.RUNNING, dict(_RUN_AGAIN))
    tx = turn.tx
    tx.ttl_s = -1 if was_finished else 0
    tx.keep_history = keep
    turn.records = [r for r in turn.records if r["k"] == "life"]
    turn.res = []
    del actor.history[keep:]
    actor.run_no += 1
    tx.meta["run"] = actor.run_no
    # The pending commands the kept history leaves (issued before the step, settled after it) carry
    # the new run's timers, and their steps start a fresh attempt: nothing of the old run answers.
    state = ActorState.rebuild(actor.history, [], status=Status.RUNNING, paused={}, member=actor.member)
    state.buffer = buffer
    state.seen_events.update(event["id"] for _, event in buffer)
    for member, due in list(state.timers.items()):
        state.arm(turn, due, member, paused=False)
    for st in state.steps.values():
        st.running = False
    actor.state = state
    turn.record({"k": "life", "what": "restarted", "t": turn.now_ms, "frm": [step.name, step.count, step.type]})
    actor.ensure_run(turn)


def start_rollback(actor: InstanceActor, turn: Turn) -> None:
    """Terminate with rollback: stop the workflow's work, then run its saga's undos as durable steps.

    The instance stays live while they run and ends ``terminated`` when they are done
    (:func:`finish`); a second request changes nothing, a plain terminate ends it at once.
    """
    if _rolling_back(actor.history) or _rolling_back(turn.records):
        return
    if actor.status == Status.QUEUED:
        # Never started: nothing completed, nothing to undo.
        end(actor, turn, Status.TERMINATED, {"ended": turn.now_ms})
        turn.record({"k": "life", "what": "terminated", "t": turn.now_ms})
        return
    state = actor.state
    turn.effects.cancel_all = True
    turn.effects.execute.clear()
    state.disarm_all(turn)
    for invoke in state.invokes.values():
        actor.close_child(turn, invoke)
    state.drop_all_pending()
    state.deferred.clear()
    actor.status = Status.RUNNING
    actor.ensure_run(turn)
    run = actor.run
    if turn.res:
        # Results that arrived with the request reach the workflow first: a rollback step that
        # completed in them is undone too. What the workflow issues on them is never recorded.
        if run is not None:
            run.deliver(turn.res)
            run.take_commands()
        state.group += 1
        turn.res = []
    turn.record({"k": "life", "what": "rollback", "g": state.group, "t": turn.now_ms})
    turn.tx.meta["rollback"] = pack(turn.now_ms)
    if run is not None:
        run.begin_rollback()


def _rolling_back(records: list[Record]) -> bool:
    return any(r["k"] == "life" and r["what"] == "rollback" for r in records)


def finish(actor: InstanceActor, turn: Turn, ok: bool, value: Any) -> None:
    """The run returned ``value`` (``ok``) or raised it: the instance is ``complete`` or ``errored``.

    After a terminate with rollback the undos ended instead: ``terminated``, with the undos' errors if some failed.
    """
    meta: dict[str, Any] = {"ended": turn.now_ms}
    if actor.run is not None and actor.run.rolling_back:
        if not ok:
            actor.error = error_record(value)
            meta["error"] = pack(actor.error)
        end(actor, turn, Status.TERMINATED, meta)
        turn.record({"k": "life", "what": "terminated", "t": turn.now_ms})
        return
    if ok:
        try:
            data, _ = encode_value(
                value, what=f"output of instance {actor.instance_id!r}", limit=actor.limits.max_payload_bytes
            )
            if len(data) > actor.limits.inline_threshold and actor.parent is None:
                # Stored by reference (hutch.blobs), before this commits. A child's output stays
                # inline: its parent records it, and an instance reads only its own blobs.
                ref = BlobRef.new(data)
                turn.tx.blobs[ref.key] = data
                data = ref.packed()
            meta["output"] = actor.output = data
        except HutchError as exc:
            ok, value = False, exc
    if not ok:
        actor.error = error_record(value)
        meta["error"] = pack(actor.error)
    end(actor, turn, Status.COMPLETE if ok else Status.ERRORED, meta)


def end(actor: InstanceActor, turn: Turn, status: Status, meta: dict[str, Any]) -> None:
    """Stop everything in flight: cancel local attempts, disarm timers, drop the run."""
    effects = turn.effects
    effects.cancel_all = True
    effects.execute.clear()  # scheduled by this transition before it ended: never started
    state = actor.state
    state.disarm_all(turn)
    for invoke in state.invokes.values():
        actor.close_child(turn, invoke)
    state.drop_all_pending()
    actor.close()
    actor.status = status
    turn.tx.meta.update(meta)
    if status in FINISHED and actor.parent is not None:
        actor.outbox(turn, "parent")  # tells the parent, once this end is durable
    if status in FINISHED:
        turn.tx.ttl_s = retention_s(actor, status)


def retention_s(actor: InstanceActor, status: Status) -> int:
    """How long a finished instance is kept: its own retention if it was created with one, else the deployment's.

    ``success`` applies to a complete instance, ``error`` to an errored or terminated one.
    """
    own = actor.retention or {}
    seconds = own.get("success" if status == Status.COMPLETE else "error")
    return max(1, int(seconds)) if seconds is not None else int(actor.limits.retention.total_seconds())
