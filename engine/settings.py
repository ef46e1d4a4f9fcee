"""Settings: ``HUTCH_`` environment variables, then ``hutch.toml``, then defaults."""

from __future__ import annotations

import re
import urllib.parse

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from engine.config import Limits
from engine.entrypoint import WorkflowEntrypoint, default_binding_name
from engine.errors import TargetError
from engine.loader import config_file, load_workflow
from engine.triggers import QueuesConfig, TriggersConfig, WebhookRoutes


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages and logs (the one redaction Hutch uses).

    Covers a password in the user info (``amqp://guest:pw@host``, ``redis://:pw@host``, whatever
    it contains) and redis-py's ``?password=`` query parameter; a URL without one is returned as is.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable (a bad IPv6 literal...): hide everything before the host
        return re.sub(r"(?<=://)[^/?#]*@", "***@", url)
    netloc, query = parts.netloc, parts.query
    if password is not None:
        # The user info ends at the last "@" (as urlsplit reads it), so a password containing "@"
        # or ":" is hidden whole.
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class WorkflowSpec(BaseModel):
    """A ``[[workflows]]`` entry of ``hutch.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=64, pattern=r"^[a-zA-Z0-9_][a-zA-Z0-9\-_.]*$")
    class_name: str = Field(description="module.path:ClassName")
    binding: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("class_name")
    @classmethod
    def _class_path(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"class_name {value!r} must look like 'package.module:ClassName'")
        return value

    def load(self) -> type[WorkflowEntrypoint]:
        """Import the workflow class as ``hutch run`` and ``--workflow`` do (:mod:`engine.loader`).

        Raises:
            TargetError: naming this entry and what is wrong.
        """
        try:
            return load_workflow(self.class_name)
        except TargetError as exc:
            raise TargetError(f"workflow {self.name!r}: cannot import {self.class_name!r}: {exc}") from None

    @property
    def binding_name(self) -> str:
        """The name under ``self.env`` (default: :func:`~engine.entrypoint.default_binding_name`)."""
        return self.binding or default_binding_name(self.name)


class Settings(BaseSettings):
    """Everything a Hutch process is configured with, read once at start-up.

    Sources, strongest first: keyword arguments, ``HUTCH_*`` environment variables, the
    ``hutch.toml`` file (path from ``HUTCH_CONFIG``, default ``./hutch.toml``), defaults.

    Attributes:
        redis_url: the checkpoint store; empty means embedded (fakeredis in this process). A single
            server is ``redis://[:password@]host:port/db`` (or ``rediss://``, redis-py's URL forms);
            a Redis Cluster is ``redis+cluster://[user:password@]host:port[,host:port...]`` (the
            startup nodes: any reachable one finds the rest). Redis 7 or later.
        amqp_url: the broker; empty means embedded (the in-process transport).
        namespace: prefix of every Redis key and RabbitMQ name, so deployments can share servers.
        partitions: partition count, fixed for a deployment (part of every Redis key).
        max_concurrent_steps: step attempts a worker runs at once.
        step_threads: threads for sync step callables.
        prefetch: unacknowledged deliveries per partition consumer (backpressure).
        shutdown_timeout_s: how long a stopping worker lets in-flight steps finish.
        timer_poll_s: the longest a worker goes without scanning its partitions' timers.
        heartbeat_s: how often a worker heartbeats and rebalances partitions.
        worker_ttl_s: a worker silent for this long is dead; its partitions move.
        redis_max_connections: Redis connections a process opens at most; beyond them, calls
            wait for a free one (up to ``redis_pool_timeout_s``) instead of failing.
        redis_pool_timeout_s: how long a call waits for a free Redis connection before failing.
        limits: the :class:`~engine.config.Limits` (``[limits]`` in hutch.toml, or
            ``HUTCH_LIMITS__MAX_STEPS=...`` and so on); recorded for the deployment like the
            partition count, so every client and worker of a namespace enforces the same ones.
        workflows: the ``[[workflows]]`` of hutch.toml.
        webhooks: the ``[[webhooks]]`` routes of hutch.toml (``gateway.webhooks``).
        queues: the ``[queues]`` table: ``[[queues.consumers]]`` (``consumers.queue_trigger``).
        triggers: the ``[triggers]`` table: ``[[triggers.crons]]`` (``consumers.crons``).
    """

    # "__" reaches into tables: HUTCH_LIMITS__MAX_STEPS sets [limits] max_steps.
    model_config = SettingsConfigDict(env_prefix="HUTCH_", env_nested_delimiter="__", extra="ignore")

    redis_url: str = ""
    amqp_url: str = ""
    namespace: str = Field(default="hutch", pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    partitions: int = Field(default=16, ge=1, le=1024)
    max_concurrent_steps: int = Field(default=512, ge=1)
    step_threads: int = Field(default=32, ge=1)
    prefetch: int = Field(default=256, ge=1)
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    timer_poll_s: float = Field(default=1.0, gt=0)
    heartbeat_s: float = Field(default=1.0, gt=0)
    worker_ttl_s: float = Field(default=3.0, gt=0)
    redis_max_connections: int = Field(default=100, ge=2)
    redis_pool_timeout_s: float = Field(default=20.0, gt=0)
    limits: Limits = Limits()
    workflows: list[WorkflowSpec] = []
    webhooks: WebhookRoutes = []
    queues: QueuesConfig = QueuesConfig()
    triggers: TriggersConfig = TriggersConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def workflow_classes(self) -> dict[str, type[WorkflowEntrypoint]]:
        """Import every configured workflow class: name → class."""
        return {spec.name: spec.load() for spec in self.workflows}

    def binding_names(self) -> dict[str, str]:
        """Workflow name → its binding name under ``self.env``."""
        return {spec.name: spec.binding_name for spec in self.workflows}

    def redacted(self, url: str) -> str:
        """A URL with its password hidden, for logs: :func:`redact_url`."""
        return redact_url(url)
