"""A worker and a client in one process, sharing a store and a transport (embedded mode, tests, bench).

Also the one place a runtime's client is wired over a store and a transport (:func:`client_over`)
and those two are closed (:func:`close_backends`): the embedded, colocated and remote runtimes
(``hutch.consumers.runtime``) all go through these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.transports.base import Transport
from hutch.client import Client, bindings
from hutch.clock import Clock
from hutch.commits import CommitFeed
from hutch.config import Limits
from hutch.consumers.worker import Worker
from hutch.entrypoint import Env
from hutch.settings import Settings
from hutch.store.base import CheckpointStore
from hutch.store.redis import RedisStore
from hutch.versions import Workflows
from hutch.watch import InstanceWatch


def client_over(
    store: CheckpointStore,
    transport: Transport,
    workflows: Iterable[str],
    *,
    limits: Limits,
    clock: Clock,
    watch: InstanceWatch | None,
    on_close: Callable[[], Awaitable[None]],
    commits: CommitFeed | None = None,
) -> Client:
    """A client writing to ``store`` and publishing on ``transport``; ``on_close`` runs when it is closed."""
    return Client(
        store,
        dispatcher_over(store, transport),
        workflows=list(workflows),
        limits=limits,
        clock=clock,
        watch=watch,
        commits=commits,
        on_close=on_close,
    )


def dispatcher_over(store: CheckpointStore, transport: Transport) -> BrokerDispatcher:
    """The dispatcher publishing on ``transport``, with the events' fast path when ``store`` announces (distributed)."""
    if isinstance(store, RedisStore) and store.announces:
        return BrokerDispatcher(transport, announce=store.announce_event)
    return BrokerDispatcher(transport)


async def close_backends(store: CheckpointStore, transport: Transport) -> None:
    """Close the transport, then the store: nothing is published about state the store no longer holds."""
    await transport.close()
    await store.close()


async def start_colocated(
    store: CheckpointStore,
    transport: Transport,
    workflows: Workflows,
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

    async def stop() -> None:
        await worker.shutdown(timeout=0)
        await close_backends(store, transport)

    # The client comes first: the worker's env binds it (workflows create children through it).
    client = client_over(store, transport, workflows, limits=limits, clock=clock, watch=watch, on_close=stop)
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
    try:
        await worker.start()
    except BaseException:
        await close_backends(store, transport)
        raise
    client.runtime_worker = worker
    return client, worker
