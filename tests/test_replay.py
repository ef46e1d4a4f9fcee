"""Replay: completed steps never re-run, interleavings replay identically, code changes are detected.

End-to-end tests drop the partition owner's cached actor the way a crash would (the live
``run()`` coroutine is gone) and let the instance continue from Redis history. Side effects
are counted in module-level dicts keyed by instance and step, so a step body that ran twice
shows up. Unit tests drive :class:`engine.executor.WorkflowRun` directly against hand-written
and recorded histories.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hutch import (
    Client,
    Limits,
    NondeterminismError,
    StepContext,
    StepFailedError,
    WorkflowCodeError,
    WorkflowEntrypoint,
)
from hutch.broker import Outgoing, Redrive, partition_of
from hutch.broker.envelopes import encode
from hutch.clock import Clock
from hutch.events import WorkflowEvent
from hutch.executor import WorkflowRun
from hutch.history import Record
from hutch.serialization import pack

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status, wait_step, worker_of

# Side-effect counters and observations, keyed by instance id so tests never share state.
EXECUTIONS: collections.Counter[tuple[str, str]] = collections.Counter()  # (instance, "name#count") -> runs
RUNS: collections.Counter[str] = collections.Counter()  # instance -> how many times run() started
TRACES: dict[str, list[list[str]]] = {}  # instance -> one observation list per run() execution
GATES: dict[str, asyncio.Event] = {}  # instance -> released by the test to let a gated step finish
VERSION: dict[str, int] = {}  # instance -> the "deployed" code version its workflow runs


def counted(instance_id: str, value: Any, gate: bool = False) -> Callable[[StepContext], Any]:
    """A step body that counts its executions (per step name and count) and returns ``value``."""

    async def body(ctx: StepContext) -> Any:
        EXECUTIONS[(instance_id, f"{ctx.step.name}#{ctx.step.count}")] += 1
        if gate:
            await GATES[instance_id].wait()
        return value

    return body


class ManualClock(Clock):
    """Wall-clock time plus an offset the test advances, so a one-hour sleep ends at once."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


def crash_cache(client: Client, workflow: str, instance_id: str) -> None:
    """Forget the live actor (and its run() coroutine) as a crashed-and-restarted owner would."""
    orchestrator = worker_of(client).orchestrator
    key = (workflow, instance_id)
    assert key in orchestrator.actors, "the instance should be live in the owner's cache"
    orchestrator._drop(key)
    assert key not in orchestrator.actors


async def advance(client: Client, clock: ManualClock, seconds: float) -> None:
    """Move the clock forward and make the timer service look at Redis now."""
    clock.offset_ms += round(seconds * 1000)
    worker_of(client).orchestrator.timers.due_at(0)


async def evicted(client: Client, workflow: str, instance_id: str) -> bool:
    """Wait until the owner dropped the instance from memory (eviction follows the commit and acks)."""

    async def check() -> bool:
        return (workflow, instance_id) not in worker_of(client).orchestrator.actors

    return await eventually(check)


async def body_started(instance_id: str, step: str) -> None:
    """Wait until a step body is actually running on the worker (not just recorded as started)."""

    async def check() -> bool:
        return EXECUTIONS[(instance_id, step)] > 0

    await eventually(check)


def executions(instance_id: str) -> dict[str, int]:
    return {step: n for (iid, step), n in EXECUTIONS.items() if iid == instance_id}


# --------------------------------------------------------------------------- workflows


class ThreeSteps(WorkflowEntrypoint):
    """a → b (gated: the test decides when it finishes) → c."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        iid = event.instance_id
        RUNS[iid] += 1
        a = await step.do("a", counted(iid, 1))
        b = await step.do("b", counted(iid, 2, gate=True), config={"retries": {"limit": 2, "delay": 0.01}})
        c = await step.do("c", counted(iid, 3))
        return [a, b, c]


class FanOut(WorkflowEntrypoint):
    """Three gather chains of different lengths, a sleep inside one chain, a long sleep, a buffered event."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        iid = event.instance_id
        RUNS[iid] += 1
        seen: list[str] = []
        TRACES.setdefault(iid, []).append(seen)

        async def chain(label: str, length: int) -> list[str]:
            values = []
            for i in range(1, length + 1):
                values.append(await step.do(label, counted(iid, f"{label}{i}", gate=(label == "x" and i == 1))))
                seen.append(f"{label}#{i}")
                if label == "z" and i == 1:
                    await step.sleep("z pause", 0.01)
                    seen.append("z pause")
            return values

        results = await asyncio.gather(chain("x", 3), chain("y", 1), chain("z", 2))
        await step.sleep("nap", "1 hour")
        seen.append("nap")
        approval = await step.wait_for_event("approval", "approve", timeout="1 hour")
        seen.append("approved")
        after = await step.do("after", counted(iid, "done"))
        return {"results": results, "order": list(seen), "approval": approval.payload, "after": after}


