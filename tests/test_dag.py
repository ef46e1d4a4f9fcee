"""DAG workflows: ``@step.do(name, depends=[...], concurrent=...)``.

Each dependency runs at most once per run and its result is injected into the dependent step
(by parameter name, else positionally); ``concurrent=True`` resolves dependencies at the same
time; a failed dependency raises into the dependent's await; crashes replay without re-running
finished steps; ``describe()`` lists every step's dependencies. Step bodies count their
executions in module-level dicts keyed by instance id, so a step that ran twice shows up.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from hutch import StepContext, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from hutch.broker import Outgoing, Redrive, partition_of
from hutch.broker.envelopes import encode
from hutch.dag import plan_dependencies
from hutch.serialization import pack

from examples.dag import SalesReportWorkflow
from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_step, worker_of
from tests.test_replay import crash_cache, new_run

EXECUTIONS: collections.Counter[tuple[str, str]] = collections.Counter()  # (instance, step) -> body runs
RUNS: collections.Counter[str] = collections.Counter()  # instance -> run() executions (live + replays)
SEEN: dict[str, list[Any]] = collections.defaultdict(list)  # instance -> what step bodies received
GATES: dict[str, asyncio.Event] = {}  # instance -> released by the test to let a gated step finish
HANDS: dict[str, dict[str, asyncio.Event]] = {}  # instance -> handshake events of two dependencies

NO_RETRY = {"retries": {"limit": 0}, "timeout": "5 seconds"}


def ran(instance_id: str, step: str) -> None:
    EXECUTIONS[(instance_id, step)] += 1


async def body_started(instance_id: str, step: str) -> None:
    """Wait until a step body is running on the worker (not just recorded as started)."""

    async def check() -> bool:
        return EXECUTIONS[(instance_id, step)] > 0

    await eventually(check)


def executions(instance_id: str) -> dict[str, int]:
    return {step: n for (iid, step), n in EXECUTIONS.items() if iid == instance_id}


def payload(event: WorkflowEvent) -> dict[str, Any]:
    return dict(event.payload) if event.payload else {}


# --------------------------------------------------------------------------- workflows


class Diamond(WorkflowEntrypoint):
    """a, b → c; a, c → d. Options: ``concurrent``, ``await_a_first``, ``gate`` (c waits for the test)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        options = payload(event)
        RUNS[iid] += 1
        concurrent = bool(options.get("concurrent", True))

        @step.do("a")
        async def a() -> int:
            ran(iid, "a")
            return 1

        @step.do("b")
        def b() -> int:  # a sync dependency (runs in the thread pool)
            ran(iid, "b")
            return 10

        @step.do("c", depends=[a, b], concurrent=concurrent)
        async def c(a: int, b: int) -> int:
            ran(iid, "c")
            SEEN[iid].append(("c", a, b))
            if options.get("gate"):
                await GATES[iid].wait()
            return a + b

        @step.do("d", depends=[a, c], concurrent=concurrent)
        async def d(a: int, c: int) -> dict[str, int]:
            ran(iid, "d")
            SEEN[iid].append(("d", a, c))
            return {"a": a, "c": c}

        first = await a() if options.get("await_a_first") else None
        return {"first": first, "d": await d()}


