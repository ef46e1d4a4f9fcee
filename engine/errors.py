"""Every error Hutch raises, one class per failure a user can act on.

The tree::

    HutchError
     ├── StepError                     raised into run() when a step finally failed
     │    ├── NonRetryableError         raise it in a step to stop retrying at once
     │    │    ├── StepResultNotSerializable
     │    │    └── StepResultTooLarge
     │    ├── RetryAfter                raise it in a step to retry after a delay of its choosing
     │    ├── StepTimeoutError          an attempt exceeded its timeout
     │    ├── StepFailedError           a user exception that is not a builtin type
     │    └── WorkerLostError           the worker running the last allowed attempt died
     ├── EventTimeoutError             wait_for_event timed out
     ├── ChildWorkflowError            a child run by step.invoke errored or was terminated
     ├── NondeterminismError           replay diverged from recorded history
     ├── InvalidInputError (also ValueError)
     │    ├── InvalidInstanceId
     │    ├── InvalidWorkflowName
     │    ├── InvalidStepName
     │    ├── InvalidDuration
     │    ├── PayloadTooLarge
     │    ├── NotSerializable
     │    ├── SleepTooLong
     │    ├── BatchTooLarge
     │    ├── StepLimitExceeded
     │    └── TargetError               a workflow class (file or module:Class) cannot be loaded
     ├── WorkflowNotFound (also KeyError)
     ├── InstanceNotFound (also KeyError)
     ├── InstanceAlreadyExists
     ├── BulkJobNotFound (also KeyError)  no bulk job has that id (or it finished a day ago)
     ├── IllegalTransition             e.g. terminate a finished instance
     │    └── StepNotInHistory          restart(from_step=...) names a step the run never reached
     ├── TerminatedWithRollback        what every undo receives from terminate(rollback=True)
     ├── RollbackFailed                undos of terminate(rollback=True) failed: the instance's error
     ├── WaitTimeout                   Instance.wait() gave up before the instance finished
     ├── WorkflowCodeError             run() awaited something that is not a step
     ├── DeploymentMismatch            partitions or limits differ from those the deployment recorded
     ├── BlobNotFound                  a large value's history reference names a blob the blob store lacks
     ├── RepartitionRefused            hutch admin repartition cannot start or go on (e.g. a worker runs)
     └── ServiceUnavailable            a server the runtime needs cannot be reached at start
          ├── BrokerUnavailable         RabbitMQ refused, timed out or failed the handshake
          └── StoreUnavailable          Redis refused or timed out

No engine control flow travels through workflow code as an exception it could swallow:
evicting, pausing, terminating or restarting an instance cancels its run's tasks (asyncio's
``CancelledError``, a ``BaseException``), and the executor fails a run by itself when replay
diverges (``NondeterminismError``) or ``run()`` awaits what it cannot replay
(``WorkflowCodeError``), whatever ``run()`` does with the error raised at its ``await``.
"""

from __future__ import annotations

import builtins
import math
from datetime import datetime, timedelta
from typing import Any


