"""Builds clients and workers for the runtime the settings describe (embedded or distributed).

:data:`RUNTIME` is what :func:`hutch.connect` runs: this layer's implementation of the engine's
:class:`hutch.runtime.Runtime` seam, registered as the ``default`` entry point of the
``hutch.runtimes`` group in pyproject.toml (the engine never imports this package).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from hutch.blobs import open_blob_store
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.client import Client
from hutch.clock import Clock
from hutch.commits import CommitFeed
from hutch.config import Limits
from hutch.consumers.colocated import client_over, close_backends, start_colocated
from hutch.consumers.embedded import start_embedded
from hutch.consumers.worker import Worker
from hutch.errors import InvalidInputError, StoreUnavailable
from hutch.runtime import Runtime
from hutch.settings import Settings, redact_url, redis_socket_options
from hutch.store.announcements import finished_member
from hutch.store.redis import RedisStore
from hutch.versions import Workflows
from hutch.watch import ChannelFeed, InstanceWatch
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES = ("redis+cluster",)
"""URL schemes of a Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]``."""


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The startup nodes, user name and password of a ``redis+cluster://`` URL.

    Several nodes, so that a client starts while one of them is down; any one is enough to learn
    the whole cluster. Redis Cluster has only database 0 (``/0`` may be given) and this URL takes no
    query options.

    Raises:
        InvalidInputError: the URL is not of that form.
    """
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if parts.scheme not in CLUSTER_SCHEMES or not hosts or parts.path not in ("", "/", "/0") or parts.query:
        raise InvalidInputError(
            f"a Redis Cluster URL is redis+cluster://[user:password@]host:port[,host:port...] (database 0, no "
            f"options), got {redact_url(url)!r}"
        )
    nodes: list[tuple[str, int]] = []
    for address in hosts.split(","):
        if address.startswith("["):  # an IPv6 literal: [::1]:7000
            host, _, port = address[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = address.partition(":")
        try:
            nodes.append((host or "127.0.0.1", int(port or 6379)))
        except ValueError:
            raise InvalidInputError(f"bad Redis Cluster node {address!r} in {redact_url(url)!r}") from None
    unquote = urllib.parse.unquote
    return nodes, unquote(user) or None, unquote(password) if userinfo and ":" in userinfo else None


def open_redis(
    url: str,
    *,
    max_connections: int = 100,
    pool_timeout_s: float = 20.0,
    socket_options: Mapping[str, Any] | None = None,
) -> Redis | RedisCluster:
    """A redis-py asyncio client for ``url``: a ``RedisCluster`` for ``redis+cluster://``, else a ``Redis``.

    ``socket_options``: timeouts and keepalive (default: those of the default settings,
    :func:`~engine.settings.redis_socket_options`), so a dead connection fails within seconds and
    the retries below go to a new one.
    """
    sockets = dict(socket_options) if socket_options is not None else redis_socket_options()
    # Retries ride over a dropped connection (every pooled connection may be dead after a network
    # cut). A retried commit is safe: it is sequence-checked, so a duplicate is rejected.
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=8)
    if urllib.parse.urlsplit(url).scheme in CLUSTER_SCHEMES:
        nodes, username, password = cluster_nodes(url)
        # The same retries, here the cluster client's: they also refresh its view of the cluster
        # after a failover. Its pools are per node and do not block: a call beyond
        # max_connections to one node fails (MaxConnectionsError, a ConnectionError) rather than
        # waiting, which the engine treats like an unreachable Redis (retried later).
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            username=username,
            password=password,
            max_connections=max_connections,
            decode_responses=False,
            retry=retry,
            **sockets,
        )
    # A blocking pool: a burst of concurrent calls (a gateway under load, a fan-out of reads) waits
    # for a connection instead of failing with "Too many connections" at the pool's limit.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        decode_responses=False,
        retry=retry,
        **sockets,
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, OSError],
    )
    return Redis.from_pool(pool)


def open_store(settings: Settings) -> RedisStore:
    """The checkpoint store on the configured Redis (a single server, or a cluster: :func:`open_redis`)."""
    redis = open_redis(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        pool_timeout_s=settings.redis_pool_timeout_s,
        socket_options=settings.redis_socket_options(),
    )
    return RedisStore(
        redis,
        settings.partitions,
        namespace=settings.namespace,
        announce_created=True,
        blobs=open_blob_store(settings.blob_store),
    )


async def connect_store(settings: Settings) -> RedisStore:
    """Open the store with :func:`open_store` and check that the servers behind it are usable.

    A wrong URL, a down Redis, one older than 7, or a node of a cluster given as a single server
    fails here, clearly (one ``INFO`` round trip per server).
    """
    store = open_store(settings)
    url = settings.redacted(settings.redis_url)
    cluster = urllib.parse.urlsplit(settings.redis_url).scheme in CLUSTER_SCHEMES
    try:
        try:
            if cluster:
                infos = list((await store.redis.info("server", target_nodes=RedisCluster.PRIMARIES)).values())
            else:
                infos = [await store.redis.info("server")]
        except (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException) as exc:
            # A RedisClusterException: no startup node answered, or the server is not in cluster mode.
            raise StoreUnavailable(f"cannot connect to Redis at {url}: {exc}") from exc
        for info in infos:
            version = str(info.get("redis_version", "0"))
            if tuple(int(n) for n in version.split(".")[:2] if n.isdigit()) < (7, 0):
                # The store's scripts announce on sharded pub/sub (SPUBLISH), which Redis 7 brought.
                raise InvalidInputError(f"Hutch needs Redis 7 or later; the Redis at {url} is {version}")
            if not cluster and info.get("redis_mode") == "cluster":
                # A plain client reaches one node: every key of another node's slots answers MOVED.
                raise InvalidInputError(
                    f"the Redis at {url} is a node of a Redis Cluster: give the cluster as "
                    "redis_url = redis+cluster://host:port[,host:port...]"
                )
    except BaseException:
        await store.close()
        raise
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
    workflows: Workflows,
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
    feed = ChannelFeed(store.redis, lambda data: watch.notify(*finished_member(data)))
    try:
        # Every partition's finished channel, once: a wait then costs no subscription of its own.
        await feed.start(store.keys.finished_channel(p) for p in range(store.partitions))
    except BaseException:
        await close_backends(store, transport)
        raise

    # Every commit of the instances a live view follows (a gateway's dashboard); no connection until one does.
    commits = CommitFeed(store)

    async def close() -> None:
        await commits.close()
        await feed.close()
        await close_backends(store, transport)

    names = list(workflows) or [spec.name for spec in settings.workflows]
    return client_over(
        store, transport, names, limits=limits, clock=clock, watch=watch, commits=commits, on_close=close
    )


async def start_distributed(
    workflows: Workflows,
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


class _Runtime:
    """The embedded and distributed runtimes behind :func:`hutch.connect` (chosen by the settings' URLs)."""

    async def open_client(
        self,
        workflows: Workflows,
        *,
        settings: Settings,
        limits: Limits,
        clock: Clock,
        resources: Mapping[str, Any],
        binding_names: Mapping[str, str],
    ) -> Client:
        return await open_client(
            workflows, settings=settings, limits=limits, clock=clock, resources=resources, binding_names=binding_names
        )


RUNTIME: Runtime = _Runtime()
"""The ``default`` runtime of the ``hutch.runtimes`` entry point group (typed by the seam, so mypy checks it)."""
