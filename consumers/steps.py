"""Executes step attempts: bounded concurrency, a thread pool for sync callables, per-attempt timeouts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import CodeType, FunctionType
from typing import Any

from hutch import logs
from hutch.blobs import BlobAddress, BlobStore, by_reference
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers import tracing
from hutch.consumers.items import StepDone
from hutch.consumers.retry import judge_error
from hutch.context import StepContext, StepInfo
from hutch.errors import (
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
    StepResultNotSerializable,
    StepResultTooLarge,
    StepTimeoutError,
    error_record,
)
from hutch.executor import StepCall
from hutch.serialization import encode_value

_Key = tuple[str, str, int, str, int, int]  # workflow, instance id, run number, step name, count, attempt

# What a synchronous body raises that cannot reach the event loop as itself: asyncio refuses to
# set StopIteration on a future (the attempt would hang until its timeout), and a CancelledError
# (asyncio's, or concurrent.futures' which asyncio converts to it) would read as the attempt's
# own task being cancelled.
_UNCARRIABLE = (StopIteration, asyncio.CancelledError, concurrent.futures.CancelledError)


class _BodyRaised(Exception):
    """A step body raised ``error``, which would not otherwise count as the attempt failing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def _context_kwargs(fn: Callable[..., Any]) -> tuple[tuple[Any, ...], bool]:
    """How a callable takes ``ctx``, as ``(positional args, pass ctx by keyword)``.

    ``((), False)``: not at all; ``((None,), False)``: positionally; ``((), True)``: as the
    keyword-only parameter ``ctx``.

    A callable gets ``ctx`` if it has a parameter named ``ctx`` or a required positional one.
    """
    code = getattr(fn, "__code__", None)
    if code is not None and not inspect.ismethod(fn):
        positional = code.co_varnames[: code.co_argcount]
        keyword_only = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        if "ctx" in keyword_only:
            return (), True
        required = code.co_argcount - len(getattr(fn, "__defaults__", None) or ())
        wants = "ctx" in positional or required > 0 or bool(code.co_flags & inspect.CO_VARARGS)
        return ((None,) if wants else ()), False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return (), False
    if any(p.name == "ctx" and p.kind is p.KEYWORD_ONLY for p in params):
        return (), True
    wants = any(
        p.name == "ctx" or (p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )
    return ((None,) if wants else ()), False


# How plain functions take ctx and whether they are coroutine functions, by code object: the
# step bodies of a workflow are few functions called (or closures built) again and again.
_SHAPES: dict[CodeType, tuple[tuple[Any, ...], bool, bool]] = {}
_SHAPES_MAX = 4096


def _shape(fn: Callable[..., Any]) -> tuple[tuple[Any, ...], bool, bool]:
    """``(*_context_kwargs(fn), whether fn is a coroutine function)``, computed once per code object."""
    if type(fn) is not FunctionType:
        return (*_context_kwargs(fn), inspect.iscoroutinefunction(fn))
    code = fn.__code__
    shape = _SHAPES.get(code)
    if shape is None:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        # _context_kwargs reads only the code and the number of defaults, the same for every
        # function of one code object. A function marked a coroutine function without being one
        # (inspect.markcoroutinefunction) is not cached: the mark is the function's, not its code's.
        shape = (*_context_kwargs(fn), inspect.iscoroutinefunction(fn))
        if shape[2] != bool(code.co_flags & inspect.CO_COROUTINE):
            return shape
        _SHAPES[code] = shape
    return shape


class StepRunner:
    """Runs step attempts on the worker's event loop and reports each outcome.

    Args:
        post: receives the :class:`StepDone` of every attempt that was not cancelled.
        max_concurrent: attempts running at once on this worker; more wait their turn.
        threads: size of the pool that runs sync step callables.
        blobs: where a result encoded larger than ``limits.inline_threshold`` is stored before it
            is reported (the history then records its reference); None keeps every result inline.
    """

    def __init__(
        self,
        post: Callable[[StepDone], None],
        *,
        limits: Limits,
        clock: Clock,
        max_concurrent: int,
        threads: int,
        blobs: BlobStore | None = None,
    ) -> None:
        self._post = post
        self._blobs = blobs
        self._limits = limits
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hutch-step")
        # Every attempt task is tracked here until it ends; shutdown drains, then cancels them.
        self._tasks: dict[_Key, asyncio.Task[None]] = {}
        # Tracked attempts per partition: a partition being handed over waits for its own to end.
        self._partition: dict[_Key, int] = {}
        self._per_partition: dict[int, int] = {}
        # The tracked attempts of each step (workflow, instance id, run number, name, count): a new
        # attempt finds the earlier ones it supersedes without a scan of every attempt in flight.
        self._of_step: dict[tuple[str, str, int, str, int], set[_Key]] = {}

    @property
    def in_flight(self) -> int:
        """Attempts currently running or waiting for a slot."""
        return len(self._tasks)

    def in_flight_on(self, partition: int) -> int:
        """Attempts of ``partition``'s instances currently running or waiting for a slot."""
        return self._per_partition.get(partition, 0)

    def partitions(self) -> list[int]:
        """The partitions with attempts running or waiting for a slot."""
        return list(self._per_partition)

    def _track(self, key: _Key, partition: int, task: asyncio.Task[None]) -> None:
        self._tasks[key] = task
        self._partition[key] = partition
        self._per_partition[partition] = self._per_partition.get(partition, 0) + 1
        self._of_step.setdefault(key[:5], set()).add(key)

    def _untrack(self, key: _Key) -> None:
        if self._tasks.pop(key, None) is not None:
            step = key[:5]
            keys = self._of_step.get(step)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._of_step[step]
        partition = self._partition.pop(key, None)
        if partition is not None:
            left = self._per_partition[partition] - 1
            if left:
                self._per_partition[partition] = left
            else:
                del self._per_partition[partition]

    def executing(self, workflow: str, instance_id: str, run_no: int, name: str, count: int, attempt: int) -> bool:
        """Whether this worker is running that attempt of that step right now.

        Another attempt of the same step does not count: after its partition moved away and back,
        this worker may still run attempt N while the owner in between declared N lost and recorded
        N+1; N+1 then runs nowhere and must be re-driven.
        """
        return (workflow, instance_id, run_no, name, count, attempt) in self._tasks

    def start(
        self,
        partition: int,
        workflow: str,
        instance_id: str,
        run_no: int,
        call: StepCall,
        attempt: int,
        *,
        trace: str | None = None,
    ) -> None:
        """Start one attempt in the background; its outcome arrives through ``post``.

        ``trace`` is the instance's W3C traceparent: the attempt's ``step.do`` span continues it.
        """
        key = (workflow, instance_id, run_no, call.name, call.count, attempt)
        # History records an attempt only after every earlier one ended (failed, or declared lost
        # by a partition owner), so an earlier attempt still running here is superseded: its result
        # would be discarded as stale. Stop it rather than run the body twice at once.
        for other in list(self._of_step.get(key[:5], ())):
            if other[5] < attempt:
                self._tasks[other].cancel()
                self._untrack(other)
        task = asyncio.get_running_loop().create_task(self._attempt(partition, key, call, attempt, trace))
        self._untrack(key)  # the same attempt started again (not expected): count it once
        self._track(key, partition, task)
        task.add_done_callback(lambda t: self._untrack(key) if self._tasks.get(key) is t else None)

    def cancel(self, workflow: str, instance_id: str, step: tuple[str, int] | None = None) -> None:
        """Cancel attempts of one step, or of every step of the instance."""
        for key, task in list(self._tasks.items()):
            if key[0] == workflow and key[1] == instance_id and (step is None or key[3:5] == step):
                task.cancel()
                self._untrack(key)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for running attempts; True when none is left."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self._tasks

    async def close(self) -> None:
        """Cancel attempts still running and stop the thread pool (running sync steps finish on their own)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._of_step.clear()
        self._partition.clear()
        self._per_partition.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _attempt(self, partition: int, key: _Key, call: StepCall, attempt: int, trace: str | None) -> None:
        workflow, instance_id, run_no, name, count, _ = key
        # This task's own context: what the body logs carries the attempt (hutch.logs).
        logs.bind(
            workflow=workflow,
            instance_id=instance_id,
            step=name,
            step_count=count,
            attempt=attempt,
            trace_id=logs.trace_id(trace),
        )
        async with self._semaphore:
            start = self._clock.now_ms()
            outcome: dict[str, Any]
            deadline = asyncio.timeout(call.config.timeout)
            # The span is current while the body runs, so what the body traces nests under it.
            with tracing.step_attempt(trace, workflow, instance_id, name, count, attempt) as span:
                try:
                    async with deadline:
                        result = await self._invoke(call, attempt)
                    data, value = self._encode(name, count, result)
                    if self._blobs is not None and len(data) > self._limits.inline_threshold:
                        where = BlobAddress(partition, workflow, instance_id)
                        data = await by_reference(self._blobs, where, data, self._limits.inline_threshold)
                    outcome = {"ok": True, "value": value, "value_bytes": data}
                except TimeoutError as exc:
                    # Only our deadline is a step timeout; a TimeoutError the body raised is its own error.
                    ms = round(call.config.timeout * 1000)
                    timed_out = StepTimeoutError(f"Execution timed out after {ms}ms")
                    outcome = self._failed(call, attempt, timed_out if deadline.expired() else exc)
                except NonRetryableError as exc:
                    outcome = {"ok": False, "error": error_record(exc), "retryable": False}
                except _BodyRaised as exc:
                    outcome = self._failed(call, attempt, exc.error)
                except Exception as exc:
                    outcome = self._failed(call, attempt, exc)
                tracing.attempt_outcome(span, outcome.get("error"))
            self._post(
                StepDone(
                    partition,
                    workflow,
                    instance_id,
                    run_no,
                    name,
                    count,
                    attempt,
                    start,
                    self._clock.now_ms(),
                    **outcome,
                )
            )

    def _failed(self, call: StepCall, attempt: int, error: BaseException) -> dict[str, Any]:
        """The outcome of an attempt that failed with a retryable ``error``.

        Only here is the exception itself at hand, so the step's ``retry_if`` and the wait the
        error asks for are judged here, once; the owner records the verdict.
        """
        verdict = judge_error(
            call.config.retries, attempt, error, self._clock.now_ms(), step=f"step {call.name!r}#{call.count}"
        )
        return {
            "ok": False,
            "error": error_record(error),
            "retryable": not verdict.refused,
            "refused": verdict.refused,
            "error_wait_ms": verdict.wait_ms,
        }

    async def _invoke(self, call: StepCall, attempt: int) -> Any:
        fn = call.fn
        positional, keyword, coroutine = _shape(fn)
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if positional or keyword:
            ctx = StepContext(StepInfo(call.name, call.count), attempt, call.config)
            args = (ctx,) if positional else ()
            kwargs = {"ctx": ctx} if keyword else {}
        if coroutine:
            return await _body_awaited(fn(*args, **kwargs))
        # Sync callables may block, so they run in the pool. On timeout the thread cannot be
        # interrupted; it finishes in the background and its result is discarded. The thread runs
        # in a copy of this context (as asyncio.to_thread does), so it sees the step's span.
        body = functools.partial(contextvars.copy_context().run, _body_called, fn, *args, **kwargs)
        result = await asyncio.get_running_loop().run_in_executor(self._pool, body)
        if inspect.isawaitable(result):
            result = await _body_awaited(result)
        return result

    def _encode(self, name: str, count: int, result: Any) -> tuple[bytes, Any]:
        what = f"step {name!r}#{count} result"
        try:
            return encode_value(result, what=what, limit=self._limits.max_payload_bytes)
        except NotSerializable as exc:
            raise StepResultNotSerializable(str(exc)) from None
        except PayloadTooLarge as exc:
            raise StepResultTooLarge(str(exc)) from None


def _body_called(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a sync body (in a pool thread) so that whatever it raises reaches the loop as a failure."""
    try:
        return fn(*args, **kwargs)
    except _UNCARRIABLE as exc:
        raise _BodyRaised(exc) from exc


async def _body_awaited(awaitable: Awaitable[Any]) -> Any:
    """Await a body, telling a ``CancelledError`` it raised itself from the attempt being cancelled.

    Only a cancellation requested of the attempt's task (its deadline, a cancelled step, shutdown)
    leaves it pending on the task; one the body raised (a library's, or its own) is an error of
    this attempt, to be recorded and retried like any other.
    """
    try:
        return await awaitable
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise _BodyRaised(exc) from exc
