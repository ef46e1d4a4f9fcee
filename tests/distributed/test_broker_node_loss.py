"""RabbitMQ as a cluster: one node stopped under running workers costs seconds and loses nothing.

The workers and clients are given all three nodes' URLs of a private cluster
(:class:`tests.private_servers.PrivateRabbitMQCluster`, started once per session; the shared broker is
never touched). ``rabbitmqctl stop_app`` then takes down the node a worker is connected to: the
worker reconnects to another node, its partitions make progress again within seconds (printed,
``pytest -s``), a worker and a client started while the node is down start normally (every queue,
the dead-letter queue included, is a replicated quorum queue), and once the node is back every
instance completes with each step committed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import aiormq
import hutch
import pytest
from hutch import Client, Instance, Settings, WorkflowEntrypoint
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Outgoing
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers import Worker
from hutch.consumers.runtime import start_distributed

from tests.conftest import IN_CI, REDIS_URL, drop_namespace
from tests.helpers import eventually, ids_per_partition, unique, worker_of
from tests.tcp_proxy import TCPProxy

if TYPE_CHECKING:
    from tests.private_servers import PrivateRabbitMQ, PrivateRabbitMQCluster

pytestmark = [pytest.mark.redis]

T = TypeVar("T")
PARTITIONS = 4


class _LoopThread:
    """An event loop in a thread of its own, for the session's cluster.

    The nodes are child processes of the loop that started them, and each test runs on a loop of
    its own; this one lives for the whole session. Tests reach the nodes through ``rabbitmqctl``,
    which any loop can run.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hutch-test-rabbitmq-cluster", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def rabbitmq_cluster_loop() -> Iterator[_LoopThread]:
    """The loop the session's cluster nodes run under: a node is stopped and started again through it."""
    runner = _LoopThread()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="session")
