"""``hutch.testing``: the workflow test toolkit (virtual clock, modifiers, waits, pytest fixtures).

Every modifier is exercised on a real embedded runtime, and each test checks what the engine
recorded (``describe()``: attempts, errors, outcomes, due times) besides the instance's output,
so a mock that bypassed the engine instead of producing a durable step would be caught. Time is
asserted on the virtual clock, never on the wall clock.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import hutch
import hutch.testing
import pytest
from hutch import (
    EventTimeoutError,
    InvalidInputError,
    NonRetryableError,
    StepContext,
    StepDetail,
    StepFailedError,
    StepTimeoutError,
    WaitTimeout,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowNotFound,
    WorkflowStep,
)
from hutch.consumers.steps import _context_kwargs
from hutch.testing import Modifier, TestClock, TestEnv, TestInstance, UnexpectedStatus
from hutch.testing.intercept import _ctx_convention
from hutch.testing.pytest_plugin import EnvFactory

DAY = timedelta(days=1)
T = TypeVar("T")

# Step bodies append here, so a test sees which real functions ran (mocked steps must not run them).
calls: list[str] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


def called(name: str, value: T) -> T:
    calls.append(name)
    return value


def steps_named(detail_steps: list[StepDetail], name: str) -> list[StepDetail]:
    return [s for s in detail_steps if s.name == name]


def about(actual: timedelta, expected: timedelta) -> bool:
    """Equal but for the real milliseconds the flowing virtual clock moves between two readings."""
    return abs(actual - expected) < timedelta(seconds=1)


async def one_step(instance: TestInstance, name: str, count: int = 1) -> StepDetail:
    detail = await instance.describe()
    matches = [s for s in detail.steps if s.name == name and s.count == count]
    assert len(matches) == 1, [(s.name, s.count) for s in detail.steps]
    return matches[0]


# --------------------------------------------------------------------------- workflows under test
class MonthlyReport(WorkflowEntrypoint):
    """Sleeps 30 days between two steps."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        before = await step.do("collect", lambda: called("collect", 3))
        await step.sleep("wait a month", "30 days")
        after = await step.do("send", lambda: called("send", 4))
        return {"before": before, "after": after}


class Charge(WorkflowEntrypoint):
    """One retried step (async, sync and decorator forms) whose errors run() reports instead of failing."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        config = {"retries": {"limit": 3, "delay": "10 seconds", "backoff": "exponential"}}

        @step.do("charge card", config=config)
        async def charge(ctx: StepContext) -> dict[str, Any]:
            calls.append(f"charge attempt {ctx.attempt}")
            return {"charged": True, "attempt": ctx.attempt}

        try:
            charged = await charge()
        except Exception as exc:
            return {"failed": type(exc).__name__, "message": str(exc)}
        receipt = await step.do("receipt", lambda: called("receipt", "r-1"))
        return {"charged": charged, "receipt": receipt}


class Repeats(WorkflowEntrypoint):
    """The same step name three times (counts 1, 2, 3), in the sync call form."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> list[Any]:
        return [await step.do("fetch", functools.partial(called, "fetch", i)) for i in range(3)]


class Waits(WorkflowEntrypoint):
    """Two waits for the same event type, then a sleep; timeouts are reported, not raised."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("first approval", "second approval"):
            try:
                received = await step.wait_for_event(name, "approval", timeout="2 days")
                out[name] = received.payload
            except EventTimeoutError:
                out[name] = "timed out"
        await step.sleep("cool down", "1 hour")
        await step.sleep("settle", "2 hours")
        out["done"] = await step.do("done", lambda: called("done", True))
        return out


class Daily(WorkflowEntrypoint):
    """A step after each of two one-day sleeps."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> list[str]:
        await step.sleep("day 1", "1 day")
        first = await step.do("after day 1", lambda: called("after day 1", "one"))
        await step.sleep("day 2", "1 day")
        second = await step.do("after day 2", lambda: called("after day 2", "two"))
        return [first, second]


