"""Shared fixtures: embedded clients, real-server URLs (skipped locally when absent, failing in CI)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import hutch
import pytest
from hutch import Client, WorkflowEntrypoint
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.runtime import open_redis, start_distributed
from hutch.settings import Settings

from tests.helpers import unique

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("HUTCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("HUTCH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip when the server is absent locally; fail in CI, where skipping would hide the real path."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run the real-server tests)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A private 3-master Redis Cluster for the whole session (``redis+cluster://`` URL).

    Started once, from the ``redis-server`` and ``redis-cli`` on the PATH; skipped locally when
    they are missing or the cluster does not come up, failing in CI.
    """
    from tests.private_servers import PrivateRedisCluster

    def unavailable(message: str) -> None:
        if IN_CI:
            pytest.fail(f"{message} (CI must run the Redis Cluster tests)")
        pytest.skip(message)

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server and redis-cli are needed for a private Redis Cluster")
    cluster = PrivateRedisCluster()
    try:
        cluster.start()
    except Exception as exc:
        unavailable(f"the private Redis Cluster did not start: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.close()


MakeClient = Callable[..., Awaitable[Client]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``make_client`` on both runtimes, unless marked ``embedded_only``.

    A test marked ``also_on_cluster`` runs a third time, on the session's private Redis Cluster.
    """
    if "runtime" in metafunc.fixturenames:
        runtimes = ["embedded"]
        if metafunc.definition.get_closest_marker("embedded_only") is None:
            runtimes.append("distributed")
            if metafunc.definition.get_closest_marker("also_on_cluster") is not None:
                runtimes.append("cluster")
        metafunc.parametrize("runtime", runtimes)


@pytest.fixture
async def make_client(runtime: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeClient]:
    """Start runtimes for a test; each is closed (and its server-side state deleted) at teardown.

    ``embedded``: ``hutch.connect()`` with no URLs (fakeredis + in-process transport).
    ``distributed``: a worker in this process on the real Redis and RabbitMQ, in a namespace of
    its own (keys and queues deleted afterwards), and a remote client.
    ``cluster``: the same on the session's private Redis Cluster (``redis_cluster_url``).
    """
    clients: list[Client] = []
    namespaces: list[str] = []
    redis_url = REDIS_URL
    if runtime != "embedded":
        redis_url = request.getfixturevalue("redis_cluster_url" if runtime == "cluster" else "redis_url")
        request.getfixturevalue("amqp_url")

    async def make(workflows: Mapping[str, type[WorkflowEntrypoint]], **options: Any) -> Client:
        if runtime == "embedded":
            client = await hutch.connect(workflows, **options)
        else:
            client = await _start_distributed(workflows, namespaces, redis_url=redis_url, **options)
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        worker = client.runtime_worker
        if runtime != "embedded" and worker is not None:
            await worker.shutdown(timeout=0)
            await worker.transport.delete_topology()
        await client.close()
    for namespace in namespaces:
        await drop_namespace(namespace, redis_url)


async def _start_distributed(
    workflows: Mapping[str, type[WorkflowEntrypoint]],
    namespaces: list[str],
    *,
    redis_url: str = REDIS_URL,
    settings: Settings | None = None,
    limits: Limits | None = None,
    clock: Clock | None = None,
    resources: Mapping[str, Any] | None = None,
    bindings: Mapping[str, str] | None = None,
) -> Client:
    namespace = unique("test")
    namespaces.append(namespace)
    base = settings or Settings(partitions=4)
    settings = base.model_copy(
        update={"redis_url": redis_url, "amqp_url": AMQP_URL, "namespace": namespace, "heartbeat_s": 0.2}
    )
    client, _ = await start_distributed(
        workflows,
        settings=settings,
        limits=settings.limits if limits is None else limits,  # as hutch.connect() does
        clock=clock or Clock(),
        resources=dict(resources or {}),
        binding_names=dict(bindings or {}),
    )
    return client


async def drop_namespace(namespace: str, redis_url: str = REDIS_URL) -> None:
    """Delete every Redis key of a test namespace (on every node of a ``redis+cluster://`` URL)."""
    redis = open_redis(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
    finally:
        await redis.aclose()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on the event loop."""
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    for task in leaked:
        task.cancel()
    if leaked:
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test left {len(leaked)} task(s) running: {[t.get_name() for t in leaked]}")
