"""Closing a finished run cancels its own loop's tasks without walking every task of the process (W7's O(n²))."""

from __future__ import annotations

import asyncio
from typing import Any

import hutch
import pytest
from hutch import Settings
from hutch.loop import WorkflowLoop

from bench.workloads import FanOut, Sequential, _finish


def test_loop_lists_its_unfinished_tasks() -> None:
    loop = WorkflowLoop()
    never: asyncio.Future[None] = loop.create_future()

    async def waits() -> None:
        await never

    async def ends() -> None:
        return None

    pending, done = loop.create_task(waits()), loop.create_task(ends())
    loop.run_until_quiescent()
    assert done.done() and loop.tasks() == [pending]
    pending.cancel()
    loop.run_until_quiescent()
    assert pending.cancelled() and loop.tasks() == []


async def test_finishing_instances_never_walks_all_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.all_tasks

    def guarded(loop: Any = None) -> Any:
        if isinstance(loop, WorkflowLoop):
            raise AssertionError("closing a run walked every task of the process")
        return real(loop)

    monkeypatch.setattr(asyncio, "all_tasks", guarded)
    async with hutch.connect(
        {"seq": Sequential, "fanout": FanOut}, settings=Settings(redis_url="", amqp_url="")
    ) as client:
        seq = await client.workflow("seq").create(params={"steps": 3})
        fan = await client.workflow("fanout").create(params={"width": 5})
        assert await _finish(seq, timeout=30) == {"steps": 3}
        assert await _finish(fan, timeout=30) == {"branches": 5}
