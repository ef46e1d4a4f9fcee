"""``TestEnv``: the embedded engine under a virtual clock, with modifiers and waits that skip time.

Time skipping works like temporalio's time-skipping test environment. While a test awaits one
of the environment's waits (``wait_for_status``, ``wait_for_step_result``, ``output``,
``error``, ``wait``) and the runtime has nothing left to do right now — no message queued or
being processed, no step attempt running, no mocked event being sent, no timer due — the clock
jumps to the next timer (a sleep's end, a retry, an event timeout), which then fires at once.
``await env.sleep("3 days")`` moves time forward explicitly, firing every timer on the way in
order. Inside ``with env.auto_time_skipping_disabled():`` waits let time pass in real time only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

from hutch.client import Client, CreatedOrSent, Instance
from hutch.config import DEFAULT_LIMITS, Limits
from hutch.connect import connect
from hutch.durations import Duration, to_seconds
from hutch.errors import InvalidInputError, WaitTimeout, WorkflowNotFound, error_from_record
from hutch.events import ReceivedEvent
from hutch.runtime import EmbeddedRuntimeProbe
from hutch.settings import Settings
from hutch.status import ErrorInfo, InstanceStatus, Status, StepDetail
from hutch.testing.clock import TestClock
from hutch.testing.intercept import Interceptor, instrument
from hutch.testing.modifiers import Modifier
from hutch.versions import WorkflowClasses, Workflows

log = logging.getLogger("hutch.testing")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
_POLL_MAX_S = 0.02


class UnexpectedStatus(AssertionError):
    """An instance ended in a status the test did not wait for (a test failure, hence an AssertionError).

    Attributes:
        workflow: the instance's workflow.
        instance_id: the instance's id.
        status: the status it ended in.
        error: its error, when it errored.
    """

    def __init__(self, message: str, *, workflow: str, instance_id: str, status: Status, error: ErrorInfo | None):
        super().__init__(message)
        self.workflow = workflow
        self.instance_id = instance_id
        self.status = status
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unexpected, (str(self), self.workflow, self.instance_id, self.status, self.error))


def _rebuild_unexpected(
    message: str, workflow: str, instance_id: str, status: Status, error: ErrorInfo | None
) -> UnexpectedStatus:
    return UnexpectedStatus(message, workflow=workflow, instance_id=instance_id, status=status, error=error)


class _Missing:
    """The result of a probe whose condition does not hold yet."""


_MISSING = _Missing()


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class TestEnv:
    """Runs workflows on the embedded engine for a test, with a virtual clock and modifiers.

    Each environment is a runtime of its own (its own fakeredis server, in-process broker and
    worker, under a store namespace no other test uses), so tests cannot see each other's
    instances. Use it as ``async with TestEnv({"order": OrderWorkflow}) as env:`` or through the
    ``hutch_env`` pytest fixture.

    Args:
        workflows: workflow name → :class:`~engine.WorkflowEntrypoint` subclass, or its versions
            oldest first (see :mod:`hutch.versions`).
        settings: runtime settings (always run embedded, under a fresh namespace).
        resources: extra ``self.env`` bindings for the workflows (fakes of your services).
        bindings: workflow name → binding name under ``self.env``.
        limits: the limits to enforce.
        start_time: the virtual time to start at (default: now).
        auto_time_skipping: skip to the next timer whenever a wait finds the runtime idle.
        timeout: default real-time limit, in seconds, of the environment's waits.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        workflows: Workflows,
        *,
        settings: Settings | None = None,
        resources: Mapping[str, Any] | None = None,
        bindings: Mapping[str, str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        start_time: datetime | float | None = None,
        auto_time_skipping: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.workflows = dict(workflows)
        self.clock = TestClock(start_time)
        self.timeout = timeout
        self._settings = settings
        self._resources = dict(resources or {})
        self._bindings = dict(bindings or {})
        self._limits = limits
        self._skipping = auto_time_skipping
        self._skipping_disabled = 0
        self._interceptor = Interceptor(self._queue_event)
        self._outbox: asyncio.Queue[tuple[str, str, str, Any]] = asyncio.Queue()
        self._sending = 0  # mocked events queued or being sent
        self._sender: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _State.NEW

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> TestEnv:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> TestEnv:
        """Start the runtime; :meth:`close` stops it."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a TestEnv cannot be started twice (it is {self._state.value})")
        self._state = _State.RUNNING
        self._loop = asyncio.get_running_loop()
        base = self._settings or Settings()
        # Always embedded (URLs from the environment or hutch.toml are ignored) and always a fresh namespace.
        settings = base.model_copy(update={"redis_url": "", "amqp_url": "", "namespace": f"test-{uuid.uuid4().hex}"})
        classes: dict[str, WorkflowClasses] = {
            name: instrument(cls, self._interceptor)
            if isinstance(cls, type)
            else [instrument(version, self._interceptor) for version in cls]
            for name, cls in self.workflows.items()
        }
        self._client = await connect(
            classes,
            settings=settings,
            resources=self._resources,
            bindings=self._bindings,
            limits=self._limits,
            clock=self.clock,
        )
        self._sender = self._loop.create_task(self._send_events(), name="hutch-test-events")
        return self

    async def close(self) -> None:
        """Stop the runtime (in-flight step attempts are cancelled); idempotent."""
        if self._state is not _State.RUNNING:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> Client:
        """The engine client of this environment (``client.workflow(name)`` etc.)."""
        if self._client is None or self._state is not _State.RUNNING:
            raise RuntimeError("the TestEnv is not running; use `async with TestEnv(...) as env:`")
        return self._client

    # ------------------------------------------------------------------ instances and modifiers
    def now(self) -> datetime:
        """The environment's virtual time."""
        return self.clock.now()

    async def create(self, workflow: str, id: str | None = None, params: Any = None) -> TestInstance:
        """Create and start an instance of ``workflow``; returns a handle with the test waits."""
        if workflow not in self.workflows:
            raise WorkflowNotFound(workflow)
        instance = await self.client.workflow(workflow).create(id=id, params=params)
        return TestInstance(self, workflow, instance.id)

    async def create_or_send(
        self,
        workflow: str,
        id: str,
        params: Any,
        event_type: str,
        payload: Any = None,
        *,
        event_id: str | None = None,
    ) -> CreatedOrSent[TestInstance]:
        """Create the instance unless it exists and deliver the event either way (``WorkflowClient.create_or_send``)."""
        if workflow not in self.workflows:
            raise WorkflowNotFound(workflow)
        done = await self.client.workflow(workflow).create_or_send(id, params, event_type, payload, event_id=event_id)
        return CreatedOrSent(TestInstance(self, workflow, id), done.created, done.instance_finished)

    def instance(self, workflow: str, id: str) -> TestInstance:
        """A handle on an instance created some other way (by a workflow, by ``create_batch``)."""
        if workflow not in self.workflows:
            raise WorkflowNotFound(workflow)
        return TestInstance(self, workflow, id)

    def instances(self, workflow: str | None = None) -> list[TestInstance]:
        """Every instance that started running in this environment, in start order (children included)."""
        return [
            TestInstance(self, wf, iid) for wf, iid in self._interceptor.started if workflow is None or wf == workflow
        ]

    def modify(self, instance_id: str, *, workflow: str | None = None) -> Modifier:
        """A modifier for the instance with this id (of any workflow, or only of ``workflow``).

        Make it before creating the instance so the rules cover its first step.
        """
        if not isinstance(instance_id, str) or not instance_id:
            raise InvalidInputError(f"modify() needs an instance id, got {instance_id!r}")
        modifier = Modifier(workflow=workflow, instance_id=instance_id)
        self._interceptor.modifiers.append(modifier)
        return modifier

    def modify_all(self, *, workflow: str | None = None) -> Modifier:
        """A modifier for every instance this environment runs (or every instance of ``workflow``)."""
        modifier = Modifier(workflow=workflow)
        self._interceptor.modifiers.append(modifier)
        return modifier

    # ------------------------------------------------------------------ time
    @property
    def auto_time_skipping(self) -> bool:
        """Whether waits currently skip time when the runtime is idle."""
        return self._skipping and not self._skipping_disabled

    @contextlib.contextmanager
    def auto_time_skipping_disabled(self) -> Iterator[None]:
        """Within the block, waits let only real time pass (:meth:`sleep` still skips explicitly)."""
        self._skipping_disabled += 1
        try:
            yield
        finally:
            self._skipping_disabled -= 1

    async def sleep(self, duration: Duration, *, timeout: float | None = None) -> None:
        """Move virtual time forward by ``duration``, firing every timer due on the way, in order.

        Before each jump the runtime is let run until idle, so what a fired timer starts (the
        steps after a sleep, say) happens at the virtual time it would have.

        Args:
            duration: how far to go (``"3 days"``, seconds or a timedelta).
            timeout: real seconds to wait for the runtime to go idle between jumps.

        Raises:
            WaitTimeout: the runtime stayed busy (a step kept running) past ``timeout``.
        """
        target = self.clock.now_ms() + round(to_seconds(duration) * 1000)
        deadline = self._deadline(timeout)
        while True:
            await self._settle(deadline, f"env.sleep({duration!r})")
            now = self.clock.now_ms()
            if now >= target:
                return
            next_due = await self._runtime.next_due(now)
            self.clock.advance_to(target if next_due is None else min(next_due, target))

    # ------------------------------------------------------------------ idleness
    @property
    def _runtime(self) -> EmbeddedRuntimeProbe:
        runtime = self.client.runtime
        if runtime is None:  # pragma: no cover - connect() with no URLs always runs embedded
            raise RuntimeError("the TestEnv runtime is not embedded")
        return runtime

    def _busy(self) -> bool:
        """Whether anything is in progress that needs no time to pass (mocked events being sent, or the runtime)."""
        return bool(self._sending) or not self._runtime.is_idle()

    async def _idle_until(self) -> tuple[bool, int | None]:
        """``(idle, next_due)``: whether nothing is left to do before the next timer, and when that is.

        Idle also needs no timer already due (the timer service is about to fire it), and nothing
        committed while the store was read.
        """
        if self._busy():
            return False, None
        runtime = self._runtime
        commits = runtime.commits
        now = self.clock.now_ms()
        if await runtime.has_due_timer(now):
            return False, None
        next_due = await runtime.next_due(now)
        if self._busy() or runtime.commits != commits:
            return False, None
        return True, next_due

    async def _skip_if_idle(self) -> bool:
        """Jump to the next timer if the runtime is idle; whether it jumped."""
        idle, next_due = await self._idle_until()
        if not idle or next_due is None:
            return False
        self.clock.advance_to(next_due)
        return True

    async def _settle(self, deadline: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        poll = 0.001
        while not (await self._idle_until())[0]:
            if loop.time() > deadline:
                running = self._runtime.steps_running
                raise WaitTimeout(f"{what}: the runtime did not go idle in time ({running} step attempt(s) running)")
            await asyncio.sleep(poll)
            poll = min(poll * 2, _POLL_MAX_S)

    def _deadline(self, timeout: float | None) -> float:
        return asyncio.get_running_loop().time() + (self.timeout if timeout is None else timeout)

    async def _until(
        self,
        instance: TestInstance,
        probe: Callable[[], Awaitable[T | _Missing]],
        *,
        timeout: float | None,
        what: str,
    ) -> T:
        """Await ``probe()`` until it returns a value, skipping time when the runtime is idle."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout)
        watch = self.client._watch
        poll = 0.001
        while True:
            result = await probe()
            if not isinstance(result, _Missing):
                return result
            if self.auto_time_skipping and await self._skip_if_idle():
                poll = 0.001
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise await self._timed_out(instance, what, timeout)
            # Wake on the instance's next commit; poll too, since idleness changes without one.
            if watch is not None:
                await watch.changed(instance.workflow, instance.id, min(poll, remaining))
            else:  # pragma: no cover - the embedded client always has a watch
                await asyncio.sleep(min(poll, remaining))
            poll = min(poll * 2, _POLL_MAX_S)

    async def _timed_out(self, instance: TestInstance, what: str, timeout: float | None) -> WaitTimeout:
        status = (await instance.status()).status.value
        idle, next_due = await self._idle_until()
        if idle and next_due is None:
            hint = (
                "; nothing is left to run and no timer is pending: the instance waits for something only "
                "the test can do (send an event, resume it)"
            )
        elif not self.auto_time_skipping:
            hint = "; auto time skipping is disabled"
        else:
            hint = ""
        seconds = self.timeout if timeout is None else timeout
        return WaitTimeout(
            f"instance {instance.id!r} ({instance.workflow}): {what} not reached in {seconds} s, it is {status}{hint}"
        )

    # ------------------------------------------------------------------ mocked events
    def _queue_event(self, workflow: str, instance_id: str, event_type: str, payload: Any) -> None:
        # Called from inside a workflow run (on its private loop): count it now so the runtime is
        # not seen idle, and hand it to the sender on the real loop.
        assert self._loop is not None
        self._sending += 1
        self._loop.call_soon(self._outbox.put_nowait, (workflow, instance_id, event_type, payload))

    async def _send_events(self) -> None:
        while True:
            workflow, instance_id, event_type, payload = await self._outbox.get()
            try:
                await Instance(self.client, workflow, instance_id).send_event(event_type, payload)
            except Exception:
                log.exception("could not send the mocked %r event to instance %r", event_type, instance_id)
            finally:
                self._sending -= 1


class TestInstance(Instance):
    """An instance handle with the waits a test needs; every :class:`~engine.Instance` method works too.

    Every wait here skips virtual time while the runtime is idle (see :class:`TestEnv`) and
    gives up after ``timeout`` real seconds (default: the environment's) with ``WaitTimeout``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, env: TestEnv, workflow: str, instance_id: str) -> None:
        super().__init__(env.client, workflow, instance_id)
        self.env = env

    def modify(self) -> Modifier:
        """A modifier for this instance (rules apply from its next step, sleep or wait on)."""
        return self.env.modify(self.id, workflow=self.workflow)

    async def wait_for_status(self, *statuses: Status | str, timeout: float | None = None) -> InstanceStatus:
        """Wait until the instance is in one of ``statuses``; returns its status.

        Raises:
            UnexpectedStatus: it finished (complete, errored, terminated) in a status not asked for.
            WaitTimeout: it did not get there within ``timeout`` real seconds.
        """
        if not statuses:
            raise InvalidInputError("wait_for_status() needs at least one status")
        wanted = {Status(s) for s in statuses}
        names = " or ".join(sorted(s.value for s in wanted))

        async def probe() -> InstanceStatus | _Missing:
            current = await self.status()
            if current.status in wanted:
                return current
            if current.status.finished:
                raise self._unexpected(current, f"while waiting for {names}")
            return _MISSING

        return await self.env._until(self, probe, timeout=timeout, what=f"status {names}")

    async def wait_for_step_result(self, name: str, count: int = 1, *, timeout: float | None = None) -> Any:
        """Wait until step ``name`` (its ``count``-th call) has finished; returns its result.

        For a ``wait_for_event`` the result is the :class:`~engine.ReceivedEvent`; for a sleep, None.

        Raises:
            Exception: the step's final error, as ``run()`` saw it, when the step failed.
            UnexpectedStatus: the instance finished without that step finishing.
            WaitTimeout: the step did not finish within ``timeout`` real seconds.
        """

        async def probe() -> Any:
            detail = await self.describe()
            step = next((s for s in detail.steps if s.name == name and s.count == count), None)
            if step is not None and step.success is True:
                return _result_of(step)
            if step is not None and step.success is False and step.error is not None:
                raise error_from_record({"name": step.error.name, "message": step.error.message})
            if detail.status.finished:
                current = InstanceStatus(status=detail.status, output=detail.output, error=detail.error)
                raise self._unexpected(current, f"before step {name!r}#{count} finished")
            return _MISSING

        return await self.env._until(self, probe, timeout=timeout, what=f"result of step {name!r}#{count}")

    async def wait(self, timeout: float = DEFAULT_TIMEOUT_S) -> InstanceStatus:
        """Wait until the instance is complete, errored or terminated (skipping time); returns the status."""

        async def probe() -> InstanceStatus | _Missing:
            current = await self.status()
            return current if current.status.finished else _MISSING

        return await self.env._until(self, probe, timeout=timeout, what="a final status")

    async def output(self, *, timeout: float | None = None) -> Any:
        """Wait until the instance finished and return its output.

        Raises:
            UnexpectedStatus: it errored or was terminated (the message carries the error).
        """
        final = await self.wait(self.env.timeout if timeout is None else timeout)
        if final.status is not Status.COMPLETE:
            raise self._unexpected(final, "instead of complete")
        return final.output

    async def error(self, *, timeout: float | None = None) -> ErrorInfo:
        """Wait until the instance finished and return its error (``name`` and ``message``).

        Raises:
            UnexpectedStatus: it completed or was terminated instead of erroring.
        """
        final = await self.wait(self.env.timeout if timeout is None else timeout)
        if final.status is not Status.ERRORED or final.error is None:
            raise self._unexpected(final, "instead of errored")
        return final.error

    def _unexpected(self, current: InstanceStatus, context: str) -> UnexpectedStatus:
        detail = f" ({current.error.name}: {current.error.message})" if current.error is not None else ""
        return UnexpectedStatus(
            f"instance {self.id!r} of workflow {self.workflow!r} is {current.status.value}{detail} {context}",
            workflow=self.workflow,
            instance_id=self.id,
            status=current.status,
            error=current.error,
        )


def _result_of(step: StepDetail) -> Any:
    if step.type == "waitForEvent" and isinstance(step.output, dict):
        return ReceivedEvent(step.output["type"], step.output.get("payload"), step.output["timestamp"])
    return step.output
