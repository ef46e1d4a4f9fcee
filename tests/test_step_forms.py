"""The ways to write a step (decorator and call forms, async/sync/lambda callables, ``ctx``),
concurrent steps with ``asyncio.gather``, and the values steps hand to ``run()``.

Replays are forced with a short ``step.sleep``: a sleeping instance is evicted from memory,
and waking it re-runs ``run()`` against its history.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hutch import (
    InstanceDetail,
    InstanceStatus,
    StepContext,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from pydantic import BaseModel

from tests.conftest import MakeClient
from tests.diagrams import corpus

RunFn = Callable[[WorkflowEvent, WorkflowStep], Awaitable[Any]]

EVICT = 0.01  # seconds: a sleep just long enough to evict the instance and replay it on wake-up
ONE_ATTEMPT = {"retries": {"limit": 0}, "timeout": "5 seconds"}  # a broken handshake fails fast, not hangs


def workflow(run: RunFn) -> type[WorkflowEntrypoint]:
    """A workflow class whose ``run()`` is ``run``, so a test keeps its counters in local variables."""

    class FormsWorkflow(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await run(event, step)

    return FormsWorkflow


async def run_to_end(make_client: MakeClient, run: RunFn) -> tuple[InstanceStatus, InstanceDetail]:
    """Run one instance to a final status; returns its status and its describe() detail."""
    client = await make_client({"forms": workflow(run)})
    # EVICT sleeps are meant to evict the instance so that waking it replays: no warm sleepers.
    client.runtime_worker.orchestrator.warm_horizon_ms = 0
    instance = await client.workflow("forms").create()
    final = await instance.wait(timeout=15)
    return final, await instance.describe()


def step_names(detail: InstanceDetail) -> list[tuple[str, int]]:
    """``(name, count)`` of every ``step.do`` in issue order."""
    return [(s.name, s.count) for s in detail.steps if s.type == "step"]


# --------------------------------------------------------------------------- decorator form


async def test_decorator_with_name_runs_on_await(make_client: MakeClient) -> None:
    calls = 0

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("check inventory", config={"retries": {"limit": 1}})
        async def check() -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"reserved": 3}

        assert calls == 0  # declaring a step does not run it
        return await check()

    final, detail = await run_to_end(make_client, run)

    assert final.output == {"reserved": 3}
    assert calls == 1
    assert step_names(detail) == [("check inventory", 1)]
    assert detail.steps[0].config is not None and detail.steps[0].config["retries"]["limit"] == 1


async def test_bare_decorator_and_empty_call_name_the_step_after_the_function(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do
        async def load_customer() -> str:
            return "ada"

        @step.do(config={"timeout": "1 minute"})
        def score_customer(ctx: StepContext) -> list[Any]:
            return [ctx.step.name, ctx.config.timeout]

        return [await load_customer(), await score_customer()]

    final, detail = await run_to_end(make_client, run)

    assert final.output == ["ada", ["score_customer", 60.0]]
    assert step_names(detail) == [("load_customer", 1), ("score_customer", 1)]


async def test_calling_a_decorated_step_twice_makes_two_steps(make_client: MakeClient) -> None:
    calls = 0

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("poll")
        async def poll(ctx: StepContext) -> int:
            nonlocal calls
            calls += 1
            return ctx.step.count

        return [await poll(), await poll()]

    final, detail = await run_to_end(make_client, run)

    assert final.output == [1, 2]
    assert calls == 2
    assert step_names(detail) == [("poll", 1), ("poll", 2)]


# --------------------------------------------------------------------------- call form and callables


async def test_async_callable_runs_on_the_event_loop_thread(make_client: MakeClient) -> None:
    test_thread = threading.get_ident()

    async def fetch() -> bool:
        return threading.get_ident() == test_thread

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("fetch", fetch)

    final, _ = await run_to_end(make_client, run)

    assert final.output is True


async def test_sync_callable_runs_in_a_worker_thread(make_client: MakeClient) -> None:
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []

    def blocking_io() -> str:
        seen.append(threading.current_thread())
        return "read"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("blocking io", blocking_io)

    final, _ = await run_to_end(make_client, run)

    assert final.output == "read"
    assert len(seen) == 1
    assert seen[0] is not loop_thread  # a blocking body never stalls the worker's event loop


async def test_lambda_returning_an_awaitable_is_awaited(make_client: MakeClient) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)  # a real suspension point inside the awaited coroutine
        return x * 2

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("double", lambda: double(21))

    final, _ = await run_to_end(make_client, run)

    assert final.output == 42


async def test_name_defaults_to_the_callables_name_in_call_form(make_client: MakeClient) -> None:
    async def send_receipt() -> str:
        return "sent"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do(None, send_receipt)

    final, detail = await run_to_end(make_client, run)

    assert final.output == "sent"
    assert step_names(detail) == [("send_receipt", 1)]


async def test_callables_taking_ctx_get_it(make_client: MakeClient) -> None:
    async def async_with_ctx(ctx: StepContext) -> list[Any]:
        return ["async", ctx.step.name, ctx.attempt]

    def sync_with_ctx(ctx: StepContext) -> list[Any]:
        return ["sync", ctx.step.name, ctx.attempt]

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return [
            await step.do("a", async_with_ctx),
            await step.do("b", sync_with_ctx),
            await step.do("c", lambda ctx: ["lambda", ctx.step.name, ctx.attempt]),
        ]

    final, _ = await run_to_end(make_client, run)

    assert final.output == [["async", "a", 1], ["sync", "b", 1], ["lambda", "c", 1]]


async def test_bound_methods_and_partials_are_steps(make_client: MakeClient) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    class Methods(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return [
                await step.do("method", self.lookup),
                await step.do("method with ctx", self.describe_step),
                await step.do("partial", functools.partial(add, 2, 3)),
            ]

        async def lookup(self) -> str:
            return type(self).__name__

        def describe_step(self, ctx: StepContext) -> str:
            return f"{ctx.step.name}#{ctx.step.count}"

    client = await make_client({"methods": Methods})
    final = await (await client.workflow("methods").create()).wait(timeout=10)

    assert final.output == ["Methods", "method with ctx#1", 5]


# --------------------------------------------------------------------------- concurrency with asyncio.gather


async def test_gathered_steps_run_concurrently_and_replay(make_client: MakeClient) -> None:
    """Two steps that each wait for the other to start can only finish if they overlap.

    The handshake also makes ``second`` finish before ``first``: results still come back in
    argument order, live and on replay, because identity is (name, count), not completion order.
    """
    first_started = asyncio.Event()
    second_started = asyncio.Event()
    second_finished = asyncio.Event()
    executions: list[str] = []
    seen_by_run: list[list[str]] = []

    async def first() -> str:
        first_started.set()
        await second_started.wait()
        await second_finished.wait()
        executions.append("first")
        return "first"

    async def second() -> str:
        second_started.set()
        await first_started.wait()
        executions.append("second")
        second_finished.set()
        return "second"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        results = await asyncio.gather(
            step.do("first", first, config=ONE_ATTEMPT),
            step.do("second", second, config=ONE_ATTEMPT),
        )
        seen_by_run.append(list(results))
        await step.sleep("evict", EVICT)
        return results

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == ["first", "second"]
    assert executions == ["second", "first"]  # each ran once; none re-ran on replay
    assert seen_by_run == [["first", "second"], ["first", "second"]]
    assert step_names(detail) == [("first", 1), ("second", 1)]


async def test_gathered_decorated_steps_with_one_name_keep_their_counts(make_client: MakeClient) -> None:
    """Same-name steps issued together get counts in issue order, whatever order they finish in."""
    gates = [asyncio.Event() for _ in range(3)]
    executions: list[int] = []
    seen_by_run: list[list[int]] = []

    def shard(i: int) -> Callable[[], Awaitable[int]]:
        async def body() -> int:
            # Shard i waits for shard i+1, so they finish in reverse order.
            if i + 1 < len(gates):
                await gates[i + 1].wait()
            executions.append(i)
            gates[i].set()
            return i * 100

        return body

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        steps = [step.do("shard", config=ONE_ATTEMPT)(shard(i)) for i in range(3)]
        results = await asyncio.gather(*(s() for s in steps))
        seen_by_run.append(list(results))
        await step.sleep("evict", EVICT)
        return results

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == [0, 100, 200]
    assert executions == [2, 1, 0]
    assert seen_by_run == [[0, 100, 200], [0, 100, 200]]
    shards = [s for s in detail.steps if s.name == "shard"]
    assert [(s.count, s.output) for s in shards] == [(1, 0), (2, 100), (3, 200)]


# --------------------------------------------------------------------------- what run() receives


class Point(BaseModel):
    x: int
    y: int


async def test_step_results_are_what_replay_returns(make_client: MakeClient) -> None:
    """run() gets a step's value as storage round-trips it, so live and replayed runs agree.

    Tuples come back as lists and pydantic models as dicts — also on the live path, so code
    cannot come to depend on a tuple that a replay would turn into a list.
    """
    seen_by_run: list[dict[str, Any]] = []

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        values = {
            "tuple": await step.do("tuple", lambda: (1, (2, 3))),
            "dict": await step.do("dict", lambda: {"pair": ("a", "b"), "none": None, "flag": True}),
            "bytes": await step.do("bytes", lambda: b"\x00\xff"),
            "float": await step.do("float", lambda: 0.5),
            "model": await step.do("model", lambda: Point(x=1, y=2)),
            "none": await step.do("none", lambda: None),
        }
        seen_by_run.append({k: (v, type(v).__name__) for k, v in values.items()})
        await step.sleep("evict", EVICT)
        return values

    final, detail = await run_to_end(make_client, run)

    expected = {
        "tuple": ([1, [2, 3]], "list"),
        "dict": ({"pair": ["a", "b"], "none": None, "flag": True}, "dict"),
        "bytes": (b"\x00\xff", "bytes"),
        "float": (0.5, "float"),
        "model": ({"x": 1, "y": 2}, "dict"),
        "none": (None, "NoneType"),
    }
    assert seen_by_run == [expected, expected]  # live, then replayed
    values = {k: v for k, (v, _) in expected.items()}
    assert final.output == values
    assert {s.name: s.output for s in detail.steps if s.type == "step"} == values


# --------------------------------------------------------------------------- every asyncio idiom over step calls


def recorded(executions: list[str], name: str) -> Callable[[], str]:
    """A sync step body that notes its execution and returns its name."""

    def body() -> str:
        executions.append(name)
        return name

    return body


async def test_create_task_and_ensure_future_take_step_calls(make_client: MakeClient) -> None:
    """A step's count is taken when it is called, not when its task first runs.

    ``late`` is called second but started first: it is still ``("same", 2)``, live and on replay.
    """
    executions: list[str] = []
    seen_by_run: list[list[Any]] = []

    async def count(ctx: StepContext) -> int:
        executions.append(f"same#{ctx.step.count}")
        return ctx.step.count

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("decorated", config=ONE_ATTEMPT)
        async def decorated() -> str:
            executions.append("decorated")
            return "decorated"

        early = step.do("same", count, config=ONE_ATTEMPT)
        late = step.do("same", count, config=ONE_ATTEMPT)
        started_late = asyncio.create_task(late)
        started_early = asyncio.create_task(early)
        ensured = asyncio.ensure_future(step.do("ensured", recorded(executions, "ensured"), config=ONE_ATTEMPT))
        from_decorator = asyncio.create_task(decorated())
        napped = asyncio.create_task(step.sleep("nap", 0.001))
        results = [await started_late, await started_early, await ensured, await from_decorator, await napped]
        seen_by_run.append(results)
        await step.sleep("evict", EVICT)
        return results

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == [2, 1, "ensured", "decorated", None]
    assert seen_by_run == [final.output, final.output]  # live, then replayed
    assert sorted(executions) == ["decorated", "ensured", "same#1", "same#2"]  # none re-ran on replay
    assert step_names(detail) == [("same", 1), ("same", 2), ("ensured", 1), ("decorated", 1)]


async def test_task_group_takes_step_calls_and_decorated_step_calls(make_client: MakeClient) -> None:
    executions: list[str] = []
    seen_by_run: list[dict[str, Any]] = []

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("shard", config=ONE_ATTEMPT)
        async def shard(ctx: StepContext) -> str:
            executions.append(f"shard#{ctx.step.count}")
            return f"shard#{ctx.step.count}"

        async with asyncio.TaskGroup() as tg:
            regions = [
                tg.create_task(step.do(f"sync {r}", recorded(executions, r), config=ONE_ATTEMPT)) for r in ("eu", "us")
            ]
            shards = [tg.create_task(shard()) for _ in range(2)]
            inline = await step.do("inline", recorded(executions, "inline"), config=ONE_ATTEMPT)
        results = {"regions": [t.result() for t in regions], "shards": [t.result() for t in shards], "inline": inline}
        seen_by_run.append(results)
        await step.sleep("evict", EVICT)
        return results

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == {"regions": ["eu", "us"], "shards": ["shard#1", "shard#2"], "inline": "inline"}
    assert seen_by_run == [final.output, final.output]
    assert sorted(executions) == ["eu", "inline", "shard#1", "shard#2", "us"]
    assert step_names(detail) == [("sync eu", 1), ("sync us", 1), ("shard", 1), ("shard", 2), ("inline", 1)]


async def test_the_diagram_corpus_task_group_workflow_runs(make_client: MakeClient) -> None:
    """tests/diagrams/corpus.py's TaskGroupWorkflow is drawn from its code; it must also run."""
    client = await make_client({"tg": corpus.TaskGroupWorkflow})
    instance = await client.workflow("tg").create(params={"regions": ["eu", "us", "ap"]})

    final = await instance.wait(timeout=15)

    assert final.status == "complete", final.error
    detail = await instance.describe()
    assert sorted(step_names(detail)) == [
        ("inline", 1),
        ("sync ap", 1),
        ("sync catalog", 1),
        ("sync eu", 1),
        ("sync eu", 2),
        ("sync us", 1),
        ("sync us", 2),
    ]


