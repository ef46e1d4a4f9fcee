"""Modifiers: what a test changes about the instances it runs, without touching workflow code.

A :class:`Modifier` holds rules (mock this step's result, fail that step's first attempts, end
sleeps at once, ...). The test environment consults them each time an instance issues a step,
a sleep or a wait, so a rule added while an instance runs applies from its next command on.
Rules of a modifier made for one instance (``env.modify(id)``) come before those of modifiers
for every instance (``env.modify_all()``); within each, the newest rule wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from hutch.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class _Selector:
    """Which steps a rule is about: a name, and optionally the 1-based count of calls with that name."""

    name: str
    count: int | None

    def matches(self, name: str, count: int) -> bool:
        return self.name == name and (self.count is None or self.count == count)


@dataclass(frozen=True, slots=True)
class StepMock:
    """What a mocked step attempt does instead of running the step's function.

    Attributes:
        kind: ``"result"`` (return :attr:`value`), ``"error"`` (raise :attr:`error`) or
            ``"timeout"`` (fail with ``StepTimeoutError``).
        value: the result a ``"result"`` mock returns.
        error: the exception an ``"error"`` mock raises.
    """

    kind: str
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _StepRule:
    selector: _Selector
    mock: StepMock
    times: int | None  # the rule covers attempts 1..times (None: every attempt)

    def applies(self, name: str, count: int, attempt: int) -> bool:
        return self.selector.matches(name, count) and (self.times is None or attempt <= self.times)


class Modifier:
    """Changes the behaviour of one instance, or of every instance a test environment runs.

    Get one from ``env.modify(instance_id)`` (before creating the instance, so its first step is
    already covered) or ``env.modify_all()``. Every method returns the modifier, so calls chain::

        env.modify("order-42").mock_step_result("charge card", {"id": "ch_1"}).disable_sleeps()

    Mocked steps are still real steps: they are checkpointed, show in ``describe()`` with their
    attempts, and retry by their config.
    """

    def __init__(self, *, workflow: str | None = None, instance_id: str | None = None) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        self._failures: list[_StepRule] = []
        self._results: list[_StepRule] = []
        self._events: list[tuple[str, Any]] = []
        self._event_timeouts: list[_Selector] = []
        self._sleeps: set[str] | None = set()  # None: every sleep is disabled

    def __repr__(self) -> str:
        target = f"instance {self.instance_id!r}" if self.instance_id is not None else "every instance"
        return f"Modifier({target}{f' of {self.workflow!r}' if self.workflow else ''})"

    def applies_to(self, workflow: str, instance_id: str) -> bool:
        """Whether this modifier covers that instance."""
        return (self.workflow is None or self.workflow == workflow) and (
            self.instance_id is None or self.instance_id == instance_id
        )

    # ------------------------------------------------------------------ steps
    def mock_step_result(self, name: str, value: Any, count: int | None = None) -> Self:
        """Make step ``name`` return ``value`` without running its function.

        Args:
            name: the step's name.
            value: the result (it must be serializable, like any step result).
            count: only the ``count``-th call of a step with that name (1-based); default: every call.
        """
        self._results.append(_StepRule(_selector(name, count), StepMock("result", value=value), None))
        return self

    def mock_step_error(
        self, name: str, error: BaseException | type[BaseException], times: int | None = None, count: int | None = None
    ) -> Self:
        """Make attempts of step ``name`` raise ``error`` instead of running its function.

        The step retries by its config as if its function had raised; a ``NonRetryableError``
        ends it at once.

        Args:
            name: the step's name.
            error: the exception to raise (a class is instantiated with a message naming the step).
            times: fail only the first ``times`` attempts, then run the real function (or a mocked
                result); default: every attempt fails.
            count: only the ``count``-th call of a step with that name; default: every call.
        """
        if isinstance(error, type) and issubclass(error, BaseException):
            error = error(f"mocked failure of step {name!r}")
        if not isinstance(error, Exception):
            raise InvalidInputError(f"mock_step_error({name!r}): error must be an Exception, got {error!r}")
        self._failures.append(_StepRule(_selector(name, count), StepMock("error", error=error), _times(times)))
        return self

    def force_step_timeout(self, name: str, times: int | None = None, count: int | None = None) -> Self:
        """Make attempts of step ``name`` fail at once with ``StepTimeoutError``, as if they ran too long.

        Args:
            name: the step's name.
            times: time out only the first ``times`` attempts; default: every attempt.
            count: only the ``count``-th call of a step with that name; default: every call.
        """
        self._failures.append(_StepRule(_selector(name, count), StepMock("timeout"), _times(times)))
        return self

    # ------------------------------------------------------------------ events and sleeps
    def mock_event(self, type: str, payload: Any = None) -> Self:
        """Deliver an event of ``type`` with ``payload`` whenever the instance waits for that type.

        The event is sent (through the normal event path, so ``describe()`` shows it received)
        as each ``wait_for_event`` for ``type`` is reached.
        """
        if not isinstance(type, str) or not type:
            raise InvalidInputError(f"mock_event: event type must be a non-empty string, got {type!r}")
        self._events.append((type, payload))
        return self

    def force_event_timeout(self, name: str, count: int | None = None) -> Self:
        """Make ``wait_for_event`` ``name`` time out at once (raising ``EventTimeoutError`` into ``run()``).

        Args:
            name: the wait's step name.
            count: only the ``count``-th wait with that name; default: every one.
        """
        self._event_timeouts.append(_selector(name, count))
        return self

    def disable_sleeps(self, *names: str) -> Self:
        """End sleeps (``step.sleep`` / ``step.sleep_until``) as soon as they start.

        Args:
            names: only the sleeps with these step names; default: every sleep.
        """
        if not names:
            self._sleeps = None
        elif self._sleeps is not None:
            self._sleeps.update(_selector(name, None).name for name in names)
        return self

    # ------------------------------------------------------------------ lookups (the environment's)
    def failure_for(self, name: str, count: int, attempt: int) -> StepMock | None:
        """The error or timeout this modifier makes that attempt fail with, if any (newest rule first)."""
        return next((r.mock for r in reversed(self._failures) if r.applies(name, count, attempt)), None)

    def result_for(self, name: str, count: int) -> StepMock | None:
        """The mocked result of that step, if any (newest rule first)."""
        return next((r.mock for r in reversed(self._results) if r.selector.matches(name, count)), None)

    def event_for(self, event_type: str) -> tuple[bool, Any]:
        """``(True, payload)`` when this modifier mocks events of ``event_type``, else ``(False, None)``."""
        for mocked_type, payload in reversed(self._events):
            if mocked_type == event_type:
                return True, payload
        return False, None

    def times_out(self, name: str, count: int) -> bool:
        """Whether this modifier forces wait ``name``#``count`` to time out."""
        return any(s.matches(name, count) for s in self._event_timeouts)

    def skips_sleep(self, name: str) -> bool:
        """Whether this modifier ends sleep ``name`` at once."""
        return self._sleeps is None or name in self._sleeps


def _selector(name: str, count: int | None) -> _Selector:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"a step name must be a non-empty string, got {name!r}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise InvalidInputError(f"count {count!r} must be a positive integer (the 1-based call count of {name!r})")
    return _Selector(name, count)


def _times(times: int | None) -> int | None:
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise InvalidInputError(f"times {times!r} must be a positive integer (the attempts to fail)")
    return times