class AssertsInStep(WorkflowEntrypoint):
    """A step whose assert fails, with a generous retry config that must not be used."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> None:
        def check() -> None:
            calls.append("check")
            assert event.payload["total"] == 10, "total must be 10"

        await step.do("check", check, config={"retries": {"limit": 5, "delay": "1 second"}})


# Compiled from source so that pytest does not rewrite the assert (as in a user's workflow module).
_namespace: dict[str, Any] = {}
exec(compile("def check(value):\n    assert value == 2\n", "workflow_code.py", "exec"), _namespace)
bare_assert = _namespace["check"]


class AssertsInRun(WorkflowEntrypoint):
    """A bare assert (no message) in run() itself."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> None:
        bare_assert(await step.do("value", lambda: 1))


class Parent(WorkflowEntrypoint):
    """Starts a child instance of ``child`` from a step (through ``self.env``)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> str:
        async def start_child() -> str:
            child = await self.env.CHILD.create(id=f"{event.instance_id}-child")
            return str(child.id)

        return await step.do("start child", start_child)


class Child(WorkflowEntrypoint):
    """Returns one step's result."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("work", lambda: called("child work", "real"))


class Launch(WorkflowEntrypoint):
    """Sleeps until a fixed date, then reports the event's creation time."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, str]:
        await step.sleep_until("launch", datetime(2031, 1, 1, tzinfo=UTC))
        return {"created": event.timestamp.isoformat()}


class Diamond(WorkflowEntrypoint):
    """A DAG (a, b → c) whose dependency ``b`` a test mocks."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("a")
        async def a() -> int:
            return called("a", 1)

        @step.do("b")
        async def b() -> int:
            return called("b", 2)

        @step.do("c", depends=[a, b], concurrent=True)
        async def c(a: int, b: int) -> int:
            return a * 100 + b

        return await c()


# --------------------------------------------------------------------------- public surface
def test_testing_names_are_documented_and_not_reexported_from_engine() -> None:
    # The list itself is pinned once, in tests/test_exports.py.
    assert {"Modifier", "TestClock", "TestEnv", "TestInstance", "UnexpectedStatus"} <= set(hutch.testing.__all__)
    for name in hutch.testing.__all__:
        assert getattr(hutch.testing, name).__doc__, name
        assert name not in hutch.__all__, f"{name} belongs to hutch.testing, not engine"


def test_test_classes_are_not_collected_by_pytest() -> None:
    for cls in (TestEnv, TestClock, TestInstance):
        assert cls.__test__ is False


def test_unexpected_status_survives_pickling() -> None:
    error = UnexpectedStatus(
        "instance 'x' is errored",
        workflow="wf",
        instance_id="x",
        status=hutch.Status.ERRORED,
        error=hutch.ErrorInfo(name="ValueError", message="bad"),
    )
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, UnexpectedStatus) and isinstance(copy, AssertionError)
    assert (str(copy), copy.workflow, copy.instance_id, copy.status, copy.error) == (
        str(error),
        "wf",
        "x",
        hutch.Status.ERRORED,
        error.error,
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda: None,
        lambda ctx: None,
        lambda x=1: None,
        lambda *args: None,
        lambda *, ctx: None,
        lambda a, b=2: None,
        functools.partial(lambda a, ctx: None, 1),
        functools.partial(lambda a: None, 1),
        str.upper,
        print,
        "x".join,
    ],
)
def test_step_functions_get_ctx_exactly_as_the_step_runner_passes_it(fn: Any) -> None:
    positional, keyword = _context_kwargs(fn)
    assert _ctx_convention(fn) == (bool(positional), keyword)


