"""Per-instance retention: how long one instance's data is kept once it finished.

``create(..., retention={"success_retention": "1 day", "error_retention": "30 days"})`` (REST:
``instance_retention``, Cloudflare's field) overrides the deployment's ``[limits] retention`` for
that instance: ``success_retention`` once it completed, ``error_retention`` once it errored or was
terminated. It is stored with the instance (meta ``retention``: seconds per outcome), so every
owner ends it with the same retention.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from hutch.durations import Duration, to_seconds
from hutch.errors import InvalidInputError
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

META_FIELD = "retention"
"""The meta field that holds an instance's own retention: ``{"success": s, "error": s}`` (either may be absent)."""


MAX_RETENTION = timedelta(days=36_500)
"""The longest retention an instance may ask for: a century (past it, a bad value, not a wish)."""


class InstanceRetention(BaseModel):
    """How long an instance is kept after it finished, by outcome (omitted: the deployment's retention)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    success_retention: timedelta | None = None
    error_retention: timedelta | None = None

    @field_validator("success_retention", "error_retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None or isinstance(value, timedelta):
            return value
        seconds = to_seconds(value)
        if seconds < 1:
            raise ValueError(f"retention {value!r} is under a second")
        if seconds > MAX_RETENTION.total_seconds():
            raise ValueError(f"retention {value!r} is over {MAX_RETENTION.days} days")
        return timedelta(seconds=seconds)

    def stored(self) -> dict[str, float]:
        """The meta value: seconds per outcome, only those given."""
        out: dict[str, float] = {}
        if self.success_retention is not None:
            out["success"] = self.success_retention.total_seconds()
        if self.error_retention is not None:
            out["error"] = self.error_retention.total_seconds()
        return out


RetentionSpec = InstanceRetention | Mapping[str, Duration | None]
"""What ``create`` takes: an :class:`InstanceRetention` or a dict of its fields (numbers are seconds)."""


def retention_of(value: RetentionSpec) -> InstanceRetention:
    """``value`` as an :class:`InstanceRetention`; raises :class:`InvalidInputError` naming what is wrong."""
    if isinstance(value, InstanceRetention):
        return value
    try:
        return InstanceRetention.model_validate(dict(value))
    except (ValidationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"instance retention {value!r} is not valid: {exc}") from None
