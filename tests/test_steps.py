"""Behaviour of ``step.do`` on the embedded runtime: CLOUDFLARE_SEMANTICS.md rules 1-8.

Each test drives a real instance through the public API (``create``, ``wait``, ``status``,
``describe``) and counts step-body executions in the test itself, so "ran exactly N times"
is observed, not assumed. Replays are forced with a short ``step.sleep``: a sleeping
instance is evicted from memory and its next wake-up re-runs ``run()`` against history.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from hutch import (
    HutchError,
    Instance,
    InstanceDetail,
    InstanceStatus,
    Limits,
    NonRetryableError,
    StepConfig,
    StepContext,
    StepDetail,
    StepError,
    StepFailedError,
    StepResultNotSerializable,
    StepResultTooLarge,
    StepTimeoutError,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from pydantic import BaseModel

from tests.conftest import MakeClient
from tests.helpers import eventually

RunFn = Callable[[WorkflowEvent, WorkflowStep], Awaitable[Any]]

FAST = 0.01  # seconds: a retry delay that keeps failing steps quick


def workflow(run: RunFn) -> type[WorkflowEntrypoint]:
    """A workflow class whose ``run()`` is ``run``, so a test keeps its counters in local variables."""

    class StepsWorkflow(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await run(event, step)

    return StepsWorkflow


async def start(make_client: MakeClient, run: RunFn, **options: Any) -> Instance:
    """Start an embedded runtime with one workflow and create an instance of it."""
    client = await make_client({"steps": workflow(run)}, **options)
    # Short sleeps here are meant to evict the instance so that waking it replays: no warm sleepers.
    client.runtime_worker.orchestrator.warm_horizon_ms = 0
    return await client.workflow("steps").create()


async def run_to_end(make_client: MakeClient, run: RunFn, **options: Any) -> tuple[InstanceStatus, InstanceDetail]:
    """Run one instance to a final status; returns its status and its describe() detail."""
    instance = await start(make_client, run, **options)
    final = await instance.wait(timeout=15)
    return final, await instance.describe()


def only_step(detail: InstanceDetail, name: str) -> StepDetail:
    """The single step called ``name`` in ``detail`` (fails if there is not exactly one)."""
    matching = [s for s in detail.steps if s.name == name]
    assert len(matching) == 1, f"expected one step {name!r}, got {[(s.name, s.count) for s in detail.steps]}"
    return matching[0]


def ms_between(a: datetime, b: datetime) -> int:
    """Milliseconds from ``a`` to ``b`` (the engine stamps history in whole milliseconds)."""
    return round((b - a).total_seconds() * 1000)


DEFAULT_RETRIES: dict[str, Any] = {"limit": 5, "delay": 10.0, "backoff": "exponential", "max_delay": None}
DEFAULT_CONFIG: dict[str, Any] = {"retries": DEFAULT_RETRIES, "timeout": 600.0}


# --------------------------------------------------------------------------- rule 1: config defaults


async def test_default_config_is_cloudflares(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("inspect", lambda ctx: ctx.config.model_dump())

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete"
    assert final.output == DEFAULT_CONFIG
    assert only_step(detail, "inspect").config == DEFAULT_CONFIG


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"retries": {"limit": 1}},
            {"retries": {**DEFAULT_RETRIES, "limit": 1}, "timeout": 600.0},
        ),
        (
            {"retries": {"delay": "250 milliseconds", "backoff": "linear"}},
            {"retries": {**DEFAULT_RETRIES, "delay": 0.25, "backoff": "linear"}, "timeout": 600.0},
        ),
        ({"timeout": "30 seconds"}, {**DEFAULT_CONFIG, "timeout": 30.0}),
        (
            {"timeout": 2, "retries": {"max_delay": "1 minute"}},
            {"retries": {**DEFAULT_RETRIES, "max_delay": 60.0}, "timeout": 2.0},
        ),
    ],
    ids=["limit-only", "delay-and-backoff", "timeout-only", "timeout-and-max-delay"],
)
async def test_partial_config_merges_key_by_key(
    make_client: MakeClient, config: dict[str, Any], expected: dict[str, Any]
) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("inspect", lambda ctx: ctx.config.model_dump(), config=config)

    final, detail = await run_to_end(make_client, run)

    assert final.output == expected
    assert only_step(detail, "inspect").config == expected


async def test_step_config_model_is_accepted_as_is(make_client: MakeClient) -> None:
    config = StepConfig(retries={"limit": 0, "delay": "1 second", "backoff": "constant"}, timeout="5 seconds")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("inspect", lambda ctx: ctx.config == config, config=config)

    final, detail = await run_to_end(make_client, run)

    assert final.output is True
    assert only_step(detail, "inspect").config == {
        "retries": {"limit": 0, "delay": 1.0, "backoff": "constant", "max_delay": None},
        "timeout": 5.0,
    }


async def test_invalid_config_errors_the_instance_naming_the_field(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("bad", lambda: 1, config={"retries": {"backoff": "fibonacci"}})

    final, detail = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert final.error is not None
    assert final.error.name == "InvalidInputError"
    assert "retries.backoff" in final.error.message
    assert detail.steps == []  # rejected before anything was recorded


@pytest.mark.parametrize(("limit", "attempts"), [(0, 1), (2, 3)])
async def test_limit_counts_retries_not_attempts(make_client: MakeClient, limit: int, attempts: int) -> None:
    calls = 0

    def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"attempt {calls} failed")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("flaky", always_fails, config={"retries": {"limit": limit, "delay": FAST}})

    final, detail = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert calls == attempts
    flaky = only_step(detail, "flaky")
    assert [a.attempt for a in flaky.attempts] == list(range(1, attempts + 1))
    assert [a.success for a in flaky.attempts] == [False] * attempts
    assert [a.error.message for a in flaky.attempts if a.error] == [
        f"attempt {n} failed" for n in range(1, attempts + 1)
    ]
    assert flaky.attempts[-1].retry_at is None  # the last attempt schedules nothing


async def test_success_on_a_retry_ends_the_step(make_client: MakeClient) -> None:
    calls = 0

    def fails_twice() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("flaky upstream")
        return "ok"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("flaky", fails_twice, config={"retries": {"limit": 5, "delay": FAST}})

    final, detail = await run_to_end(make_client, run)

    assert final.output == "ok"
    assert calls == 3
    flaky = only_step(detail, "flaky")
    assert [a.success for a in flaky.attempts] == [False, False, True]
    assert flaky.success is True and flaky.output == "ok"


# --------------------------------------------------------------------------- rule 2: backoff


@pytest.mark.parametrize(
    ("backoff", "waits_ms"),
    [("constant", [50, 50, 50]), ("linear", [50, 100, 150]), ("exponential", [50, 100, 200])],
)
async def test_backoff_spacing(make_client: MakeClient, backoff: str, waits_ms: list[int]) -> None:
    calls = 0

    def fails_three_times() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("not yet")
        return "done"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        config = {"retries": {"limit": 3, "delay": 0.05, "backoff": backoff}}
        return await step.do("flaky", fails_three_times, config=config)

    final, detail = await run_to_end(make_client, run)

    assert final.output == "done"
    attempts = only_step(detail, "flaky").attempts
    assert len(attempts) == 4
    for n, wait_ms in enumerate(waits_ms):
        failed, retry = attempts[n], attempts[n + 1]
        assert failed.end is not None and failed.retry_at is not None
        # The scheduled wait is exact; the observed spacing can only be longer.
        assert ms_between(failed.end, failed.retry_at) == wait_ms
        assert retry.start >= failed.retry_at
        assert ms_between(failed.start, retry.start) >= wait_ms - 10
    assert attempts[-1].retry_at is None


async def test_max_delay_caps_the_backoff(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        config = {"retries": {"limit": 4, "delay": 0.03, "backoff": "exponential", "max_delay": 0.05}}
        try:
            await step.do("flaky", lambda: 1 / 0, config=config)
        except ZeroDivisionError:
            return "gave up"

    final, detail = await run_to_end(make_client, run)

    assert final.output == "gave up"
    attempts = only_step(detail, "flaky").attempts
    assert len(attempts) == 5
    waits = [ms_between(a.end, a.retry_at) for a in attempts[:-1] if a.end and a.retry_at]
    assert waits == [30, 50, 50, 50]  # uncapped would be 30, 60, 120, 240
    for failed, retry in itertools.pairwise(attempts):
        assert ms_between(failed.start, retry.start) >= ms_between(failed.end, failed.retry_at) - 10  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rule 3: ctx


async def test_ctx_carries_step_identity_attempt_and_config(make_client: MakeClient) -> None:
    seen: list[tuple[str, int, int]] = []
    configs: list[StepConfig] = []

    def body(ctx: StepContext) -> dict[str, Any]:
        seen.append((ctx.step.name, ctx.step.count, ctx.attempt))
        configs.append(ctx.config)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return {"name": ctx.step.name, "count": ctx.step.count, "attempt": ctx.attempt}

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("charge card", body, config={"retries": {"limit": 4, "delay": FAST}})

    final, _ = await run_to_end(make_client, run)

    assert final.output == {"name": "charge card", "count": 1, "attempt": 3}
    assert seen == [("charge card", 1, 1), ("charge card", 1, 2), ("charge card", 1, 3)]
    assert {c.retries.limit for c in configs} == {4}
    assert {c.retries.delay for c in configs} == {FAST}
    assert {c.timeout for c in configs} == {600.0}


async def test_ctx_count_is_per_name_and_one_based(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        seen = []
        for _ in range(3):
            seen.append(await step.do("fetch page", lambda ctx: [ctx.step.name, ctx.step.count]))
            seen.append(await step.do("store page", lambda ctx: [ctx.step.name, ctx.step.count]))
        return seen

    final, detail = await run_to_end(make_client, run)

    assert final.output == [
        ["fetch page", 1],
        ["store page", 1],
        ["fetch page", 2],
        ["store page", 2],
        ["fetch page", 3],
        ["store page", 3],
    ]
    assert [(s.name, s.count) for s in detail.steps] == [tuple(pair) for pair in final.output]


async def test_ctx_count_starts_at_one_in_every_instance(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("only", lambda ctx: ctx.step.count)

    client = await make_client({"steps": workflow(run)})
    first = await client.workflow("steps").create()
    second = await client.workflow("steps").create()

    assert (await first.wait(timeout=10)).output == 1
    assert (await second.wait(timeout=10)).output == 1


# --------------------------------------------------------------------------- rule 4: identity and replay


async def test_repeated_name_runs_every_time_and_replays_in_call_order(make_client: MakeClient) -> None:
    executions: list[int] = []
    seen_by_run: list[list[int]] = []
    run_calls = 0

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        nonlocal run_calls
        run_calls += 1
        results = []
        for i in range(4):

            def fetch(i: int = i) -> int:
                executions.append(i)
                return i * 10

            results.append(await step.do("fetch", fetch))
        seen_by_run.append(list(results))
        await step.sleep("evict", FAST)  # the sleeping instance leaves memory; waking it replays
        return results

    final, detail = await run_to_end(make_client, run)

    assert final.output == [0, 10, 20, 30]
    assert executions == [0, 1, 2, 3]  # each call ran once, none re-ran on replay
    assert run_calls == 2
    assert seen_by_run == [[0, 10, 20, 30], [0, 10, 20, 30]]
    fetches = [s for s in detail.steps if s.name == "fetch"]
    assert [(s.count, s.output) for s in fetches] == [(1, 0), (2, 10), (3, 20), (4, 30)]


async def test_code_outside_steps_reruns_on_replay(make_client: MakeClient) -> None:
    """A value computed outside a step is recomputed on replay; the same value inside a step is not.

    This is why ``random.random()``, ``time.time()`` or a counter read outside a step make a
    workflow non-deterministic: put them inside ``step.do`` so their first value is checkpointed.
    """
    counter = 0
    body_runs = 0

    def read_counter() -> int:
        nonlocal body_runs
        body_runs += 1
        return counter

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        nonlocal counter
        counter += 1
        outside = counter
        inside = await step.do("read counter", read_counter)
        await step.sleep("evict", FAST)
        return {"outside": outside, "inside": inside}

    final, _ = await run_to_end(make_client, run)

    assert counter == 2  # run() ran live, then once more on replay
    assert body_runs == 1
    assert final.output == {"outside": 2, "inside": 1}


# --------------------------------------------------------------------------- rule 5: timeouts


async def test_timeout_is_per_attempt_and_retried(make_client: MakeClient) -> None:
    attempts_seen = 0

    async def slow_then_fast(ctx: StepContext) -> str:
        nonlocal attempts_seen
        attempts_seen += 1
        if ctx.attempt < 3:
            await asyncio.Event().wait()  # hangs until the attempt's timeout cancels it
        return f"attempt {ctx.attempt}"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        config = {"timeout": "50 milliseconds", "retries": {"limit": 2, "delay": FAST, "backoff": "constant"}}
        return await step.do("slow", slow_then_fast, config=config)

    final, detail = await run_to_end(make_client, run)

    assert final.output == "attempt 3"
    assert attempts_seen == 3
    attempts = only_step(detail, "slow").attempts
    assert [a.success for a in attempts] == [False, False, True]
    for failed in attempts[:2]:
        assert failed.error is not None
        assert failed.error.name == "StepTimeoutError"
        assert failed.error.message == "Execution timed out after 50ms"


async def test_timeout_on_last_attempt_raises_step_timeout_error_and_cancels_async_body(
    make_client: MakeClient,
) -> None:
    started = cancelled = finished = 0

    async def hangs() -> None:
        nonlocal started, cancelled, finished
        started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        finished += 1

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("hangs", hangs, config={"timeout": 0.05, "retries": {"limit": 1, "delay": FAST}})
        except StepTimeoutError as exc:
            return {"type": type(exc).__name__, "message": str(exc)}

    final, detail = await run_to_end(make_client, run)

    assert final.output == {"type": "StepTimeoutError", "message": "Execution timed out after 50ms"}
    assert (started, cancelled, finished) == (2, 2, 0)
    hangs_step = only_step(detail, "hangs")
    assert hangs_step.success is False
    assert hangs_step.error is not None and hangs_step.error.name == "StepTimeoutError"


async def test_user_raised_timeout_error_is_not_a_step_timeout(make_client: MakeClient) -> None:
    """A body that raises ``TimeoutError`` itself (a client library's timeout) failed; it did not time out."""

    async def upstream_times_out() -> None:
        raise TimeoutError("upstream took too long")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("call upstream", upstream_times_out, config={"retries": {"limit": 0}})
        except StepTimeoutError:
            return "reported as a step timeout"
        except TimeoutError as exc:
            return {"type": type(exc).__name__, "message": str(exc)}

    final, detail = await run_to_end(make_client, run)

    assert final.output == {"type": "TimeoutError", "message": "upstream took too long"}
    error = only_step(detail, "call upstream").error
    assert error is not None and error.name == "TimeoutError"


async def test_sync_body_keeps_running_after_its_timeout(make_client: MakeClient) -> None:
    """A sync step body runs in a worker thread, which Python cannot interrupt.

    On timeout the attempt fails at once (``StepTimeoutError``) but the thread runs on to the
    end in the background and its return value is discarded. Sync bodies that may hang should
    use their own library timeouts (or be written as ``async def`` so they can be cancelled).
    """
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> str:
        release.wait(10)
        finished.set()
        return "too late"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            return await step.do("blocking", blocking, config={"timeout": 0.05, "retries": {"limit": 0}})
        except StepTimeoutError as exc:
            return str(exc)

    instance = await start(make_client, run)
    try:
        final = await instance.wait(timeout=10)
        assert final.output == "Execution timed out after 50ms"
        assert not finished.is_set()  # the thread is still blocked: it was not (and cannot be) cancelled
    finally:
        release.set()

    async def thread_finished() -> bool:
        return finished.is_set()

    await eventually(thread_finished)
    detail = await instance.describe()
    blocking_step = only_step(detail, "blocking")
    assert blocking_step.output is None and blocking_step.success is False
    assert len(blocking_step.attempts) == 1
    assert (await instance.status()).output == "Execution timed out after 50ms"


# --------------------------------------------------------------------------- rule 6: errors reaching run()


class PaymentDeclined(Exception):
    """A user-defined error class (not a builtin): reaches run() as StepFailedError."""


class StrictValueError(ValueError):
    """A user subclass of a builtin: its name is not a builtin, so it also becomes StepFailedError."""


@pytest.mark.parametrize(
    ("error", "expected_type", "expected_message"),
    [
        (ValueError("bad amount"), ValueError, "bad amount"),
        (RuntimeError("upstream 503"), RuntimeError, "upstream 503"),
        (ZeroDivisionError("division by zero"), ZeroDivisionError, "division by zero"),
        (FileNotFoundError("no such file: a.csv"), FileNotFoundError, "no such file: a.csv"),
        (PermissionError("denied"), PermissionError, "denied"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
async def test_builtin_errors_keep_their_type_and_message(
    make_client: MakeClient, error: Exception, expected_type: type[Exception], expected_message: str
) -> None:
    def fails() -> None:
        raise error

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("fails", fails, config={"retries": {"limit": 1, "delay": FAST}})
        except expected_type as exc:
            return {"type": type(exc).__name__, "message": str(exc)}

    final, detail = await run_to_end(make_client, run)

    assert final.output == {"type": expected_type.__name__, "message": expected_message}
    assert len(only_step(detail, "fails").attempts) == 2  # retried like any error first


async def test_key_error_keeps_its_key(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            stock: dict[str, int] = {}
            await step.do("lookup", lambda: stock["sku-1"], config={"retries": {"limit": 0}})
        except KeyError as exc:
            return {"args": list(exc.args), "str": str(exc)}

    final, detail = await run_to_end(make_client, run)

    # The same as a local `{}["sku-1"]` would give: args ("sku-1",), str "'sku-1'".
    assert final.output == {"args": ["sku-1"], "str": "'sku-1'"}
    error = only_step(detail, "lookup").error
    assert error is not None and error.model_dump() == {"name": "KeyError", "message": "sku-1"}


@pytest.mark.parametrize(
    ("error", "name", "message"),
    [
        (PaymentDeclined("card ending 4242 declined"), "PaymentDeclined", "card ending 4242 declined"),
        (StrictValueError("negative quantity"), "StrictValueError", "negative quantity"),
        # A builtin whose constructor needs more than a message cannot be rebuilt as itself.
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "UnicodeDecodeError",
            "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
    ],
    ids=["custom-class", "builtin-subclass", "builtin-needing-args"],
)
async def test_other_errors_become_step_failed_error(
    make_client: MakeClient, error: Exception, name: str, message: str
) -> None:
    def fails() -> None:
        raise error

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("charge", fails, config={"retries": {"limit": 0}})
        except StepFailedError as exc:
            assert isinstance(exc, StepError) and isinstance(exc, HutchError)
            return {"error_name": exc.error_name, "message": exc.message, "str": str(exc)}

    final, _ = await run_to_end(make_client, run)

    assert final.output == {"error_name": name, "message": message, "str": f"{name}: {message}"}


@pytest.mark.parametrize("kind", ["async-CancelledError", "sync-CancelledError", "sync-StopIteration"])
async def test_errors_asyncio_cannot_carry_fail_the_attempt_and_are_retried(make_client: MakeClient, kind: str) -> None:
    """A body raising them is an attempt that failed: not a hang, not a timeout 600 s later."""
    attempts = 0

    async def cancelled_async() -> None:
        nonlocal attempts
        attempts += 1
        raise asyncio.CancelledError()  # e.g. a client library's own cancellation, escaping the body

    def cancelled_sync() -> None:
        nonlocal attempts
        attempts += 1
        raise asyncio.CancelledError()

    def exhausted_sync() -> None:
        nonlocal attempts
        attempts += 1
        next(iter(()))  # StopIteration: asyncio refuses to set it on the future the thread reports to

    body: Callable[[], Any] = {
        "async-CancelledError": cancelled_async,
        "sync-CancelledError": cancelled_sync,
        "sync-StopIteration": exhausted_sync,
    }[kind]
    name = kind.split("-")[1]

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("fragile", body, config={"retries": {"limit": 1, "delay": FAST}})
        except StepFailedError as exc:
            return {"error_name": exc.error_name, "message": exc.message}

    instance = await start(make_client, run)
    final = await instance.wait(timeout=10)

    assert final.output == {"error_name": name, "message": ""}
    assert attempts == 2
    fragile = only_step(await instance.describe(), "fragile")
    assert [a.error.name if a.error else None for a in fragile.attempts] == [name, name]


async def test_caught_error_is_the_same_live_and_on_replay(make_client: MakeClient) -> None:
    caught: list[tuple[str, str, str]] = []

    def declines() -> None:
        raise PaymentDeclined("insufficient funds")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("charge", declines, config={"retries": {"limit": 0}})
        except StepFailedError as exc:
            caught.append((type(exc).__name__, exc.error_name, exc.message))
        try:
            await step.do("parse", lambda: int("x"), config={"retries": {"limit": 0}})
        except ValueError as exc:
            caught.append((type(exc).__name__, "", str(exc)))
        await step.sleep("evict", FAST)
        return len(caught)

    final, _ = await run_to_end(make_client, run)

    assert final.status == "complete"
    live, replayed = caught[:2], caught[2:]
    assert live == [
        ("StepFailedError", "PaymentDeclined", "insufficient funds"),
        ("ValueError", "", "invalid literal for int() with base 10: 'x'"),
    ]
    assert replayed == live


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad amount"), {"name": "ValueError", "message": "bad amount"}),
        (PaymentDeclined("card declined"), {"name": "PaymentDeclined", "message": "card declined"}),
    ],
    ids=["builtin", "custom"],
)
async def test_uncaught_step_error_errors_the_instance(
    make_client: MakeClient, error: Exception, expected: dict[str, str]
) -> None:
    def fails() -> None:
        raise error

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("fails", fails, config={"retries": {"limit": 1, "delay": FAST}})
        return "unreachable"

    final, detail = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert final.output is None
    assert final.error is not None and final.error.model_dump() == expected
    assert detail.error is not None and detail.error.model_dump() == expected
    fails_step = only_step(detail, "fails")
    assert fails_step.success is False and fails_step.outcome == "failed"
    assert fails_step.error is not None and fails_step.error.model_dump() == expected


async def test_run_itself_is_never_retried(make_client: MakeClient) -> None:
    run_calls = 0
    step_calls = 0

    def ok() -> str:
        nonlocal step_calls
        step_calls += 1
        return "fine"

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        nonlocal run_calls
        run_calls += 1
        await step.do("ok", ok)
        raise RuntimeError("bug after the step")

    final, detail = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert final.error is not None
    assert final.error.model_dump() == {"name": "RuntimeError", "message": "bug after the step"}
    assert (run_calls, step_calls) == (1, 1)
    assert [s.name for s in detail.steps] == ["ok"]


# --------------------------------------------------------------------------- rule 7: NonRetryableError


async def test_non_retryable_error_makes_one_attempt_and_is_catchable(make_client: MakeClient) -> None:
    calls = 0

    def rejects() -> None:
        nonlocal calls
        calls += 1
        raise NonRetryableError("order 42 was cancelled by the customer")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("ship", rejects)  # default config: 5 retries, 10 s apart — none used
        except NonRetryableError as exc:
            return {"type": type(exc).__name__, "message": str(exc)}

    final, detail = await run_to_end(make_client, run)

    assert final.output == {"type": "NonRetryableError", "message": "order 42 was cancelled by the customer"}
    assert calls == 1
    ship = only_step(detail, "ship")
    assert len(ship.attempts) == 1
    assert ship.attempts[0].retry_at is None


async def test_uncaught_non_retryable_error_keeps_its_name_and_message(make_client: MakeClient) -> None:
    async def rejects() -> None:
        raise NonRetryableError("invalid IBAN")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("validate", rejects)

    final, detail = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert final.error is not None
    assert final.error.model_dump() == {"name": "NonRetryableError", "message": "invalid IBAN"}
    assert len(only_step(detail, "validate").attempts) == 1


async def test_subclass_of_non_retryable_error_is_not_retried(make_client: MakeClient) -> None:
    class CardExpired(NonRetryableError):
        pass

    calls = 0

    def expired() -> None:
        nonlocal calls
        calls += 1
        raise CardExpired("card expired 01/24")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("charge", expired)
        except StepFailedError as exc:
            return [exc.error_name, exc.message]

    final, _ = await run_to_end(make_client, run)

    assert calls == 1
    assert final.output == ["CardExpired", "card expired 01/24"]


# --------------------------------------------------------------------------- rule 8: serialization


class Opaque:
    """An arbitrary object: not serializable."""


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({"a", "b"}, "set"), (Opaque(), "Opaque"), ({1: "one"}, "int"), ({"nested": [frozenset()]}, "frozenset")],
    ids=["set", "object", "int-keys", "nested"],
)
async def test_unserializable_result_fails_once_and_is_catchable(
    make_client: MakeClient, value: Any, type_name: str
) -> None:
    calls = 0

    def produce() -> Any:
        nonlocal calls
        calls += 1
        return value

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("produce", produce)  # default retries: a retry would never help
        except StepResultNotSerializable as exc:
            assert isinstance(exc, NonRetryableError)
            return str(exc)

    final, detail = await run_to_end(make_client, run)

    assert calls == 1
    assert isinstance(final.output, str)
    assert "step 'produce'#1" in final.output
    assert type_name in final.output
    produce_step = only_step(detail, "produce")
    assert len(produce_step.attempts) == 1
    assert produce_step.error is not None and produce_step.error.name == "StepResultNotSerializable"


async def test_uncaught_unserializable_result_errors_the_instance(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("load", lambda: {"rows": {1, 2, 3}})

    final, _ = await run_to_end(make_client, run)

    assert final.status == "errored"
    assert final.error is not None and final.error.name == "StepResultNotSerializable"
    assert "step 'load'#1" in final.error.message and "set" in final.error.message


async def test_oversized_result_fails_once_naming_the_step_and_size(make_client: MakeClient) -> None:
    calls = 0

    def big() -> str:
        nonlocal calls
        calls += 1
        return "x" * 5000

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.do("export", big)
        except StepResultTooLarge as exc:
            return str(exc)

    final, _ = await run_to_end(make_client, run, limits=Limits(max_payload_bytes=4096))

    assert calls == 1
    assert "step 'export'#1" in final.output
    assert "4096" in final.output


class Receipt(BaseModel):
    order_id: str
    amount_cents: int
    paid_at: datetime
    lines: list[tuple[str, int]]


async def test_pydantic_result_is_stored_as_its_dump(make_client: MakeClient) -> None:
    seen: list[Any] = []
    receipt = Receipt(order_id="o-42", amount_cents=1999, paid_at=datetime(2025, 1, 2, 3, 4, 5), lines=[("sku-1", 2)])
    dumped = receipt.model_dump(mode="json")

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        value = await step.do("pay", lambda: receipt)
        seen.append(value)
        await step.sleep("evict", FAST)
        return value

    final, detail = await run_to_end(make_client, run)

    assert dumped == {
        "order_id": "o-42",
        "amount_cents": 1999,
        "paid_at": "2025-01-02T03:04:05",
        "lines": [["sku-1", 2]],
    }
    assert seen == [dumped, dumped]  # live and replayed run() get the same plain dict
    assert final.output == dumped
    assert only_step(detail, "pay").output == dumped