# --------------------------------------------------------------------------- the clock
async def test_clock_advances_and_never_goes_back() -> None:
    clock = TestClock(datetime(2030, 5, 1, tzinfo=UTC))
    start = clock.now_ms()
    assert abs(start - datetime(2030, 5, 1, tzinfo=UTC).timestamp() * 1000) < 1000
    clock.advance("3 days")
    assert clock.now_ms() - start >= 3 * 86_400_000
    assert clock.skipped == timedelta(days=3)
    clock.advance_to(datetime(2030, 4, 1, tzinfo=UTC))  # in the past: ignored
    assert clock.skipped == timedelta(days=3)
    clock.advance_to(datetime(2030, 6, 1, tzinfo=UTC))
    assert clock.now() >= datetime(2030, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        TestClock(datetime(2030, 5, 1))


async def test_clock_sleepers_wake_when_time_is_advanced_or_woken() -> None:
    clock = TestClock()
    wake = asyncio.Event()
    sleeper = asyncio.create_task(clock.sleep_until(clock.now_ms() + 86_400_000, wake))
    await asyncio.sleep(0.01)
    clock.advance("12 hours")  # not there yet: keeps sleeping
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    clock.advance("12 hours")
    await asyncio.wait_for(sleeper, timeout=5)

    woken = asyncio.create_task(clock.sleep_until(clock.now_ms() + 86_400_000, wake))
    await asyncio.sleep(0.01)
    wake.set()
    await asyncio.wait_for(woken, timeout=5)
    assert clock.skipped == DAY


# --------------------------------------------------------------------------- time skipping
async def test_a_thirty_day_sleep_completes_on_the_virtual_clock() -> None:
    async with TestEnv({"report": MonthlyReport}) as env:
        started = env.now()
        instance = await env.create("report", id="may")

        assert await instance.output() == {"before": 3, "after": 4}

        # the skip covers the sleep, less the few real milliseconds that passed before it
        assert timedelta(days=30) - timedelta(minutes=1) < env.clock.skipped <= timedelta(days=30)
        assert env.now() - started >= timedelta(days=30)
        sleep = await one_step(instance, "wait a month")
        assert sleep.type == "sleep" and sleep.outcome == "completed"
        assert sleep.due is not None and sleep.end is not None
        assert about(sleep.due - sleep.start, timedelta(days=30))
        assert sleep.end >= sleep.due
        assert (await one_step(instance, "send")).start >= sleep.due
        assert calls == ["collect", "send"]


async def test_env_sleep_fires_timers_in_order_at_their_virtual_times() -> None:
    async with TestEnv({"daily": Daily}, auto_time_skipping=False) as env:
        started = env.clock.now()
        instance = await env.create("daily")
        await instance.wait_for_status("waiting")

        await env.sleep("1 day")
        assert calls == ["after day 1"]
        assert (await instance.status()).status == "waiting"
        first = await one_step(instance, "after day 1")
        assert first.start - started >= DAY
        assert first.start - started < DAY + timedelta(minutes=1)

        await env.sleep("1 day")
        assert await instance.output(timeout=5) == ["one", "two"]
        second = await one_step(instance, "after day 2")
        assert second.start - started >= 2 * DAY


async def test_without_auto_skipping_waits_only_let_real_time_pass() -> None:
    async with TestEnv({"daily": Daily}) as env:
        instance = await env.create("daily")
        with env.auto_time_skipping_disabled():
            assert not env.auto_time_skipping
            with pytest.raises(WaitTimeout, match="auto time skipping is disabled"):
                await instance.wait_for_status("complete", timeout=0.2)
            assert env.clock.skipped == timedelta(0)
            assert calls == []
        assert env.auto_time_skipping
        assert await instance.output() == ["one", "two"]
        assert env.clock.skipped >= 2 * DAY - timedelta(seconds=5)


async def test_start_time_sets_the_virtual_clock_and_sleep_until_skips_to_the_date(
    hutch_env_factory: EnvFactory,
) -> None:
    env = await hutch_env_factory({"launch": Launch}, start_time=datetime(2030, 12, 25, tzinfo=UTC))
    instance = await env.create("launch")

    output = await instance.output()

    created = datetime.fromisoformat(output["created"])
    assert timedelta(0) <= created - datetime(2030, 12, 25, tzinfo=UTC) < timedelta(minutes=1)
    assert env.now() >= datetime(2031, 1, 1, tzinfo=UTC)
    assert env.clock.skipped >= timedelta(days=6)


# --------------------------------------------------------------------------- step modifiers
async def test_mock_step_result_replaces_the_function_but_keeps_a_durable_step() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify("o-1").mock_step_result("charge card", {"charged": "mocked"})
        instance = await env.create("charge", id="o-1")

        assert await instance.wait_for_step_result("charge card") == {"charged": "mocked"}
        assert await instance.output() == {"charged": {"charged": "mocked"}, "receipt": "r-1"}

        step = await one_step(instance, "charge card")
        assert step.output == {"charged": "mocked"}
        assert [a.success for a in step.attempts] == [True]
        assert calls == ["receipt"]  # the real charge never ran


async def test_mock_step_result_by_count_mocks_only_that_call() -> None:
    async with TestEnv({"repeats": Repeats}) as env:
        env.modify_all().mock_step_result("fetch", "second, mocked", count=2)
        instance = await env.create("repeats")

        assert await instance.output() == [0, "second, mocked", 2]
        assert await instance.wait_for_step_result("fetch", count=2) == "second, mocked"
        assert calls == ["fetch", "fetch"]


async def test_mock_step_error_for_the_first_attempts_then_the_real_function_runs() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify("o-2").mock_step_error("charge card", ConnectionError("gateway down"), times=2)
        instance = await env.create("charge", id="o-2")

        output = await instance.output()

        assert output["charged"] == {"charged": True, "attempt": 3}
        step = await one_step(instance, "charge card")
        assert [a.success for a in step.attempts] == [False, False, True]
        errors = [a.error for a in step.attempts[:2]]
        assert all(e is not None and (e.name, e.message) == ("ConnectionError", "gateway down") for e in errors)
        assert calls == ["charge attempt 3", "receipt"]
        # the retries waited 10 s then 20 s of virtual time
        first, second, third = step.attempts
        assert first.retry_at is not None and second.retry_at is not None
        assert second.start >= first.retry_at and third.start >= second.retry_at
        assert third.start - first.start >= timedelta(seconds=30)


async def test_mock_step_error_on_every_attempt_reaches_run_with_its_type() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify_all().mock_step_error("charge card", ValueError)
        instance = await env.create("charge")

        output = await instance.output()

        assert output == {"failed": "ValueError", "message": "mocked failure of step 'charge card'"}
        step = await one_step(instance, "charge card")
        assert len(step.attempts) == 4  # limit 3 retries
        assert step.success is False and step.error is not None and step.error.name == "ValueError"
        assert calls == []
        with pytest.raises(ValueError, match="mocked failure"):
            await instance.wait_for_step_result("charge card")


async def test_mock_step_error_non_retryable_stops_at_once() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify_all().mock_step_error("charge card", NonRetryableError("card declined"))
        instance = await env.create("charge")

        assert await instance.output() == {"failed": "NonRetryableError", "message": "card declined"}
        assert len((await one_step(instance, "charge card")).attempts) == 1


async def test_force_step_timeout_fails_attempts_with_step_timeout_error() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify("t-1").force_step_timeout("charge card", times=1)
        env.modify("t-2").force_step_timeout("charge card")
        once = await env.create("charge", id="t-1")
        always = await env.create("charge", id="t-2")

        assert (await once.output())["charged"]["attempt"] == 2
        first = (await one_step(once, "charge card")).attempts[0]
        assert first.error is not None
        assert (first.error.name, first.error.message) == ("StepTimeoutError", "Execution timed out after 600000ms")

        assert await always.output() == {
            "failed": "StepTimeoutError",
            "message": "Execution timed out after 600000ms",
        }
        assert len((await one_step(always, "charge card")).attempts) == 4
        with pytest.raises(StepTimeoutError):
            await always.wait_for_step_result("charge card")


async def test_failures_take_precedence_over_a_mocked_result_until_they_run_out() -> None:
    async with TestEnv({"charge": Charge}) as env:
        modifier = env.modify_all()
        modifier.mock_step_result("charge card", {"charged": "mocked"})
        modifier.mock_step_error("charge card", RuntimeError("flaky"), times=1)
        instance = await env.create("charge")

        assert (await instance.output())["charged"] == {"charged": "mocked"}
        assert [a.success for a in (await one_step(instance, "charge card")).attempts] == [False, True]


async def test_an_instance_modifier_wins_over_modify_all() -> None:
    async with TestEnv({"charge": Charge}) as env:
        env.modify_all().mock_step_result("charge card", "everyone")
        env.modify("special").mock_step_result("charge card", "just me")
        special = await env.create("charge", id="special")
        other = await env.create("charge", id="other")

        assert (await special.output())["charged"] == "just me"
        assert (await other.output())["charged"] == "everyone"


async def test_modify_all_covers_instances_started_by_workflows() -> None:
    async with TestEnv({"parent": Parent, "child": Child}) as env:
        env.modify_all(workflow="child").mock_step_result("work", "mocked child")
        parent = await env.create("parent", id="p")

        assert await parent.output() == "p-child"
        child = env.instance("child", "p-child")
        assert await child.output() == "mocked child"
        assert [(i.workflow, i.id) for i in env.instances()] == [("parent", "p"), ("child", "p-child")]
        assert [i.id for i in env.instances("child")] == ["p-child"]
        assert calls == []


async def test_mocks_apply_to_dag_dependencies() -> None:
    async with TestEnv({"dag": Diamond}) as env:
        env.modify_all().mock_step_result("b", 7)
        instance = await env.create("dag")

        assert await instance.output() == 107
        assert calls == ["a"]
        assert await instance.wait_for_step_result("b") == 7


# --------------------------------------------------------------------------- events and sleeps
async def test_mock_event_is_delivered_to_every_wait_for_its_type() -> None:
    async with TestEnv({"waits": Waits}) as env:
        env.modify("w").mock_event("approval", {"ok": True})
        instance = await env.create("waits", id="w")

        output = await instance.output()

        assert output == {"first approval": {"ok": True}, "second approval": {"ok": True}, "done": True}
        for name in ("first approval", "second approval"):
            wait = await one_step(instance, name)
            assert wait.outcome == "received"
            assert wait.output is not None and wait.output["payload"] == {"ok": True}
        received = await instance.wait_for_step_result("first approval")
        assert isinstance(received, hutch.ReceivedEvent)
        assert (received.type, received.payload) == ("approval", {"ok": True})


async def test_a_restarted_instance_gets_its_mocked_events_again() -> None:
    async with TestEnv({"waits": Waits}) as env:
        env.modify("again").mock_event("approval", "yes")
        instance = await env.create("waits", id="again")
        assert (await instance.output())["first approval"] == "yes"

        await instance.restart()

        assert await instance.output() == {"first approval": "yes", "second approval": "yes", "done": True}
        assert calls == ["done", "done"]
        assert env.clock.skipped < timedelta(days=1)  # no wait had to time out


async def test_without_a_mocked_event_the_waits_time_out_on_the_virtual_clock() -> None:
    async with TestEnv({"waits": Waits}) as env:
        instance = await env.create("waits")

        output = await instance.output()

        assert output["first approval"] == output["second approval"] == "timed out"
        assert env.clock.skipped >= 4 * DAY


async def test_force_event_timeout_times_the_wait_out_at_once() -> None:
    async with TestEnv({"waits": Waits}) as env:
        env.modify_all().mock_event("approval", {"ok": True}).force_event_timeout("first approval")
        instance = await env.create("waits")

        output = await instance.output()

        assert output["first approval"] == "timed out"
        assert output["second approval"] == {"ok": True}
        wait = await one_step(instance, "first approval")
        assert wait.outcome == "timed out"
        assert wait.due is not None and wait.due - wait.start < timedelta(seconds=1)
        with pytest.raises(EventTimeoutError):
            await instance.wait_for_step_result("first approval")
        assert env.clock.skipped < 4 * timedelta(hours=1)  # only the sleeps were skipped, not two days


async def test_disable_sleeps_ends_sleeps_at_once_without_skipping_time() -> None:
    async with TestEnv({"waits": Waits}, auto_time_skipping=False) as env:
        env.modify_all().mock_event("approval", "yes").disable_sleeps()
        instance = await env.create("waits")

        assert await instance.output(timeout=5) == {"first approval": "yes", "second approval": "yes", "done": True}
        assert env.clock.skipped == timedelta(0)
        for name in ("cool down", "settle"):
            sleep = await one_step(instance, name)
            assert sleep.outcome == "completed"
            assert sleep.due is not None and sleep.due - sleep.start < timedelta(seconds=1)


async def test_disable_sleeps_by_name_leaves_the_others() -> None:
    async with TestEnv({"waits": Waits}, auto_time_skipping=False) as env:
        env.modify_all().mock_event("approval", "yes").disable_sleeps("cool down")
        instance = await env.create("waits")

        await instance.wait_for_step_result("cool down", timeout=5)
        settle = await one_step(instance, "settle")
        assert settle.due is not None and about(settle.due - settle.start, timedelta(hours=2))
        assert (await instance.status()).status == "waiting"
        await env.sleep("2 hours")
        assert (await instance.output(timeout=5))["done"] is True


async def test_a_wait_for_an_event_the_test_sends_itself() -> None:
    async with TestEnv({"waits": Waits}) as env:
        instance = await env.create("waits")
        with env.auto_time_skipping_disabled():
            await instance.wait_for_status("waiting")
            await instance.send_event("approval", "from the test")
        assert await instance.wait_for_step_result("first approval") == hutch.ReceivedEvent(
            "approval", "from the test", (await one_step(instance, "first approval")).output["timestamp"]
        )


# --------------------------------------------------------------------------- asserts and outcomes
async def test_a_failed_assert_in_a_step_fails_it_without_retrying() -> None:
    async with TestEnv({"asserts": AssertsInStep}) as env:
        instance = await env.create("asserts", params={"total": 9})

        error = await instance.error()

        # (pytest rewrites asserts in this module, so the message also explains the comparison)
        assert error.name == "AssertionError" and error.message.startswith("total must be 10")
        step = await one_step(instance, "check")
        assert len(step.attempts) == 1
        assert calls == ["check"]
        with pytest.raises(AssertionError, match="total must be 10"):
            await instance.wait_for_step_result("check")


async def test_a_bare_assert_in_run_errors_the_instance_with_its_location() -> None:
    async with TestEnv({"asserts": AssertsInRun}) as env:
        instance = await env.create("asserts")

        error = await instance.error()

        assert error.name == "AssertionError"
        assert error.message.startswith("assertion failed at workflow_code.py:2")


async def test_waits_fail_fast_when_the_instance_ends_otherwise() -> None:
    async with TestEnv({"asserts": AssertsInStep, "report": MonthlyReport}) as env:
        failing = await env.create("asserts", params={"total": 1})
        with pytest.raises(UnexpectedStatus, match="is errored \\(AssertionError: total must be 10") as info:
            await failing.wait_for_status("complete")
        assert info.value.status == "errored" and info.value.error is not None
        with pytest.raises(UnexpectedStatus, match="instead of complete"):
            await failing.output()
        with pytest.raises(UnexpectedStatus, match="before step 'never'#1 finished"):
            await failing.wait_for_step_result("never")

        report = await env.create("report")
        assert await report.wait_for_status("complete", "errored") == hutch.InstanceStatus(
            status=hutch.Status.COMPLETE, output={"before": 3, "after": 4}
        )
        with pytest.raises(UnexpectedStatus, match="instead of errored"):
            await report.error()


async def test_terminated_instances_and_hopeless_waits_are_reported() -> None:
    async with TestEnv({"waits": Waits}) as env:
        instance = await env.create("waits")
        await instance.wait_for_status("waiting")
        await instance.pause()
        with pytest.raises(WaitTimeout, match="nothing is left to run and no timer is pending"):
            await instance.wait_for_status("complete", timeout=0.3)
        await instance.terminate()
        with pytest.raises(UnexpectedStatus, match="is terminated"):
            await instance.output()


# --------------------------------------------------------------------------- environment
async def test_each_environment_is_isolated() -> None:
    async with TestEnv({"repeats": Repeats}) as first, TestEnv({"repeats": Repeats}) as second:
        one = await first.create("repeats", id="same-id")
        two = await second.create("repeats", id="same-id")
        assert await one.output() == await two.output() == [0, 1, 2]
        assert first.client is not second.client


async def test_bad_usage_is_reported_clearly() -> None:
    env = TestEnv({"repeats": Repeats})
    with pytest.raises(RuntimeError, match="not running"):
        _ = env.client
    async with env:
        with pytest.raises(WorkflowNotFound):
            await env.create("nope")
        with pytest.raises(InvalidInputError, match="count 0 must be a positive integer"):
            env.modify_all().mock_step_result("fetch", 1, count=0)
        with pytest.raises(InvalidInputError, match="times -1"):
            env.modify_all().mock_step_error("fetch", ValueError, times=-1)
        with pytest.raises(InvalidInputError, match="non-empty string"):
            env.modify_all().mock_event("")
        with pytest.raises(InvalidInputError, match="at least one status"):
            await env.instance("repeats", "x").wait_for_status()
        with pytest.raises(RuntimeError, match="cannot be started twice"):
            await env.start()
    await env.close()  # idempotent


def test_modifier_repr_and_scope() -> None:
    everyone = Modifier()
    one = Modifier(workflow="order", instance_id="o-1")
    assert repr(everyone) == "Modifier(every instance)"
    assert repr(one) == "Modifier(instance 'o-1' of 'order')"
    assert everyone.applies_to("anything", "x")
    assert one.applies_to("order", "o-1") and not one.applies_to("order", "o-2") and not one.applies_to("x", "o-1")


def test_a_mocked_error_class_is_instantiated_with_a_message() -> None:
    modifier = Modifier().mock_step_error("s", StepFailedError("Declined", "no funds"))
    mock = modifier.failure_for("s", 1, 1)
    assert mock is not None and isinstance(mock.error, StepFailedError)
    assert modifier.failure_for("other", 1, 1) is None


# --------------------------------------------------------------------------- the pytest fixtures
@pytest.fixture
def hutch_workflows() -> Mapping[str, type[WorkflowEntrypoint]]:
    return {"report": MonthlyReport, "charge": Charge}


async def test_the_hutch_env_fixture_runs_the_overridden_workflows(hutch_env: TestEnv) -> None:
    assert set(hutch_env.workflows) == {"report", "charge"}
    hutch_env.modify("r").mock_step_result("send", "mocked")
    report = await hutch_env.create("report", id="r")
    assert await report.output() == {"before": 3, "after": "mocked"}
    assert report.modify().instance_id == "r"


def test_the_plugin_works_for_a_user_project_in_strict_asyncio_mode(tmp_path: Path) -> None:
    """A separate pytest run, as in a user's project: the plugin comes from the installed entry point,
    ``hutch_env`` runs the workflows of the project's hutch.toml, and pytest-asyncio is in strict mode."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    (tmp_path / "hutch.toml").write_text(
        '[[workflows]]\nname = "approval"\nclass_name = "examples.approval:ApprovalWorkflow"\n'
    )
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.asyncio
            async def test_approval(hutch_env):
                assert list(hutch_env.workflows) == ["approval"]
                hutch_env.modify_all().mock_event("approval", {"approved": True, "approver": "grace"})
                instance = await hutch_env.create("approval", params={"requestId": "R-1"})
                assert (await instance.output())["decision"] == "approved"
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # for `examples`, not an installed package
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
