"""Request and response bodies of the REST API (the ``result`` inside the envelope).

Field names follow Cloudflare's Workflows REST API where it has one (``created_on``,
``instance_id`` accepted as an alias of ``id``); instance details are the engine's own
:class:`~engine.InstanceDetail`, which already mirrors Cloudflare's instance detail.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any, Literal

from hutch import InvalidInputError, Status
from hutch.client import MAX_EVENT_ID_LENGTH
from hutch.config import INSTANCE_ID_PATTERN, WORKFLOW_NAME_PATTERN
from hutch.restart import FromStep
from hutch.retention import InstanceRetention
from hutch.status import Action
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Documented in the schema but checked by the engine (a 400 naming the rule, not a 422), so the
# limits configured on the client are the ones enforced.
INSTANCE_ID_SCHEMA: dict[str, Any] = {"pattern": INSTANCE_ID_PATTERN, "minLength": 1, "maxLength": 100}
WORKFLOW_NAME_SCHEMA: dict[str, Any] = {"pattern": WORKFLOW_NAME_PATTERN, "minLength": 1, "maxLength": 64}
EVENT_TYPE_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": 100}
EVENT_ID_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": MAX_EVENT_ID_LENGTH}

MAX_INPUT_DEPTH = 64
"""How deeply params and event payloads may nest (arrays and objects): deeper input is refused."""

MAX_OUTPUT_DEPTH = 200
"""Deeper parts of a stored value are shown as a placeholder (JSON encoders give up near 255 levels)."""


def check_json_value(value: Any, where: str) -> Any:
    """Check a parsed JSON value: finite numbers only, nested at most :data:`MAX_INPUT_DEPTH` levels.

    Python's parser accepts ``NaN``, ``Infinity`` and ``1e400``, which JSON does not have; and a
    deeply nested value could be stored but not shown or replayed. Both are refused here.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidInputError(f"{where} contains {item!r}; JSON numbers must be finite")
        if isinstance(item, dict | list):
            if depth >= MAX_INPUT_DEPTH:
                raise InvalidInputError(f"{where} is nested more than {MAX_INPUT_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A stored value made representable in JSON: bytes as base64 text, NaN/±Infinity as null.

    Step results and params are msgpack, which holds things JSON cannot; a response must never
    fail to serialize because of what a workflow returned. Parts nested deeper than
    :data:`MAX_OUTPUT_DEPTH` become a placeholder string.
    """
    if value is None or isinstance(value, bool | int | str | datetime):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict | list | tuple) and _depth >= MAX_OUTPUT_DEPTH:
        return f"<nested deeper than {MAX_OUTPUT_DEPTH} levels>"
    if isinstance(value, dict):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, _depth + 1) for v in value]
    return repr(value)


class RetentionBody(BaseModel):
    """``instance_retention`` as Cloudflare takes it: milliseconds, or a duration like ``"5 minutes"``."""

    model_config = ConfigDict(extra="forbid")

    success_retention: StrictInt | StrictStr | None = Field(
        default=None, description="How long the instance is kept once complete: milliseconds, or e.g. '7 days'."
    )
    error_retention: StrictInt | StrictStr | None = Field(
        default=None,
        description="How long the instance is kept once errored or terminated: milliseconds, or e.g. '30 days'.",
    )

    def retention(self) -> InstanceRetention:
        """The engine's form (numbers are milliseconds here, seconds in the Python API)."""

        def seconds(value: int | str | None) -> float | str | None:
            return value / 1000 if isinstance(value, int) else value

        return InstanceRetention(
            success_retention=seconds(self.success_retention), error_retention=seconds(self.error_retention)
        )

    @model_validator(mode="after")
    def _durations(self) -> RetentionBody:
        self.retention()  # a duration that cannot be read is a 422 naming it, before anything is created
        return self


class CreateInstance(BaseModel):
    """Body of ``POST /instances`` (and one item of a batch): an optional id, the params, and its own retention."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("id", "instance_id"),
        description="Instance id (a random UUID when omitted); `instance_id` is accepted too.",
        json_schema_extra=INSTANCE_ID_SCHEMA,
    )
    params: Any = Field(default=None, description="The instance's params (event.payload), at most 1 MiB.")
    priority: StrictInt | None = Field(  # strict: JSON true is not priority 1
        default=None,
        ge=-1000,
        le=1000,
        description="Order among instances waiting for a concurrency slot: lower starts first (default 0).",
    )
    instance_retention: RetentionBody | None = Field(
        default=None, description="How long this instance is kept once finished (default: the deployment's)."
    )

    @field_validator("params")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return check_json_value(value, "params")

    def item(self) -> dict[str, Any]:
        """The instance as ``create_batch`` takes it."""
        item: dict[str, Any] = {"id": self.id, "params": self.params}
        if self.priority is not None:
            item["priority"] = self.priority
        if self.instance_retention is not None:
            item["retention"] = self.instance_retention.retention()
        return item


class CreateOrSend(BaseModel):
    """Body of ``POST .../instances/create_or_send``: the instance to create if absent, and its event."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        validation_alias=AliasChoices("id", "instance_id"),
        description="Instance id; `instance_id` is accepted too.",
        json_schema_extra=INSTANCE_ID_SCHEMA,
    )
    params: Any = Field(default=None, description="The instance's params if this request creates it, at most 1 MiB.")
    event_type: str = Field(description="Event type, matched by `wait_for_event`.", json_schema_extra=EVENT_TYPE_SCHEMA)
    payload: Any = Field(default=None, description="The event's payload: any JSON value, at most 1 MiB.")
    event_id: str | None = Field(
        default=None,
        description="Idempotency key of the event: a request repeated with the same key does not deliver it twice "
        "(while the instance holds the event). Without one, a retried request may deliver it twice.",
        json_schema_extra=EVENT_ID_SCHEMA,
    )

    @field_validator("params", "payload")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        return check_json_value(value, "params" if info.field_name == "params" else "the event payload")


