"""``engine.connect()``: the entry point to a Hutch runtime."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

from hutch.client import Client
from hutch.clock import Clock
from hutch.config import Limits, check_workflow_name
from hutch.runtime import load_runtime
from hutch.settings import Settings
from hutch.versions import WorkflowClasses, Workflows, registry


class Connection:
    """What :func:`connect` returns: ``async with`` it (or ``await`` it) to get a :class:`Client`."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: Client | None = None

    async def __aenter__(self) -> Client:
        self._client = await _open(**self._options)
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    def __await__(self) -> Generator[Any, None, Client]:
        return _open(**self._options).__await__()


def connect(
    workflows: Workflows | None = None,
    *,
    redis_url: str | None = None,
    amqp_url: str | None = None,
    settings: Settings | None = None,
    resources: Mapping[str, Any] | None = None,
    bindings: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    clock: Clock | None = None,
) -> Connection:
    """Connect to Hutch.

    With no URLs (and none in ``HUTCH_REDIS_URL`` / ``HUTCH_AMQP_URL``) this starts the embedded
    runtime in this process: a worker over an in-process transport and fakeredis, running the
    same engine as a distributed deployment. With URLs it talks to Redis and RabbitMQ where
    workers run.

    Args:
        workflows: workflow name → :class:`WorkflowEntrypoint` subclass, or a list of them: its
            versions, oldest first (new instances start on the last; see :mod:`hutch.versions`).
        redis_url: the checkpoint store (``redis://host:6379/0``).
        amqp_url: the broker (``amqp://guest:guest@host:5672/``).
        settings: full settings (defaults come from the environment).
        resources: extra ``self.env`` bindings for workflows (database pools, HTTP clients...).
        bindings: workflow name → binding name under ``self.env`` (default:
            :func:`~engine.entrypoint.default_binding_name`, ``order.v2`` → ``ORDER_V2``).
        limits: the limits to enforce (default: ``settings.limits``). A distributed client checks
            them, and the partition count, against its deployment's record when it connects
            (:class:`~engine.errors.DeploymentMismatch`).
        clock: the engine's clock (tests use a controllable one).
    """
    return Connection(
        workflows=dict(workflows or {}),
        redis_url=redis_url,
        amqp_url=amqp_url,
        settings=settings,
        resources=dict(resources or {}),
        bindings=dict(bindings or {}),
        limits=limits,
        clock=clock,
    )


async def _open(
    *,
    workflows: dict[str, WorkflowClasses],
    redis_url: str | None,
    amqp_url: str | None,
    settings: Settings | None,
    resources: dict[str, Any],
    bindings: dict[str, str],
    limits: Limits | None,
    clock: Clock | None,
) -> Client:
    settings = settings or Settings()
    limits = settings.limits if limits is None else limits
    updates = {k: v for k, v in {"redis_url": redis_url, "amqp_url": amqp_url}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    for name in workflows:
        check_workflow_name(name, limits)
    registry(workflows)  # every class a WorkflowEntrypoint subclass, versions distinct: checked here, at once
    # The runtime lives in a layer above the engine: found through its declared seam (hutch.runtime).
    return await load_runtime().open_client(
        workflows, settings=settings, limits=limits, clock=clock or Clock(), resources=resources, binding_names=bindings
    )
