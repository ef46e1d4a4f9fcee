"""Static typing of the SDK, checked by mypy in CI (``mypy tests/test_types.py``); also imported by pytest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from hutch import ReceivedEvent, RollbackStep, StepContext, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from hutch.step import StepAwaitable, StepFunction


class Typed(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        @step.do("fetch")
        async def fetch() -> int:
            return 1

        assert_type(fetch, StepFunction[int])
        assert_type(await fetch(), int)

        @step.do
        async def bare() -> str:
            return "x"

        assert_type(await bare(), str)

        def sync() -> float:
            return 1.5

        assert_type(step.do("sync", sync), StepAwaitable[float])
        assert_type(await step.do("sync", sync), float)

        async def coro() -> bytes:
            return b""

        assert_type(await step.do("async", coro), bytes)
        assert_type(await step.do("lambda", lambda: coro()), bytes)
        assert_type(await step.wait_for_event("w", "go"), ReceivedEvent)
        assert_type(await step.sleep("s", 1), None)

        # DAG: a dependent step keeps its own return type whatever its dependencies return.
        @step.do("final", depends=[fetch, bare], concurrent=True)
        async def final(fetch: int, bare: str, ctx: StepContext) -> list[str]:
            return [bare] * fetch

        assert_type(final, StepFunction[list[str]])
        assert_type(await final(), list[str])

        @step.do("sync final", depends=[final])
        def sync_final(final: list[str]) -> int:
            return len(final)

        assert_type(await sync_final(), int)
        assert_type(step.do("call", lambda fetch: fetch, depends=[fetch]), StepAwaitable[Any])

        # Saga: a rollback step is a step; its undo is returned unchanged.
        @step.with_rollback("charge", config={"retries": {"limit": 1}})
        async def charge() -> dict[str, str]:
            return {"id": "ch_1"}

        assert_type(charge, RollbackStep[dict[str, str]])
        assert_type(await charge(), dict[str, str])

        @charge.undo
        async def refund(error: Exception, result: dict[str, str]) -> None:
            return None

        undo_async: Callable[[Exception, dict[str, str]], Coroutine[Any, Any, None]] = refund  # returned unchanged

        @charge.undo(config={"retries": {"limit": 5}})
        def refund_sync(error: Exception, result: dict[str, str]) -> bool:
            return True

        undo_sync: Callable[[Exception, dict[str, str]], bool] = refund_sync
        assert undo_async is refund and undo_sync is refund_sync
        assert_type(await step.rollback_all(ValueError("x"), continue_on_error=True), None)

        # asyncio idioms take step calls (asyncio's stubs want a coroutine for create_task, futures for wait).
        task = asyncio.create_task(step.do("task", sync))
        assert_type(await task, float)
        async with asyncio.TaskGroup() as tg:
            grouped = tg.create_task(fetch())
        assert_type(grouped.result(), int)
        assert_type(await asyncio.ensure_future(step.do("ensured", coro)), bytes)
        first, second = step.do("first", sync), step.do("second", sync)
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        assert_type(done, set[StepAwaitable[float]])
        racing: set[asyncio.Future[Any]] = {step.do("a", sync), step.wait_for_event("race", "go")}
        await asyncio.wait(racing)
        for completed in asyncio.as_completed([first, second]):
            assert_type(await completed, float)
        return {}


def test_types_module_imports() -> None:
    assert issubclass(Typed, WorkflowEntrypoint)
