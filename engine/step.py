"""The ``step`` object ``run()`` receives, and the step functions and awaitables it hands out.

Its methods: ``do``, ``sleep``, ``sleep_until``, ``wait_for_event``, ``invoke``, ``with_rollback``,
``rollback_all``, ``patched`` and ``deprecate_patch``.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from hutch.children import InvokeConfig
from hutch.config import StepConfig
from hutch.dag import DependencyBinding, plan_dependencies
from hutch.durations import Duration, to_seconds
from hutch.errors import InvalidDuration, InvalidInputError, SleepTooLong
from hutch.events import ReceivedEvent
from hutch.saga import Compensation, Saga

if TYPE_CHECKING:
    from hutch.executor import WorkflowRun

T = TypeVar("T")
P = ParamSpec("P")
U = TypeVar("U", bound=Callable[..., Any])

StepConfigInput = StepConfig | dict[str, Any] | None


class StepFunction(Generic[T]):
    """A step declared with the decorator form; calling it runs (or replays) the step.

    ``await fn()`` issues the step; each call is a new step with the same name and the next
    count, exactly like ``step.do(name, fn)``.

    A step declared with ``depends=[a, b]`` first resolves its dependencies when called —
    concurrently when ``concurrent=True``, one after the other in list order otherwise — and then
    runs with their results injected (see :mod:`hutch.dag`). A dependency runs at most once per
    run: if it was already called in this run (awaited earlier, or shared by two dependents, as in
    a diamond), that call's result is reused, and a dependency still in flight is shared by every
    step that waits for it. A dependency that failed raises its error into the dependent's await.
    """

    def __init__(
        self,
        step: WorkflowStep,
        name: str | None,
        fn: Callable[..., Any],
        config: StepConfigInput,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> None:
        self._step = step
        self.name = name if name is not None else fn.__name__
        self.fn = fn
        self.config = config
        self.depends: tuple[StepFunction[Any], ...] = _check_depends(self.name, depends)
        self.concurrent = concurrent
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._binding: DependencyBinding | None = (
            plan_dependencies(self.name, fn, [d.__name__ for d in self.depends]) if self.depends else None
        )
        # The future of this step's latest call in this run: what a dependent step reuses.
        self._latest: asyncio.Future[Any] | None = None

    def __call__(self) -> StepAwaitable[T]:
        """Issue the step now (after its dependencies, if it has any); await the result to get its output."""
        run = self._step._run
        future: asyncio.Future[Any]
        if self._binding is None:
            future = run.issue_step(self.name, self.fn, self.config)
        else:
            # Started now, like a plain step: the dependencies are issued on the workflow loop's
            # next turn whether or not the caller awaits at once.
            future = run.loop.create_task(self._after_dependencies(self._binding))
        self._latest = future
        return StepAwaitable(future)

    def _shared(self) -> asyncio.Future[Any]:
        """This step's outcome in this run, for a dependent: the latest call's future, else a new call."""
        future = self._latest
        if future is None or future.cancelled():
            self()
            future = self._latest
            assert future is not None
        # A dependent cancelled by workflow code must not cancel a step other dependents share.
        return asyncio.shield(future)

    async def _after_dependencies(self, binding: DependencyBinding) -> Any:
        if self.concurrent:
            results = list(await asyncio.gather(*(d._shared() for d in self.depends)))
        else:
            results = [await d._shared() for d in self.depends]
        return await self._step._run.issue_step(
            self.name, binding.bind(self.fn, results), self.config, deps=[d.name for d in self.depends]
        )


class RollbackStep(StepFunction[T]):
    """A step declared with ``@step.with_rollback``: a step whose ``undo`` compensates it.

    ``await fn()`` runs the step like :meth:`WorkflowStep.do`. Once it succeeded, its undo is on
    the run's compensation stack; ``await step.rollback_all(error)`` runs the undos of the steps
    that completed, last first. Register the undo with ``@fn.undo`` (or
    ``@fn.undo(config=...)``; without a config it runs with the step's config); it receives the
    error that triggered the rollback and the step's result, plus ``ctx`` if it has a parameter
    of that name.
    """

    def __init__(self, step: WorkflowStep, name: str | None, fn: Callable[..., Any], config: StepConfigInput) -> None:
        super().__init__(step, name, fn, config)
        self._undo: Callable[..., Any] | None = None
        self._undo_config: StepConfigInput = None
        self._undo_has_config = False

    def __call__(self) -> StepAwaitable[T]:
        """Issue the step like :class:`StepFunction`; once it succeeds its undo joins the compensation stack."""
        awaitable = super().__call__()
        # Registered before the caller's await resumes: code right after ``await fn()`` can roll it back.
        awaitable._future.add_done_callback(self._on_done)
        return awaitable

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._step._saga.completed(Compensation(self, future.result()))

    @overload
    def undo(self, fn: U, /) -> U: ...

    @overload
    def undo(self, *, config: StepConfigInput = None) -> Callable[[U], U]: ...

    def undo(self, fn: Callable[..., Any] | None = None, *, config: StepConfigInput = None) -> Any:
        """Register the compensation: ``@charge.undo`` or ``@charge.undo(config={...})``.

        The function (async or sync) is called as ``undo(error, result)`` when ``rollback_all``
        runs; it is returned unchanged.
        """

        def register(undo: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(undo):
                raise TypeError(f"step {self.name!r}: undo needs a callable, got {type(undo).__name__}")
            self._undo = undo
            self._undo_config = config
            self._undo_has_config = config is not None
            return undo

        if fn is not None:
            return register(fn)
        return register

    def compensation(self) -> tuple[Callable[..., Any] | None, StepConfigInput]:
        """The undo (None when none was registered) and the config it runs with."""
        return self._undo, self._undo_config if self._undo_has_config else self.config


def _check_depends(name: str, depends: Sequence[StepFunction[Any]]) -> tuple[StepFunction[Any], ...]:
    if isinstance(depends, StepFunction) or not isinstance(depends, Sequence):
        raise TypeError(f"step {name!r}: depends must be a list of steps, got {type(depends).__name__}")
    for dependency in depends:
        if not isinstance(dependency, StepFunction):
            raise TypeError(
                f"step {name!r}: depends lists {dependency!r}, which is not a step; "
                "declare it with @step.do (or @step.with_rollback) first"
            )
    return tuple(depends)


if TYPE_CHECKING:

    class _AsyncioCompatible(asyncio.Future[T], Coroutine[Any, Any, T]):
        """How type checkers see a step call: what asyncio's stubs ask of the idioms that accept one.

        ``create_task`` and ``TaskGroup.create_task`` are typed to take a coroutine, ``wait`` a set of
        futures; the workflow loop accepts a step call as either (see :class:`StepAwaitable`), so
        workflow code using them type-checks. Only the methods :class:`StepAwaitable` defines exist
        at runtime.
        """

        def send(self, value: Any, /) -> Any:
            raise NotImplementedError

        def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
            raise NotImplementedError

        def close(self) -> None:
            raise NotImplementedError

else:

    class _AsyncioCompatible(Generic[T]):
        __slots__ = ()


class StepAwaitable(_AsyncioCompatible[T]):
    """What a step call returns: await it, or hand it to any asyncio combinator.

    The command is issued when the step is *called*, so its identity ``(name, count)`` never
    depends on when, or whether, it is awaited. The object is a thin wrapper over the run's
    future for that command, and asyncio's idioms accept it:

    * ``await``, ``asyncio.gather``, ``asyncio.ensure_future`` and ``asyncio.as_completed`` take
      any awaitable;
    * ``asyncio.wait`` watches it directly through the future methods below (since Python 3.11
      ``wait`` neither wraps awaitables nor accepts coroutines), so ``step in done`` works;
    * ``asyncio.create_task`` and ``TaskGroup.create_task`` demand a coroutine: the workflow loop
      wraps a step call into one (see :meth:`engine.loop.WorkflowLoop.create_task`).

    It deliberately is not an ``asyncio.Future`` (no ``_asyncio_future_blocking``): ``gather`` and
    ``ensure_future`` then wrap it in a task exactly as they always did, so the order in which
    workflow code wakes up — and so the order of the commands it issues — is unchanged for
    histories recorded by earlier versions. Nor is it a coroutine, which ``wait`` would
    refuse.
    """

    __slots__ = ("_future", "_relays")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self._future = future
        # (callback as registered, the relay registered on the future in its place)
        self._relays: list[tuple[Callable[[StepAwaitable[T]], object], Callable[[asyncio.Future[Any]], None]]] = []

    def __await__(self) -> Generator[Any, None, T]:
        return self._future.__await__()

    # The subset of the Future API that asyncio.wait uses, and that code inspecting its ``done``
    # set calls.
    def done(self) -> bool:
        """Whether the step, sleep or wait has an outcome (or was cancelled)."""
        return self._future.done()

    def cancelled(self) -> bool:
        """Whether it was cancelled."""
        return self._future.cancelled()

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the step, sleep or wait; the run records the cancellation, so replay repeats it."""
        return self._future.cancel(msg)

    def result(self) -> T:
        """The outcome once done: the value, or the step's error raised.

        Raises:
            asyncio.InvalidStateError: it is not done yet.
            asyncio.CancelledError: it was cancelled.
        """
        result: T = self._future.result()
        return result

    def exception(self) -> BaseException | None:
        """The error it failed with once done, or None if it succeeded.

        Raises:
            asyncio.InvalidStateError: it is not done yet.
            asyncio.CancelledError: it was cancelled.
        """
        return self._future.exception()

    def add_done_callback(
        self, fn: Callable[[StepAwaitable[T]], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Call ``fn(self)`` once it is done (at once, on the loop, if it already is)."""

        # Relayed so that ``fn`` receives this object, as the Future API promises, not the inner future.
        def relay(_: asyncio.Future[Any]) -> None:
            fn(self)

        self._relays.append((fn, relay))
        self._future.add_done_callback(relay, context=context)

    def remove_done_callback(self, fn: Callable[[StepAwaitable[T]], object]) -> int:
        """Unregister every registration of ``fn``; returns how many were removed."""
        removed = 0
        kept = []
        for registered, relay in self._relays:
            if registered == fn:
                removed += self._future.remove_done_callback(relay)
            else:
                kept.append((registered, relay))
        self._relays = kept
        return removed


class StepDecorator:
    """What ``@step.do(name, config=...)`` returns: turns a function into a :class:`StepFunction`."""

    __slots__ = ("_concurrent", "_config", "_depends", "_name", "_step")

    def __init__(
        self,
        step: WorkflowStep,
        name: str | None,
        config: StepConfigInput,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> None:
        self._step = step
        self._name = name
        self._config = config
        self._depends = depends
        self._concurrent = concurrent

    @overload
    def __call__(self, fn: Callable[..., Awaitable[T]]) -> StepFunction[T]: ...

    @overload
    def __call__(self, fn: Callable[..., T]) -> StepFunction[T]: ...

    def __call__(self, fn: Callable[..., Any]) -> StepFunction[Any]:
        """Make ``fn`` a step function with this decorator's name, config and dependencies."""
        return StepFunction(self._step, self._name, fn, self._config, self._depends, self._concurrent)


class RollbackDecorator:
    """What ``@step.with_rollback(name, config=...)`` returns: turns a function into a :class:`RollbackStep`."""

    __slots__ = ("_config", "_name", "_step")

    def __init__(self, step: WorkflowStep, name: str | None, config: StepConfigInput) -> None:
        self._step = step
        self._name = name
        self._config = config

    @overload
    def __call__(self, fn: Callable[..., Awaitable[T]]) -> RollbackStep[T]: ...

    @overload
    def __call__(self, fn: Callable[..., T]) -> RollbackStep[T]: ...

    def __call__(self, fn: Callable[..., Any]) -> RollbackStep[Any]:
        """Make ``fn`` a step with a rollback, under this decorator's name and config."""
        return RollbackStep(self._step, self._name, fn, self._config)


class WorkflowStep:
    """The API ``run(event, step)`` uses to do durable work."""

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run
        self._saga = Saga(run)

    @overload
    def do(self, name: Callable[..., Awaitable[T]], /) -> StepFunction[T]: ...

    @overload
    def do(self, name: Callable[..., T], /) -> StepFunction[T]: ...

    @overload
    def do(
        self,
        name: str | None,
        fn: Callable[..., Awaitable[T]],
        *,
        config: StepConfigInput = None,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> StepAwaitable[T]: ...

    @overload
    def do(
        self,
        name: str | None,
        fn: Callable[..., T],
        *,
        config: StepConfigInput = None,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> StepAwaitable[T]: ...

    @overload
    def do(
        self,
        name: str | None = None,
        *,
        config: StepConfigInput = None,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> StepDecorator: ...

    def do(
        self,
        name: str | Callable[..., Any] | None = None,
        fn: Callable[..., Any] | None = None,
        *,
        config: StepConfigInput = None,
        depends: Sequence[StepFunction[Any]] = (),
        concurrent: bool = False,
    ) -> Any:
        """Declare or run a step.

        Call form: ``await step.do("charge", fn, config=...)`` runs ``fn`` (async or sync; it may
        take a ``ctx`` :class:`~engine.context.StepContext`) as a durable step and returns its
        result. Decorator form: ``@step.do("charge")`` above an ``async def`` (or a plain
        ``@step.do``) declares the step; ``await charge()`` runs it. The name defaults to the
        function's ``__name__``.

        DAG form: ``@step.do("total", depends=[price, qty], concurrent=True)`` declares a step
        that first resolves the steps it depends on (each at most once per run, concurrently when
        ``concurrent=True``) and receives their results: by parameter name when a parameter is
        named like a dependency's function, else positionally in ``depends`` order; a ``ctx``
        parameter receives the step context. ``describe()`` lists each step's dependencies.

        Raises:
            TypeError: ``depends`` lists something that is not a declared step, or the function
                has a required parameter no dependency result fills.
        """
        if fn is None and callable(name):
            return StepFunction(self, None, name, config, depends, concurrent)
        if fn is None:
            return StepDecorator(self, name, config, depends, concurrent)  # type: ignore[arg-type]
        if depends:
            return StepFunction(self, name, fn, config, depends, concurrent)()  # type: ignore[arg-type]
        return StepAwaitable(self._run.issue_step(name, fn, config))  # type: ignore[arg-type]

    @overload
    def with_rollback(self, name: Callable[..., Awaitable[T]], /) -> RollbackStep[T]: ...

    @overload
    def with_rollback(self, name: Callable[..., T], /) -> RollbackStep[T]: ...

    @overload
    def with_rollback(self, name: str | None = None, *, config: StepConfigInput = None) -> RollbackDecorator: ...

    def with_rollback(self, name: str | Callable[..., Any] | None = None, *, config: StepConfigInput = None) -> Any:
        """Declare a step that can be compensated (a saga step); ``await fn()`` runs it like ``step.do``.

        Register its compensation with ``@fn.undo``; :meth:`rollback_all` runs the undos of the
        rollback steps that completed in this run, last first::

            @step.with_rollback("charge card", config={"retries": {"limit": 3}})
            async def charge():
                return await payments.charge(order)

            @charge.undo
            async def refund(error, charge):
                await payments.refund(charge["id"])

            try:
                await charge()
                await ship()
            except Exception as error:
                await step.rollback_all(error)
                raise
        """
        if callable(name):
            return RollbackStep(self, None, name, config)
        return RollbackDecorator(self, name, config)

    async def rollback_all(self, error: Exception, continue_on_error: bool = False) -> None:
        """Run the undos of the rollback steps that completed in this run, last-in first-out.

        Each undo runs as a durable step named ``rollback <step name>`` (retried by its config,
        shown in ``describe()``, never run again once it succeeded, even after a crash) and
        receives ``(error, result)``. The undos run are forgotten, so a second call does not
        repeat them.

        Args:
            error: the error that triggered the rollback, passed to every undo.
            continue_on_error: run every undo even when some fail, then raise their errors
                together as an ``ExceptionGroup``. Otherwise the first failed undo's error is raised
                and the undos after it are not run.
        """
        await self._saga.rollback_all(error, continue_on_error=continue_on_error)

    def patched(self, patch_id: str) -> bool:
        """Whether this instance takes the new code path of an in-place change: ``if step.patched("charge-v2"):``.

        True for an instance that reaches this point first on code with the patch (a marker is
        recorded in its history), False for one whose history passed this point without it — so
        an instance that started on the old code keeps replaying the old path. The answer holds
        for the rest of the run (every call with this id gives the first call's answer).
        Temporal's ``workflow.patched``; once no instance on the old path is left, replace the call
        with :meth:`deprecate_patch` and remove the old path.
        """
        return self._run.patched(patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark a patch whose old code path is gone: keep this call where ``patched(patch_id)`` was.

        Histories with the patch's marker and histories without it both replay (the code takes the
        one path left); new instances still record the marker, so code that still asks
        ``patched(patch_id)`` takes the new path for them. Once every instance that recorded a
        marker has finished, the call can go too. Temporal's ``workflow.deprecate_patch``.
        """
        self._run.patched(patch_id, deprecated=True)

    def sleep(self, name: str, duration: Duration) -> StepAwaitable[None]:
        """Suspend the instance for ``duration`` (a string like ``"3 days"``, seconds, or a timedelta).

        A negative duration completes at once, as on Cloudflare and like a ``sleep_until`` a past
        time: a sleep computed as "deadline minus now" whose deadline already passed is not an error.
        """
        seconds = to_seconds(_at_least_zero(duration))
        self._check_sleep(name, seconds)
        now = self._run.now_ms()
        return StepAwaitable(self._run.issue_timer("sleep", name, now + round(seconds * 1000), issued_ms=now))

    def sleep_until(self, name: str, when: datetime | int | float) -> StepAwaitable[None]:
        """Suspend the instance until ``when`` (an aware datetime, or epoch seconds).

        A time already past completes at once. Cloudflare raises there instead; Hutch does not,
        deliberately: a deadline computed from data can be reached late (a retried step, a pause,
        a backlog), and a replay — which always happens later than the live run — must not see a
        different outcome than the live run did.
        """
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise InvalidDuration(f"sleep_until {name!r}: datetime {when!r} must be timezone-aware")
            due_ms = round(when.timestamp() * 1000)
        elif isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
            due_ms = round(when * 1000)
        else:
            raise InvalidDuration(f"sleep_until {name!r}: {when!r} must be an aware datetime or epoch seconds")
        now = self._run.now_ms()
        self._check_sleep(name, max(0, due_ms - now) / 1000)
        return StepAwaitable(self._run.issue_timer("sleep", name, max(due_ms, now), issued_ms=now))

    def wait_for_event(
        self, name: str, event_type: str, timeout: Duration = "24 hours"
    ) -> StepAwaitable[ReceivedEvent]:
        """Wait for an event of ``event_type``; raises ``EventTimeoutError`` after ``timeout``.

        An event sent before the wait is reached was buffered and is delivered at once.
        """
        if not isinstance(event_type, str) or not event_type:
            raise InvalidInputError(f"wait_for_event {name!r}: event type must be a non-empty string")
        seconds = to_seconds(timeout)
        self._check_sleep(name, seconds)
        now = self._run.now_ms()
        return StepAwaitable(
            self._run.issue_timer("wait", name, now + round(seconds * 1000), event_type, issued_ms=now)
        )

    def invoke(
        self,
        name: str,
        workflow: str | Any,
        params: Any = None,
        id: str | None = None,
        config: InvokeConfig | dict[str, Any] | None = None,
    ) -> StepAwaitable[Any]:
        """Run a child workflow and return its output: ``await step.invoke("bill", "billing", {...})``.

        The child is created durably once this command is committed, with ``id`` or, by default, an
        id derived from this instance and the invoke's name and count, so a replay (or a crash and
        re-drive) never creates a second child. The parent waits without holding worker memory; the
        child may run on any partition and any worker.

        Args:
            name: the invoke's name (its identity is ``(name, count)``, as for steps).
            workflow: the child's workflow name, or its client (``self.env.BILLING``).
            params: the child's params.
            id: the child's instance id (default: derived). An id held by an instance this invoke
                did not create fails the invoke (``ChildWorkflowError`` naming ``InstanceAlreadyExists``).
            config: ``{"parent_close": "terminate" | "abandon"}`` (:class:`InvokeConfig`): whether a
                child still running when this instance ends (terminated, restarted, or returning
                without awaiting it) is terminated (default) or runs on.

        Raises:
            ChildWorkflowError: (at the await) the child errored or was terminated; it carries the
                child's id, error name and message.
        """
        workflow_name = workflow if isinstance(workflow, str) else getattr(workflow, "name", workflow)
        return StepAwaitable(self._run.issue_invoke(name, workflow_name, params, id, config))

    def _check_sleep(self, name: str, seconds: float) -> None:
        limit = self._run.limits.max_sleep.total_seconds()
        if seconds > limit:
            raise SleepTooLong(
                f"{name!r} would wait {seconds:.0f} s; the limit is {limit:.0f} s "
                "(Limits.max_sleep, 365 days by default)"
            )


def _at_least_zero(duration: Duration) -> Duration:
    """A negative number of seconds or timedelta as zero; anything else unchanged, for ``to_seconds`` to check."""
    if isinstance(duration, timedelta):
        return max(duration, timedelta(0))
    if isinstance(duration, int | float) and not isinstance(duration, bool) and -math.inf < duration < 0:
        return 0
    return duration
