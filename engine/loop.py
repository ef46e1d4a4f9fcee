"""A private event loop that runs one instance's ``run()`` deterministically.

Workflow code must behave identically when it replays, so it does not run on the worker's
real event loop (where I/O completions interleave at random). Each instance gets this loop:
it only runs callbacks that workflow code itself scheduled, in FIFO order, and the executor
drives it until nothing is ready ("quiescent"). ``asyncio.gather``, ``asyncio.wait``,
``TaskGroup`` and task cancellation all work; timers (``asyncio.sleep(n)``,
``asyncio.timeout``) do not, because wall-clock time is not replayable — ``step.sleep`` is.
The same technique as temporalio's ``_WorkflowInstanceImpl``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from asyncio import events
from collections.abc import Callable, Coroutine
from typing import Any

from engine.errors import WorkflowCodeError
from engine.step import StepAwaitable


class WorkflowLoop(asyncio.AbstractEventLoop):
    """Runs workflow callbacks on demand; never blocks, never does I/O."""

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._closed = False
        self.unhandled: list[dict[str, Any]] = []

    def run_until_quiescent(self) -> None:
        """Run ready callbacks until none are left; the real running loop is restored after."""
        outer = events._get_running_loop()
        events._set_running_loop(self)
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            events._set_running_loop(outer)

    # The subset of AbstractEventLoop that futures, tasks, gather, wait and TaskGroup use.
    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        raise WorkflowCodeError("workflow code cannot be driven from another thread; do that work inside step.do")

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        raise WorkflowCodeError(
            "run() used an asyncio timer (asyncio.sleep with a delay, asyncio.timeout or wait_for); "
            "wall-clock time is not replayable, use step.sleep / step.wait_for_event(timeout=...) instead"
        )

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        return self.call_later(0, callback, *args)

    def time(self) -> float:
        return 0.0

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any] | Any,
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        if isinstance(coro, StepAwaitable):
            # asyncio.create_task(step.do(...)) and TaskGroup.create_task(step.do(...)) land here. A
            # step call is not a coroutine (asyncio.wait refuses coroutines), so run it in one. The
            # command was issued at the call, so its (name, count) is the same whenever the task runs.
            step = coro
            task = asyncio.Task(_await_step(step), loop=self, name=name, context=context)
            # The task owns the step: cancelled before it ever ran (a TaskGroup aborting, say), it
            # never awaited the step, so cancel the step here as cancelling a started task would.
            task.add_done_callback(lambda done: step.cancel() if done.cancelled() else None)
            return task
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return events._get_running_loop() is self

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._ready.clear()
        self._closed = True

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task exception was never retrieved" and friends: keep them for diagnostics rather
        # than printing from inside a replay.
        self.unhandled.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.unhandled.append(context)

    def get_exception_handler(self) -> None:
        return None

    def set_exception_handler(self, handler: Any) -> None:
        raise WorkflowCodeError("workflow code cannot install an exception handler")

    def get_task_factory(self) -> None:
        return None

    def set_task_factory(self, factory: Any) -> None:
        raise WorkflowCodeError("workflow code cannot install a task factory")

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        raise WorkflowCodeError("run() called run_in_executor; blocking work belongs inside step.do")


async def _await_step(step: StepAwaitable[Any]) -> Any:
    return await step
