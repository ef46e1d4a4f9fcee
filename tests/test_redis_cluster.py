"""Redis Cluster: ``redis+cluster://`` URLs, and the distributed runtime on a private 3-master cluster.

The cluster is the session's (``redis_cluster_url``: skipped locally without ``redis-server``,
failing in CI); RabbitMQ is the shared one. Every key of a partition shares its hash tag, so the
store makes a script call per partition there; the announcements are per-partition sharded pub/sub
channels, so a worker hears of the creates of its own partitions only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hutch
import pytest
from hutch import Client, InvalidInputError, Settings, Status, StoreUnavailable, WorkflowEntrypoint
from hutch.broker.partitioning import partition_of
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers import Worker
from hutch.consumers.runtime import cluster_nodes, connect_store, open_redis, start_distributed
from hutch.store.announcements import created_instances

from tests.conftest import drop_namespace
from tests.helpers import eventually, ids_per_partition, unique, wait_status
from tests.private_servers import free_port

PARTITIONS = 6


class OneStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("work", lambda: f"done {event.instance_id}")


class WaitForGo(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.wait_for_event("go", "go")
        return await step.do("after", lambda: "went")


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {"one": OneStep, "wait": WaitForGo}


# ---------------------------------------------------------------------------- URLs
def test_a_cluster_url_names_its_startup_nodes_and_credentials() -> None:
    assert cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/0") == (
        [("10.0.0.1", 7000), ("10.0.0.2", 7001)],
        None,
        None,
    )
    assert cluster_nodes("redis+cluster://app:p%40ss@[::1]:7000,redis-2") == (
        [("::1", 7000), ("redis-2", 6379)],
        "app",
        "p@ss",
    )
    assert cluster_nodes("redis+cluster://:secret@h:1") == ([("h", 1)], None, "secret")
    for bad in ("redis+cluster://h:1/3", "redis+cluster://h:1?ssl=true", "redis+cluster://", "redis+cluster://h:x"):
        with pytest.raises(InvalidInputError):
            cluster_nodes(bad)
    with pytest.raises(InvalidInputError) as refused:
        cluster_nodes("redis+cluster://u:hunter2@h:1/5")
    assert "hunter2" not in str(refused.value)  # the message shows the URL redacted


@pytest.mark.redis
async def test_a_node_given_as_a_single_server_is_refused_with_the_url_to_give(redis_cluster_url: str) -> None:
    (host, port), *_ = cluster_nodes(redis_cluster_url)[0]
    with pytest.raises(InvalidInputError, match=r"node of a Redis Cluster.*redis\+cluster://"):
        await connect_store(Settings(redis_url=f"redis://{host}:{port}/0", namespace=unique("test")))


@pytest.mark.redis
async def test_an_unreachable_cluster_is_store_unavailable() -> None:
    settings = Settings(redis_url=f"redis+cluster://127.0.0.1:{free_port()}", namespace=unique("test"))
    with pytest.raises(StoreUnavailable, match="cannot connect to Redis"):
        async with asyncio.timeout(60):
            await connect_store(settings)


@pytest.mark.redis
async def test_a_cluster_url_on_a_single_server_is_refused(redis_url: str) -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect to Redis"):
        await connect_store(Settings(redis_url="redis+cluster://127.0.0.1:6379", namespace=unique("test")))


# ---------------------------------------------------------------------------- the runtime on a cluster
class _Deployment:
    """Two workers (each with its colocated client) and a remote client, on the cluster and RabbitMQ."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[tuple[Client, Worker]] = []
        self.heard: dict[str, set[int]] = {}  # worker id -> partitions of the creation notices it heard
        self.remote: Client | None = None

    async def add_worker(self) -> Worker:
        client, worker = await start_distributed(
            WORKFLOWS, settings=self.settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
        )
        self.workers.append((client, worker))
        heard = self.heard.setdefault(worker.worker_id, set())
        feed = worker._notices
        assert feed is not None
        on_message = feed._on_message

        def spy(data: bytes) -> None:  # what reached this worker, before its own ownership filter
            heard.update(partition_of(c.workflow, c.instance_id, PARTITIONS) for c in created_instances(data))
            on_message(data)

        feed._on_message = spy
        return worker

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()
        for client, worker in reversed(self.workers):
            await worker.shutdown(timeout=0)
            await worker.transport.delete_topology()
            await client.close()


@pytest.fixture
async def deployment(redis_cluster_url: str, amqp_url: str) -> AsyncIterator[_Deployment]:
    namespace = unique("test")
    settings = Settings(
        redis_url=redis_cluster_url, amqp_url=amqp_url, namespace=namespace, partitions=PARTITIONS, heartbeat_s=0.2
    )
    deployment = _Deployment(settings)
    try:
        yield deployment
    finally:
        await deployment.close()
        await drop_namespace(namespace, redis_cluster_url)


