"""The dashboard's live instance feed costs one read per change of the instance, not one per viewer.

In ``hutch dev`` (and a client colocated with its worker) the worker wakes the follower on each
commit. Behind ``hutch gateway`` the client is remote: the follower marks the instance as watched
and the commit script announces each of its commits (hutch.commits). The remote tests run a
worker and separate gateway clients on the real Redis (or the private Redis Cluster) and RabbitMQ,
and count the Redis commands the gateways' clients send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hutch
import pytest
from hutch import Client, Settings, Status, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from hutch.clock import Clock
from hutch.commits import ANNOUNCES_CHANGES, CommitFeed
from hutch.consumers import membership
from hutch.consumers.runtime import start_distributed
from hutch.gateway.api.deps import WorkflowNames
from hutch.gateway.dashboard.data import instance_snapshot
from hutch.gateway.dashboard.live import LiveInstances
from hutch.watch import ChannelFeed
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from tests.browser.workflows import Gated
from tests.conftest import MakeClient, drop_namespace
from tests.helpers import eventually, unique
from tests.private_servers import free_port

VIEWERS = 5


async def test_many_viewers_share_one_reader_per_change(make_client: MakeClient) -> None:
    client = await make_client({"gated": Gated})
    names = WorkflowNames(client)

    async def snapshot(workflow: str, instance_id: str) -> dict[str, Any]:
        return await instance_snapshot(client, names, workflow, instance_id)

    hub = LiveInstances(client, snapshot, poll_s=0.2)
    iid = unique("live")
    instance = await client.workflow("gated").create(id=iid)
    await eventually(lambda: _waiting(instance))
    seen: list[list[str]] = [[] for _ in range(VIEWERS)]

    async def view(n: int) -> None:
        async with contextlib.aclosing(hub.stream("gated", iid)) as stream:
            async for text in stream:
                seen[n].append(json.loads(text)["detail"]["status"])
                if seen[n][-1] == Status.COMPLETE:
                    return

    try:
        async with asyncio.timeout(8):
            async with asyncio.TaskGroup() as tasks:
                for n in range(VIEWERS):
                    tasks.create_task(view(n))
                await eventually(_all_seen(seen))
                reads_before = hub.snapshots_read
                await asyncio.sleep(1.0)  # nothing changes: seq is re-read, the detail is not
                assert hub.snapshots_read == reads_before
                await instance.send_event("go", {"ok": True})
    except TimeoutError:
        raise AssertionError(f"viewers saw {seen}; the instance is {(await instance.describe()).status}") from None
    finally:
        await hub.close()
        await asyncio.sleep(0)  # let the cancelled follower finish
    assert all(statuses[-1] == Status.COMPLETE for statuses in seen), seen
    # One describe() for the first snapshot and one per commit after it, shared by every viewer.
    commits_after_the_event = 3  # the event taken, the finish step, the completion (at most)
    assert hub.snapshots_read <= 1 + commits_after_the_event, hub.snapshots_read
    assert not hub._followed  # the follower stopped with its last viewer (every stream was closed)


def _all_seen(seen: list[list[str]]) -> Any:
    async def check() -> bool:
        return all(seen)

    return check


async def _waiting(instance: Any) -> bool:
    return (await instance.status()).status == Status.WAITING


# ---------------------------------------------------------------------------- behind `hutch gateway`
ROUNDS = 3
IDLE_S = 2.0  # long enough for ten polls of the old 0.2 s re-read


class Stepper(WorkflowEntrypoint):
    """Waits for a ``go`` event, then runs a step, ROUNDS times: the test decides when it moves."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        for n in range(ROUNDS):
            await step.wait_for_event(f"wait {n}", "go", timeout="1 hour")
            await step.do(f"step {n}", _returns(n))
        return "done"


def _returns(n: int) -> Callable[[], int]:
    return lambda: n


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {"stepper": Stepper}