class Deployable(WorkflowEntrypoint):
    """Version 1 runs step 'reserve' before its sleep; version 2 renamed it to 'hold'."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        iid = event.instance_id
        first = "reserve" if VERSION[iid] == 1 else "hold"
        await step.do(first, counted(iid, "ok"))
        await step.sleep("settle", "1 hour")
        return await step.do("ship", counted(iid, "shipped"))


class Shrinking(WorkflowEntrypoint):
    """Version 1 sleeps after its step; version 2 removed the sleep and returns at once."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        iid = event.instance_id
        await step.do("only", counted(iid, "ok"))
        if VERSION[iid] == 1:
            await step.sleep("gone", "1 hour")
        return "done"


class Echo(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload.get("v"))


class AsyncioIdioms(WorkflowEntrypoint):
    """Step calls handed to create_task, TaskGroup, ensure_future, asyncio.wait and as_completed.

    'held' (gated) is in flight inside the TaskGroup while its siblings finish; the loser of the
    asyncio.wait race is cancelled; a long sleep evicts the instance before the end.
    """

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        iid = event.instance_id
        RUNS[iid] += 1
        seen: list[str] = []
        TRACES.setdefault(iid, []).append(seen)

        async with asyncio.TaskGroup() as tg:
            held = tg.create_task(step.do("held", counted(iid, "h", gate=True)))
            quick = [tg.create_task(step.do("quick", counted(iid, f"q{i}"))) for i in (1, 2)]
        seen.append("group")
        task = asyncio.create_task(step.do("task", counted(iid, "t")))
        ensured = asyncio.ensure_future(step.do("ensured", counted(iid, "e")))
        fast = step.do("fast", counted(iid, "f"))
        never = step.wait_for_event("never", "nope", timeout="1 hour")
        done, pending = await asyncio.wait({fast, never}, return_when=asyncio.FIRST_COMPLETED)
        for loser in pending:
            loser.cancel()
        seen.append(f"wait done={fast in done} pending={never in pending}")
        completed = [
            await f for f in asyncio.as_completed([step.do("x", counted(iid, "x")), step.do("y", counted(iid, "y"))])
        ]
        seen.append("as_completed " + "".join(completed))
        await step.sleep("nap", "1 hour")
        return {
            "group": [held.result(), *(t.result() for t in quick)],
            "tasks": [await task, await ensured],
            "fast": fast.result(),
            "as_completed": completed,
            "order": list(seen),
        }


# --------------------------------------------------------------------------- end to end


async def test_completed_steps_never_rerun_when_the_cache_is_dropped(make_client: MakeClient) -> None:
    client = await make_client({"three": ThreeSteps})
    iid = unique("replay")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("three").create(id=iid)
    await wait_step(instance, "b")  # b's attempt is running; a is committed

    crash_cache(client, "three", iid)
    GATES[iid].set()  # b's result now arrives at an owner with no live run(): it replays from Redis

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output == [1, 2, 3]
    assert executions(iid) == {"a#1": 1, "b#1": 1, "c#1": 1}
    assert RUNS[iid] == 2, "run() should have started live once and replayed once"


async def test_a_step_interrupted_by_a_crash_reruns_but_completed_ones_do_not(make_client: MakeClient) -> None:
    client = await make_client({"three": ThreeSteps})
    worker = worker_of(client)
    iid = unique("crash")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("three").create(id=iid)
    await body_started(iid, "b#1")

    # A crash loses both the live run() and the attempt in flight; the successor is told to re-drive.
    worker.orchestrator.runner.cancel("three", iid)
    crash_cache(client, "three", iid)
    GATES[iid].set()
    redrive = Redrive(workflow="three", instance_id=iid)
    await worker.transport.publish([Outgoing(partition_of("three", iid, worker.transport.partitions), encode(redrive))])

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output == [1, 2, 3]
    assert executions(iid) == {"a#1": 1, "b#1": 2, "c#1": 1}, "only the interrupted step runs again"
    b = next(s for s in (await instance.describe()).steps if s.name == "b")
    assert [a.success for a in b.attempts] == [False, True]
    assert b.attempts[0].error is not None and b.attempts[0].error.name == "WorkerLostError"


