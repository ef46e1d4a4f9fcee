"""The embedded runtime: the real engine in this process over fakeredis and the in-process transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fakeredis

from broker.transports.inprocess import InProcessTransport
from consumers.colocated import start_colocated
from consumers.worker import Worker
from engine.client import Client
from engine.clock import Clock
from engine.config import Limits
from engine.entrypoint import WorkflowEntrypoint
from engine.settings import Settings
from engine.store.redis import RedisStore
from engine.watch import InstanceWatch


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
