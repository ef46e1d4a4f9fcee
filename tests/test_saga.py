"""Sagas: ``@step.with_rollback``, ``@fn.undo`` and ``step.rollback_all``.

Undos run last-in first-out as durable steps named ``rollback <step>``, receive the error that
triggered the rollback and the step's result, follow their own retry config, and are never run
again once they succeeded — also when the worker crashes in the middle of a rollback. Step and
undo bodies count their executions in module-level dicts keyed by instance id.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from hutch import (
    NonRetryableError,
    RollbackStep,
    StepContext,
    StepFailedError,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from hutch.broker import Outgoing, Redrive, partition_of
from hutch.broker.envelopes import encode

from examples.saga import TripBookingWorkflow
from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_step, worker_of
from tests.test_replay import crash_cache, new_run

EXECUTIONS: collections.Counter[tuple[str, str]] = collections.Counter()  # (instance, body) -> runs
RUNS: collections.Counter[str] = collections.Counter()  # instance -> run() executions (live + replays)
UNDONE: dict[str, list[list[Any]]] = collections.defaultdict(list)  # instance -> what each undo received
GATES: dict[str, asyncio.Event] = {}  # instance -> released by the test to let a gated body finish

NO_RETRY = {"retries": {"limit": 0}}


class OutOfStock(Exception):
    """A user error type: run() sees it as StepFailedError."""


def ran(instance_id: str, body: str) -> None:
    EXECUTIONS[(instance_id, body)] += 1


def executions(instance_id: str) -> dict[str, int]:
    return {body: n for (iid, body), n in EXECUTIONS.items() if iid == instance_id}


async def body_started(instance_id: str, body: str) -> None:
    """Wait until a body is running on the worker (not just recorded as started)."""

    async def check() -> bool:
        return EXECUTIONS[(instance_id, body)] > 0

    await eventually(check)


# --------------------------------------------------------------------------- workflows


class FourSteps(WorkflowEntrypoint):
    """Four rollback steps; options: ``fail_at`` (step number), ``failing_undos``, ``gate_undo``,
    ``continue_on_error``, ``undo_retries`` (retry limit of the undos, default 0)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        options = dict(event.payload or {})
        RUNS[iid] += 1
        fail_at = options.get("fail_at", 3)
        failing_undos = set(options.get("failing_undos", ()))
        undo_retries = {"limit": options.get("undo_retries", 0), "delay": 0.01, "backoff": "constant"}
        undo_config = {"retries": undo_retries, "timeout": "5 seconds"}

        def declare(i: int) -> RollbackStep[dict[str, int]]:
            name = f"step{i}"

            @step.with_rollback(name, config=NO_RETRY)
            async def forward() -> dict[str, int]:
                ran(iid, name)
                if i == fail_at:
                    raise OutOfStock(f"step {i} found no stock")
                return {"step": i, "value": i * 100}

            @forward.undo(config=undo_config)
            async def undo(error: Exception, result: dict[str, int]) -> str:
                ran(iid, f"undo {name}")
                UNDONE[iid].append([name, type(error).__name__, str(error), result])
                if options.get("gate_undo") == i:
                    await GATES[iid].wait()
                if i in failing_undos:
                    raise RuntimeError(f"undo {i} failed")
                return f"undid {name}"

            return forward

        steps = [declare(i) for i in range(1, 5)]
        try:
            for forward in steps:
                await forward()
        except StepFailedError as error:
            try:
                await step.rollback_all(error, continue_on_error=bool(options.get("continue_on_error")))
            except ExceptionGroup as group:
                return {"group": [[type(e).__name__, str(e)] for e in group.exceptions], "message": str(group)}
            except RuntimeError as exc:
                return {"undo_error": [type(exc).__name__, str(exc)]}
            raise
        return "all done"