async def test_gather_chains_sleeps_and_buffered_events_replay_identically(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"fan": FanOut}, clock=clock)
    iid = unique("fan")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("fan").create(id=iid)
    # Sent long before the wait is reached: buffered, then delivered to the wait exactly once.
    await instance.send_event(type="approve", payload={"by": "ada"})
    await instance.send_event(type="unrelated", payload=1)

    # Mid-gather: x#1 is held in flight while the other chains finish, so results arrive out of issue order.
    await wait_step(instance, "z", count=2, success=True)
    crash_cache(client, "fan", iid)
    GATES[iid].set()

    await wait_status(instance, "waiting")
    await wait_step(instance, "nap")
    assert await evicted(client, "fan", iid), "a sleeping instance holds no memory"
    await advance(client, clock, 2 * 3600)

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    out = final.output
    assert out["results"] == [["x1", "x2", "x3"], ["y1"], ["z1", "z2"]]
    assert out["approval"] == {"by": "ada"}
    assert out["after"] == "done"
    assert executions(iid) == {"x#1": 1, "x#2": 1, "x#3": 1, "y#1": 1, "z#1": 1, "z#2": 1, "after#1": 1}

    traces = TRACES[iid]
    assert RUNS[iid] >= 3, "live, after the dropped cache, and after the evicting sleep"
    final_trace = traces[-1]
    assert final_trace.index("x#1") > final_trace.index("z#2"), "x's chain was held back by its gate"
    assert final_trace == out["order"]
    assert sorted(final_trace) == sorted(["x#1", "x#2", "x#3", "y#1", "z#1", "z pause", "z#2", "nap", "approved"])
    for earlier in traces[:-1]:
        assert earlier == final_trace[: len(earlier)], f"replay diverged: {earlier} vs {final_trace}"

    waits = [s for s in (await instance.describe()).steps if s.type == "waitForEvent"]
    assert len(waits) == 1 and waits[0].outcome == "received"


async def test_asyncio_idioms_over_step_calls_replay_identically_across_a_crash(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"idioms": AsyncioIdioms}, clock=clock)
    iid = unique("idioms")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("idioms").create(id=iid)

    # Mid-TaskGroup: 'held' is in flight, its siblings are done, when the owner loses run().
    await wait_step(instance, "quick", count=2, success=True)
    crash_cache(client, "idioms", iid)
    GATES[iid].set()

    await wait_step(instance, "nap")
    await wait_status(instance, "waiting")
    assert await evicted(client, "idioms", iid)
    await advance(client, clock, 2 * 3600)

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    out = final.output
    assert out["group"] == ["h", "q1", "q2"] and out["tasks"] == ["t", "e"] and out["fast"] == "f"
    assert sorted(out["as_completed"]) == ["x", "y"]
    steps = ("held#1", "quick#1", "quick#2", "task#1", "ensured#1", "fast#1", "x#1", "y#1")
    assert executions(iid) == dict.fromkeys(steps, 1), "no step ran twice"
    assert RUNS[iid] >= 3, "live, after the crash, and after the evicting sleep"
    for earlier in TRACES[iid][:-1]:
        assert earlier == out["order"][: len(earlier)], f"replay diverged: {earlier} vs {out['order']}"
    never = next(s for s in (await instance.describe()).steps if s.name == "never")
    assert never.outcome == "cancelled"

    # Rebuilt once more from the stored history: same commands (cancel included), same outcome.
    history = await client._store.history(instance._partition, "idioms", iid)
    created_ms = round((await instance.describe()).queued.timestamp() * 1000)
    rebuilt = WorkflowRun(
        AsyncioIdioms(), WorkflowEvent.build(None, created_ms, iid, "idioms"), limits=Limits(), now_ms=clock.now_ms
    )
    rebuilt.replay(history)
    assert rebuilt.failure is None
    assert rebuilt.take_commands() == []
    assert rebuilt.outcome() == (True, out)
    rebuilt.close()