async def test_task_group_abort_cancels_the_step_of_a_task_that_never_ran(make_client: MakeClient) -> None:
    """A task that owns a step call and is cancelled before it first ran still cancels its step.

    The body raises right after ``create_task``: the TaskGroup cancels the task before it ever
    awaited the step. Without that, the step would run on, unawaited, until its timeout.
    """
    never = asyncio.Event()

    async def blocks() -> str:
        await never.wait()
        return "unreachable"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(step.do("blocked", blocks, config={"retries": {"limit": 0}, "timeout": "1 hour"}))
                raise ValueError("abort")
        except* ValueError:
            pass
        await step.sleep("evict", EVICT)
        return "aborted"

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == "aborted"
    blocked = next(s for s in detail.steps if s.name == "blocked")
    assert blocked.outcome == "cancelled"


async def test_asyncio_wait_first_completed_returns_the_step_calls_and_cancels_the_loser(
    make_client: MakeClient,
) -> None:
    """``done``/``pending`` hold the step calls themselves; cancelling the pending wait is recorded and replayed."""
    executions: list[str] = []
    seen_by_run: list[dict[str, Any]] = []

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        work = step.do("work", recorded(executions, "work"), config=ONE_ATTEMPT)
        approval = step.wait_for_event("approval", "approve", timeout="1 hour")
        called_back: list[bool] = []
        work.add_done_callback(lambda settled: called_back.append(settled is work))
        done, pending = await asyncio.wait({work, approval}, return_when=asyncio.FIRST_COMPLETED)
        outcome = {"done": work in done, "pending": approval in pending, "result": work.result(), "cb": called_back}
        for loser in pending:
            loser.cancel()
        seen_by_run.append(outcome)
        await step.sleep("evict", EVICT)
        return outcome

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == {"done": True, "pending": True, "result": "work", "cb": [True]}
    assert seen_by_run == [final.output, final.output]
    assert executions == ["work"]
    waits = [s for s in detail.steps if s.type == "waitForEvent"]
    assert [(w.name, w.outcome) for w in waits] == [("approval", "cancelled")]


