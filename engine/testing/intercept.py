"""How the test environment changes what workflows do, with no hook in the production engine.

Each registered workflow class is replaced, for the test runtime only, by a subclass whose
``run()`` hands the original ``run()`` a ``step`` built on a proxy of the instance's
:class:`~engine.executor.WorkflowRun`. Every step form (call, decorator, DAG, saga undo) reaches
the run through ``issue_step`` / ``issue_timer``, so the proxy sees them all and substitutes the
mocked behaviour while the engine still records real, durable steps:

* a step's function is wrapped: a mocked attempt returns the mocked value or raises the mocked
  error (or ``StepTimeoutError``) instead of calling it, and a failed ``assert`` in it fails the
  step without retries;
* a disabled sleep, or a wait forced to time out, is issued with a due time of "now";
* a wait for a mocked event type asks the environment to send that event.
"""

from __future__ import annotations

import inspect
import linecache
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from hutch.context import StepContext
from hutch.entrypoint import WorkflowEntrypoint
from hutch.errors import NonRetryableError, StepFailedError, StepTimeoutError
from hutch.events import WorkflowEvent
from hutch.history import TimerCommandKind
from hutch.step import WorkflowStep
from hutch.testing.modifiers import Modifier, StepMock

if TYPE_CHECKING:
    from hutch.executor import WorkflowRun

# (workflow, instance id, event type, payload)
EventSink = Callable[[str, str, str, Any], None]


class _FailedAssertion(StepFailedError, NonRetryableError):
    """A failed ``assert`` in a step: non-retryable, and recorded (and re-raised into run()) as AssertionError."""


class Interceptor:
    """The modifiers of one test environment, and what instrumented runs report back to it.

    Args:
        send_event: called (synchronously, from inside a workflow run) to have a mocked event
            sent to an instance; the environment sends it from its own task.
    """

    def __init__(self, send_event: EventSink) -> None:
        self.modifiers: list[Modifier] = []
        self.started: dict[tuple[str, str], None] = {}  # instances whose run() started, in order
        self._send_event = send_event
        self._sent: set[tuple[str, str, str, int]] = set()

    def _applicable(self, workflow: str, instance_id: str) -> list[Modifier]:
        matching = [m for m in reversed(self.modifiers) if m.applies_to(workflow, instance_id)]
        # Rules made for this instance come before rules for every instance; newest first within each.
        return [m for m in matching if m.instance_id is not None] + [m for m in matching if m.instance_id is None]

    def step_mock(self, workflow: str, instance_id: str, name: str, count: int, attempt: int) -> StepMock | None:
        """What attempt ``attempt`` of step ``name``#``count`` does instead of running (None: run it)."""
        modifiers = self._applicable(workflow, instance_id)
        for modifier in modifiers:
            failure = modifier.failure_for(name, count, attempt)
            if failure is not None:
                return failure
        for modifier in modifiers:
            result = modifier.result_for(name, count)
            if result is not None:
                return result
        return None

    def skips_sleep(self, workflow: str, instance_id: str, name: str) -> bool:
        """Whether sleep ``name`` ends at once."""
        return any(m.skips_sleep(name) for m in self._applicable(workflow, instance_id))

    def times_out(self, workflow: str, instance_id: str, name: str, count: int) -> bool:
        """Whether wait ``name``#``count`` is forced to time out."""
        return any(m.times_out(name, count) for m in self._applicable(workflow, instance_id))

    def run_started(self, workflow: str, instance_id: str, *, fresh: bool) -> None:
        """An instance's run() started, from the beginning (``fresh``: no history yet, or a restart) or to replay."""
        self.started.setdefault((workflow, instance_id), None)
        if fresh:
            # A restart erased the history and the buffered events: its waits get their mocked events again.
            self._sent = {key for key in self._sent if key[:2] != (workflow, instance_id)}

    def wait_reached(self, workflow: str, instance_id: str, name: str, count: int, event_type: str) -> None:
        """A wait was issued (or replayed): send its mocked event, once per wait."""
        key = (workflow, instance_id, name, count)
        if key in self._sent:
            return
        for modifier in self._applicable(workflow, instance_id):
            mocked, payload = modifier.event_for(event_type)
            if mocked:
                self._sent.add(key)
                self._send_event(workflow, instance_id, event_type, payload)
                return


def instrument(cls: type[WorkflowEntrypoint], interceptor: Interceptor) -> type[WorkflowEntrypoint]:
    """A subclass of ``cls`` whose ``run()`` works through the interceptor (same name and module)."""

    async def run(self: WorkflowEntrypoint, event: WorkflowEvent, step: WorkflowStep) -> Any:
        interceptor.run_started(event.workflow_name, event.instance_id, fresh=not step._run._recorded)
        proxy = _RunProxy(step._run, interceptor, event.workflow_name, event.instance_id)
        try:
            return await cls.run(self, event, WorkflowStep(cast("WorkflowRun", proxy)))
        except AssertionError as exc:
            if str(exc):
                raise
            # A bare `assert` outside pytest's rewriting has no message: say where it failed.
            raise AssertionError(_where(exc)) from exc

    run.__doc__ = cls.run.__doc__
    namespace = {
        "run": run,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__hutch_workflow__": cls,
    }
    instrumented: type[WorkflowEntrypoint] = type(cls.__name__, (cls,), namespace)
    return instrumented


