"""The long-running tasks of a worker, which must not end unnoticed.

An ``asyncio.TaskGroup`` cancels the other children when one raises, but a child that *returns*,
or ends *cancelled*, goes unnoticed. Here either is a failure as well while its owner runs: a
membership loop cancelled by a stray ``CancelledError`` (aiormq fails the RPCs a closing channel
abandons with one) would otherwise leave the worker heartbeating and holding partitions while it
does nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from hutch.cancelling import RECANCEL_S, cancel_and_wait

log = logging.getLogger("hutch.worker")

_STOP_TIMEOUT_S = 10.0  # how long stop() waits for the tasks to end (each cancelled again every RECANCEL_S)


class TaskEnded(RuntimeError):
    """An internal task ended (returned, or was cancelled) while its owner was running."""


class Supervisor:
    """Runs a component's long-running tasks in one ``asyncio.TaskGroup``.

    Any of them that crashes, returns or is cancelled (even before it started) before
    :meth:`stopping` cancels the others, and ``on_failure`` is called with what ended them.
    Background tasks (:meth:`spawn` with ``essential=False``) live in the same group, but their
    failures are only logged.

    Args:
        name: the name of the group's own task.
        on_failure: called once with the errors, after every task of the group has ended.
    """

    def __init__(self, name: str, on_failure: Callable[[list[BaseException]], None]) -> None:
        self._name = name
        self._on_failure = on_failure
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ended: list[str] = []  # essential tasks that returned or were cancelled, and how
        self._ending = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed = False

    async def start(self) -> None:
        """Open the group (its task runs until :meth:`stop`, or until a task fails)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(ready), name=self._name)
        await ready

    def spawn(self, name: str, work: Coroutine[Any, Any, None], *, essential: bool = True) -> None:
        """Run ``work`` in the group; a non-essential task's failure is logged, nothing more.

        Once the group ended (stopped, or failed) ``work`` is dropped: it would outlive its owner.
        """
        group = self._group
        try:
            if group is None:
                raise RuntimeError("the group has ended")
            if essential:
                task = group.create_task(work, name=name)
                task.add_done_callback(functools.partial(self._check, name))
            else:
                task = group.create_task(self._background(name, work), name=name)
        except RuntimeError:  # ended, or shutting down after a failure
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stopping(self) -> None:
        """From now on a task that ends is no failure (its owner is stopping it)."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel every task of the group and wait until they have ended; idempotent."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        if not await cancel_and_wait(task, _STOP_TIMEOUT_S):
            log.error("tasks still running after stop(): %s", sorted(t.get_name() for t in self._tasks if not t.done()))

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set_result(None)
                try:
                    # Open until stop() cancels it, or a task crashes (the group cancels it then).
                    await self._ending.wait()
                finally:
                    asyncio.get_running_loop().call_later(RECANCEL_S, self._recancel)
                raise TaskEnded("; ".join(self._ended))  # the group cancels the others
        except* Exception as failure:
            self._on_failure(list(failure.exceptions))
        finally:
            self._group = None

    def _recancel(self) -> None:
        """Cancel again the tasks still running a while after the group cancelled them.

        A library may have swallowed the cancellation (see hutch.cancelling), and the group would wait
        for them forever.
        """
        alive = [task for task in self._tasks if not task.done()]
        for task in alive:
            log.warning(
                "%s is still running %.0f s after it was cancelled; cancelling it again", task.get_name(), RECANCEL_S
            )
            task.cancel()
        if alive:
            asyncio.get_running_loop().call_later(RECANCEL_S, self._recancel)

    def _check(self, name: str, task: asyncio.Task[None]) -> None:
        if self._stopping or self.failed:
            return  # stopped, or cancelled by the group after another task failed
        self.failed = True  # before the others see the group cancel them
        if task.cancelled():
            # A TaskGroup ignores a child that ends cancelled: a stray CancelledError, or a cancel()
            # from anywhere else than stop().
            self._ended.append(f"{name} was cancelled while the worker was running")
        elif task.exception() is None:
            self._ended.append(f"{name} returned while the worker was running")
        else:
            return  # a crash: the group cancels the others, and reports it
        self._ending.set()

    @staticmethod
    async def _background(name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:
            log.warning("worker background task %s failed: %r", name, exc)