async def test_asyncio_wait_all_completed_and_as_completed_take_step_calls(make_client: MakeClient) -> None:
    """ALL_COMPLETED hands back a failed step's error; as_completed yields in completion order, also on replay."""
    y_finished = asyncio.Event()
    seen_by_run: list[dict[str, Any]] = []

    async def fails() -> None:
        raise ValueError("out of stock")

    async def x() -> str:
        await y_finished.wait()  # x finishes after y although it was issued first
        return "x"

    async def y() -> str:
        y_finished.set()
        return "y"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        ok = step.do("ok", lambda: 1, config=ONE_ATTEMPT)
        bad = step.do("bad", fails, config=ONE_ATTEMPT)
        done, pending = await asyncio.wait([ok, bad])
        waited = {"done": len(done), "pending": len(pending), "ok": ok.result(), "bad": repr(bad.exception())}
        completed = [await f for f in asyncio.as_completed([step.do("x", x), step.do("y", y)])]
        outcome = {"waited": waited, "as_completed": completed}
        seen_by_run.append(outcome)
        await step.sleep("evict", EVICT)
        return outcome

    final, _ = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == {
        "waited": {"done": 2, "pending": 0, "ok": 1, "bad": "ValueError('out of stock')"},
        "as_completed": ["y", "x"],
    }
    assert seen_by_run == [final.output, final.output]