class Handshake(WorkflowEntrypoint):
    """Two dependencies of one step; with ``concurrent`` each waits inside its body for the other."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        concurrent = bool(payload(event)["concurrent"])

        def side(me: str, other: str) -> Any:
            async def body() -> str:
                SEEN[iid].append(f"{me} start")
                if concurrent:
                    # Only finishes if the other dependency runs at the same time.
                    HANDS[iid][me].set()
                    await HANDS[iid][other].wait()
                SEEN[iid].append(f"{me} end")
                return me

            body.__name__ = me
            return body

        left = step.do("left", config=NO_RETRY)(side("left", "right"))
        right = step.do("right", config=NO_RETRY)(side("right", "left"))

        @step.do("both", depends=[left, right], concurrent=concurrent)
        async def both(left: str, right: str) -> str:
            return f"{left}+{right}"

        return await both()


class Injection(WorkflowEntrypoint):
    """Every way a dependent step receives its dependencies' results."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        @step.do("fetch price")
        async def price() -> int:
            ran(iid, "price")
            return 3

        @step.do("fetch qty")
        def qty() -> int:
            ran(iid, "qty")
            return 4

        @step.do("label")
        async def label() -> str:
            ran(iid, "label")
            return "widget"

        @step.do("by name", depends=[price, qty])
        async def by_name(qty: int, price: int) -> dict[str, int]:
            return {"qty": qty, "price": price}

        @step.do("by position", depends=[price, qty])
        def by_position(first: int, second: int) -> list[int]:  # sync: runs in the thread pool
            return [first, second]

        @step.do("mixed", depends=[price, label, qty], concurrent=True)
        async def mixed(first: int, qty: int, ctx: StepContext, rest: str = "unset") -> dict[str, Any]:
            return {"first": first, "qty": qty, "rest": rest, "ctx": [ctx.step.name, ctx.step.count]}

        @step.do("keyword ctx", depends=[price])
        async def keyword_ctx(price: int, *, ctx: StepContext) -> list[Any]:
            return [price, ctx.step.name]

        @step.do("varargs", depends=[price, qty, label])
        def varargs(label: str, *others: int) -> list[Any]:
            return [label, list(others)]

        @step.do("ordering only", depends=[price, qty])
        async def ordering_only() -> str:
            return "ran"

        @step.do("retried", depends=[price, qty], config={"retries": {"limit": 2, "delay": 0.01}})
        async def retried(price: int, qty: int, ctx: StepContext) -> list[int]:
            if ctx.attempt == 1:
                raise ConnectionError("flaky")
            return [price, qty, ctx.attempt]

        results: dict[str, Any] = {}
        for fn in (by_name, by_position, mixed, keyword_ctx, varargs, ordering_only, retried):
            results[fn.name] = await fn()
        # The call form takes depends= too; the lambda's parameters are named after the dependencies.
        results["call form"] = await step.do("call form", lambda price, qty: price * qty, depends=[price, qty])
        return results


class FailingDependency(WorkflowEntrypoint):
    """A dependency that fails after one retry; ``catch`` decides whether run() handles the error."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        @step.do("ok")
        async def ok() -> int:
            ran(iid, "ok")
            return 1

        @step.do("boom", config={"retries": {"limit": 1, "delay": 0.01, "backoff": "constant"}})
        async def boom() -> int:
            ran(iid, "boom")
            raise ValueError("out of stock")

        @step.do("after", depends=[ok, boom], concurrent=True)
        async def after(ok: int, boom: int) -> int:
            ran(iid, "after")
            return ok + boom

        @step.do("later", depends=[boom])
        async def later(boom: int) -> int:
            ran(iid, "later")
            return boom

        if not payload(event).get("catch"):
            return await after()
        caught = []
        for dependent in (after, later):  # the second sees the same, memoised failure
            try:
                await dependent()
            except ValueError as exc:
                caught.append([dependent.name, type(exc).__name__, str(exc)])
        return caught


class DeclarationErrors(WorkflowEntrypoint):
    """Mistakes in a DAG declaration raise TypeError into run(), at the declaration."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("a")
        async def a() -> int:
            return 1

        errors = []
        try:

            @step.do("unfillable", depends=[a])
            async def unfillable(a: int, missing: int) -> int:
                return a + missing

        except TypeError as exc:
            errors.append(str(exc))
        try:
            step.do("not a step", depends=[lambda: 1])(lambda: 2)  # type: ignore[list-item]
        except TypeError as exc:
            errors.append(str(exc))
        return errors


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("concurrent", [True, False], ids=["concurrent", "sequential"])
@pytest.mark.parametrize("await_a_first", [False, True], ids=["shared", "awaited-first"])
async def test_diamond_runs_every_step_once(make_client: MakeClient, concurrent: bool, await_a_first: bool) -> None:
    client = await make_client({"diamond": Diamond})
    iid = unique("diamond")
    instance = await client.workflow("diamond").create(
        id=iid, params={"concurrent": concurrent, "await_a_first": await_a_first}
    )

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == {"first": 1 if await_a_first else None, "d": {"a": 1, "c": 11}}
    assert executions(iid) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert SEEN[iid] == [("c", 1, 10), ("d", 1, 11)]
    detail = await instance.describe()
    assert [(s.name, s.count, s.depends) for s in detail.steps] == [
        ("a", 1, []),
        ("b", 1, []),
        ("c", 1, ["a", "b"]),
        ("d", 1, ["a", "c"]),
    ]
    steps = {s.name: s for s in detail.steps}
    assert all(s.success and len(s.attempts) == 1 for s in detail.steps)
    # A dependent step is issued only once its dependencies have results.
    for name, deps in (("c", ["a", "b"]), ("d", ["a", "c"])):
        for dep in deps:
            end = steps[dep].end
            assert end is not None and steps[name].start >= end, (name, dep)
    if not concurrent:
        end_a = steps["a"].end
        assert end_a is not None and steps["b"].start >= end_a, "sequential: b waits for a"


