"""A private event loop that runs one instance's ``run()`` deterministically.

Workflow code must behave identically when it replays, so it does not run on the worker's
real event loop (where I/O completions interleave at random). Each instance gets this loop:
it only runs callbacks that workflow code itself scheduled, in FIFO order, and the executor
drives it until nothing is ready ("quiescent"). ``asyncio.gather``, ``asyncio.wait``,
``TaskGroup`` and task cancellation all work; timers (``asyncio.sleep(n)``,
``asyncio.timeout``) do not, because wall-clock time is not replayable — ``step.sleep`` is — and
neither does awaiting a future of another loop (I/O begun outside a step): both fail the run.
The same technique as temporalio's ``_WorkflowInstanceImpl``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import weakref
from asyncio import events
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from hutch.errors import WorkflowCodeError
from hutch.step import StepAwaitable


class WorkflowLoop(asyncio.AbstractEventLoop):
    """Runs workflow callbacks on demand; never blocks, never does I/O.

    Args:
        on_code_error: told of each :class:`WorkflowCodeError` the loop raises into workflow code
            (a foreign future awaited, an asyncio timer), so the run fails even when workflow code
            catches the error.
    """

    def __init__(self, on_code_error: Callable[[WorkflowCodeError], None] | None = None) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        # This loop's own tasks: asyncio.all_tasks(loop) walks every task of the process (every
        # in-memory instance's), which made closing n instances at once cost O(n²) (W7's storm).
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._closed = False
        self.unhandled: list[dict[str, Any]] = []
        self._on_code_error = on_code_error

    def code_error(self, message: str) -> WorkflowCodeError:
        """The error to raise into workflow code for something it cannot do; the run is told first."""
        error = WorkflowCodeError(message)
        if self._on_code_error is not None:
            self._on_code_error(error)
        return error

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
        """Queue ``callback`` to run in the next :meth:`run_until_quiescent`, after those already queued."""
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        """Raise :class:`WorkflowCodeError`: workflow code runs on one thread and cannot be driven from another."""
        # Not code_error(): called from another thread, it must not touch the run's state.
        raise WorkflowCodeError("workflow code cannot be driven from another thread; do that work inside step.do")

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        """Fail the run: an asyncio timer measures wall-clock time, which a replay cannot reproduce."""
        raise self.code_error(
            "run() used an asyncio timer (asyncio.sleep with a delay, asyncio.timeout or wait_for); "
            "wall-clock time is not replayable, use step.sleep / step.wait_for_event(timeout=...) instead"
        )

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        """Fail the run, as :meth:`call_later` does."""
        return self.call_later(0, callback, *args)

    def time(self) -> float:
        """Always 0.0: the loop has no clock (its timers are refused)."""
        return 0.0

    def create_future(self) -> asyncio.Future[Any]:
        """A future bound to this loop."""
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any] | Any,
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        """A task on this loop; a step call is wrapped in a coroutine that awaits it."""
        if isinstance(coro, StepAwaitable):
            # asyncio.create_task(step.do(...)) and TaskGroup.create_task(step.do(...)) land here. A
            # step call is not a coroutine (asyncio.wait refuses coroutines), so run it in one. The
            # command was issued at the call, so its (name, count) is the same whenever the task runs.
            step = coro
            task = asyncio.Task(_await_step(step), loop=self, name=name, context=context)
            # The task owns the step: cancelled before it ever ran (a TaskGroup aborting, say), it
            # never awaited the step, so cancel the step here as cancelling a started task would.
            task.add_done_callback(lambda done: step.cancel() if done.cancelled() else None)
        else:
            task = asyncio.Task(_Guarded(coro, self), loop=self, name=name, context=context)
        self._tasks.add(task)
        return task

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks created on this loop that have not finished."""
        return [task for task in self._tasks if not task.done()]

    def get_debug(self) -> bool:
        """Always False: asyncio's debug mode times callbacks, and this loop has no clock."""
        return False

    def is_running(self) -> bool:
        """Whether this loop is running callbacks right now (inside :meth:`run_until_quiescent`)."""
        return events._get_running_loop() is self

    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Drop the callbacks still queued and mark the loop closed."""
        self._ready.clear()
        self._closed = True

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Keep asyncio's error report ("Task exception was never retrieved" and the like) in ``unhandled``.

        It is kept for diagnostics rather than logged from inside a replay.
        """
        self.unhandled.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Keep the error report in ``unhandled``, as :meth:`call_exception_handler` does."""
        self.unhandled.append(context)

    def get_exception_handler(self) -> None:
        """None: no handler can be installed (see :meth:`set_exception_handler`)."""
        return None

    def set_exception_handler(self, handler: Any) -> None:
        """Raise :class:`WorkflowCodeError`: errors raised on this loop are kept in ``unhandled``."""
        raise WorkflowCodeError("workflow code cannot install an exception handler")

    def get_task_factory(self) -> None:
        """None: no factory can be installed (see :meth:`set_task_factory`)."""
        return None

    def set_task_factory(self, factory: Any) -> None:
        """Raise :class:`WorkflowCodeError`: tasks on this loop are made by :meth:`create_task` alone."""
        raise WorkflowCodeError("workflow code cannot install a task factory")

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Fail the run: blocking work belongs inside ``step.do``."""
        raise self.code_error("run() called run_in_executor; blocking work belongs inside step.do")


async def _await_step(step: StepAwaitable[Any]) -> Any:
    return await step


_SHOWN = frozenset({"__name__", "__qualname__", "cr_await", "cr_code", "cr_frame", "cr_running"})


class _Guarded(Coroutine[Any, Any, Any]):
    """Workflow code's coroutine as its task drives it, stopped where it awaits another loop's future.

    A future of another event loop is I/O begun outside the workflow (a client or connection made
    on the worker's loop). Left to asyncio, the task would throw a ``RuntimeError`` into the
    coroutine, recognisable only by its wording; here the future is recognised by its loop's
    identity, the run is failed with a :class:`WorkflowCodeError` (which workflow code catching the
    error cannot undo), and that error is thrown in at the ``await``.
    """

    __slots__ = ("_coro", "_loop")

    def __init__(self, coro: Coroutine[Any, Any, Any], loop: WorkflowLoop) -> None:
        self._coro = coro
        self._loop = loop

    def send(self, value: Any) -> Any:
        return self._checked(self._coro.send(value))

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # Tasks throw an exception instance alone; the three-argument form is deprecated.
        error = typ if val is None else val
        return self._checked(self._coro.throw(error if tb is None else error.with_traceback(tb)))

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()

    def __getattr__(self, name: str) -> Any:
        # What asyncio shows in a task's repr and stack (get_stack, print_stack) is the workflow's.
        if name in _SHOWN:
            return getattr(self._coro, name)
        raise AttributeError(name)

    def _checked(self, yielded: Any) -> Any:
        while asyncio.isfuture(yielded) and yielded.get_loop() is not self._loop:
            error = self._loop.code_error(
                f"run() awaited I/O outside a step ({yielded!r} belongs to another event loop); "
                "put it inside step.do so it runs once and is checkpointed"
            )
            yielded = self._coro.throw(error)
        return yielded
