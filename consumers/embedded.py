"""The embedded runtime: the real engine in this process over fakeredis and the in-process transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch.broker.transports.inprocess import InProcessTransport
from hutch.client import Client
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.colocated import start_colocated
from hutch.consumers.embedded_redis import embedded_redis
from hutch.consumers.worker import Worker
from hutch.settings import Settings
from hutch.store.redis import RedisStore
from hutch.versions import Workflows
from hutch.watch import InstanceWatch


class EmbeddedProbe:
    """The embedded runtime as the testing toolkit sees it (:class:`hutch.runtime.EmbeddedRuntimeProbe`).

    Exact because everything is in this process: the in-process transport counts its queued and
    unacknowledged messages, and the orchestrator its inbox and the batch it is processing.
    """

    def __init__(self, worker: Worker, transport: InProcessTransport) -> None:
        self._worker = worker
        self._transport = transport
        self._partitions = range(transport.partitions)

    @property
    def commits(self) -> int:
        """Transitions the orchestrator committed so far."""
        return self._worker.orchestrator.commits

    @property
    def steps_running(self) -> int:
        """Step attempts the step runner has in flight right now."""
        return self._worker.orchestrator.runner.in_flight

    def is_idle(self) -> bool:
        """Whether no step runs, the orchestrator is idle and every partition queue is empty and fully acked."""
        orchestrator = self._worker.orchestrator
        if orchestrator.runner.in_flight:
            return False
        if not orchestrator.idle:
            return False
        return all(self._transport.depth(p) == (0, 0) for p in self._partitions)

    async def has_due_timer(self, now_ms: int) -> bool:
        """Whether any partition has a timer due by ``now_ms`` in the store."""
        return bool(await self._worker.store.due_timers(self._partitions, now_ms, limit=1))

    async def next_due(self, after_ms: int) -> int | None:
        """When the earliest timer due strictly after ``after_ms`` is due (epoch ms), or None."""
        return await self._worker.store.next_due(self._partitions, after_ms=after_ms)


async def start_embedded(
    workflows: Workflows,
    *,
    settings: Settings,
    limits: Limits,
    clock: Clock,
    resources: Mapping[str, Any],
    binding_names: Mapping[str, str],
) -> tuple[Client, Worker]:
    """Start a worker owning every partition, and a client wired to it."""
    redis = embedded_redis()  # scripts compiled once, as Redis does
    store = RedisStore(redis, settings.partitions, namespace=settings.namespace)
    transport = InProcessTransport(settings.partitions)
    await transport.start()
    client, worker = await start_colocated(
        store,
        transport,
        workflows,
        settings=settings,
        limits=limits,
        clock=clock,
        resources=resources,
        binding_names=binding_names,
        distributed=False,
        watch=InstanceWatch(),
    )
    client.runtime = EmbeddedProbe(worker, transport)
    return client, worker