async def test_concurrent_dependencies_run_at_the_same_time(make_client: MakeClient) -> None:
    client = await make_client({"handshake": Handshake})
    iid = unique("hands")
    HANDS[iid] = {"left": asyncio.Event(), "right": asyncio.Event()}
    instance = await client.workflow("handshake").create(id=iid, params={"concurrent": True})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final  # each body waited for the other: they overlapped
    assert final.output == "left+right"
    assert sorted(SEEN[iid][:2]) == ["left start", "right start"], SEEN[iid]


async def test_sequential_dependencies_run_in_list_order(make_client: MakeClient) -> None:
    client = await make_client({"handshake": Handshake})
    iid = unique("seq")
    instance = await client.workflow("handshake").create(id=iid, params={"concurrent": False})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == "left+right"
    assert SEEN[iid] == ["left start", "left end", "right start", "right end"]


async def test_results_are_injected_by_name_by_position_and_ctx(make_client: MakeClient) -> None:
    client = await make_client({"inject": Injection})
    iid = unique("inject")
    instance = await client.workflow("inject").create(id=iid)

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == {
        "by name": {"qty": 4, "price": 3},
        "by position": [3, 4],
        "mixed": {"first": 3, "qty": 4, "rest": "widget", "ctx": ["mixed", 1]},
        "keyword ctx": [3, "keyword ctx"],
        "varargs": ["widget", [3, 4]],
        "ordering only": "ran",
        "retried": [3, 4, 2],
        "call form": 12,
    }
    assert executions(iid) == {"price": 1, "qty": 1, "label": 1}, "dependencies ran once for eight dependents"
    detail = await instance.describe()
    depends = {s.name: s.depends for s in detail.steps}
    assert depends["mixed"] == ["fetch price", "label", "fetch qty"]
    assert depends["call form"] == ["fetch price", "fetch qty"]
    assert depends["fetch price"] == []
    retried = next(s for s in detail.steps if s.name == "retried")
    assert [a.success for a in retried.attempts] == [False, True]


@pytest.mark.parametrize("catch", [True, False], ids=["caught", "uncaught"])
async def test_a_failed_dependency_raises_into_the_dependent(make_client: MakeClient, catch: bool) -> None:
    client = await make_client({"failing": FailingDependency})
    iid = unique("dep-fail")
    instance = await client.workflow("failing").create(id=iid, params={"catch": catch})

    final = await instance.wait(timeout=10)

    if catch:
        assert final.status == "complete", final
        assert final.output == [["after", "ValueError", "out of stock"], ["later", "ValueError", "out of stock"]]
    else:
        assert final.status == "errored"
        assert final.error is not None
        assert (final.error.name, final.error.message) == ("ValueError", "out of stock")
    assert executions(iid) == {"ok": 1, "boom": 2}, "boom retried once and was not re-run for 'later'"
    names = [s.name for s in (await instance.describe()).steps]
    assert "after" not in names and "later" not in names, "a dependent whose dependency failed is never issued"


async def test_declaration_mistakes_raise_type_error(make_client: MakeClient) -> None:
    client = await make_client({"bad": DeclarationErrors})
    instance = await client.workflow("bad").create()

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    unfillable, not_a_step = final.output
    assert "step 'unfillable': parameter 'missing' receives no dependency result" in unfillable
    assert "step 'not a step': depends lists" in not_a_step and "is not a step" in not_a_step


async def test_a_crash_between_steps_replays_without_rerunning_finished_ones(make_client: MakeClient) -> None:
    client = await make_client({"diamond": Diamond})
    iid = unique("dag-crash")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("diamond").create(id=iid, params={"gate": True})
    await body_started(iid, "c")  # a and b are committed; c is running

    crash_cache(client, "diamond", iid)
    GATES[iid].set()  # c's result reaches an owner with no live run(): it replays the DAG from Redis

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output == {"first": None, "d": {"a": 1, "c": 11}}
    assert executions(iid) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert RUNS[iid] == 2, "run() started live once and replayed once"
    assert [s.depends for s in (await instance.describe()).steps] == [[], [], ["a", "b"], ["a", "c"]]


