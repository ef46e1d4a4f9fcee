"""Sagas: compensations registered by ``@step.with_rollback`` steps, run by ``step.rollback_all``.

Each run keeps a stack of the rollback steps that completed in it, in completion order. The
stack is rebuilt on replay exactly as the live run built it (steps complete in the groups
history recorded), so ``rollback_all`` asks for the same compensations in the same order. Each
compensation runs as an ordinary durable step named ``rollback <step name>``: it is retried by
its config, shows in ``describe()``, and once it succeeded it never runs again — a crash in the
middle of a rollback resumes with the compensations that had not finished.

``instance.terminate(rollback=True)`` runs the same compensations from outside the workflow's code
(:meth:`Saga.terminated`, started by :meth:`hutch.executor.WorkflowRun.begin_rollback`): each undo
receives a :class:`TerminatedWithRollback` as its error, and the instance ends ``terminated`` once
they all ran.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hutch.context import StepContext
from hutch.errors import RollbackFailed, TerminatedWithRollback

if TYPE_CHECKING:
    from hutch.executor import WorkflowRun

ROLLBACK_PREFIX = "rollback "


class Compensable(Protocol):
    """A step that may have an undo (what :class:`Compensation` needs from a rollback step)."""

    name: str

    def compensation(self) -> tuple[Callable[..., Any] | None, Any]:
        """The undo callable (None when none was registered) and the config to run it with."""
        ...


@dataclass(frozen=True, slots=True)
class Compensation:
    """One completed rollback step: what to undo and the result the undo receives."""

    step: Compensable
    result: Any


class Saga:
    """The compensation stack of one run."""

    __slots__ = ("_completed", "_run")

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run
        self._completed: list[Compensation] = []

    def completed(self, compensation: Compensation) -> None:
        """Record that a rollback step succeeded in this run."""
        self._completed.append(compensation)

    async def terminated(self) -> None:
        """A terminate with rollback: every undo runs (last completed first), even when some fail.

        Raises:
            RollbackFailed: naming the undos that failed (after their retries); the instance still ends terminated.
        """
        error = TerminatedWithRollback("the instance was terminated with rollback")
        try:
            await self.rollback_all(error, continue_on_error=True)
        except ExceptionGroup as failed:
            causes = "; ".join(f"{type(e).__name__}: {e}" for e in failed.exceptions)
            raise RollbackFailed(f"{len(failed.exceptions)} undo step(s) failed: {causes}") from None

    async def rollback_all(self, error: Exception, *, continue_on_error: bool = False) -> None:
        """Run the undos of every completed rollback step, last completed first, and forget them.

        Args:
            error: what triggered the rollback; each undo receives it with the step's result.
            continue_on_error: run every undo even when some fail, then raise their errors together.

        Raises:
            Exception: the first failed undo's error (after its retries), when not
                ``continue_on_error``; later undos are not run.
            ExceptionGroup: every failed undo's error, when ``continue_on_error``.
        """
        # Taken all at once: a rollback that stops at a failing undo does not leave the undos after
        # it for a second rollback_all to run out of order.
        pending, self._completed = self._completed, []
        failures: list[Exception] = []
        for compensation in reversed(pending):
            undo, config = compensation.step.compensation()
            if undo is None:
                continue
            body = undo_callable(undo, error, compensation.result)
            try:
                await self._run.issue_step(ROLLBACK_PREFIX + compensation.step.name, body, config)
            except Exception as exc:
                if not continue_on_error:
                    raise
                failures.append(exc)
        if failures:
            raise ExceptionGroup(f"rollback: {len(failures)} undo step(s) failed", failures)


def undo_callable(undo: Callable[..., Any], error: Exception, result: Any) -> Callable[[StepContext], Any]:
    """The step callable that runs ``undo(error, result)`` (adding ``ctx=`` when the undo takes ``ctx``).

    Async undos give an async callable and sync ones a sync callable (run in the thread pool).
    """
    try:
        takes_ctx = "ctx" in inspect.signature(undo).parameters
    except (TypeError, ValueError):
        takes_ctx = False

    if inspect.iscoroutinefunction(undo):

        async def compensate_async(ctx: StepContext) -> Any:
            if takes_ctx:
                return await undo(error, result, ctx=ctx)
            return await undo(error, result)

        body: Callable[[StepContext], Any] = compensate_async
    else:

        def compensate_sync(ctx: StepContext) -> Any:
            if takes_ctx:
                return undo(error, result, ctx=ctx)
            return undo(error, result)

        body = compensate_sync
    body.__name__ = getattr(undo, "__name__", body.__name__)
    body.__qualname__ = getattr(undo, "__qualname__", body.__qualname__)
    body.__doc__ = getattr(undo, "__doc__", None)
    return body