async def test_code_changed_during_a_sleep_errors_with_nondeterminism(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"deploy": Deployable, "echo": Echo}, clock=clock)
    iid = unique("nd")
    VERSION[iid] = 1
    instance = await client.workflow("deploy").create(id=iid)
    await wait_status(instance, "waiting")
    await wait_step(instance, "settle")

    VERSION[iid] = 2  # "deploy" new code while the instance sleeps
    await advance(client, clock, 2 * 3600)

    final = await instance.wait(timeout=10)
    assert final.status == "errored"
    assert final.error is not None and final.error.name == "NondeterminismError"
    message = final.error.message
    assert iid in message
    assert "step 'hold'#1" in message and "step 'reserve'#1" in message and "position 1" in message
    assert executions(iid) == {"reserve#1": 1}, "neither the renamed step nor 'ship' ran"

    other = await client.workflow("echo").create(params={"v": 7})
    assert (await other.wait(timeout=10)).output == 7


async def test_a_removed_sleep_is_reported_as_no_longer_asked_for(make_client: MakeClient) -> None:
    clock = ManualClock()
    client = await make_client({"shrink": Shrinking}, clock=clock)
    iid = unique("nd")
    VERSION[iid] = 1
    instance = await client.workflow("shrink").create(id=iid)
    await wait_step(instance, "gone")
    await wait_status(instance, "waiting")

    VERSION[iid] = 2
    await advance(client, clock, 2 * 3600)

    final = await instance.wait(timeout=10)
    assert final.status == "errored"
    assert final.error is not None and final.error.name == "NondeterminismError"
    assert "history has sleep 'gone'#1 at position 2 but replay no longer asks for it" in final.error.message
    assert final.output is None


# --------------------------------------------------------------------------- unit: WorkflowRun


T0 = 1_700_000_000_000
CFG = {"retries": {"limit": 0, "delay": 1.0, "backoff": "constant", "max_delay": None}, "timeout": 5.0}
UNIT_CALLS: collections.Counter[str] = collections.Counter()


def _unit_body(name: str, value: Any) -> Callable[[], Any]:
    def body() -> Any:
        UNIT_CALLS[name] += 1
        return value

    return body


def cmd(kind: str, name: str, count: int = 1, g: int = 0, **extra: Any) -> Record:
    return {"k": kind, "n": name, "c": count, "g": g, "t": T0, **extra}


def ok(ref: str, name: str, g: int, value: Any = None, count: int = 1) -> Record:
    record: Record = {"k": "res", "ref": ref, "n": name, "c": count, "ok": True, "g": g, "t": T0}
    if ref == "step":
        record["vb"] = pack(value)
    return record


def failed(name: str, g: int, error_name: str, message: str) -> Record:
    err = {"name": error_name, "message": message}
    return {"k": "res", "ref": "step", "n": name, "c": 1, "ok": False, "g": g, "t": T0, "err": err}


def new_run(cls: type[WorkflowEntrypoint], limits: Limits | None = None) -> WorkflowRun:
    event = WorkflowEvent.build({"n": 1}, T0, "unit-1", "unit")
    return WorkflowRun(cls(), event, limits=limits or Limits(), now_ms=lambda: T0 + 5_000)


class Pair(WorkflowEntrypoint):
    """Two concurrent steps, a sleep, then a step that sums their results."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        order: list[str] = []

        async def one(name: str, value: int) -> int:
            result: int = await step.do(name, _unit_body(name, value))
            order.append(name)
            return result

        a, b = await asyncio.gather(one("a", 1), one("b", 2))
        await step.sleep("nap", 60)
        c = await step.do("c", _unit_body("c", 3))
        return {"sum": a + b + c, "order": order}


class Catches(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        caught = []
        for name in ("builtin", "custom"):
            try:
                await step.do(name, _unit_body(name, None))
            except ValueError as exc:
                caught.append(("ValueError", str(exc)))
            except StepFailedError as exc:
                caught.append((exc.error_name, exc.message))
        return caught


def pair_history(first: str, second: str) -> list[Record]:
    """Pair's history up to its sleep, with ``first`` resolved one group before ``second``."""
    values = {"a": 1, "b": 2}
    return [
        cmd("step", "a", cfg=CFG),
        cmd("step", "b", cfg=CFG),
        {"k": "att", "n": "a", "c": 1, "a": 1, "t": T0},  # bookkeeping: replay must ignore it
        ok("step", first, 0, values[first]),
        ok("step", second, 1, values[second]),
        cmd("sleep", "nap", g=2, due=T0 + 60_000),
    ]


