"""The embedded runtime: the real engine in this process over fakeredis and the in-process transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fakeredis
from hutch.broker.transports.inprocess import InProcessTransport
from hutch.client import Client
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.colocated import start_colocated
from hutch.consumers.worker import Worker
from hutch.entrypoint import WorkflowEntrypoint
from hutch.settings import Settings
from hutch.store.redis import RedisStore
from hutch.watch import InstanceWatch


async def start_embedded(
    workflows: Mapping[str, type[WorkflowEntrypoint]],
    *,
    settings: Settings,
    limits: Limits,
    clock: Clock,
    resources: Mapping[str, Any],
    binding_names: Mapping[str, str],
) -> tuple[Client, Worker]:
    """Start a worker owning every partition, and a client wired to it."""
    redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
    store = RedisStore(redis, settings.partitions, namespace=settings.namespace)
    transport = InProcessTransport(settings.partitions)
    await transport.start()
    return await start_colocated(
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