class CommandLog:
    """The Redis commands some clients send, by client: every command their connections pack.

    A connection is the client's when it is in use from the client's pool (a single server) or
    one of the connections of the client's cluster nodes. Subscriptions and a new connection's
    handshake are left out: they read nothing.
    """

    IGNORED = frozenset({"SSUBSCRIBE", "SUNSUBSCRIBE", "SUBSCRIBE", "UNSUBSCRIBE", "PING", "HELLO", "CLIENT", "AUTH"})

    def __init__(self, clients: list[Client], monkeypatch: pytest.MonkeyPatch) -> None:
        self.clients = clients
        self.commands: list[list[tuple[str, ...]]] = [[] for _ in clients]
        pack = AbstractConnection.pack_command
        log = self

        def counted(connection: AbstractConnection, *args: Any) -> Any:
            owner = log._owner(connection)
            if owner is not None:
                words = tuple(a.decode() if isinstance(a, bytes) else str(a) for a in args[:3])
                if words[0].upper() not in CommandLog.IGNORED:
                    log.commands[owner].append(words)
            return pack(connection, *args)

        monkeypatch.setattr(AbstractConnection, "pack_command", counted)

    def _owner(self, connection: AbstractConnection) -> int | None:
        for n, client in enumerate(self.clients):
            redis: Any = client._store.redis
            if isinstance(redis, RedisCluster):
                nodes = redis.nodes_manager.nodes_cache.values()
                if any(connection in node._connections for node in nodes):
                    return n
            elif connection in redis.connection_pool._in_use_connections:
                return n
        return None

    def mark(self) -> list[int]:
        """Where each client's log is now, for :meth:`since`."""
        return [len(c) for c in self.commands]

    def since(self, mark: list[int]) -> list[list[tuple[str, ...]]]:
        """Each client's commands since ``mark``."""
        return [c[n:] for c, n in zip(self.commands, mark, strict=True)]

    def seq_reads(self, n: int) -> int:
        """The client's reads of an instance's commit counter (``HGET <meta> seq``)."""
        return sum(1 for c in self.commands[n] if c[0].upper() == "HGET" and c[2] == "seq")


@dataclass
class _Gateways:
    """A worker (with its colocated client) and remote clients, as ``hutch gateway`` processes have."""

    settings: Settings
    worker_client: Client
    gateways: list[Client] = field(default_factory=list)

    async def seq(self, instance_id: str) -> int:
        """The instance's commit counter, read through the worker's client (not a gateway's)."""
        client = self.worker_client
        store: Any = client._store
        key = store.keys.meta(client._partition("stepper", instance_id), "stepper", instance_id)
        return int(await store.redis.hget(key, "seq"))


