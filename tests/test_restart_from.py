"""Restart from a step (SPEC §12, issue 13 item 3): ``instance.restart(from_step=(name, count))``.

History keeps every record before that step's command: replay returns the earlier steps' recorded
results without running them again; that step and everything after it run again, in a new run.
A step the history lacks is a clear error and changes nothing. Step bodies count their
executions in module-level counters keyed by instance id.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from hutch import IllegalTransition, Status, WorkflowEntrypoint
from hutch.errors import StepNotInHistory
from hutch.restart import FromStep

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status, wait_step
from tests.test_replay import crash_cache

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()  # (instance, body) -> executions
GATES: dict[str, asyncio.Event] = {}  # instance -> opened by the test to let step "c" finish
NO_RETRY = {"retries": {"limit": 0}}


class ThreeSteps(WorkflowEntrypoint):
    """a -> b -> wait "go" -> c; each step's result carries how many times its body ran."""

    async def run(self, event: Any, step: Any) -> Any:
        iid = event.instance_id

        def body(name: str) -> Any:
            def run_body() -> str:
                CALLS[(iid, name)] += 1
                return f"{name}{CALLS[(iid, name)]}"

            run_body.__name__ = name
            return run_body

        a = await step.do("a", body("a"), config=NO_RETRY)
        b = await step.do("b", body("b"), config=NO_RETRY)
        go = await step.wait_for_event("go", "go", timeout="1 hour")
        c = await step.do("c", body("c"), config=NO_RETRY)
        return [a, b, go.payload, c]


def calls(iid: str) -> dict[str, int]:
    return {name: n for (i, name), n in CALLS.items() if i == iid}


async def test_restart_from_a_step_keeps_earlier_results_and_reruns_later_steps(make_client: MakeClient) -> None:
    client = await make_client({"three": ThreeSteps})
    iid = unique("from")
    instance = await client.workflow("three").create(id=iid)
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", 1)
    assert (await instance.wait(timeout=10)).output == ["a1", "b1", 1, "c1"]

    accepted = await instance.restart(from_step=("b", 1))
    assert accepted.applied
    await wait_status(instance, Status.WAITING)  # b ran again; the wait after it waits again
    await instance.send_event("go", 2)
    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE, final
    # a's recorded result came back without running it; b and c ran a second time.
    assert final.output == ["a1", "b2", 2, "c2"]
    assert calls(iid) == {"a": 1, "b": 2, "c": 2}
    detail = await instance.describe()
    assert [s.name for s in detail.steps] == ["a", "b", "go", "c"]  # one row each: the old rows were cut
    assert detail.steps[0].output == "a1" and detail.steps[1].output == "b2"


async def test_restart_from_a_wait_type_keeps_the_steps_before_it(make_client: MakeClient) -> None:
    client = await make_client({"three": ThreeSteps})
    iid = unique("from-wait")
    instance = await client.workflow("three").create(id=iid)
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", 1)
    await instance.wait(timeout=10)

    await instance.restart(from_step=FromStep(name="go", count=1, type="waitForEvent"))
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", 3)
    assert (await instance.wait(timeout=10)).output == ["a1", "b1", 3, "c2"]
    assert calls(iid) == {"a": 1, "b": 1, "c": 2}


async def test_restart_from_a_step_not_in_history_is_an_error_and_changes_nothing(make_client: MakeClient) -> None:
    client = await make_client({"three": ThreeSteps})
    iid = unique("from-missing")
    instance = await client.workflow("three").create(id=iid)
    await wait_status(instance, Status.WAITING)
    before = await instance.describe()

    for missing in (("c", 1), ("b", 2), ("nope", 1), FromStep(name="b", type="sleep")):
        with pytest.raises(StepNotInHistory) as caught:
            await instance.restart(from_step=missing)
        assert isinstance(caught.value, IllegalTransition)  # the REST API's 409
    after = await instance.describe()
    assert after.status == Status.WAITING
    assert [s.name for s in after.steps] == [s.name for s in before.steps]
    await instance.send_event("go", 1)
    assert (await instance.wait(timeout=10)).output == ["a1", "b1", 1, "c1"]


async def test_restart_from_a_step_of_a_running_instance_ignores_the_old_runs_result(
    make_client: MakeClient,
) -> None:
    client = await make_client({"gated": Gated})
    iid = unique("from-running")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("gated").create(id=iid)
    await wait_step(instance, "slow")
    await eventually(lambda: _ran(iid, "slow", 1))

    await instance.restart(from_step="slow")
    await eventually(lambda: _ran(iid, "slow", 2))
    GATES[iid].set()  # both attempts finish; only the new run's result counts
    final = await instance.wait(timeout=10)
    assert final.output == ["first1", "slow2"], final
    assert calls(iid) == {"first": 1, "slow": 2}


async def test_restart_from_a_step_survives_an_owner_that_rebuilds_from_redis(make_client: MakeClient) -> None:
    """The cut is in the commit: an owner that loads the instance afterwards sees the kept history only."""
    client = await make_client({"three": ThreeSteps})
    iid = unique("from-reload")
    instance = await client.workflow("three").create(id=iid)
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", 1)
    await instance.wait(timeout=10)

    await instance.restart(from_step=("c", 1))
    await instance.wait(timeout=10)  # c ran again, right away: the wait before it is kept
    history = await client._store.history(instance._partition, "three", iid)
    kinds = [(r["k"], r.get("n")) for r in history if r["k"] in ("step", "wait")]
    assert kinds == [("step", "a"), ("step", "b"), ("wait", "go"), ("step", "c")]
    assert calls(iid) == {"a": 1, "b": 1, "c": 2}

    # A second restart, from b, after the live run is forgotten: the owner replays Redis's history.
    await instance.restart(from_step=("b", 1))
    await wait_status(instance, Status.WAITING)
    crash_cache_if_live(client, iid)
    await instance.send_event("go", 5)
    assert (await instance.wait(timeout=10)).output == ["a1", "b2", 5, "c3"]


def crash_cache_if_live(client: Any, iid: str) -> None:
    try:
        crash_cache(client, "three", iid)
    except AssertionError:
        pass  # already evicted (a waiting instance leaves memory): the next input loads it anyway


async def _ran(iid: str, name: str, times: int) -> bool:
    return CALLS[(iid, name)] >= times


class Gated(WorkflowEntrypoint):
    """first -> slow (held until the test opens the gate); returns both results."""

    async def run(self, event: Any, step: Any) -> Any:
        iid = event.instance_id

        @step.do("first", config=NO_RETRY)
        def first() -> str:
            CALLS[(iid, "first")] += 1
            return f"first{CALLS[(iid, 'first')]}"

        @step.do("slow", config=NO_RETRY)
        async def slow() -> str:
            CALLS[(iid, "slow")] += 1
            n = CALLS[(iid, "slow")]
            await GATES[iid].wait()
            return f"slow{n}"

        return [await first(), await slow()]