@pytest.mark.parametrize(("first", "second"), [("a", "b"), ("b", "a")])
def test_replay_follows_the_recorded_completion_order(first: str, second: str) -> None:
    UNIT_CALLS.clear()
    run = new_run(Pair)
    run.replay(pair_history(first, second))
    assert run.failure is None
    assert run.take_commands() == [], "everything the workflow asked for is already in history"
    assert not run.finished

    run.deliver([ok("sleep", "nap", 2)])
    commands = run.take_commands()
    assert [(c["k"], c["n"], c["c"]) for c in commands] == [("step", "c", 1)]
    assert commands[0]["t"] == T0 + 5_000, "new commands are stamped with the run's clock"
    assert ("c", 1) in run.steps and run.steps[("c", 1)].config.timeout == 600.0

    run.deliver([ok("step", "c", 3, 3)])
    assert run.finished
    assert run.outcome() == (True, {"sum": 6, "order": [first, second]})
    assert UNIT_CALLS == {}, "replay never executes step bodies"
    run.close()


def test_replay_of_a_live_run_reproduces_its_commands() -> None:
    # Drive a run live (as the consumer would), keep what it recorded, then replay that history.
    live = new_run(Pair)
    live.start()
    history = live.take_commands()
    assert [(c["k"], c["n"]) for c in history] == [("step", "a"), ("step", "b")]
    for record in (ok("step", "b", 0, 2), ok("step", "a", 1, 1)):
        history.append(record)
        live.deliver([record])
        live.group = record["g"] + 1
    history += live.take_commands()
    history.append(ok("sleep", "nap", 2))
    live.deliver([history[-1]])
    live.group = 3
    history += live.take_commands()
    history.append(ok("step", "c", 3, 3))
    live.deliver([history[-1]])
    assert live.finished
    live_outcome = live.outcome()
    live.close()

    replayed = new_run(Pair)
    replayed.replay(history)
    assert replayed.failure is None
    assert replayed.take_commands() == []
    assert replayed.finished
    assert replayed.outcome() == live_outcome == (True, {"sum": 6, "order": ["b", "a"]})
    replayed.close()


def test_replayed_failures_raise_the_same_exceptions_as_live() -> None:
    run = new_run(Catches)
    run.replay(
        [
            cmd("step", "builtin", cfg=CFG),
            failed("builtin", 0, "ValueError", "bad amount"),
            cmd("step", "custom", g=1, cfg=CFG),
            failed("custom", 1, "CardDeclined", "insufficient funds"),
        ]
    )
    assert run.failure is None
    assert run.outcome() == (True, [("ValueError", "bad amount"), ("CardDeclined", "insufficient funds")])
    run.close()


# --------------------------------------------------------------------------- unit: nondeterminism


class PairV2Renamed(Pair):
    """Pair with step 'b' renamed to 'b2'."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        a, b = await asyncio.gather(step.do("a", _unit_body("a", 1)), step.do("b2", _unit_body("b2", 2)))
        await step.sleep("nap", 60)
        return a + b


class PairV2SleepFirst(Pair):
    """Pair with a sleep where step 'b' used to be issued (same name, different kind)."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await asyncio.gather(step.do("a", _unit_body("a", 1)), step.sleep("b", 1))
        return None