def rabbitmq_cluster(rabbitmq_cluster_loop: _LoopThread) -> Iterator[PrivateRabbitMQCluster]:
    """A private 3-node RabbitMQ cluster for the session; skipped locally without RabbitMQ, failing in CI."""
    from tests.private_servers import RABBITMQ_HOME, PrivateRabbitMQCluster

    def unavailable(message: str) -> None:
        if IN_CI:
            pytest.fail(f"{message} (CI must run the RabbitMQ cluster tests)")
        pytest.skip(message)

    if not (RABBITMQ_HOME / "bin" / "rabbitmq-server").exists() or shutil.which("erl") is None:
        unavailable("RabbitMQ is not installed: a private cluster needs rabbitmq-server")
    runner = rabbitmq_cluster_loop
    cluster = PrivateRabbitMQCluster()
    try:
        runner.run(cluster.start(), timeout=300)
    except Exception as exc:
        unavailable(f"the private RabbitMQ cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        runner.run(cluster.close(), timeout=180)


# ----------------------------------------------------------------------------- the workload
_TICKING = threading.Event()  # cleared: every Ticker's next tick says stop


async def _tick() -> bool:
    await asyncio.sleep(0.02)
    return _TICKING.is_set()


class Ticker(WorkflowEntrypoint):
    """Ticks (one short step after another) until the test says stop; returns how many ticks said go on."""

    async def run(self, event: Any, step: Any) -> int:
        ticks = 0
        while await step.do("tick", _tick, config={"retries": {"limit": 20, "delay": "50 milliseconds"}}):
            ticks += 1
        return ticks


def _node_of(transport: object, cluster: PrivateRabbitMQCluster) -> PrivateRabbitMQ:
    assert isinstance(transport, RabbitMQTransport)
    node = transport.node or ""
    return next(n for n in cluster.nodes if f":{n.port}/" in node)


async def _committed_ticks(instance: Instance) -> list[datetime]:
    """When each committed tick of the instance ended."""
    detail = await instance.describe()
    return [s.end for s in detail.steps if s.name == "tick" and s.end is not None and s.success]


def _longest_stall(ends: list[datetime], start: datetime, window: timedelta) -> float:
    """The longest time in [start, start + window] without a committed step (seconds)."""
    points = [start, *sorted(e for e in ends if start < e <= start + window)]
    if len(points) == 1:
        return window.total_seconds()
    return max((b - a).total_seconds() for a, b in itertools.pairwise(points))


async def test_a_stopped_node_costs_its_worker_seconds_new_processes_start_and_nothing_is_lost(
    rabbitmq_cluster: PrivateRabbitMQCluster, redis_url: str
) -> None:
    cluster = rabbitmq_cluster
    namespace = unique("nodeloss")
    settings = Settings(
        redis_url=REDIS_URL,
        amqp_url=",".join(cluster.urls),  # every process is given every node
        namespace=namespace,
        partitions=PARTITIONS,
        heartbeat_s=0.2,
        worker_ttl_s=1.0,
        timer_poll_s=0.3,
    )
    workflows = {"ticker": Ticker}
    clients: list[Client] = []

    async def start_worker() -> tuple[Client, Worker]:
        client, worker = await start_distributed(
            workflows, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
        )
        clients.append(client)
        return client, worker

    stopped: PrivateRabbitMQ | None = None
    _TICKING.set()
    try:
        _, worker_a = await start_worker()
        _, worker_b = await start_worker()
        await eventually(lambda: _both_own_some(worker_a, worker_b), timeout=15)
        client = await hutch.connect(workflows, settings=settings)
        clients.append(client)
        instances = await client.workflow("ticker").create_batch([{"params": {}} for _ in range(16)])

        async def all_ticking() -> bool:
            return all([len(await _committed_ticks(i)) >= 3 for i in instances])

        await eventually(all_ticking, timeout=30, interval=0.2)

        # Stop the node worker A is connected to.
        stopped = _node_of(worker_a.transport, cluster)
        owned = worker_a.partitions
        leaders = json.loads(await stopped.ctl("list_queues", "name", "leader", "--formatter", "json"))
        led = sorted(q["name"] for q in leaders if q["name"].startswith(namespace) and q["leader"] == stopped.node)
        stop_at = datetime.now(UTC)
        await stopped.ctl("stop_app")
        print(
            f"\nstopped {stopped.node} (worker A's node; A owned partitions {owned}; it led {led}) in "
            f"{(datetime.now(UTC) - stop_at).total_seconds():.2f} s"
        )

        # While it is down, a new worker and a new client start, and the client creates instances.
        loop = asyncio.get_running_loop()
        began = loop.time()
        _, worker_c = await start_worker()
        late_client = await hutch.connect(workflows, settings=settings)
        clients.append(late_client)
        print(f"a new worker and a new client started in {loop.time() - began:.2f} s with the node down")
        late = await late_client.workflow("ticker").create_batch([{"params": {}} for _ in range(4)])
        await eventually(lambda: _ticked([*instances, *late], since=stop_at), timeout=30, interval=0.2)
        await asyncio.sleep(max(0.0, 6.0 - (datetime.now(UTC) - stop_at).total_seconds()))
        assert _node_of(worker_a.transport, cluster) is not stopped  # A moved to a live node

        # Worker A's partitions (and every other) went on within seconds.
        # A partition's stall: the longest time after the stop with no step committed in it.
        ends: dict[int, list[datetime]] = {}
        instance_stall = 0.0
        for instance in instances:
            committed = await _committed_ticks(instance)
            ends.setdefault(partition_of("ticker", instance.id, PARTITIONS), []).extend(committed)
            instance_stall = max(instance_stall, _longest_stall(committed, stop_at, timedelta(seconds=6)))
        stalls = {p: round(_longest_stall(e, stop_at, timedelta(seconds=6)), 2) for p, e in sorted(ends.items())}
        print(
            f"longest stall after the stop, per partition (s): {stalls}; worker A's partitions: "
            f"{max(stalls[p] for p in owned):.2f} s; any one instance: {instance_stall:.2f} s"
        )
        assert all(stall < 5.0 for stall in stalls.values()), stalls

        await stopped.ctl("start_app")
        stopped = None
        await asyncio.sleep(1.0)
        _TICKING.clear()
        for instance in [*instances, *late]:
            final = await instance.wait(timeout=60)
            assert final.status == "complete", final
            ticks = await _committed_ticks(instance)
            # Each tick committed exactly once: the output counts the ticks that said go on, and
            # the history holds those plus the last one.
            assert final.output == len(ticks) - 1, (instance.id, final.output, len(ticks))
        for worker in (worker_a, worker_b, worker_c):
            assert isinstance(worker.transport, RabbitMQTransport)
            assert worker.transport.can_consume
        assert await worker_b.transport.dead_letters() == []
    finally:
        _TICKING.clear()
        if stopped is not None:
            with contextlib.suppress(Exception):
                await stopped.ctl("start_app")
        transport: Any = None
        for c in reversed(clients):
            runtime_worker = c.runtime_worker
            if isinstance(runtime_worker, Worker):
                transport = runtime_worker.transport
                await runtime_worker.shutdown(timeout=0)
            await c.close()
        if transport is not None:
            cleaner = RabbitMQTransport(cluster.urls, partitions=PARTITIONS, namespace=namespace)
            await cleaner.start()
            await cleaner.delete_topology()
            await cleaner.close()
        await drop_namespace(namespace)


async def _both_own_some(a: Worker, b: Worker) -> bool:
    return bool(a.partitions) and bool(b.partitions) and len(a.partitions) + len(b.partitions) == PARTITIONS


async def _ticked(instances: list[Instance], *, since: datetime) -> bool:
    for instance in instances:
        if not any(end > since for end in await _committed_ticks(instance)):
            return False
    return True


async def test_a_worker_cut_off_from_every_node_gives_its_partitions_to_one_that_can_consume(
    redis_url: str, amqp_url: str
) -> None:
    # The shared broker; worker A reaches it only through a proxy, which then goes silent (a network
    # partition between A and every node), while worker B still reaches it.
    namespace = unique("cutoff")
    settings_b = Settings(
        redis_url=REDIS_URL,
        amqp_url=amqp_url,
        namespace=namespace,
        partitions=PARTITIONS,
        heartbeat_s=0.2,
        worker_ttl_s=1.0,
        timer_poll_s=0.3,
    )
    workflows = {"ticker": Ticker}
    clients: list[Client] = []
    _TICKING.set()
    async with TCPProxy("127.0.0.1", 5672) as proxy:
        settings_a = settings_b.model_copy(
            update={"amqp_url": amqp_url.replace(":5672", f":{proxy.port}"), "amqp_connect_timeout_s": 0.5}
        )
        try:
            for settings in (settings_a, settings_b):
                client, _ = await start_distributed(
                    workflows, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
                )
                clients.append(client)
            worker_a, worker_b = (worker_of(c) for c in clients)
            await eventually(lambda: _both_own_some(worker_a, worker_b), timeout=15)
            # Two instances in every partition, so each of A's partitions has a stall to measure.
            spread = [iid for ids in ids_per_partition("ticker", PARTITIONS, 2).values() for iid in ids]
            instances = await clients[1].workflow("ticker").create_batch([{"id": iid, "params": {}} for iid in spread])
            await eventually(lambda: _ticked(instances, since=datetime.now(UTC) - timedelta(hours=1)), timeout=30)
            owned = worker_a.partitions

            loop = asyncio.get_running_loop()
            cut_at, cut_wall = loop.time(), datetime.now(UTC)
            proxy.pause()
            await eventually(lambda: _true(worker_b.partitions == list(range(PARTITIONS))), timeout=15)
            taken_s = loop.time() - cut_at
            assert worker_a.partitions == []
            assert not worker_a.transport.can_consume
            await eventually(lambda: _ticked(instances, since=cut_wall + timedelta(seconds=taken_s)), timeout=15)
            stalls: dict[int, float] = {}
            for instance in instances:
                p = partition_of("ticker", instance.id, PARTITIONS)
                stall = _longest_stall(await _committed_ticks(instance), cut_wall, timedelta(seconds=8))
                stalls[p] = round(max(stalls.get(p, 0.0), stall), 2)
            print(
                f"\nworker A cut off: worker B owned A's partitions {owned} after {taken_s:.2f} s; longest stall "
                f"per partition (s): {dict(sorted(stalls.items()))}"
            )
            assert max(stalls[p] for p in owned) < 5.0 + 1.0, stalls  # detection 2 s + ttl 1 s + ticks

            proxy.resume()  # A reconnects and rejoins: the partitions are split again
            await eventually(lambda: _both_own_some(worker_a, worker_b), timeout=20)
            _TICKING.clear()
            for instance in instances:
                final = await instance.wait(timeout=60)
                assert final.status == "complete", final
                assert final.output == len(await _committed_ticks(instance)) - 1
        finally:
            _TICKING.clear()
            proxy.resume()
            for client in reversed(clients):
                worker = worker_of(client)
                await worker.shutdown(timeout=0)
                await client.close()
            cleaner = RabbitMQTransport(amqp_url, partitions=PARTITIONS, namespace=namespace)
            await cleaner.start()
            await cleaner.delete_topology()
            await cleaner.close()
            await drop_namespace(namespace)


async def test_a_classic_dead_letter_queue_whose_node_is_down_does_not_stop_a_start(
    rabbitmq_cluster: PrivateRabbitMQCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # A deployment made before dead-letter queues were quorum queues: its classic one lives on one node.
    cluster = rabbitmq_cluster
    namespace = unique("classic-dlq")
    home, other = cluster.nodes[0], cluster.nodes[1]
    connection = await aiormq.connect(home.url)
    channel = await connection.channel()
    await channel.queue_declare(f"{namespace}.dlq", durable=True, arguments={"x-queue-type": "classic"})
    await connection.close()
    transport = RabbitMQTransport(other.url, partitions=1, namespace=namespace)
    await home.ctl("stop_app")
    try:
        with caplog.at_level("WARNING", logger="hutch.broker.transports.rabbitmq"):
            await transport.start()  # used to fail: NOT_FOUND - home node ... is down
        assert any(f"{namespace}.dlq" in record.getMessage() for record in caplog.records)
        await transport.publish([Outgoing(0, b"still published")])
        assert await transport.ready_count(0) == 1
    finally:
        await home.ctl("start_app")
        await transport.close()
        cleaner = RabbitMQTransport(other.url, partitions=1, namespace=namespace)
        await cleaner.start()
        await cleaner.delete_topology()
        await cleaner.close()


async def _true(value: bool) -> bool:
    return value


class Approval(WorkflowEntrypoint):
    """Waits for one ``go`` event and returns its payload."""

    async def run(self, event: Any, step: Any) -> Any:
        return (await step.wait_for_event("go", "go", timeout="5 minutes")).payload


async def test_client_creates_and_events_go_on_within_seconds_when_the_clients_node_stops(
    rabbitmq_cluster: PrivateRabbitMQCluster, rabbitmq_cluster_loop: _LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    # The client starts first, so its node declares and leads every partition queue: stopping it
    # (a clean shutdown, as `rabbitmqctl stop` does) takes the client's connection and every
    # queue's leader at once, with publishes in flight. The broker then nacks publishes for a
    # while, leaves some unconfirmed, and can keep nacking one queue on a channel for good; each
    # create and event must still be confirmed within seconds, on another node.
    cluster = rabbitmq_cluster
    namespace = unique("nodeloss-publish")
    settings = Settings(
        redis_url=REDIS_URL,
        amqp_url=",".join(cluster.urls),
        namespace=namespace,
        partitions=8,
        heartbeat_s=0.2,
        worker_ttl_s=1.0,
        timer_poll_s=0.3,
    )
    workflows = {"approval": Approval}
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    stopped: PrivateRabbitMQ | None = None

    def on_cluster_loop(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, rabbitmq_cluster_loop.loop))

    try:
        client = await hutch.connect(workflows, settings=settings)
        clients.append(client)
        for _ in range(2):
            worker_client, _ = await start_distributed(
                workflows, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
            )
            clients.append(worker_client)
        node = _node_of(client._dispatcher.transport, cluster)  # type: ignore[attr-defined]
        listing = await node.ctl("list_queues", "name", "leader", "--formatter", "json")
        queues = json.loads(listing[listing.find("[") :])
        led = [q["name"] for q in queues if q["name"].startswith(namespace) and q["leader"] == node.node]

        stop = asyncio.Event()
        created: list[Instance] = []
        unsent: asyncio.Queue[Instance | None] = asyncio.Queue()  # None: no more
        calls: list[tuple[float, float, str]] = []  # (began, took, what) of each call that returned
        failures: list[str] = []

        async def timed(what: str, call: Coroutine[Any, Any, Any]) -> Any:
            began = loop.time()
            try:
                result = await call
            except Exception as exc:
                failures.append(f"{what} failed after {loop.time() - began:.2f} s: {exc!r}")
                return None
            calls.append((began, loop.time() - began, what))
            return result

        async def creating() -> None:
            while not stop.is_set():
                instance = await timed("create", client.workflow("approval").create(params={}))
                if instance is not None:
                    created.append(instance)
                    unsent.put_nowait(instance)
                await asyncio.sleep(0.01)  # pacing: a steady stream, not a flood

        async def sending() -> None:
            while (instance := await unsent.get()) is not None:
                await timed("send_event", instance.send_event("go", instance.id))

        creators = [asyncio.create_task(creating()) for _ in range(4)]
        senders = [asyncio.create_task(sending()) for _ in range(4)]
        with caplog.at_level("WARNING", logger="hutch"):
            await eventually(lambda: _true(len(calls) >= 100), timeout=30)
            stopped, stop_at = node, loop.time()
            await on_cluster_loop(node.stop())  # SIGTERM; returns once the node is gone
            print(f"\nstopped {node.node} (the client's; it led {len(led)} queues) in {loop.time() - stop_at:.2f} s")
            await eventually(lambda: _true(any(began > stop_at + 6.0 for began, _, _ in calls)), timeout=90)
            stop.set()
            await asyncio.gather(*creators)
            for _ in senders:
                unsent.put_nowait(None)
            await asyncio.gather(*senders)
        # (By the format string: aio-pika logs records whose arguments cannot be formatted afterwards.)
        publish_failures = [r.getMessage() for r in caplog.records if "start messages failed" in str(r.msg)]

        after = sorted((began, took) for began, took, _ in calls if began + took > stop_at)
        slowest = max(took for _, took in after)
        # The longest time after the stop with no call returning: how long client work stalled.
        ends = sorted([stop_at, *(began + took for began, took in after)])
        stall = max(b - a for a, b in itertools.pairwise(ends))
        print(
            f"{len(calls)} creates and events; {len(after)} returned after the stop; slowest {slowest:.2f} s; "
            f"longest stall {stall:.2f} s; failures {len(failures)}; publishing channels replaced "
            f"{client._dispatcher.transport.publish_channels_replaced}"  # type: ignore[attr-defined]
        )
        assert failures == [], failures[:5]
        assert publish_failures == [], publish_failures[:5]  # creates that only worked from the announcement
        assert slowest < 5.0, slowest
        assert stall < 5.0, stall
        # Nothing a call accepted is lost: every instance created gets its event and completes.
        for instance in created:
            final = await instance.wait(timeout=60)
            assert final.status == "complete" and final.output == instance.id, final
    finally:
        if stopped is not None:
            await on_cluster_loop(stopped.start())

            async def whole() -> bool:
                return len(await cluster.running_nodes()) == len(cluster.nodes)

            await eventually(whole, timeout=60, interval=0.2)
        for c in reversed(clients):
            if isinstance(c.runtime_worker, Worker):
                await c.runtime_worker.shutdown(timeout=0)
            await c.close()
        cleaner = RabbitMQTransport(cluster.urls, partitions=8, namespace=namespace)
        await cleaner.start()
        await cleaner.delete_topology()
        await cleaner.close()
        await drop_namespace(namespace)
