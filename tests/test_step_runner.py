"""The step runner on its own: which attempt runs here, what each attempt posts, what cancels it.

No store and no transport: attempts run on the test's event loop and their outcomes land in a
list, so a test sees exactly what the partition owner would be told (and what it would not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS, StepConfig
from hutch.consumers.items import StepDone
from hutch.consumers.steps import StepRunner
from hutch.executor import StepCall

from tests.helpers import eventually

WF, IID, RUN = "wf", "iid", 0


@pytest.fixture
async def runner() -> AsyncIterator[tuple[StepRunner, list[StepDone]]]:
    posted: list[StepDone] = []
    runner = StepRunner(posted.append, limits=DEFAULT_LIMITS, clock=Clock(), max_concurrent=8, threads=2)
    try:
        yield runner, posted
    finally:
        await runner.close()


def call(fn: Callable[..., Any], name: str = "charge") -> StepCall:
    return StepCall(name, 1, fn, StepConfig())


async def test_executing_names_the_attempt_not_just_the_step(runner: tuple[StepRunner, list[StepDone]]) -> None:
    # After a partition moved away and back, the owner in between may have recorded attempt 2 while
    # attempt 1 still runs here: attempt 2 is then running nowhere, and the re-drive must see that.
    steps, _ = runner
    release = asyncio.Event()

    async def body() -> str:
        await release.wait()
        return "done"

    steps.start(0, WF, IID, RUN, call(body), 1)
    assert steps.executing(WF, IID, RUN, "charge", 1, 1)
    assert not steps.executing(WF, IID, RUN, "charge", 1, 2)
    release.set()


async def test_a_later_attempt_cancels_an_earlier_one_still_running_here(
    runner: tuple[StepRunner, list[StepDone]],
) -> None:
    steps, posted = runner
    entered = asyncio.Event()
    cancelled: list[int] = []

    async def body(ctx: Any) -> int:
        if ctx.attempt == 1:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
        return int(ctx.attempt)

    steps.start(0, WF, IID, RUN, call(body), 1)
    await entered.wait()
    steps.start(0, WF, IID, RUN, call(body), 2)

    await eventually(lambda: _async(bool(posted)))
    assert [(d.attempt, d.ok, d.value) for d in posted] == [(2, True, 2)]
    assert cancelled == [1]
    assert steps.in_flight == 0


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_body_raising_cancelled_error_itself_fails_its_attempt(
    runner: tuple[StepRunner, list[StepDone]], sync: bool
) -> None:
    steps, posted = runner

    async def async_body() -> None:
        raise asyncio.CancelledError()

    def sync_body() -> None:
        raise asyncio.CancelledError()

    steps.start(0, WF, IID, RUN, call(sync_body if sync else async_body), 1)

    await eventually(lambda: _async(bool(posted)), timeout=5)
    assert [(d.attempt, d.ok, d.error, d.retryable) for d in posted] == [
        (1, False, {"name": "CancelledError", "message": ""}, True)
    ]


async def test_cancelling_the_attempt_itself_posts_nothing(runner: tuple[StepRunner, list[StepDone]]) -> None:
    # The body re-raises the CancelledError it got: that is the worker cancelling (a cancelled
    # step, or shutdown), not the body failing, so no outcome is reported.
    steps, posted = runner
    entered: list[str] = []
    cancelled: list[str] = []

    async def body(ctx: Any) -> None:
        entered.append(ctx.step.name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(ctx.step.name)
            raise

    steps.start(0, WF, IID, RUN, call(body, "cancelled"), 1)
    steps.start(0, WF, IID, RUN, call(body, "shut down"), 1)
    await eventually(lambda: _async(len(entered) == 2))
    steps.cancel(WF, IID, ("cancelled", 1))
    await eventually(lambda: _async(cancelled == ["cancelled"]))
    assert steps.in_flight == 1
    await steps.close()

    assert sorted(cancelled) == ["cancelled", "shut down"]
    assert posted == []
    assert steps.in_flight == 0


async def _async(value: bool) -> bool:
    return value
