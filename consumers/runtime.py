"""Builds clients and workers for the runtime the settings describe (embedded or distributed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.dispatch import BrokerDispatcher
from broker.transports.rabbitmq import RabbitMQTransport
from consumers.colocated import start_colocated
from consumers.embedded import start_embedded
from consumers.worker import Worker
from engine.client import Client
from engine.clock import Clock
from engine.config import Limits
from engine.entrypoint import WorkflowEntrypoint
from engine.errors import InvalidInputError, StoreUnavailable
from engine.settings import Settings
from engine.store.announcements import finished_member
from engine.store.redis import RedisStore
from engine.watch import ChannelFeed, InstanceWatch


def open_store(settings: Settings) -> RedisStore:
    """The checkpoint store on the configured Redis."""
    # Retries ride over a dropped connection (every pooled connection may be dead after a network
    # cut). A retried commit is safe: it is sequence-checked, so a duplicate is rejected.
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=8)
    # A blocking pool: a burst of concurrent calls (a gateway under load, a fan-out of reads) waits
    # for a connection instead of failing with "Too many connections" at the pool's limit.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=False,
        health_check_interval=10,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, OSError],
    )
    return RedisStore(Redis.from_pool(pool), settings.partitions, namespace=settings.namespace, announce_created=True)


async def connect_store(settings: Settings) -> RedisStore:
    """:func:`open_store`, checked with a ``PING``: a wrong URL or a down Redis fails here, clearly."""
    store = open_store(settings)
    try:
        await store.redis.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await store.close()
        raise StoreUnavailable(f"cannot connect to Redis at {settings.redacted(settings.redis_url)}: {exc}") from exc
    return store


def open_transport(settings: Settings) -> RabbitMQTransport:
    """The RabbitMQ transport for the configured broker (not started)."""
    return RabbitMQTransport.from_settings(settings)


async def connect_servers(settings: Settings, limits: Limits) -> tuple[RedisStore, RabbitMQTransport]:
    """The checked store and the started transport (the store is closed again if the broker fails).

    The deployment's record is checked against ``settings.partitions`` and ``limits`` first
    (:meth:`RedisStore.check_deployment`): a process configured unlike its deployment fails before
    it declares partition queues the deployment does not have.
    """
    store = await connect_store(settings)
    transport = open_transport(settings)
    try:
        await store.check_deployment(limits)
        await transport.start()
    except BaseException:
        await store.close()
        raise
    return store, transport


async def open_client(
    workflows: Mapping[str, type[WorkflowEntrypoint]],
    *,
    settings: Settings,
    limits: Limits,
    clock: Clock,
    resources: Mapping[str, Any],
    binding_names: Mapping[str, str],
) -> Client:
    """A client for the runtime the settings describe."""
    if not settings.redis_url and not settings.amqp_url:
        client, _ = await start_embedded(
            workflows, settings=settings, limits=limits, clock=clock, resources=resources, binding_names=binding_names
        )
        return client
    if not (settings.redis_url and settings.amqp_url):
        raise InvalidInputError(
            "the distributed runtime needs both redis_url and amqp_url (HUTCH_REDIS_URL, HUTCH_AMQP_URL); "
            "give neither for the embedded runtime"
        )
    # connect_servers checks the deployment's record, once here and not on each create: a client
    # with another partition count than the workers would write instances to keys no worker reads.
    store, transport = await connect_servers(settings, limits)
    watch = InstanceWatch()
    feed = ChannelFeed(store.redis, store.keys.finished_channel(), lambda data: watch.notify(*finished_member(data)))
    try:
        await feed.start()
    except BaseException:
        await transport.close()
        await store.close()
        raise

    async def close() -> None:
        await feed.close()
        await transport.close()
        await store.close()

    names = list(workflows) or [spec.name for spec in settings.workflows]
    return Client(
        store, BrokerDispatcher(transport), workflows=names, limits=limits, clock=clock, watch=watch, on_close=close
    )


async def start_distributed(
    workflows: Mapping[str, type[WorkflowEntrypoint]],
    *,
    settings: Settings,
    limits: Limits,
    clock: Clock,
    resources: Mapping[str, Any],
    binding_names: Mapping[str, str],
) -> tuple[Client, Worker]:
    """A distributed worker (RabbitMQ + Redis) in this process, and a client wired to the same servers.

    What ``hutch worker`` runs, minus the process: tests and benchmarks use it to exercise the
    real path without spawning processes.
    """
    store, transport = await connect_servers(settings, limits)
    return await start_colocated(
        store,
        transport,
        workflows,
        settings=settings,
        limits=limits,
        clock=clock,
        resources=resources,
        binding_names=binding_names,
        distributed=True,
    )