class HutchError(Exception):
    """Root of every error Hutch raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors break default pickling; rebuild from the message.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[HutchError], message: str, state: dict[str, Any]) -> HutchError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class StepError(HutchError):
    """A step failed after its last attempt."""


class NonRetryableError(StepError):
    """Raised inside a step to fail it at once, without further attempts."""


class StepResultNotSerializable(NonRetryableError):
    """A step returned a value msgpack cannot store."""


class StepResultTooLarge(NonRetryableError):
    """A step returned more than the result size limit."""


class RetryAfter(StepError):
    """Raised inside a step to retry it after ``delay`` instead of its backoff's wait.

    ``delay`` is seconds, a ``timedelta`` or an aware ``datetime`` to retry at; a past one retries
    at once. The wait is still capped by ``retries.max_delay``, the retry still counts toward
    ``retries.limit`` and ``retries.retry_if`` still decides; after the last attempt ``run()``
    sees this error. Any exception with a ``retry_after`` attribute of those types works alike.

    Attributes:
        retry_after: the delay as given (None on an error rebuilt from a stored record).
    """

    def __init__(self, delay: float | timedelta | datetime, message: str | None = None) -> None:
        if isinstance(delay, datetime):
            if delay.tzinfo is None:
                raise InvalidDuration(f"RetryAfter: datetime {delay!r} must be timezone-aware")
            when = f"at {delay.isoformat()}"
        elif isinstance(delay, timedelta):
            when = f"in {delay.total_seconds():g}s"
        elif isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay):
            when = f"in {delay:g}s"
        else:
            raise InvalidDuration(f"RetryAfter: {delay!r} must be seconds, a timedelta or an aware datetime")
        super().__init__(message if message is not None else f"retry {when}")
        self.retry_after: float | timedelta | datetime | None = delay


class StepTimeoutError(StepError):
    """An attempt of a step ran longer than its configured timeout."""


class StepFailedError(StepError):
    """A step raised an exception of a type that is not a builtin.

    Attributes:
        error_name: the original exception's class name.
        message: the original exception's message.
    """

    def __init__(self, error_name: str, message: str) -> None:
        super().__init__(f"{error_name}: {message}")
        self.error_name = error_name
        self.message = message


class WorkerLostError(StepError):
    """The worker running a step died and the step has no attempts left."""


class EventTimeoutError(HutchError):
    """``wait_for_event`` reached its timeout before a matching event arrived."""


class ChildWorkflowError(HutchError):
    """A child workflow run by ``step.invoke`` errored or was terminated; raised into the parent's ``run()``.

    Attributes:
        workflow: the child's workflow name.
        instance_id: the child's instance id.
        error_name: the child's error name (``"Terminated"`` for a terminated child).
        message: the child's error message.
    """

    def __init__(self, workflow: str, instance_id: str, error_name: str, message: str) -> None:
        super().__init__(f"child instance {instance_id!r} of workflow {workflow!r} failed: {error_name}: {message}")
        self.workflow = workflow
        self.instance_id = instance_id
        self.error_name = error_name
        self.message = message

    def record(self) -> dict[str, str]:
        """The stored form, which :func:`error_from_record` turns back into this error."""
        return {
            "name": ChildWorkflowError.__name__,
            "message": str(self),
            "child_workflow": self.workflow,
            "child_id": self.instance_id,
            "error_name": self.error_name,
            "error_message": self.message,
        }


class NondeterminismError(HutchError):
    """Replay asked for a different step than history recorded at the same position.

    Attributes:
        workflow: the workflow's name.
        instance_id: the instance's id.
        position: where in the instance's commands replay diverged (1 is the first command).
        expected: the command history recorded there, as ``"step 'charge card'#1"``.
        actual: the command replay asked for instead, or None when replay no longer asks for
            any (the command was removed).

    The identifiers are None on an error rebuilt from a stored ``{"name", "message"}`` record.
    """

    def __init__(
        self,
        message: str,
        *,
        workflow: str | None = None,
        instance_id: str | None = None,
        position: int | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.instance_id = instance_id
        self.position = position
        self.expected = expected
        self.actual = actual

    @classmethod
    def diverged(
        cls, *, workflow: str, instance_id: str, position: int, expected: str, actual: str | None
    ) -> NondeterminismError:
        """The error for replay asking for ``actual`` where history has ``expected`` (None: asking for nothing)."""
        if actual is None:
            what = f"history has {expected} at position {position} but replay no longer asks for it"
        else:
            what = f"replay asked for {actual} but history has {expected} at position {position}"
        return cls(
            f"instance {instance_id}: {what} — the workflow code changed; restart the instance or version the change",
            workflow=workflow,
            instance_id=instance_id,
            position=position,
            expected=expected,
            actual=actual,
        )


class WorkflowCodeError(HutchError):
    """The workflow's ``run()`` did something the engine cannot replay."""


class InvalidInputError(HutchError, ValueError):
    """Input broke a documented rule; the message names the field and the rule."""


class InvalidInstanceId(InvalidInputError):
    """An instance id does not match ``^[a-zA-Z0-9_][a-zA-Z0-9_-]*$`` or is too long."""


class InvalidWorkflowName(InvalidInputError):
    """A workflow name is empty, too long or has characters outside the allowed set."""


class InvalidStepName(InvalidInputError):
    """A step name is empty or longer than the limit."""


class InvalidDuration(InvalidInputError):
    """A duration could not be parsed or is negative."""


class PayloadTooLarge(InvalidInputError):
    """Params, an event payload or an output is larger than the configured limit."""


class NotSerializable(InvalidInputError):
    """A value cannot be encoded with msgpack."""


class SleepTooLong(InvalidInputError):
    """A sleep is longer than the configured maximum (365 days by default)."""


class BatchTooLarge(InvalidInputError):
    """``create_batch`` was given more instances than allowed."""


class StepLimitExceeded(InvalidInputError):
    """An instance called ``step.do`` more times than its limit allows."""


class TargetError(InvalidInputError):
    """A workflow class cannot be loaded: the file or module is missing, does not import, or has no such class."""


class WorkflowNotFound(HutchError, KeyError):
    """No workflow is registered under that name."""

    def __init__(self, workflow: str) -> None:
        super().__init__(f"workflow {workflow!r} is not registered")
        self.workflow = workflow

    def __str__(self) -> str:
        return str(self.args[0])


class InstanceNotFound(HutchError, KeyError):
    """No instance exists with that id (or it expired after retention)."""

    def __init__(self, workflow: str, instance_id: str) -> None:
        super().__init__(f"instance {instance_id!r} of workflow {workflow!r} not found")
        self.workflow = workflow
        self.instance_id = instance_id

    def __str__(self) -> str:
        return str(self.args[0])