class PairV2Removed(Pair):
    """Pair without step 'b' and without the sleep."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return await step.do("a", _unit_body("a", 1))


def test_a_renamed_step_names_both_steps_and_the_position() -> None:
    run = new_run(PairV2Renamed)
    run.replay(pair_history("a", "b"))
    assert isinstance(run.failure, NondeterminismError)
    message = str(run.failure)
    assert message.startswith("instance unit-1: replay asked for step 'b2'#1 but history has step 'b'#1 at position 2")
    assert "the workflow code changed; restart the instance or version the change" in message
    assert run.finished and run.outcome() == (False, run.failure)
    assert run.take_commands() == [], "a diverged run issues no new work"
    run.close()


def test_a_step_replaced_by_a_sleep_of_the_same_name_is_detected() -> None:
    run = new_run(PairV2SleepFirst)
    run.replay(pair_history("a", "b"))
    assert isinstance(run.failure, NondeterminismError)
    assert "replay asked for sleep 'b'#1 but history has step 'b'#1 at position 2" in str(run.failure)
    run.close()


def test_a_removed_step_is_reported_as_no_longer_asked_for() -> None:
    run = new_run(PairV2Removed)
    run.replay(pair_history("a", "b"))
    assert isinstance(run.failure, NondeterminismError)
    assert str(run.failure).startswith(
        "instance unit-1: history has step 'b'#1 at position 2 but replay no longer asks for it"
    )
    assert run.outcome() == (False, run.failure)
    run.close()


def test_a_history_replayed_by_unchanged_code_is_not_flagged() -> None:
    # The control for the three tests above: the same history with the original class is fine.
    run = new_run(Pair)
    run.replay(pair_history("b", "a"))
    assert run.failure is None and not run.finished
    run.close()


def test_nondeterminism_error_carries_its_ids_as_attributes() -> None:
    run = new_run(PairV2Renamed)
    run.replay(pair_history("a", "b"))
    renamed = run.failure
    run.close()
    assert isinstance(renamed, NondeterminismError)
    ids = (renamed.workflow, renamed.instance_id, renamed.position, renamed.expected, renamed.actual)
    assert ids == ("unit", "unit-1", 2, "step 'b'#1", "step 'b2'#1")
    copy = pickle.loads(pickle.dumps(renamed))
    assert (copy.workflow, copy.instance_id, copy.position, copy.expected, copy.actual) == ids
    assert str(copy) == str(renamed)

    run = new_run(PairV2Removed)
    run.replay(pair_history("a", "b"))
    removed = run.failure
    run.close()
    assert isinstance(removed, NondeterminismError)
    assert (removed.position, removed.expected, removed.actual) == (2, "step 'b'#1", None), "nothing asked for"


# --------------------------------------------------------------------------- unit: code replay cannot repeat

OTHER_LOOP_FUTURES: dict[str, asyncio.Future[Any]] = {}  # instance -> a future of a loop that is not the run's


class AwaitsIO(WorkflowEntrypoint):
    """Awaits, outside any step, a future of another event loop: I/O the workflow started on its own."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await step.do("before", _unit_body("before", 1))
        return await OTHER_LOOP_FUTURES[event.instance_id]


class SwallowsIO(WorkflowEntrypoint):
    """Catches whatever awaiting the other loop's future raises and carries on with a step."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        try:
            await OTHER_LOOP_FUTURES[event.instance_id]
        except Exception:
            pass
        return await step.do("after", _unit_body("after", 2))


class SwallowsTimer(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        try:
            await asyncio.sleep(5)
        except Exception:
            pass
        return await step.do("after", _unit_body("after", 2))


@pytest.fixture
def other_loop_future() -> Any:
    loop = asyncio.new_event_loop()
    OTHER_LOOP_FUTURES["unit-1"] = loop.create_future()
    yield OTHER_LOOP_FUTURES["unit-1"]
    del OTHER_LOOP_FUTURES["unit-1"]
    loop.close()


def test_io_awaited_outside_a_step_errors_the_run(other_loop_future: asyncio.Future[Any]) -> None:
    run = new_run(AwaitsIO)
    run.start()
    assert [c["n"] for c in run.take_commands()] == ["before"]
    run.deliver([ok("step", "before", 0, 1)])
    assert run.finished
    succeeded, error = run.outcome()
    assert not succeeded and isinstance(error, WorkflowCodeError)
    assert str(error).startswith("run() awaited I/O outside a step (<Future pending")
    assert str(error).endswith(
        "belongs to another event loop); put it inside step.do so it runs once and is checkpointed"
    )
    run.close()


@pytest.mark.parametrize("workflow", [SwallowsIO, SwallowsTimer], ids=["io", "asyncio timer"])
def test_code_replay_cannot_repeat_errors_the_run_even_when_caught(
    other_loop_future: asyncio.Future[Any], workflow: type[WorkflowEntrypoint]
) -> None:
    run = new_run(workflow)
    run.start()
    assert run.finished, "the run failed at the await, whatever run() did with the error next"
    assert run.take_commands() == [], "nothing it issued afterwards is recorded"
    succeeded, error = run.outcome()
    assert not succeeded and isinstance(error, WorkflowCodeError)
    run.close()


async def test_io_awaited_outside_a_step_errors_the_instance(make_client: MakeClient) -> None:
    # A future of the worker's own event loop, as a client or connection made at start-up hands out.
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client = await make_client({"io": AwaitsIO})
    iid = unique("io")
    OTHER_LOOP_FUTURES[iid] = reply
    try:
        final = await (await client.workflow("io").create(id=iid)).wait(timeout=10)
    finally:
        del OTHER_LOOP_FUTURES[iid]
    assert final.status == "errored"
    assert final.error is not None and final.error.name == "WorkflowCodeError"
    assert "awaited I/O outside a step" in final.error.message
    assert not reply.done()
