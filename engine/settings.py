"""Settings: ``HUTCH_`` environment variables, then ``hutch.toml``, then defaults."""

from __future__ import annotations

import re
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

from hutch.blobs import check_blob_store_url
from hutch.config import WORKFLOW_NAME_PATTERN, Limits
from hutch.entrypoint import WorkflowEntrypoint, default_binding_name
from hutch.errors import InvalidInputError, TargetError
from hutch.loader import config_file, load_workflow
from hutch.triggers import QueuesConfig, TriggersConfig, WebhookRoutes
from hutch.versions import WorkflowClasses
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


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


def redact_urls(value: str) -> str:
    """Several comma-separated URLs (``amqp_url``'s cluster forms), each through :func:`redact_url`.

    A piece without a scheme is a host of the short host-list form and holds no password; a piece
    that does hold user info after a comma means the comma was inside a password, so the whole
    value is one URL.
    """
    pieces = value.split(",")
    if len(pieces) == 1 or any("@" in piece and "://" not in piece for piece in pieces[1:]):
        return redact_url(value)
    return ",".join(redact_url(piece) if "://" in piece else piece for piece in pieces)


_AMQP_SCHEMES = ("amqp", "amqps")


def parse_amqp_urls(value: str | Sequence[str]) -> list[str]:
    """One AMQP URL per broker node, from ``amqp_url`` (a string, comma-separated, or a list).

    Accepted forms, mixable: full URLs (``amqp://u:p@h1:5672/vh,amqp://u:p@h2:5672/vh``) and the
    short host list (``amqp://u:p@h1:5672,h2:5672/vh``), whose other hosts share the first one's
    scheme and credentials and the path and query written once (at the end, or after the first
    host). A comma inside a password must be percent-encoded (``%2C``).

    Raises:
        InvalidInputError: a piece is not an AMQP URL (the message shows it with its password hidden).
    """
    items = [value] if isinstance(value, str) else list(value)
    groups: list[list[str]] = []  # each: a URL followed by the extra hosts written after it
    for item in items:
        for piece in (p.strip() for p in item.split(",")):
            if not piece:
                continue
            if "://" in piece:
                groups.append([piece])
            elif groups and "@" not in piece:
                groups[-1].append(piece)
            else:
                raise InvalidInputError(
                    f"amqp_url: {redact_urls(item)!r} is not a comma-separated list of AMQP URLs "
                    "(amqp://user:password@host:port/vhost; percent-encode a comma in a password as %2C)"
                )
    urls = [url for group in groups for url in _expand_hosts(group)]
    for url in urls:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise InvalidInputError(f"amqp_url: {redact_url(url)!r}: {exc}") from None
        if parts.scheme not in _AMQP_SCHEMES or not parts.hostname:
            raise InvalidInputError(
                f"amqp_url: {redact_url(url)!r} is not an AMQP URL (amqp://user:password@host:port/vhost)"
            )
    return urls


def _expand_hosts(group: list[str]) -> list[str]:
    """``amqp://u:p@h1,h2,h3/vh?q`` as three URLs (a one-element group is returned as it is)."""
    head, *others = group
    if not others:
        return [head]
    scheme_end = head.index("://") + 3
    at = head.rfind("@")
    prefix = head[: at + 1] if at >= scheme_end else head[:scheme_end]  # scheme and user info
    first_host, first_rest = _split_host(head[len(prefix) :])
    last_host, last_rest = _split_host(others[-1])
    if any(_split_host(host)[1] for host in others[:-1]) or (first_rest and last_rest):
        raise InvalidInputError(
            f"amqp_url: {redact_urls(','.join(group))!r}: in a host list only the last host (or the first) "
            "may be followed by a path or query"
        )
    hosts = [first_host, *others[:-1], last_host]
    return [f"{prefix}{host}{first_rest or last_rest}" for host in hosts]


def _split_host(text: str) -> tuple[str, str]:
    """``host:port/vhost?query`` → (``host:port``, ``/vhost?query``)."""
    cut = min((i for i in (text.find(c) for c in "/?#") if i >= 0), default=len(text))
    return text[:cut], text[cut:]


def redis_socket_options(*, timeout_s: float = 2.0, health_check_s: float = 1.0) -> dict[str, Any]:
    """redis-py connection arguments that notice a dead connection within about ``timeout_s``.

    Every read and connect gives up after ``timeout_s`` (the client then reconnects and retries); a
    pooled connection idle for ``health_check_s`` is pinged before it is used again; TCP keepalive
    probes an idle socket (a pub/sub subscription's) every ``timeout_s / 2`` and drops it after two
    unanswered probes. The price: an event loop blocked for longer than ``timeout_s`` makes a
    healthy connection look dead (a spurious timeout, then a retry on a new connection). The
    defaults are those of :class:`Settings` (``redis_timeout_s``, ``redis_health_check_s``).
    """
    keepalive: dict[int, int] = {}
    probe_s = max(1, round(timeout_s / 2))
    for name, value in (("TCP_KEEPIDLE", probe_s), ("TCP_KEEPINTVL", probe_s), ("TCP_KEEPCNT", 2)):
        option = getattr(socket, name, None)  # Linux names; other platforms keep their defaults
        if option is not None:
            keepalive[option] = value
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": health_check_s,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive,
    }