class RetryingUndo(WorkflowEntrypoint):
    """An undo with its own retry config (and ``ctx``), and a sync undo that inherits its step's config."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        flaky = int((event.payload or {}).get("flaky", 0))

        @step.with_rollback("reserve", config={"retries": {"limit": 0}, "timeout": "7 seconds"})
        async def reserve() -> str:
            return "R-1"

        @reserve.undo(config={"retries": {"limit": 2, "delay": 0.01, "backoff": "constant"}})
        async def release(error: Exception, reservation: str, ctx: StepContext) -> list[Any]:
            ran(iid, f"release attempt {ctx.attempt}")
            if ctx.attempt <= flaky:
                raise ConnectionError(f"attempt {ctx.attempt} could not reach the inventory")
            return [reservation, str(error), ctx.step.name, ctx.attempt]

        @step.with_rollback("inherit", config={"retries": {"limit": 1, "delay": 0.01}, "timeout": "9 seconds"})
        def inherit() -> int:
            return 5

        @inherit.undo
        def double(error: Exception, result: int) -> int:  # sync: runs in the thread pool
            ran(iid, "double")
            return result * 2

        await reserve()
        await inherit()
        try:
            raise ValueError("the order was cancelled")  # a rollback needs no failed step
        except ValueError as error:
            await step.rollback_all(error)
        return "rolled back"


class Forgets(WorkflowEntrypoint):
    """rollback_all forgets what it ran; steps without an undo are skipped; completing again registers again."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        @step.with_rollback("no undo")
        async def plain() -> int:
            return 0

        @step.with_rollback
        async def one() -> int:
            return 1

        @one.undo
        async def undo_one(error: Exception, result: int) -> None:
            UNDONE[iid].append([str(error), result])

        await plain()
        await one()
        await step.rollback_all(ValueError("first"))
        await step.rollback_all(ValueError("nothing left"))
        await one()
        await step.rollback_all(ValueError("second"))
        return UNDONE[iid]


