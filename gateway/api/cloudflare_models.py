"""Request and response bodies of Cloudflare's Workflows REST API, as the gateway serves them under ``/client/v4``.

The shapes are Cloudflare's (the ``cloudflare`` SDK's ``types/workflows`` models, and what
``wrangler workflows`` reads), so that Cloudflare's own tools work against Hutch unchanged.
Where Hutch has no such value, the field says so in its description; the README's parity table
lists each difference.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from hutch import Status
from hutch.gateway.api.models import INSTANCE_ID_SCHEMA, RetentionBody, StatusChange, check_json_value
from pydantic import BaseModel, ConfigDict, Field, field_validator

UNRECORDED_VERSION = "unknown"
"""``version_id`` of an instance that has not started yet (Hutch records the code version at start)."""

_WORKFLOW_IDS = uuid.UUID("6f1c1b9e-2a44-4e55-9a4f-6875746368cf")  # namespace of the ids below


def workflow_id(name: str) -> str:
    """A workflow's ``id``: a UUID derived from its name, the same in every gateway of a deployment."""
    return str(uuid.uuid5(_WORKFLOW_IDS, name))


TriggerSource = Literal["unknown", "api", "binding", "event", "cron"]
TRIGGER_SOURCES: frozenset[str] = frozenset({"unknown", "api", "binding", "event", "cron"})

TerminableStatus = Literal["queued", "running", "paused", "waitingForPause", "waiting"]
"""The statuses ``PUT .../instances/terminate?status=`` accepts (wrangler's list): the unfinished ones."""


# ----------------------------------------------------------------------------- requests
class CfCreateInstance(BaseModel):
    """Body of ``POST .../instances`` (and one item of ``.../instances/batch``)."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str | None = Field(
        default=None, description="Instance id (a random UUID when omitted).", json_schema_extra=INSTANCE_ID_SCHEMA
    )
    params: Any = Field(default=None, description="The instance's params (event.payload), at most 1 MiB.")
    instance_retention: RetentionBody | None = Field(
        default=None,
        description="How long this instance is kept once finished: milliseconds or e.g. '7 days' per outcome "
        "(default: the deployment's retention).",
    )
    location_hint: str | None = Field(
        default=None, description="Accepted and ignored: a Hutch deployment has no locations to choose from."
    )

    @field_validator("params")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return check_json_value(value, "params")

    def item(self) -> dict[str, Any]:
        """The instance as ``create_batch`` takes it."""
        item: dict[str, Any] = {"id": self.instance_id, "params": self.params}
        if self.instance_retention is not None:
            item["retention"] = self.instance_retention.retention()
        return item


class CfStatusChange(StatusChange):
    """Body of ``PATCH .../instances/{id}/status``: Cloudflare's shape is the ``/api`` one.

    ``status``, and ``from: {name, count, type}`` (restart only: run again from that step) or
    ``rollback`` (terminate only: run the saga's undos first).
    """


# ----------------------------------------------------------------------------- responses
class CfWorkflow(BaseModel):
    """A workflow (``GET .../workflows``, ``GET .../workflows/{name}``).

    Hutch keeps no deployment record of a workflow: it is code the workers register. So
    ``created_on`` and ``modified_on`` are when this gateway started, ``class_name`` is the
    workflow's name and ``script_name`` is ``"hutch"``; ``triggered_on`` is when its newest
    instance was created.
    """

    id: str
    name: str
    class_name: str
    script_name: str
    created_on: datetime
    modified_on: datetime
    triggered_on: datetime | None = None
    instances: dict[str, int]


class CfVersion(BaseModel):
    """A code version of a workflow (``GET .../workflows/{name}/versions``): one its recent instances started on."""

    id: str
    workflow_id: str
    class_name: str
    created_on: datetime
    modified_on: datetime
    has_dag: bool = False
    language: Literal["javascript", "python"] = "python"


class CfInstanceCreated(BaseModel):
    """A created instance (``POST .../instances`` and each item of ``.../instances/batch``)."""

    id: str
    status: Status
    version_id: str
    workflow_id: str
    trigger_source: TriggerSource | None = None


class CfInstanceRow(BaseModel):
    """One row of ``GET .../instances``."""

    id: str
    status: Status
    created_on: datetime
    modified_on: datetime
    started_on: datetime | None = None
    ended_on: datetime | None = None
    version_id: str
    workflow_id: str
    trigger_source: TriggerSource | None = None


class CfError(BaseModel):
    """Why an instance, a step or an attempt failed."""

    name: str
    message: str


class CfAttempt(BaseModel):
    """One attempt of a ``step``."""

    start: datetime
    end: datetime | None = None
    success: bool | None = None
    error: CfError | None = None


class CfStep(BaseModel):
    """One entry of an instance's ``steps``: a ``step``, ``sleep`` or ``waitForEvent``.

    ``step`` entries have ``attempts``, ``config``, ``success`` and ``output``; ``sleep`` and
    ``waitForEvent`` have ``finished`` (``end`` is when a running sleep or wait is due);
    ``waitForEvent`` has ``event_type`` and, once received, the event as ``output``. A child
    workflow started by ``step.invoke`` shows as a ``step`` (Cloudflare has no such entry).
    """

    type: Literal["step", "sleep", "waitForEvent"]
    name: str
    start: datetime
    end: datetime | None = None
    success: bool | None = None
    finished: bool | None = None
    attempts: list[CfAttempt] | None = None
    config: dict[str, Any] | None = None
    output: Any = None
    error: CfError | None = None
    event_type: str | None = None


class CfTermination(BaseModel):
    """The ``termination`` entry at the end of a terminated instance's ``steps``."""

    type: Literal["termination"] = "termination"
    trigger: dict[str, str]


class CfTrigger(BaseModel):
    """What created the instance."""

    source: TriggerSource


class CfInstanceDetail(BaseModel):
    """``GET .../instances/{id}``: Cloudflare's instance detail."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    status: Status
    params: Any = None
    trigger: CfTrigger
    version_id: str = Field(serialization_alias="versionId")
    queued: datetime
    start: datetime | None = None
    end: datetime | None = None
    success: bool | None = None
    output: Any = None
    error: CfError | None = None
    step_count: int
    steps: list[CfStep | CfTermination]


class CfStepResult(BaseModel):
    """``GET .../instances/{id}/step``: one step's status and its full output."""

    status: Literal["running", "waiting", "complete", "errored"]
    output: Any = None
    error: CfError | None = None
    event_type: str | None = None


class CfStatusChanged(BaseModel):
    """``PATCH .../status``: the instance's status after the change."""

    status: Status
    timestamp: datetime


class CfEventSent(BaseModel):
    """``POST .../events/{type}``: the event was accepted."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    instance_id: str = Field(serialization_alias="instanceId")
    timestamp: datetime


class CfTerminateJob(BaseModel):
    """``PUT .../instances/terminate``: ``ok`` (a bulk job started) or ``already_running`` (the same one runs)."""

    status: Literal["ok", "already_running"]


class CfDeleted(BaseModel):
    """``DELETE .../workflows/{name}``."""

    status: Literal["ok"] = "ok"
    success: bool | None = True


class CfPageInfo(BaseModel):
    """``result_info`` of a listing: page numbers, and for instances a ``cursor`` to the next page (null at the end)."""

    page: int | None = None
    per_page: int
    count: int
    total_count: int | None = None
    cursor: str | None = None
