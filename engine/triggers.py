"""The triggers of ``hutch.toml``: ``[[webhooks]]``, ``[[queues.consumers]]`` and ``[[triggers.crons]]``.

These are the configuration models only; the components that act on them live in
``hutch.gateway.webhooks`` (HTTP ingress), ``hutch.consumers.queue_trigger`` and ``hutch.consumers.crons``.
Templates (``instance_id``, ``event_type``, ``id``, ``delivery_id``) are kept as text here and
parsed by ``hutch.consumers.templates`` when those components are built, so a malformed template
fails at start-up with the entry named.

Every validation error names the entry and the offending value, e.g.
``[[triggers.crons]] workflow 'report': schedule '61 * * * *' is not a valid cron expression``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from hutch.config import WORKFLOW_NAME_PATTERN
from hutch.durations import Duration, to_seconds
from hutch.errors import InvalidInputError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

WebhookAction = Literal["send_event", "create", "create_or_send"]
"""What a webhook does: send an event to an instance, create one, or create it if absent and send it the event."""

SignatureScheme = Literal["standard", "github", "stripe", "none"]
"""How a webhook is authenticated: Standard Webhooks, GitHub, Stripe, or not at all (``none``)."""


class WebhookRoute(BaseModel):
    """A ``[[webhooks]]`` entry: ``POST /webhooks/<path>`` mapped to an instance action.

    Attributes:
        path: the route under ``/webhooks/`` (letters, digits, ``-_.`` and ``/``).
        workflow: the workflow whose instances the route creates or signals.
        action: ``send_event`` (default when ``event_type`` is set), ``create`` (default
            otherwise) or ``create_or_send`` (create the instance if absent and send it the event
            either way, atomically: a webhook that arrives before the instance exists is not lost;
            ``create_and_send``, its earlier name, is accepted).
        signature: ``standard`` (Standard Webhooks: ``webhook-id``/``webhook-timestamp``/
            ``webhook-signature``, secret ``whsec_<base64>``), ``github`` (``X-Hub-Signature-256``),
            ``stripe`` (``Stripe-Signature``) or ``none`` (unauthenticated; only behind a trusted proxy).
        secret_env: an environment variable holding the secret. For ``standard`` and ``stripe``
            it may hold several secrets separated by commas or whitespace (rotation: every one is
            accepted); a GitHub secret is free text, so each variable holds exactly one.
        secret_envs: more environment variables, read the same way (rotate GitHub secrets this way).
        instance_id: template of the instance id (required to send events; optional for ``create``,
            which otherwise picks a random id).
        event_type: template of the event type (``send_event`` and ``create_or_send``).
        delivery_id: template of the id deliveries are deduplicated on; default: the scheme's
            (``webhook-id``, ``X-GitHub-Delivery``, the Stripe event's ``id``).
        tolerance_s: how far a signed timestamp may be from now (Standard Webhooks, Stripe).
        dedupe_ttl_s: how long a delivery id is remembered (cover the sender's retry horizon).
        max_body_bytes: larger bodies are refused with 413 before they are read in full.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(max_length=200, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_\-./]*$")
    workflow: str = Field(max_length=64, pattern=WORKFLOW_NAME_PATTERN)
    action: WebhookAction = "send_event"
    signature: SignatureScheme = "standard"
    secret_env: str | None = None
    secret_envs: list[str] = []
    instance_id: str | None = None
    event_type: str | None = None
    delivery_id: str | None = None
    tolerance_s: float = Field(default=300.0, gt=0)
    dedupe_ttl_s: float = Field(default=3 * 86400.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)

    @field_validator("tolerance_s", "dedupe_ttl_s", mode="before")
    @classmethod
    def _duration(cls, value: Duration) -> float:
        return to_seconds(value)

    @model_validator(mode="before")
    @classmethod
    def _default_action(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("action") is None:
            data = {**data, "action": "send_event" if data.get("event_type") is not None else "create"}
        elif isinstance(data, Mapping) and data.get("action") == "create_and_send":  # its earlier name
            data = {**data, "action": "create_or_send"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> WebhookRoute:
        where = f"[[webhooks]] path {self.path!r}"
        segments = self.path.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"{where}: the path must not contain empty, '.' or '..' segments")
        if self.action in ("send_event", "create_or_send"):
            missing = [name for name in ("instance_id", "event_type") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"{where}: action {self.action!r} needs {' and '.join(missing)}")
        elif self.event_type is not None:
            raise ValueError(f"{where}: event_type is only used by the send_event and create_or_send actions")
        names = self.secret_names
        if self.signature == "none":
            if names:
                raise ValueError(f"{where}: signature 'none' takes no secret; remove secret_env/secret_envs")
        elif not names:
            raise ValueError(
                f"{where}: signature {self.signature!r} needs secret_env (or secret_envs) naming the "
                "environment variable that holds the signing secret"
            )
        for name in names:
            if not _ENV_VAR.match(name):
                raise ValueError(f"{where}: {name!r} is not an environment variable name")
        return self

    @property
    def secret_names(self) -> list[str]:
        """The environment variables that hold this route's secrets."""
        return ([self.secret_env] if self.secret_env else []) + list(self.secret_envs)

    def secrets(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Read the route's secrets from the environment (``environ`` defaults to ``os.environ``).

        Raises:
            InvalidInputError: a named variable is unset or empty.
        """
        env = os.environ if environ is None else environ
        found: list[str] = []
        for name in self.secret_names:
            value = env.get(name, "")
            # Standard Webhooks and Stripe secrets never contain commas or spaces; GitHub's may.
            parts = [value] if self.signature == "github" and value else [p for p in re.split(r"[,\s]+", value) if p]
            if not parts:
                raise InvalidInputError(
                    f"[[webhooks]] path {self.path!r}: environment variable {name!r} is not set or empty; "
                    "it must hold the webhook signing secret"
                )
            found.extend(parts)
        return found


def _unique_paths(routes: list[WebhookRoute]) -> list[WebhookRoute]:
    seen: set[str] = set()
    for route in routes:
        if route.path in seen:
            raise ValueError(f"[[webhooks]] path {route.path!r} appears twice; each route needs its own path")
        seen.add(route.path)
    return routes


WebhookRoutes = Annotated[list[WebhookRoute], AfterValidator(_unique_paths)]
"""The ``[[webhooks]]`` list, with unique paths."""


class QueueConsumerSpec(BaseModel):
    """A ``[[queues.consumers]]`` entry: create an instance per message of a RabbitMQ queue.

    Attributes:
        queue: the queue the user's systems publish to (declared durable if missing).
        workflow: the workflow to create instances of.
        id: template of the instance id over the message (``{body.orderId}``,
            ``{headers.x-order}``, ``{message_id}``, the default), so a redelivered message maps
            to the same instance and never creates a second one.
        prefetch: messages handled at once (and held unacknowledged) by one consumer.
        dead_letter_queue: where undecodable or invalid messages go, with the reason in the
            ``x-hutch-dead-letter-reason`` header (default ``<queue>.dead-letter``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(min_length=1, max_length=200)
    workflow: str = Field(max_length=64, pattern=WORKFLOW_NAME_PATTERN)
    id: str = "{message_id}"
    prefetch: int = Field(default=32, ge=1, le=10_000)
    dead_letter_queue: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("queue", "dead_letter_queue")
    @classmethod
    def _queue_name(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("amq."):
            raise ValueError(f"queue {value!r}: names starting with 'amq.' are reserved by RabbitMQ")
        return value

    @property
    def dead_letter_queue_name(self) -> str:
        """The dead-letter queue's name."""
        return self.dead_letter_queue or f"{self.queue}.dead-letter"


class QueuesConfig(BaseModel):
    """The ``[queues]`` table of ``hutch.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consumers: list[QueueConsumerSpec] = []

    @model_validator(mode="after")
    def _unique_queues(self) -> QueuesConfig:
        seen: set[str] = set()
        for consumer in self.consumers:
            if consumer.queue in seen:
                raise ValueError(
                    f"[[queues.consumers]] queue {consumer.queue!r} appears twice; one queue feeds one workflow"
                )
            seen.add(consumer.queue)
        return self


class CronSpec(BaseModel):
    """A ``[[triggers.crons]]`` entry: create an instance at every scheduled time.

    Attributes:
        schedule: a cron expression: 5 fields (minute hour day month weekday), 6 fields with
            *seconds first* (``*/10 * * * * *``: every 10 seconds), or a macro such as ``@daily``.
        workflow: the workflow to create instances of.
        timezone: the IANA zone the schedule is read in (``Europe/Paris``); default UTC.
        params: the params of every created instance.
        name: distinguishes several crons of one workflow; instance ids are
            ``cron-<name>-<YYYYMMDDTHHMMSSZ>`` (default name: the workflow's, with ``.`` as ``_``).
        catchup_window_s: after downtime, the latest missed fire time is still fired if it is at
            most this old (0 disables catching up); earlier missed times are skipped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str
    workflow: str = Field(max_length=64, pattern=WORKFLOW_NAME_PATTERN)
    timezone: str = "UTC"
    params: Any = None
    name: str | None = Field(default=None, max_length=60, pattern=r"^[a-zA-Z0-9_][a-zA-Z0-9\-_]*$")
    catchup_window_s: float = Field(default=3600.0, ge=0)

    @field_validator("catchup_window_s", mode="before")
    @classmethod
    def _duration(cls, value: Duration) -> float:
        return to_seconds(value)

    @model_validator(mode="after")
    def _valid(self) -> CronSpec:
        where = f"[[triggers.crons]] workflow {self.workflow!r}"
        try:
            self.zone()
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{where}: timezone {self.timezone!r} is not a known IANA zone (e.g. 'Europe/Paris')"
            ) from None
        fields = self.schedule.split()
        if not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@"))):
            raise ValueError(
                f"{where}: schedule {self.schedule!r} has {len(fields)} fields; use 5 (minute hour day "
                "month weekday) or 6 (seconds first)"
            )
        try:
            self.iterator(datetime.now(UTC)).get_next(datetime)
        except (CroniterError, ValueError, KeyError) as exc:
            raise ValueError(f"{where}: schedule {self.schedule!r} is not a valid cron expression ({exc})") from None
        return self

    @property
    def id_prefix(self) -> str:
        """The start of every instance id this cron creates: ``cron-<name>-``."""
        return f"cron-{self.name or self.workflow.replace('.', '_')}-"

    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)

    def iterator(self, start: datetime) -> croniter:
        """A croniter over the schedule from ``start`` (converted to the schedule's zone)."""
        return croniter(self.schedule, start.astimezone(self.zone()), second_at_beginning=True)

    def instance_id(self, fire_time: datetime) -> str:
        """The deterministic instance id of one fire time (UTC, second resolution)."""
        return self.id_prefix + fire_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class TriggersConfig(BaseModel):
    """The ``[triggers]`` table of ``hutch.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crons: list[CronSpec] = []

    @model_validator(mode="after")
    def _distinct_ids(self) -> TriggersConfig:
        seen: dict[tuple[str, str], int] = {}
        for index, cron in enumerate(self.crons):
            key = (cron.workflow, cron.id_prefix)
            if key in seen:
                raise ValueError(
                    f"[[triggers.crons]] entries {seen[key]} and {index} both create instances of workflow "
                    f"{cron.workflow!r} named {cron.id_prefix}<time>; give each a distinct `name`"
                )
            seen[key] = index
        return self