def _check_class_path(field: str, value: str) -> None:
    if not re.fullmatch(r"[\w.]+:\w+", value):
        raise ValueError(f"{field} {value!r} must look like 'package.module:ClassName'")


_LIMIT_FIELDS: set[str] = {"max_concurrency", "concurrency_key", "max_concurrency_per_key"}


class WorkflowSpec(BaseModel):
    """A ``[[workflows]]`` entry of ``hutch.toml``: ``class_name``, or ``versions`` (oldest first, the last newest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=64, pattern=WORKFLOW_NAME_PATTERN)
    class_name: str | None = Field(default=None, description="module.path:ClassName")
    versions: list[str] = Field(
        default=[], description="module.path:ClassName of each version still running, oldest first"
    )
    binding: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Concurrency limits (hutch.concurrency): each one set here wins over the class attribute of
    # the same name, so a deployment tunes them without a code change.
    max_concurrency: int | None = Field(default=None, strict=True, ge=1)
    concurrency_key: str | None = Field(default=None, min_length=1, description="e.g. '{params.customerId}'")
    max_concurrency_per_key: int | None = Field(default=None, strict=True, ge=1)

    @field_validator("class_name")
    @classmethod
    def _class_path(cls, value: str | None) -> str | None:
        if value is not None:
            _check_class_path("class_name", value)
        return value

    @field_validator("versions")
    @classmethod
    def _class_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _check_class_path("versions", path)
        return value

    @model_validator(mode="after")
    def _one_of(self) -> WorkflowSpec:
        if (self.class_name is None) == (not self.versions):
            raise ValueError(f"workflow {self.name!r}: give either class_name or versions = [...] (oldest first)")
        return self

    @property
    def class_paths(self) -> list[str]:
        """The class of each version, oldest first (one for a ``class_name`` entry)."""
        return list(self.versions) if self.class_name is None else [self.class_name]

    def load(self) -> type[WorkflowEntrypoint]:
        """Import the workflow's newest class (the one new instances start on), as ``--workflow`` does.

        Raises:
            TargetError: naming this entry and what is wrong.
        """
        return self.load_versions()[-1]

    def load_versions(self) -> list[type[WorkflowEntrypoint]]:
        """Import the class of every version, oldest first (:mod:`hutch.loader`).

        Raises:
            TargetError: naming this entry and what is wrong.
        """
        classes = []
        for path in self.class_paths:
            try:
                classes.append(load_workflow(path))
            except TargetError as exc:
                raise TargetError(f"workflow {self.name!r}: cannot import {path!r}: {exc}") from None
        classes[-1] = self._with_limits(classes[-1])
        return classes

    def _with_limits(self, cls: type[WorkflowEntrypoint]) -> type[WorkflowEntrypoint]:
        """``cls`` with this entry's limits, which win over its attributes (the newest class's are the workflow's).

        A subclass of the same name and version (``__hutch_workflow__``): the imported class is left as it is.
        """
        limits = self.model_dump(include=_LIMIT_FIELDS, exclude_none=True)
        if not limits:
            return cls
        body = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        body["__hutch_workflow__"] = vars(cls).get("__hutch_workflow__", cls)
        return type(cls.__name__, (cls,), {**body, **limits})

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
        amqp_url: the broker; empty means embedded (the in-process transport). A cluster is
            several URLs, comma-separated or a list in hutch.toml (:func:`parse_amqp_urls`;
            :attr:`amqp_urls` has them one by one): processes connect to any live node and move
            to another when theirs fails.
        namespace: prefix of every Redis key and RabbitMQ name, so deployments can share servers.
        partitions: partition count, fixed for a deployment (part of every Redis key).
        max_concurrent_steps: step attempts a worker runs at once.
        step_threads: threads for sync step callables.
        prefetch: unacknowledged deliveries per partition consumer (backpressure).
        shutdown_timeout_s: how long a stopping worker lets in-flight steps finish.
        timer_poll_s: the longest a worker goes without scanning its partitions' timers.
        heartbeat_s: how often a worker heartbeats and rebalances partitions.
        worker_ttl_s: a worker silent for this long is dead; its partitions move.
        metrics_sample_s: how often a worker reads its partitions' queue depths for its metrics.
        redis_max_connections: Redis connections a process opens at most; beyond them, calls
            wait for a free one (up to ``redis_pool_timeout_s``) instead of failing.
        redis_pool_timeout_s: how long a call waits for a free Redis connection before failing.
        redis_timeout_s: a Redis connect or reply that takes longer fails (the call is retried on a
            new connection), so a cut connection is noticed within this time
            (:func:`redis_socket_options`). An event loop blocked for longer than this makes
            healthy connections time out too.
        redis_health_check_s: a pooled Redis connection idle this long is pinged before reuse.
        amqp_heartbeat_s: the AMQP heartbeat proposed to RabbitMQ (unless a URL sets
            ``heartbeat``): the broker closes a connection silent for about twice this, which frees
            the partitions a cut-off worker held (single active consumer) for another.
        amqp_dead_after_s: a broker that has not answered this process's probe (sent every
            quarter of this) for this long is taken as gone: the connection is dropped and another
            node is tried. An event loop blocked for longer than this causes a needless reconnect;
            0 turns the probe off (aio-pika then notices only after about three heartbeats).
        amqp_connect_timeout_s: how long one connection attempt to one node may take (TCP and
            the AMQP handshake) before the next node is tried.
        blob_store: where values over ``limits.inline_threshold`` are stored (:mod:`hutch.blobs`):
            ``redis`` (the checkpoint store's Redis, the default), ``file:///path/to/dir`` (a
            directory every worker shares) or ``s3://bucket/prefix?endpoint=...`` (``hutch[s3]``).
        limits: the :class:`~engine.config.Limits` (``[limits]`` in hutch.toml, or
            ``HUTCH_LIMITS__MAX_STEPS=...`` and so on); recorded for the deployment like the
            partition count, so every client and worker of a namespace enforces the same ones.
        workflows: the ``[[workflows]]`` of hutch.toml.
        webhooks: the ``[[webhooks]]`` routes of hutch.toml (``hutch.gateway.webhooks``).
        queues: the ``[queues]`` table: ``[[queues.consumers]]`` (``hutch.consumers.queue_trigger``).
        triggers: the ``[triggers]`` table: ``[[triggers.crons]]`` (``hutch.consumers.crons``).
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
    metrics_sample_s: float = Field(default=15.0, gt=0)
    redis_max_connections: int = Field(default=100, ge=2)
    redis_pool_timeout_s: float = Field(default=20.0, gt=0)
    redis_timeout_s: float = Field(default=2.0, gt=0)
    redis_health_check_s: float = Field(default=1.0, ge=0)
    amqp_heartbeat_s: int = Field(default=1, ge=0, le=65535)
    amqp_dead_after_s: float = Field(default=2.0, ge=0)
    amqp_connect_timeout_s: float = Field(default=5.0, gt=0)
    blob_store: str = "redis"
    limits: Limits = Limits()
    workflows: list[WorkflowSpec] = []
    webhooks: WebhookRoutes = []
    queues: QueuesConfig = QueuesConfig()
    triggers: TriggersConfig = TriggersConfig()

    @field_validator("amqp_url", mode="before")
    @classmethod
    def _amqp_url_list(cls, value: object) -> object:
        # hutch.toml may list the nodes (amqp_url = ["amqp://...", ...]); kept as one comma-separated
        # string, the form HUTCH_AMQP_URL takes, so every consumer of the setting reads one shape.
        if isinstance(value, list | tuple):
            return ",".join(str(item) for item in value)
        return value

    @field_validator("blob_store")
    @classmethod
    def _blob_store(cls, value: str) -> str:
        return check_blob_store_url(value)

    @property
    def amqp_urls(self) -> list[str]:
        """One URL per broker node (:func:`parse_amqp_urls`); empty when ``amqp_url`` is.

        Raises:
            InvalidInputError: ``amqp_url`` is malformed.
        """
        return parse_amqp_urls(self.amqp_url)

    def redis_socket_options(self) -> dict[str, Any]:
        """The redis-py timeout and keepalive arguments of these settings (:func:`redis_socket_options`)."""
        return redis_socket_options(timeout_s=self.redis_timeout_s, health_check_s=self.redis_health_check_s)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where settings come from, first wins: arguments, then ``HUTCH_*`` variables, then hutch.toml if present.

        ``.env`` files and secret directories are not read.
        """
        path = config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def workflow_classes(self) -> dict[str, WorkflowClasses]:
        """Import every configured workflow class: name → class (or its versions, oldest first)."""
        return {spec.name: spec.load() if spec.class_name else spec.load_versions() for spec in self.workflows}

    def binding_names(self) -> dict[str, str]:
        """Workflow name → its binding name under ``self.env``."""
        return {spec.name: spec.binding_name for spec in self.workflows}

    def redacted(self, url: str) -> str:
        """A URL (or several, comma-separated) with the passwords hidden, for logs: :func:`redact_url`."""
        return redact_urls(url)
