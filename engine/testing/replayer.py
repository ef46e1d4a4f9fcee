"""Replay recorded histories against workflow code, without running any step: is new code safe to deploy?

Temporal's ``Replayer`` for Hutch. A workflow change that renames, reorders, adds or removes a
step before the point an instance has reached breaks that instance: when its partition owner
replays ``run()`` against the history it raises :class:`~hutch.NondeterminismError`. These
functions find that out before the deploy, from histories exported from a live store
(``hutch instances export``) or read straight from it (``hutch workflows verify``).

Replay is the workers' own (:meth:`hutch.executor.WorkflowRun.replay`): recorded results are fed
back to ``run()`` and no step body ever runs. A command beyond the end of history is what the
instance would do next, not a divergence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from hutch.config import DEFAULT_LIMITS, Limits
from hutch.entrypoint import Env, WorkflowEntrypoint
from hutch.errors import NondeterminismError
from hutch.events import WorkflowEvent
from hutch.executor import WorkflowRun
from hutch.history import Record, describe_command
from hutch.testing.history_file import InstanceHistory
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Where replaying one history left ``run()``.

    Attributes:
        workflow: the workflow's name.
        instance_id: the instance's id.
        finished: ``run()`` returned or raised within the recorded history.
        output: what ``run()`` returned, when it finished without an error.
        error: what ``run()`` raised (or the engine failed it with), when it finished with one.
        next_commands: the commands ``run()`` issued beyond the end of history — what the instance
            does next on this code — as ``"step 'ship'#1"``.
    """

    workflow: str
    instance_id: str
    finished: bool
    output: Any = None
    error: BaseException | None = None
    next_commands: tuple[str, ...] = ()


def replay_history(
    workflow_cls: type[WorkflowEntrypoint],
    history: InstanceHistory,
    *,
    env: Env | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ReplayResult:
    """Replay ``history`` against ``workflow_cls`` and raise if the code no longer matches it.

    No step body runs: recorded results are handed back to ``run()``. Use it in a test with a
    history from ``hutch instances export``::

        def test_order_code_still_replays_live_instances() -> None:
            replay_history(OrderWorkflow, load_history("tests/histories/order-42.json"))

    Args:
        workflow_cls: the workflow code to check.
        history: the recorded history (:func:`~hutch.testing.load_history`).
        env: ``self.env`` during replay (default: no bindings); only code outside steps sees it.
        limits: the limits the deployment enforces (step count, name lengths).

    Returns:
        Where ``run()`` got to: finished (with its output or error) or blocked, and what it asked
        for beyond history.

    Raises:
        NondeterminismError: ``run()`` asked for a different command than history recorded at
            the same position, or stopped asking before the end of history; its ``position``,
            ``expected`` and ``actual`` say where and how.
    """
    result = _replay(workflow_cls, history, env=env, limits=limits)
    if isinstance(result.error, NondeterminismError):
        raise result.error
    return result


def _replay(
    workflow_cls: type[WorkflowEntrypoint], history: InstanceHistory, *, env: Env | None, limits: Limits
) -> ReplayResult:
    event = WorkflowEvent.build(history.params, history.created_ms, history.instance_id, history.workflow)
    # Commands beyond history are stamped with this clock; the last recorded instant keeps them plausible.
    last_ms = max((r["t"] for r in history.history if isinstance(r.get("t"), int)), default=history.created_ms)
    run = WorkflowRun(workflow_cls(env or Env()), event, limits=limits, now_ms=lambda: last_ms)
    run.blobs = history.blobs  # the values history holds by reference (hutch.blobs)
    try:
        run.replay(cast("list[Record]", list(history.history)))
        following = tuple(describe_command(c) for c in run.take_commands())
        if not run.finished:
            return ReplayResult(history.workflow, history.instance_id, False, next_commands=following)
        ok, value = run.outcome()
        if ok:
            return ReplayResult(history.workflow, history.instance_id, True, output=value, next_commands=following)
        return ReplayResult(history.workflow, history.instance_id, True, error=value, next_commands=following)
    finally:
        run.close()


Outcome = Literal["ok", "diverged", "failed"]


class InstanceVerdict(BaseModel):
    """Whether one instance's history replays on the new code.

    Attributes:
        workflow: the workflow's name.
        instance_id: the instance's id.
        status: the instance's status when its history was read.
        outcome: ``ok``; ``diverged`` (the instance would raise NondeterminismError); or ``failed``
            (``run()`` raised during replay where the instance had not failed: the new code would
            error it, or needs a binding of ``self.env`` outside a step).
        position: where the commands diverged (1 is the first command), when diverged.
        expected: the command history has there, as ``"step 'charge card'#1"``, when diverged.
        actual: the command the new code asked for instead (None: it asked for none), when diverged.
        message: what went wrong, when not ok.
    """

    model_config = ConfigDict(frozen=True)

    workflow: str
    instance_id: str
    status: str
    outcome: Outcome
    position: int | None = None
    expected: str | None = None
    actual: str | None = None
    message: str | None = None


class VerifyReport(BaseModel):
    """The verdict on every history checked, in the order given.

    Attributes:
        workflow_class: the checked class, as ``module:Class``.
        results: one verdict per history.
    """

    model_config = ConfigDict(frozen=True)

    workflow_class: str
    results: list[InstanceVerdict]

    @property
    def ok(self) -> bool:
        """Whether every history replays on the new code."""
        return all(r.outcome == "ok" for r in self.results)

    @property
    def problems(self) -> list[InstanceVerdict]:
        """The verdicts that are not ok."""
        return [r for r in self.results if r.outcome != "ok"]


def verify_histories(
    workflow_cls: type[WorkflowEntrypoint],
    histories: Iterable[InstanceHistory],
    *,
    env: Env | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifyReport:
    """Replay every history against ``workflow_cls`` and report each instance that would break.

    No step body runs. Unlike :func:`replay_history` this never raises for a divergence: every
    history gets a verdict, so one report lists every instance a deploy would break::

        report = verify_histories(OrderWorkflow, [load_history(p) for p in Path("histories").glob("*.json")])
        assert report.ok, report.problems

    Args:
        workflow_cls: the workflow code to check.
        histories: the recorded histories.
        env: ``self.env`` during replay (default: no bindings).
        limits: the limits the deployment enforces.
    """
    results = [_verdict(workflow_cls, h, env=env, limits=limits) for h in histories]
    return VerifyReport(workflow_class=f"{workflow_cls.__module__}:{workflow_cls.__qualname__}", results=results)


def _verdict(
    workflow_cls: type[WorkflowEntrypoint], history: InstanceHistory, *, env: Env | None, limits: Limits
) -> InstanceVerdict:
    who = {"workflow": history.workflow, "instance_id": history.instance_id, "status": history.status}
    try:
        result = _replay(workflow_cls, history, env=env, limits=limits)
    except Exception as exc:  # the class itself could not be built for this instance
        return InstanceVerdict(**who, outcome="failed", message=f"replay could not start: {exc!r}")
    error = result.error
    if isinstance(error, NondeterminismError):
        return InstanceVerdict(
            **who,
            outcome="diverged",
            position=error.position,
            expected=error.expected,
            actual=error.actual,
            message=str(error),
        )
    # An errored instance's run() raised in the live run too: replaying to the same end is no change.
    if error is not None and history.status != "errored":
        return InstanceVerdict(
            **who, outcome="failed", message=f"run() raised {type(error).__name__} during replay: {error}"
        )
    return InstanceVerdict(**who, outcome="ok")