class CompletionOrder(WorkflowEntrypoint):
    """Two concurrent rollback steps; 'early' (issued first) is held until 'late' completed."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        @step.with_rollback("early")
        async def early() -> str:
            await GATES[iid].wait()
            return "E"

        @step.with_rollback("late")
        async def late() -> str:
            return "L"

        for fn in (early, late):
            fn.undo(lambda error, result: UNDONE[iid].append([result]))

        await asyncio.gather(early(), late())
        await step.rollback_all(RuntimeError("undo in reverse completion order"))
        return [u[0] for u in UNDONE[iid]]


# --------------------------------------------------------------------------- tests


async def test_a_failure_in_step_three_undoes_two_then_one(make_client: MakeClient) -> None:
    client = await make_client({"four": FourSteps})
    iid = unique("saga")
    instance = await client.workflow("four").create(id=iid, params={"fail_at": 3})

    final = await instance.wait(timeout=10)

    assert final.status == "errored", final  # run() re-raised the step error after rolling back
    assert final.error is not None and (final.error.name, final.error.message) == (
        "OutOfStock",
        "step 3 found no stock",
    )
    message = "OutOfStock: step 3 found no stock"
    assert UNDONE[iid] == [
        ["step2", "StepFailedError", message, {"step": 2, "value": 200}],
        ["step1", "StepFailedError", message, {"step": 1, "value": 100}],
    ]
    assert executions(iid) == {"step1": 1, "step2": 1, "step3": 1, "undo step2": 1, "undo step1": 1}
    detail = await instance.describe()
    assert [(s.type, s.name, s.success) for s in detail.steps] == [
        ("step", "step1", True),
        ("step", "step2", True),
        ("step", "step3", False),
        ("step", "rollback step2", True),
        ("step", "rollback step1", True),
    ]
    rollback = detail.steps[3]
    assert rollback.output == "undid step2"
    assert rollback.config is not None and rollback.config["timeout"] == 5.0, "the undo ran with its own config"


async def test_continue_on_error_runs_every_undo_and_raises_an_exception_group(make_client: MakeClient) -> None:
    client = await make_client({"four": FourSteps})
    iid = unique("saga-group")
    params = {"fail_at": 4, "failing_undos": [3, 1], "continue_on_error": True}
    instance = await client.workflow("four").create(id=iid, params=params)

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output["group"] == [["RuntimeError", "undo 3 failed"], ["RuntimeError", "undo 1 failed"]]
    assert "2 undo step(s) failed" in final.output["message"]
    assert [u[0] for u in UNDONE[iid]] == ["step3", "step2", "step1"], "every undo ran, last completed first"
    outcomes = {s.name: s.success for s in (await instance.describe()).steps if s.name.startswith("rollback")}
    assert outcomes == {"rollback step3": False, "rollback step2": True, "rollback step1": False}


async def test_without_continue_on_error_the_first_failed_undo_stops_the_rollback(make_client: MakeClient) -> None:
    client = await make_client({"four": FourSteps})
    iid = unique("saga-stop")
    instance = await client.workflow("four").create(id=iid, params={"fail_at": 4, "failing_undos": [2]})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == {"undo_error": ["RuntimeError", "undo 2 failed"]}
    assert [u[0] for u in UNDONE[iid]] == ["step3", "step2"], "undo 1 did not run after undo 2 failed"
    names = [s.name for s in (await instance.describe()).steps]
    assert "rollback step1" not in names


@pytest.mark.parametrize(
    ("interrupt_attempt", "undo_retries"),
    [
        (False, 0),
        (True, 1),
        (True, 0),
    ],
    ids=["cache-dropped", "attempt-lost", "last-attempt-lost"],
)
async def test_a_crash_during_rollback_resumes_without_rerunning_finished_undos(
    make_client: MakeClient, interrupt_attempt: bool, undo_retries: int
) -> None:
    client = await make_client({"four": FourSteps})
    worker = worker_of(client)
    iid = unique("saga-crash")
    GATES[iid] = asyncio.Event()
    params = {"fail_at": 4, "gate_undo": 2, "undo_retries": undo_retries}
    instance = await client.workflow("four").create(id=iid, params=params)
    await body_started(iid, "undo step2")  # undo 3 is committed, undo 2 is running, undo 1 is not issued

    if interrupt_attempt:
        worker.orchestrator.runner.cancel("four", iid)  # the worker running undo 2 died with it
    crash_cache(client, "four", iid)
    GATES[iid].set()
    if interrupt_attempt:
        partition = partition_of("four", iid, worker.transport.partitions)
        await worker.transport.publish([Outgoing(partition, encode(Redrive(workflow="four", instance_id=iid)))])

    final = await instance.wait(timeout=10)
    assert final.status == "errored", final
    assert final.error is not None
    counts = executions(iid)
    assert counts["undo step3"] == 1, "a finished undo never runs again"
    assert all(counts[f"step{i}"] == 1 for i in range(1, 5))
    assert RUNS[iid] == 2
    rollbacks = [s for s in (await instance.describe()).steps if s.name.startswith("rollback")]
    if interrupt_attempt and undo_retries == 0:
        # The lost attempt was undo 2's last: it failed with WorkerLostError, which stops the rollback.
        assert (final.error.name, counts["undo step2"]) == ("WorkerLostError", 1)
        assert [s.name for s in rollbacks] == ["rollback step3", "rollback step2"]
        assert "undo step1" not in counts
        return
    assert final.error.name == "OutOfStock"
    assert counts["undo step2"] == (2 if interrupt_attempt else 1)
    assert counts["undo step1"] == 1
    # The re-run undo got the same error (rebuilt from history) and result as the first attempt.
    received = [u for u in UNDONE[iid] if u[0] == "step2"]
    assert len(received) == counts["undo step2"] and all(u == received[0] for u in received)
    assert received[0] == ["step2", "StepFailedError", "OutOfStock: step 4 found no stock", {"step": 2, "value": 200}]
    assert [s.name for s in rollbacks] == ["rollback step3", "rollback step2", "rollback step1"]
    step2 = rollbacks[1]
    expected = [False, True] if interrupt_attempt else [True]
    assert [a.success for a in step2.attempts] == expected
    if interrupt_attempt:
        assert step2.attempts[0].error is not None and step2.attempts[0].error.name == "WorkerLostError"


@pytest.mark.parametrize("flaky", [2, 3], ids=["recovers", "exhausted"])
async def test_undo_retries_follow_its_config(make_client: MakeClient, flaky: int) -> None:
    client = await make_client({"retrying": RetryingUndo})
    iid = unique("saga-retry")
    instance = await client.workflow("retrying").create(id=iid, params={"flaky": flaky})

    final = await instance.wait(timeout=10)

    detail = await instance.describe()
    release = next(s for s in detail.steps if s.name == "rollback reserve")
    assert release.config is not None and release.config["retries"]["limit"] == 2
    inherited = next(s for s in detail.steps if s.name == "rollback inherit")
    assert inherited.config is not None and inherited.config["timeout"] == 9.0, "no undo config: the step's"
    assert inherited.output == 10
    assert [s.name for s in detail.steps] == ["reserve", "inherit", "rollback inherit", "rollback reserve"]
    if flaky == 2:
        assert final.status == "complete", final
        assert [a.success for a in release.attempts] == [False, False, True]
        assert release.output == ["R-1", "the order was cancelled", "rollback reserve", 3]
    else:
        assert final.status == "errored", final
        assert final.error is not None and final.error.name == "ConnectionError"
        assert final.error.message == "attempt 3 could not reach the inventory"
        assert [a.success for a in release.attempts] == [False, False, False], "limit 2: three attempts"
    assert executions(iid)["double"] == 1


async def test_rollback_all_forgets_what_it_ran(make_client: MakeClient) -> None:
    client = await make_client({"forgets": Forgets})
    iid = unique("saga-forget")
    instance = await client.workflow("forgets").create(id=iid)

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == [["first", 1], ["second", 1]]
    rollbacks = [(s.name, s.count) for s in (await instance.describe()).steps if s.name.startswith("rollback")]
    assert rollbacks == [("rollback one", 1), ("rollback one", 2)], "a step without an undo is skipped"


async def test_undos_run_in_reverse_completion_order(make_client: MakeClient) -> None:
    client = await make_client({"order": CompletionOrder})
    iid = unique("saga-order")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("order").create(id=iid)
    await wait_step(instance, "late", success=True)
    GATES[iid].set()

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == ["E", "L"], "'early' completed last, so it is undone first"


@pytest.mark.parametrize("decline", [True, False], ids=["declined", "booked"])
async def test_the_saga_example(make_client: MakeClient, decline: bool) -> None:
    client = await make_client({"trip": TripBookingWorkflow})
    instance = await client.workflow("trip").create(params={"tripId": "T-1", "declineCard": decline})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    detail = await instance.describe()
    names = [s.name for s in detail.steps]
    if decline:
        assert final.output == {"tripId": "T-1", "status": "cancelled", "reason": "card declined"}
        assert names == ["book flight", "book hotel", "charge card", "rollback book hotel", "rollback book flight"]
        assert detail.steps[-1].output == {"cancelled": "FL-T-1", "because": "card declined"}
        assert detail.steps[-2].config is not None and detail.steps[-2].config["retries"]["limit"] == 10
    else:
        assert final.output == {
            "tripId": "T-1",
            "status": "booked",
            "flight": "FL-T-1",
            "hotel": "HT-T-1",
            "charge": "ch-T-1",
        }
        assert names == ["book flight", "book hotel", "charge card"]


# --------------------------------------------------------------------------- unit


class NotAStepUndo(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.with_rollback("x")
        async def x() -> int:
            return 1

        try:
            x.undo(42)  # type: ignore[call-overload]
        except TypeError as exc:
            return str(exc)
        raise NonRetryableError("undo accepted a non-callable")


def test_undo_needs_a_callable() -> None:
    run = new_run(NotAStepUndo)
    run.start()
    assert run.outcome() == (True, "step 'x': undo needs a callable, got int")
    run.close()


class ReplayedRollback(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.with_rollback("a", config={"retries": {"limit": 0}})
        async def a() -> int:
            return 1

        a.undo(lambda error, result: None)
        await a()
        try:
            await step.do("fails", lambda: None)
        except ValueError as error:
            await step.rollback_all(error)
        return "done"


def test_a_rollback_replays_from_history_without_new_commands() -> None:
    from hutch.serialization import pack

    def res(name: str, g: int, **outcome: Any) -> dict[str, Any]:
        return {"k": "res", "ref": "step", "n": name, "c": 1, "g": g, "t": 0, **outcome}

    cfg = {"retries": {"limit": 0, "delay": 1.0, "backoff": "constant", "max_delay": None}, "timeout": 5.0}
    history = [
        {"k": "step", "n": "a", "c": 1, "g": 0, "t": 0, "cfg": cfg},
        res("a", 0, ok=True, vb=pack(1)),
        {"k": "step", "n": "fails", "c": 1, "g": 1, "t": 0, "cfg": cfg},
        res("fails", 1, ok=False, err={"name": "ValueError", "message": "nope"}),
        {"k": "step", "n": "rollback a", "c": 1, "g": 2, "t": 0, "cfg": cfg},
        res("rollback a", 2, ok=True, vb=pack(None)),
    ]
    run = new_run(ReplayedRollback)
    run.replay(history)
    assert run.failure is None
    assert run.take_commands() == []
    assert run.outcome() == (True, "done")
    run.close()

    partial = new_run(ReplayedRollback)  # history ends before the undo: replay asks for exactly it
    partial.replay(history[:4])
    assert [(c["k"], c["n"]) for c in partial.take_commands()] == [("step", "rollback a")]
    call = partial.steps[("rollback a", 1)]
    assert call.config.retries.limit == 0, "the undo inherits the step's config"
    partial.close()