class StatusChange(BaseModel):
    """Body of ``PATCH .../status``: the action, and Cloudflare's ``from`` (restart) and ``rollback`` (terminate)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Action
    from_step: FromStep | None = Field(
        default=None,
        alias="from",
        description="restart only: run again from this step (`count` from 1; `type` do, sleep or waitForEvent), "
        "keeping the results of the steps before it.",
    )
    rollback: StrictBool = Field(
        default=False, description="terminate only: first run the undos of the completed rollback steps."
    )

    @model_validator(mode="after")
    def _fits_the_action(self) -> StatusChange:
        if self.from_step is not None and self.status != "restart":
            raise ValueError("`from` is only for status 'restart'")
        if self.rollback and self.status != "terminate":
            raise ValueError("`rollback` is only for status 'terminate'")
        return self


class InstanceCounts(BaseModel):
    """How many instances a workflow has in each status."""

    model_config = ConfigDict(populate_by_name=True)

    queued: int = 0
    running: int = 0
    paused: int = 0
    errored: int = 0
    terminated: int = 0
    complete: int = 0
    waiting: int = 0
    waiting_for_pause: int = Field(default=0, alias="waitingForPause")


class WorkflowSummary(BaseModel):
    """A workflow and its instance counts."""

    name: str
    instances: InstanceCounts


class InstanceRef(BaseModel):
    """A just-created instance."""

    id: str
    workflow: str
    status: Status


class InstanceSummary(BaseModel):
    """One row of an instance listing (newest first)."""

    id: str
    workflow: str
    status: Status
    created_on: datetime
    started_on: datetime | None = None
    ended_on: datetime | None = None
    version: str | None = None  # the code version it started on (None until it started)


class BatchInfo(BaseModel):
    """What a batch create did: how many instances it created and which ids it skipped (they existed)."""

    count: int
    skipped: list[str]


class StatusChanged(BaseModel):
    """The instance's status after a lifecycle change, and whether a worker applied the change."""

    status: Status
    applied: bool = Field(
        description="False: no worker applied it within the wait; it stays queued and is applied when a worker "
        "takes the instance's partition (the response is then 202)."
    )
    timestamp: datetime


class CreatedOrSent(BaseModel):
    """What ``create_or_send`` did: created the instance with the event (201), or sent the event to it (200)."""

    id: str
    workflow: str
    created: bool = Field(description="True: this request created the instance, which starts with the event.")
    event_type: str
    instance_finished: bool = Field(description="The instance existed and had finished, so the event is ignored.")


class EventSent(BaseModel):
    """An event accepted for delivery. ``instance_finished``: the instance had already finished, so it is ignored."""

    instance_id: str
    type: str
    instance_finished: bool


class Health(BaseModel):
    """``/healthz``: the process is up."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """``/readyz``: each backend check, ``ok`` or why it failed."""

    ready: bool
    checks: dict[str, str]
