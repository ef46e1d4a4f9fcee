"""Lifecycle control of an instance on its owner: pause, resume, terminate, restart, and the end of a run.

Each function folds one control action (or the run's end) into the batch's :class:`Turn`:
which timers to suspend, re-arm or remove, which attempts to cancel, what to record and which
meta fields to write. Instances that finished take no control but a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hutch.blobs import BlobRef
from hutch.errors import HutchError, error_record
from hutch.serialization import encode_value, pack, unpack
from hutch.status import FINISHED, Action, Status

if TYPE_CHECKING:
    from hutch.consumers.actor import InstanceActor
    from hutch.consumers.transition import Turn

PAUSED = frozenset({Status.PAUSED, Status.WAITING_FOR_PAUSE})


def control(actor: InstanceActor, turn: Turn, action: Action) -> None:
    """Apply a control action (``pause``, ``resume``, ``terminate`` or ``restart``)."""
    if action == "restart":
        restart(actor, turn)
        return
    if actor.status in FINISHED:
        return
    if action == "terminate":
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
    end(
        actor,
        turn,
        Status.RUNNING,
        {"started": turn.now_ms, "ended": pack(None), "output": pack(None), "error": pack(None)},
    )
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


def finish(actor: InstanceActor, turn: Turn, ok: bool, value: Any) -> None:
    """The run returned ``value`` (``ok``) or raised it: the instance is ``complete`` or ``errored``."""
    meta: dict[str, Any] = {"ended": turn.now_ms}
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
        turn.tx.ttl_s = int(actor.limits.retention.total_seconds())
