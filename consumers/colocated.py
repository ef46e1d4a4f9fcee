"""A worker and a client in one process, sharing a store and a transport (embedded mode, tests, bench)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.transports.base import Transport
from hutch.client import Client, bindings
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.worker import Worker
from hutch.entrypoint import Env, WorkflowEntrypoint
from hutch.settings import Settings
from hutch.store.redis import RedisStore
from hutch.watch import InstanceWatch


async def start_colocated(
    store: RedisStore,
    transport: Transport,
    workflows: Mapping[str, type[WorkflowEntrypoint]],
    *,
    settings: Settings,
    limits: Limits,
    clock: Clock,
    resources: Mapping[str, Any],
    binding_names: Mapping[str, str],
    distributed: bool,
    watch: InstanceWatch | None = None,
) -> tuple[Client, Worker]:
    """Start a worker on ``store`` and ``transport`` (already started) and a client wired to it.

    Closing the client shuts the worker down and closes the transport and the store.
    """
    client = Client(
        store, BrokerDispatcher(transport), workflows=list(workflows), limits=limits, clock=clock, watch=watch
    )
    env = Env({**bindings(client, dict(workflows), dict(binding_names)), **resources})
    worker = Worker(
        store=store,
        transport=transport,
        workflows=dict(workflows),
        settings=settings,
        env=env,
        limits=limits,
        clock=clock,
        watch=watch,
        distributed=distributed,
    )

    async def stop() -> None:
        await worker.shutdown(timeout=0)
        await transport.close()
        await store.close()

    try:
        await worker.start()
    except BaseException:
        await transport.close()
        await store.close()
        raise
    client._on_close = stop
    client.runtime_worker = worker
    return client, worker