async def test_an_interrupted_dependent_reruns_with_the_replayed_results(make_client: MakeClient) -> None:
    client = await make_client({"diamond": Diamond})
    worker = worker_of(client)
    iid = unique("dag-redrive")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("diamond").create(id=iid, params={"gate": True})
    await body_started(iid, "c")

    # The worker dies mid-c: its attempt and the live run() are gone; the successor re-drives.
    worker.orchestrator.runner.cancel("diamond", iid)
    crash_cache(client, "diamond", iid)
    GATES[iid].set()
    redrive = Redrive(workflow="diamond", instance_id=iid)
    await worker.transport.publish(
        [Outgoing(partition_of("diamond", iid, worker.transport.partitions), encode(redrive))]
    )

    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output == {"first": None, "d": {"a": 1, "c": 11}}
    assert executions(iid) == {"a": 1, "b": 1, "c": 2, "d": 1}, "only the interrupted step ran again"
    assert SEEN[iid] == [("c", 1, 10), ("c", 1, 10), ("d", 1, 11)], "the re-run got the results from history"
    c = next(s for s in (await instance.describe()).steps if s.name == "c")
    assert [a.success for a in c.attempts] == [False, True]


async def test_the_dag_example_builds_its_report(make_client: MakeClient) -> None:
    client = await make_client({"report": SalesReportWorkflow})
    instance = await client.workflow("report").create(params={"region": "eu"})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final
    assert final.output == {
        "region": "eu",
        "lines": ["o-1: Ada Lovelace 12.50", "o-2: Grace Hopper 49.99"],
        "orders": 2,
        "cents": 6249,
    }
    detail = await wait_step(instance, "build report", success=True)
    assert {s.name: s.depends for s in detail.steps} == {
        "fetch orders": [],
        "fetch customers": [],
        "sum totals": ["fetch orders"],
        "enrich orders": ["fetch orders", "fetch customers"],
        "build report": ["enrich orders", "sum totals"],
    }


# --------------------------------------------------------------------------- unit: replay and planning


class CancelledDependent(WorkflowEntrypoint):
    """Cancelling one dependent must not cancel the dependency another dependent shares."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("shared")
        async def shared() -> int:
            return 5

        @step.do("first", depends=[shared])
        async def first(shared: int) -> int:
            return shared

        @step.do("second", depends=[shared])
        async def second(shared: int) -> int:
            return shared * 2

        doomed = asyncio.ensure_future(first())
        survivor = second()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        doomed.cancel()
        return await survivor


def test_cancelling_a_dependent_leaves_the_shared_dependency_running() -> None:
    run = new_run(CancelledDependent)
    run.start()
    commands = run.take_commands()
    assert [(c["k"], c["n"]) for c in commands] == [("step", "shared")], "no cancel of the shared step"
    run.deliver([{"k": "res", "ref": "step", "n": "shared", "c": 1, "ok": True, "g": 0, "t": 0, "v": 5}])
    commands = run.take_commands()
    assert [(c["k"], c["n"], c.get("deps")) for c in commands] == [("step", "second", ["shared"])]
    run.deliver([{"k": "res", "ref": "step", "n": "second", "c": 1, "ok": True, "g": 1, "t": 0, "v": 10}])
    assert run.outcome() == (True, 10)
    run.close()


def test_replaying_a_dag_history_issues_nothing_new() -> None:
    # Drive the diamond live as the consumer would, resolving every pending step group by group.
    live = new_run(Diamond)
    live.start()
    history = live.take_commands()
    values = {"a": 1, "b": 10, "c": 11, "d": {"a": 1, "c": 11}}
    issued: list[list[str]] = []
    resolved: set[str] = set()
    group = 0
    while not live.finished:
        pending = [c["n"] for c in history if c["k"] == "step" and c["n"] not in resolved]
        assert pending, history
        issued.append(pending)
        resolved.update(pending)
        resolutions = [
            {"k": "res", "ref": "step", "n": n, "c": 1, "ok": True, "g": group, "t": 0, "vb": pack(values[n])}
            for n in pending
        ]
        history += resolutions
        live.deliver(resolutions)
        group += 1
        live.group = group
        history += live.take_commands()
    outcome = live.outcome()
    live.close()
    assert issued == [["a", "b"], ["c"], ["d"]], "a dependent is issued only once its dependencies resolved"
    assert outcome == (True, {"first": None, "d": {"a": 1, "c": 11}})

    replayed = new_run(Diamond)
    replayed.replay(history)
    assert replayed.failure is None
    assert replayed.take_commands() == [], "everything the DAG asked for is already in history"
    assert replayed.outcome() == outcome
    replayed.close()


def test_planning_maps_names_then_positions() -> None:
    def fn(x: int, price: int, ctx: Any, *rest: int, flag: bool = False) -> None:
        return None

    binding = plan_dependencies("s", fn, ["qty", "price", "label", "extra"])
    assert binding.targets == ("x", "price", None, None)
    assert binding.var_positional == "rest" and binding.takes_ctx
    args, kwargs = binding.arguments([4, 3, "w", "e"], ctx="CTX")  # type: ignore[arg-type]
    assert (args, kwargs) == ((4, 3, "CTX", "w", "e"), {})