async def _one_subscriber_each(redis_url: str, channels: list[str]) -> None:
    """Every channel ends up with exactly one subscriber (a partition moving between the workers
    unsubscribes one and subscribes the other a few milliseconds apart)."""

    async def one_each() -> bool:
        counts = await _shard_subscribers(redis_url, channels)
        assert counts == [1] * len(channels), counts
        return True

    await eventually(one_each, timeout=10)


async def _shard_subscribers(redis_url: str, channels: list[str]) -> list[int]:
    """``PUBSUB SHARDNUMSUB`` of each channel, asked of the node that holds its slot."""
    redis = open_redis(redis_url)
    try:
        await redis.initialize()  # type: ignore[union-attr]  # learn which node holds which slot
        counts = [await redis.pubsub_shardnumsub(c, target_nodes=redis.get_node_from_key(c)) for c in channels]
        return [int(n) for [(_, n)] in counts]
    finally:
        await redis.aclose()


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_workers_on_a_cluster_run_every_partition_and_hear_only_their_own_creates(
    deployment: _Deployment, redis_cluster_url: str
) -> None:
    a, b = await deployment.add_worker(), await deployment.add_worker()
    remote = deployment.remote = await hutch.connect(WORKFLOWS, settings=deployment.settings)
    assert remote.runtime_worker is None and remote._watch is not None
    keys = remote._store.keys

    def listens_to_its_own(worker: Worker) -> bool:
        notices = worker._notices
        own = {c for p in worker.partitions for c in (keys.created_channel(p), keys.events_channel(p))}
        return notices is not None and notices.channels == own

    async def split() -> bool:
        # Each worker listens to the created channels of its partitions, and to no other (checked in
        # the same pass as the split: subscriptions follow a claim by a few milliseconds).
        owned = sorted(a.partitions + b.partitions) == list(range(PARTITIONS)) and bool(a.partitions and b.partitions)
        return owned and listens_to_its_own(a) and listens_to_its_own(b)

    await eventually(split, timeout=15)
    for worker in (a, b):
        assert worker._notices is not None
        assert await worker._notices.settled() is None  # subscribed in the background: confirmed now
    created_channels = [keys.created_channel(p) for p in range(PARTITIONS)]
    events_channels = [keys.events_channel(p) for p in range(PARTITIONS)]
    await _one_subscriber_each(redis_cluster_url, created_channels + events_channels)
    # The remote client listens to every partition's finished channel (the colocated ones share
    # their worker's watch).
    finished_channels = [keys.finished_channel(p) for p in range(PARTITIONS)]
    await _one_subscriber_each(redis_cluster_url, finished_channels)

    ids = ids_per_partition("one", PARTITIONS, 3)
    one = remote.workflow("one")
    # One batch over every partition: a create script per partition, each in its own slot.
    batch = await one.create_batch([{"id": v[0]} for v in ids.values()])
    singles = [await one.create(id=v[1]) for v in ids.values()]
    for instance in [*batch, *singles]:
        final = await instance.wait(timeout=20)
        assert (final.status, final.output) == (Status.COMPLETE, f"done {instance.id}")

    # Every creation notice reached the owner of its partition, and only it.
    assert deployment.heard[a.worker_id] <= set(a.partitions)
    assert deployment.heard[b.worker_id] <= set(b.partitions)
    assert deployment.heard[a.worker_id] | deployment.heard[b.worker_id] == set(range(PARTITIONS))

    # A remote wait() is woken by the finishing commit's announcement, not a poll.
    waiting = await remote.workflow("wait").create()
    await wait_status(waiting, "waiting")
    woken = asyncio.ensure_future(remote._watch.changed("wait", waiting.id, timeout=60))
    await asyncio.sleep(0)
    await waiting.send_event("go")
    await asyncio.wait_for(woken, timeout=10)  # a 60 s wait would have raised here
    assert (await waiting.wait(timeout=10)).output == "went"

    # One worker leaves: the other acquires its partitions and subscribes to their channels.
    await b.shutdown(timeout=5)

    async def took_over() -> bool:
        return a.partitions == list(range(PARTITIONS)) and listens_to_its_own(a)

    await eventually(took_over, timeout=15)
    assert a._notices is not None and a._notices.channels == {*created_channels, *events_channels}
    assert await a._notices.settled() is None
    await _one_subscriber_each(redis_cluster_url, created_channels + events_channels)
    deployment.heard[a.worker_id].clear()
    later = await one.create_batch([{"id": v[2]} for v in ids.values()])
    for instance in later:
        assert (await instance.wait(timeout=20)).status == Status.COMPLETE
    assert deployment.heard[a.worker_id] == set(range(PARTITIONS))
    # Listing reads every partition's index (a script call per partition, each in its slot).
    everything = {iid for v in ids.values() for iid in v}
    assert set((await one.list(limit=100)).instances) == everything
    assert set((await one.list(Status.COMPLETE, limit=100)).instances) == everything
    assert set(await remote._store.workflow_names()) == {"one", "wait"}