class BulkJobNotFound(HutchError, KeyError):
    """No bulk job has this id (unknown, or it finished more than a day ago; hutch.bulk)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"bulk job {job_id!r} not found (unknown, or finished more than a day ago)")
        self.job_id = job_id

    def __str__(self) -> str:
        return str(self.args[0])


class InstanceAlreadyExists(HutchError):
    """``create`` was given an id that already exists."""

    def __init__(self, workflow: str, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id!r} of workflow {workflow!r} already exists; "
            "pick another id or use create_batch, which skips existing ids"
        )
        self.workflow = workflow
        self.instance_id = instance_id


class IllegalTransition(HutchError):
    """A lifecycle operation is not allowed in the instance's current status."""

    def __init__(self, instance_id: str, action: str, status: str) -> None:
        super().__init__(f"cannot {action} instance {instance_id!r} since it is in status {status!r}")
        self.instance_id = instance_id
        self.action = action
        self.status = status


class StepNotInHistory(IllegalTransition):
    """``restart(from_step=...)`` names a step the instance's current run never reached (nothing changed)."""

    def __init__(self, instance_id: str, step: str, status: str) -> None:
        HutchError.__init__(
            self,
            f"cannot restart instance {instance_id!r} from {step}: its history has no such step "
            "(describe() lists its steps with their names and counts)",
        )
        self.instance_id = instance_id
        self.step = step
        self.action = "restart"
        self.status = status


class TerminatedWithRollback(HutchError):
    """The error every undo receives when an operator terminates the instance with ``rollback=True``."""


class RollbackFailed(HutchError):
    """Some undos of a terminate with rollback failed (after their retries): the terminated instance's error."""


class WaitTimeout(HutchError, TimeoutError):
    """``Instance.wait()`` returned before the instance reached a final status."""


class DeploymentMismatch(HutchError):
    """This process is configured differently from what its deployment recorded in Redis.

    The first client or worker of a namespace records its partition count and limits there; every
    later one must match them. A partition count is part of every key (a client with another one
    writes instances no worker ever sees), and workers with different limits would decide the same
    replay differently. Fix the settings to the recorded values named in the message.
    """


class BlobNotFound(HutchError):
    """A value stored by reference (claim check) is not in the blob store its history points to.

    Its blob was deleted, or this process has another ``blob_store`` than the one that stored it:
    configure every process of a deployment with the same one.
    """


class RepartitionRefused(HutchError):
    """``hutch admin repartition`` cannot start or go on; the message says why and what to do.

    A worker of the deployment is alive (it would go on using the old layout), the namespace has
    no deployment recorded, or another repartition (to another count) is under way.
    """


class ServiceUnavailable(HutchError):
    """A server the runtime needs could not be reached when it started (check the URL and the server)."""


class BrokerUnavailable(ServiceUnavailable):
    """RabbitMQ could not be connected to: refused, unreachable, or the AMQP handshake timed out."""


class StoreUnavailable(ServiceUnavailable):
    """Redis could not be connected to: refused, unreachable or timed out."""


_ENGINE_STEP_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        NonRetryableError,
        RetryAfter,
        StepResultNotSerializable,
        StepResultTooLarge,
        StepTimeoutError,
        WorkerLostError,
        EventTimeoutError,
        NondeterminismError,
        StepLimitExceeded,
        SleepTooLong,
        InvalidStepName,
        InvalidDuration,
        PayloadTooLarge,
    )
}


def error_record(exc: BaseException) -> dict[str, str]:
    """The stored form of an error: ``{"name", "message"}``."""
    if isinstance(exc, StepFailedError):
        return {"name": exc.error_name, "message": exc.message}
    if type(exc) is KeyError and len(exc.args) == 1:
        # str(KeyError("k")) is the key's repr ("'k'"); store the key so KeyError(message) matches the original.
        return {"name": "KeyError", "message": str(exc.args[0])}
    return {"name": type(exc).__name__, "message": str(exc)}


def error_from_record(record: dict[str, str]) -> BaseException:
    """Rebuild the exception ``run()`` sees from a stored error record.

    Builtin exception types and the engine's own keep their type; anything else becomes
    :class:`StepFailedError`. The live path and replay both go through here, so they agree.
    """
    name, message = record["name"], record["message"]
    if name == ChildWorkflowError.__name__ and "child_id" in record:
        return ChildWorkflowError(
            record["child_workflow"], record["child_id"], record["error_name"], record["error_message"]
        )
    engine_cls = _ENGINE_STEP_ERRORS.get(name)
    if engine_cls is RetryAfter:
        return _rebuild(RetryAfter, message, {"retry_after": None})  # its delay is not stored
    if engine_cls is not None:
        return engine_cls(message)
    builtin = getattr(builtins, name, None)
    # StopIteration cannot be set on the future run() awaits (asyncio refuses it, and a coroutine
    # turns one it raises into RuntimeError), so it arrives as StepFailedError like a custom class.
    if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin is not StopIteration:
        try:
            return builtin(message)
        except Exception:  # a builtin whose constructor wants more arguments
            return StepFailedError(name, message)
    return StepFailedError(name, message)
