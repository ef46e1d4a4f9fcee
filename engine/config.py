"""Step configuration (``StepConfig``) and the engine's limits."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from hutch.durations import Duration, to_seconds
from hutch.errors import InvalidInputError, InvalidInstanceId, InvalidStepName, InvalidWorkflowName
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Backoff = Literal["constant", "linear", "exponential"]


class RetryConfig(BaseModel):
    """How a failing step is retried.

    ``limit`` counts retries, so a step makes at most ``limit + 1`` attempts. The wait before
    retry n is ``delay`` (constant), ``delay * n`` (linear) or ``delay * 2**(n-1)`` (exponential),
    capped at ``max_delay`` when one is given.

    ``retry_if`` decides from the error whether to retry at all (False: the step fails at once).
    An error may also set the wait itself (``RetryAfter``, a ``retry_after`` attribute, an HTTP
    429/503 with ``Retry-After``): see :mod:`hutch.consumers.retry`. ``retry_if`` lives in code, not
    in history: it is left out of the recorded config, and its verdict is recorded instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(default=5, ge=0, le=10_000)
    delay: float = Field(default=10.0, description="seconds")
    backoff: Backoff = "exponential"
    max_delay: float | None = Field(default=None, description="seconds")
    retry_if: Callable[[BaseException], bool] | None = Field(default=None, exclude=True)

    @field_validator("delay", "max_delay", mode="before")
    @classmethod
    def _duration(cls, value: Duration | None) -> float | None:
        return None if value is None else to_seconds(value)

    def wait_before_retry(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if self.backoff == "constant":
            wait = self.delay
        elif self.backoff == "linear":
            wait = self.delay * retry
        else:
            wait = self.delay * 2 ** (retry - 1)
        return wait if self.max_delay is None else min(wait, self.max_delay)


class StepConfig(BaseModel):
    """A step's retries and per-attempt timeout; partial configs merge key by key with the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: RetryConfig = RetryConfig()
    timeout: float = Field(default=600.0, description="seconds per attempt")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Duration) -> float:
        seconds = to_seconds(value)
        if seconds <= 0:
            raise ValueError("timeout must be positive")
        return seconds

    @classmethod
    def resolve(cls, config: StepConfig | dict[str, Any] | None) -> StepConfig:
        """Merge a user config (dict, model or None) with the defaults, with a clear error."""
        if config is None:
            return _DEFAULT_STEP_CONFIG
        if isinstance(config, StepConfig):
            return config
        try:
            return cls.model_validate(config)
        except ValidationError as exc:
            raise InvalidInputError(f"invalid step config {config!r}: {_first_error(exc)}") from None


_DEFAULT_STEP_CONFIG = StepConfig()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


class Limits(BaseModel):
    """Limits enforced on every instance; defaults are Cloudflare's.

    Processes take them from the ``[limits]`` table of hutch.toml or ``HUTCH_LIMITS__<FIELD>``
    (:class:`~engine.settings.Settings`); a deployment records them in Redis and every client
    and worker must agree with the record (:class:`~engine.errors.DeploymentMismatch`).
    ``max_sleep`` and ``retention`` take durations like ``"30 days"`` or seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_instance_id_length: int = Field(default=100, ge=1)
    max_workflow_name_length: int = Field(default=64, ge=1)
    max_step_name_length: int = Field(default=256, ge=1)
    # The largest value (params, step result, event payload, output) once encoded.
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    # A step result encoded larger than this is stored once in the blob store and the history holds
    # its reference (hutch.blobs), so histories stay small and replay fast.
    inline_threshold: int = Field(default=64 * 1024, ge=64, le=64 * 1024 * 1024)
    max_steps: int = Field(default=10_000, ge=1)
    max_sleep: timedelta = Field(default=timedelta(days=365), gt=timedelta(0))
    max_batch: int = Field(default=100, ge=1)
    retention: timedelta = Field(default=timedelta(days=30), gt=timedelta(0))

    @field_validator("max_sleep", "retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        # The durations step.sleep takes ("30 days", seconds, "3600" from an environment variable);
        # an ISO 8601 string ("P30D", how a deployment's record stores it) is left to pydantic.
        if isinstance(value, str):
            text = value.strip()
            if text.upper().startswith("P"):
                return text
            with contextlib.suppress(ValueError):
                value = float(text)
        return timedelta(seconds=to_seconds(value)) if isinstance(value, str | int | float) else value


DEFAULT_LIMITS = Limits()

# The hyphen comes last in each class, so the REST schema can publish the very same string: a
# valid ECMA-262 pattern with or without the "u" flag, which rejects "0-9-_".
INSTANCE_ID_PATTERN = "^[a-zA-Z0-9_][a-zA-Z0-9_-]*$"
"""What an instance id matches (the API, the client, ``hutch.toml``)."""
WORKFLOW_NAME_PATTERN = "^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$"
"""What a workflow name matches (the API, the client, ``hutch.toml`` and its triggers)."""

_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_WORKFLOW_NAME = re.compile(WORKFLOW_NAME_PATTERN)


def check_instance_id(instance_id: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return the id if it is valid, else raise :class:`InvalidInstanceId` naming the rule."""
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInstanceId(f"instance id {instance_id!r} must match {INSTANCE_ID_PATTERN}")
    if len(instance_id) > limits.max_instance_id_length:
        raise InvalidInstanceId(
            f"instance id {instance_id[:20]!r}... is {len(instance_id)} characters; "
            f"the limit is {limits.max_instance_id_length}"
        )
    return instance_id


def check_workflow_name(name: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return the name if it is valid, else raise :class:`InvalidWorkflowName`."""
    if not isinstance(name, str) or not _WORKFLOW_NAME.fullmatch(name):
        raise InvalidWorkflowName(f"workflow name {name!r} must match {WORKFLOW_NAME_PATTERN}")
    if len(name) > limits.max_workflow_name_length:
        raise InvalidWorkflowName(
            f"workflow name {name[:20]!r}... is {len(name)} characters; the limit is {limits.max_workflow_name_length}"
        )
    return name


def check_step_name(name: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return the step name if it is valid, else raise :class:`InvalidStepName`."""
    if not isinstance(name, str) or not name:
        raise InvalidStepName(f"step name {name!r} must be a non-empty string")
    if len(name) > limits.max_step_name_length:
        raise InvalidStepName(
            f"step name {name[:30]!r}... is {len(name)} characters; the limit is {limits.max_step_name_length}"
        )
    return name