class _RunProxy:
    """Stands in for a WorkflowRun in front of the ``step`` object; everything not overridden passes through."""

    def __init__(self, run: WorkflowRun, interceptor: Interceptor, workflow: str, instance_id: str) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_interceptor", interceptor)
        object.__setattr__(self, "_workflow", workflow)
        object.__setattr__(self, "_instance_id", instance_id)

    _run: WorkflowRun
    _interceptor: Interceptor
    _workflow: str
    _instance_id: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._run, name, value)

    def issue_step(self, name: str | None, fn: Callable[..., Any], config: Any, **options: Any) -> Any:
        step_name = name if name is not None else getattr(fn, "__name__", None)
        if not callable(fn) or not isinstance(step_name, str):
            return self._run.issue_step(name, fn, config, **options)  # let the engine raise its error
        body = _wrap(fn, self._decide)
        return self._run.issue_step(step_name, body, config, **options)

    def issue_timer(
        self, kind: TimerCommandKind, name: str, due_ms: int, event_type: str | None = None, *, issued_ms: int
    ) -> Any:
        interceptor, wf, iid = self._interceptor, self._workflow, self._instance_id
        count = self._run._counts.get(name, 0) + 1  # the count the run is about to give this command
        forced = False
        if kind == "sleep" and interceptor.skips_sleep(wf, iid, name):
            due_ms = issued_ms
        elif kind == "wait" and interceptor.times_out(wf, iid, name, count):
            due_ms, forced = issued_ms, True
        future = self._run.issue_timer(kind, name, due_ms, event_type, issued_ms=issued_ms)
        if kind == "wait" and event_type is not None and not forced:
            interceptor.wait_reached(wf, iid, name, count, event_type)
        return future

    def _decide(self, ctx: StepContext) -> StepMock | None:
        step = ctx.step
        return self._interceptor.step_mock(self._workflow, self._instance_id, step.name, step.count, ctx.attempt)


def _wrap(fn: Callable[..., Any], decide: Callable[[StepContext], StepMock | None]) -> Callable[[StepContext], Any]:
    """The step callable the engine runs instead of ``fn``: mocks first, then ``fn`` with asserts made final.

    An async ``fn`` gives an async callable and a sync one a sync callable, so the step runner
    still runs sync work in its thread pool.
    """
    if inspect.iscoroutinefunction(fn):

        async def body_async(ctx: StepContext) -> Any:
            mock = decide(ctx)
            if mock is not None:
                return _apply(mock, ctx)
            try:
                return await _call(fn, ctx)
            except AssertionError as exc:
                raise _final(exc) from exc

        body: Callable[[StepContext], Any] = body_async
    else:

        def body_sync(ctx: StepContext) -> Any:
            mock = decide(ctx)
            if mock is not None:
                return _apply(mock, ctx)
            try:
                result = _call(fn, ctx)
            except AssertionError as exc:
                raise _final(exc) from exc
            if inspect.isawaitable(result):
                return _guard(result)  # e.g. ``lambda: fetch(x)``: the runner awaits what it returns
            return result

        body = body_sync
    body.__name__ = getattr(fn, "__name__", body.__name__)
    body.__qualname__ = getattr(fn, "__qualname__", body.__qualname__)
    body.__doc__ = getattr(fn, "__doc__", None)
    return body


def _apply(mock: StepMock, ctx: StepContext) -> Any:
    if mock.kind == "result":
        return mock.value
    if mock.kind == "timeout":
        # The step runner's own message for an attempt that ran past its timeout.
        raise StepTimeoutError(f"Execution timed out after {round(ctx.config.timeout * 1000)}ms")
    assert mock.error is not None
    raise mock.error


async def _guard(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except AssertionError as exc:
        raise _final(exc) from exc


def _final(exc: AssertionError) -> _FailedAssertion:
    return _FailedAssertion("AssertionError", str(exc) or _where(exc))


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "assertion failed"
    frame = frames[-1]
    line = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    return f"assertion failed at {frame.filename}:{frame.lineno}: {line}"


def _call(fn: Callable[..., Any], ctx: StepContext) -> Any:
    """Call a step function exactly as the step runner would, passing ``ctx`` by the same rule.

    The rule (``hutch.consumers.steps._context_kwargs``; a test pins that the two agree): ``ctx`` goes
    to a keyword-only parameter named ``ctx``, else positionally when the function has a
    parameter named ``ctx``, a required positional parameter or ``*args``.
    """
    positional, keyword = _ctx_convention(fn)
    if keyword:
        return fn(ctx=ctx)
    return fn(ctx) if positional else fn()


def _ctx_convention(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """``(positional, keyword)``: how ``fn`` takes the step context."""
    code = getattr(fn, "__code__", None)
    if code is not None and not inspect.ismethod(fn):
        positional_names = code.co_varnames[: code.co_argcount]
        keyword_only = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        if "ctx" in keyword_only:
            return False, True
        required = code.co_argcount - len(getattr(fn, "__defaults__", None) or ())
        return ("ctx" in positional_names or required > 0 or bool(code.co_flags & inspect.CO_VARARGS)), False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False, False
    if any(p.name == "ctx" and p.kind is p.KEYWORD_ONLY for p in params):
        return False, True
    wants = any(
        p.name == "ctx" or (p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )
    return wants, False