@contextlib.asynccontextmanager
async def _deployment(redis_url: str, amqp_url: str, gateways: int) -> AsyncIterator[_Gateways]:
    """A worker and ``gateways`` remote clients, in a namespace of their own (deleted afterwards)."""
    namespace = unique("live")
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=4, heartbeat_s=0.2)
    worker_client, worker = await start_distributed(
        WORKFLOWS, settings=settings, limits=settings.limits, clock=Clock(), resources={}, binding_names={}
    )
    deployment = _Gateways(settings, worker_client)
    try:
        for _ in range(gateways):
            deployment.gateways.append(await hutch.connect(WORKFLOWS, settings=settings))
        yield deployment
    finally:
        for gateway in deployment.gateways:
            await gateway.close()
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()
        await worker_client.close()
        await drop_namespace(namespace, redis_url)


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
async def gateways(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[_Gateways]:
    """Two gateway clients and a worker on the shared Redis (or the private Redis Cluster) and RabbitMQ."""
    redis_url = str(request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url"))
    async with _deployment(redis_url, amqp_url, 2) as deployment:
        yield deployment


def _hub(client: Client, **options: Any) -> LiveInstances:
    names = WorkflowNames(client)

    async def snapshot(workflow: str, instance_id: str) -> dict[str, Any]:
        return await instance_snapshot(client, names, workflow, instance_id)

    return LiveInstances(client, snapshot, **options)


@dataclass
class _Viewer:
    """One page showing the instance: the latest snapshot it got."""

    hub: LiveInstances
    instance_id: str
    latest: dict[str, Any] | None = None

    async def run(self) -> None:
        async with contextlib.aclosing(self.hub.stream("stepper", self.instance_id)) as stream:
            async for text in stream:
                self.latest = json.loads(text)["detail"]
                if self.latest["status"] == Status.COMPLETE:
                    return

    def waiting_on(self, n: int) -> bool:
        """Shows the instance idle, waiting for round ``n``'s event."""
        detail = self.latest
        return (
            detail is not None
            and detail["status"] == Status.WAITING
            and any(s["name"] == f"wait {n}" and s["end"] is None for s in detail["steps"])
        )


async def _read_at(hubs: list[LiveInstances], instance_id: str, seq: int) -> bool:
    """Every hub's follower of the instance read it at ``seq`` and is not reading."""
    followers = [hub._followed.get(("stepper", instance_id)) for hub in hubs]
    return all(f is not None and f.seq == seq and not f.reading for f in followers)


def _all(viewers: list[_Viewer], check: Callable[[_Viewer], bool]) -> Callable[[], Awaitable[bool]]:
    async def every() -> bool:
        return all(check(v) for v in viewers)

    return every


@pytest.mark.rabbitmq
async def test_a_gateway_reads_a_watched_instance_once_per_commit_and_never_while_it_idles(
    gateways: _Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two gateways (as two `hutch gateway` processes), two pages each. poll_s is what the
    # follower would poll at if it had no announcements.
    log = CommandLog(gateways.gateways, monkeypatch)
    hubs = [_hub(gateway, poll_s=0.2) for gateway in gateways.gateways]
    iid = unique("live")
    instance = await gateways.worker_client.workflow("stepper").create(id=iid)
    await eventually(lambda: _waiting(instance))
    seq_before = await gateways.seq(iid)
    viewers = [_Viewer(hub, iid) for hub in hubs for _ in range(2)]
    try:
        async with asyncio.timeout(60):
            async with asyncio.TaskGroup() as tasks:
                for viewer in viewers:
                    tasks.create_task(viewer.run())
                for n in range(ROUNDS):
                    await eventually(_all(viewers, lambda v, n=n: v.waiting_on(n)), timeout=30)
                    # The followers are done reading: they read at the instance's seq (an
                    # announcement heard during a read may still cost one more, at most one per commit).
                    seq = await gateways.seq(iid)
                    await eventually(lambda seq=seq: _read_at(hubs, iid, seq), timeout=30)
                    before = log.mark()
                    await asyncio.sleep(IDLE_S)  # the instance idles: no gateway reads anything
                    assert log.since(before) == [[] for _ in hubs]
                    await instance.send_event("go")
    finally:
        for hub in hubs:
            await hub.close()
    assert all(v.latest is not None and v.latest["status"] == Status.COMPLETE for v in viewers)
    commits = await gateways.seq(iid) - seq_before
    assert commits >= 2 * ROUNDS  # each round: at least the event taken and the step
    for n, hub in enumerate(hubs):
        # One describe() for the first snapshot and at most one per commit after it, shared by
        # the gateway's pages; seq read once, when the follower started.
        assert hub.snapshots_read <= 1 + commits, (n, hub.snapshots_read, commits)
        assert log.seq_reads(n) == 1, log.commands[n]


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_lost_announcement_is_caught_by_the_safety_read_which_marks_the_instance_again(
    redis_url: str, amqp_url: str
) -> None:
    # One gateway on the single server; its watched mark deleted by hand, as a Redis restart would.
    async with _deployment(redis_url, amqp_url, 1) as deployment:
        hub = _hub(deployment.gateways[0], poll_s=600.0, quiet_s=0.5)
        worker_client = deployment.worker_client
        iid = unique("live")
        instance = await worker_client.workflow("stepper").create(id=iid)
        await eventually(lambda: _waiting(instance))
        store: Any = worker_client._store
        watched = store.keys.watched(worker_client._partition("stepper", iid))
        viewer = _Viewer(hub, iid)
        try:
            async with asyncio.timeout(60):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(viewer.run())
                    await eventually(_all([viewer], lambda v: v.waiting_on(0)), timeout=30)
                    assert await store.redis.zscore(watched, f"stepper:{iid}") is not None  # marked
                    await store.redis.delete(watched)  # lost: its commits are not announced
                    await instance.send_event("go")
                    # Seen all the same, by the safety re-read, which marks the instance again.
                    await eventually(_all([viewer], lambda v: v.waiting_on(1)), timeout=30)
                    await eventually(lambda: _marked(store, watched, f"stepper:{iid}"), timeout=30)
                    hub.quiet_s = 600.0  # from now on only announcements can tell the follower
                    for n in (1, 2):
                        await instance.send_event("go")
                        if n < ROUNDS - 1:
                            await eventually(_all([viewer], lambda v, n=n: v.waiting_on(n + 1)), timeout=30)
        finally:
            await hub.close()
    assert viewer.latest is not None and viewer.latest["status"] == Status.COMPLETE


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_while_the_channel_is_not_heard_the_follower_polls(redis_url: str, amqp_url: str) -> None:
    # The gateway's pub/sub connection goes to a Redis that is not there (its subscription keeps
    # failing): the page still follows the instance, by re-reading its seq every poll_s.
    dead = Redis(port=free_port(), socket_connect_timeout=1)
    async with _deployment(redis_url, amqp_url, 1) as deployment:
        gateway = deployment.gateways[0]
        commits = CommitFeed(
            gateway._store,  # type: ignore[arg-type]
            settle_s=0.2,
            feed=lambda _redis, on_message: ChannelFeed(dead, on_message, retry_s=0.2),
        )
        gateway._commits = commits
        hub = _hub(gateway, poll_s=0.2, quiet_s=600.0)
        iid = unique("live")
        instance = await deployment.worker_client.workflow("stepper").create(id=iid)
        await eventually(lambda: _waiting(instance))
        viewer = _Viewer(hub, iid)
        try:
            async with asyncio.timeout(60):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(viewer.run())
                    for n in range(ROUNDS):
                        await eventually(_all([viewer], lambda v, n=n: v.waiting_on(n)), timeout=30)
                        await instance.send_event("go")
        finally:
            await hub.close()
            await commits.close()
            await dead.aclose()
    assert viewer.latest is not None and viewer.latest["status"] == Status.COMPLETE
    assert commits.announcements == 0 and hub.seq_reads > 1  # polled


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_while_a_worker_of_an_earlier_version_commits_the_follower_polls(
    redis_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rolling deploy: the gateway is new, the worker is not. Such a worker does not say it
    # announces commits (membership.FEATURES) and does not (its commit script publishes nothing).
    monkeypatch.setattr(membership, "FEATURES", tuple(f for f in membership.FEATURES if f != ANNOUNCES_CHANGES))
    async with _deployment(redis_url, amqp_url, 1) as deployment:
        store: Any = deployment.worker_client._store
        script = store._commit.script
        silent = "\n".join(line for line in script.splitlines() if "ARGV[P + 3]" not in line)
        assert silent != script
        store._commit = store.redis.register_script(silent)
        hub = _hub(deployment.gateways[0], poll_s=0.2, quiet_s=600.0)
        iid = unique("live")
        instance = await deployment.worker_client.workflow("stepper").create(id=iid)
        await eventually(lambda: _waiting(instance))
        viewer = _Viewer(hub, iid)
        try:
            async with asyncio.timeout(60):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(viewer.run())
                    for n in range(ROUNDS):
                        await eventually(_all([viewer], lambda v, n=n: v.waiting_on(n)), timeout=30)
                        await instance.send_event("go")
        finally:
            await hub.close()
    assert viewer.latest is not None and viewer.latest["status"] == Status.COMPLETE
    assert hub.seq_reads > 1  # polled


async def _marked(store: Any, watched: str, member: str) -> bool:
    return await store.redis.zscore(watched, member) is not None
