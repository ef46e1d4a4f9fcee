"""One chaos run: private servers, proxies, ``hutch worker`` subprocesses, load, faults, and the check.

A :class:`ChaosRun` owns everything it starts and stops all of it on exit, even on failure:

- a private Redis (AOF fsynced on every write, so it can be restarted with its data) holding the
  run's instances, in a namespace of its own;
- RabbitMQ: the shared broker (the run's queues are deleted on exit), or a private 3-node cluster;
- TCP proxies between the workers and both servers, which the faults cut and stall; on simulated
  hosts (tests/chaos/netns.py) each worker reaches the servers over its own link instead;
- 2 or 3 ``hutch worker`` processes running :class:`~tests.chaos.workflow.ChaosWorkflow`, and a client
  in this process (connected straight to the servers) that creates instances in waves and sends
  each one ``approval`` event, some before the instance waits for it and some after;
- the execution ledger in the shared Redis (keys deleted on exit).

A scenario's faults run while the load does; then the run waits for every instance to finish and
:meth:`ChaosRun.check` proves the guarantees (tests/chaos/checker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import hutch
import msgpack
import redis.exceptions as redis_exceptions
from hutch import Client, Instance, Settings, WorkflowClient
from hutch.broker.envelopes import EventReceived, decode, encode
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Outgoing
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.store.redis import STORE_ERRORS
from redis.asyncio import Redis

from tests.chaos.checker import InstanceRecord, Report, check_dead_letters, check_instance, decode_execution
from tests.chaos.netns import HostNetwork
from tests.chaos.queues import undrained
from tests.chaos.workflow import TARGET, WORKFLOW, ChaosWorkflow, executions_key
from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.helpers import eventually, unique
from tests.private_servers import PrivateRabbitMQCluster, PrivateRedis
from tests.tcp_proxy import TCPProxy

log = logging.getLogger("tests.chaos")

T = TypeVar("T")


@dataclass(frozen=True)
class Form:
    """How big and how long a run is."""

    name: str
    instances: int
    waves: int  # instances are created in this many waves, spread over load_s
    load_s: float
    hold_s: float  # how long a fault is held (a worker stopped, a link down, a server down)
    settle_s: float  # between two faults
    repeats: int  # how many times a scenario repeats its fault
    step_s: tuple[float, float] = (0.2, 2.0)  # each step body runs this long (uniformly drawn)
    nap_s: float = 1.0
    window_s: float = 1.0  # how long the workflow waits for a second (duplicate) event
    late_event_s: tuple[float, float] = (1.0, 4.0)  # a late event is sent this long after creation
    quiesce_timeout_s: float = 120.0


SHORT = Form(
    "short",
    instances=40,
    waves=4,
    load_s=6,
    hold_s=2.5,
    settle_s=1.0,
    repeats=2,
    nap_s=0.5,
    window_s=0.5,
    late_event_s=(0.5, 2.5),
    quiesce_timeout_s=30,
)
LONG = Form("long", instances=300, waves=12, load_s=40, hold_s=6, settle_s=4, repeats=4, quiesce_timeout_s=300)

# Worker timing (the settings tests/distributed/procs.py starts workers with).
HEARTBEAT_S = 0.5
WORKER_TTL_S = 1.5
TIMER_POLL_S = 0.5


class ChaosRun:
    """Servers, workers, load and faults of one scenario run (``async with``).

    Args:
        scenario: the scenario's name (reports and the namespace).
        form: size and timing.
        workers: ``hutch worker`` processes.
        partitions: the deployment's partition count.
        hosts: run each worker on a simulated host of its own (``workers`` hosts) instead of in the
            root network namespace behind the proxies.
        cluster: RabbitMQ is a private 3-node cluster (the workers get every node's URL) instead of
            the shared broker behind a proxy.
        seed: for the random durations, event timing and fault targets.
    """

    def __init__(
        self,
        scenario: str,
        form: Form,
        *,
        workers: int = 3,
        partitions: int = 8,
        hosts: bool = False,
        cluster: bool = False,
        seed: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.form = form
        self.namespace = unique("chaos")
        self.partitions = partitions
        self.seed = random.randrange(2**32) if seed is None else seed
        self.rng = random.Random(self.seed)
        self.report = Report(scenario=scenario, form=form.name, seed=self.seed)
        self._worker_count = workers
        self._use_hosts = hosts
        self._use_cluster = cluster
        self.redis: PrivateRedis | None = None
        self.cluster: PrivateRabbitMQCluster | None = None
        self.network: HostNetwork | None = None
        self.redis_proxy: TCPProxy | None = None
        self.amqp_proxy: TCPProxy | None = None
        self._host_proxies: list[TCPProxy] = []
        self.workers: list[WorkerProcess] = []
        self.client: Client | None = None
        self.records: dict[str, InstanceRecord] = {}
        self.published: list[Outgoing] = []  # start and event messages the client published (duplicates)
        self.poison: set[bytes] = set()
        self._publish: Callable[[list[Outgoing]], Awaitable[None]] | None = None
        self.faults_ended_wall: float | None = None
        self.timeline: list[tuple[float, str]] = []  # (wall clock, what happened)
        self._started = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ChaosRun:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start servers, proxies, the client and the workers; return once the workers share the partitions."""
        self._started = time.monotonic()
        if self._use_hosts:
            self.network = await HostNetwork(self._worker_count).start()
        gateways = [host.gateway for host in self.network.hosts] if self.network else []
        self.redis = await PrivateRedis(bind=gateways).start()
        self.redis_proxy = await TCPProxy("127.0.0.1", self.redis.port).start()
        if self._use_cluster:
            self.cluster = await PrivateRabbitMQCluster().start()
            client_amqp = ",".join(self.cluster.urls)  # every node: the client reconnects like the workers
        else:
            self.amqp_proxy = await TCPProxy("127.0.0.1", 5672).start()
            client_amqp = AMQP_URL
        settings = Settings(
            redis_url=self.redis.url, amqp_url=client_amqp, namespace=self.namespace, partitions=self.partitions
        )
        self.client = await hutch.connect({WORKFLOW: ChaosWorkflow}, settings=settings)
        self._record_publishes()
        for i in range(self._worker_count):
            self.workers.append(WorkerProcess(self.namespace, {WORKFLOW: TARGET}, **await self._worker_options(i)))
        await asyncio.gather(*(worker.start() for worker in self.workers))
        try:
            await eventually(self._partitions_shared, timeout=30, interval=0.1)
        except AssertionError:
            owned = [worker.partitions() for worker in self.workers]
            raise AssertionError(
                f"the workers did not take every partition within 30 s (they own {owned}):\n{self.worker_logs()}"
            ) from None

    async def _worker_options(self, i: int) -> dict[str, Any]:
        assert self.redis is not None and self.redis_proxy is not None
        options: dict[str, Any] = {
            "partitions": self.partitions,
            "HUTCH_TEST_WORKER": f"w{i}",
            "HUTCH_HEARTBEAT_S": str(HEARTBEAT_S),
            "HUTCH_WORKER_TTL_S": str(WORKER_TTL_S),
            "HUTCH_TIMER_POLL_S": str(TIMER_POLL_S),
            "HUTCH_SHUTDOWN_TIMEOUT_S": "2",
        }
        if self.network is not None:
            # Everything the worker reaches goes over its host's link: the store (the private Redis
            # listens on the link's address), the broker and the ledger (proxies listening there).
            host = self.network[i]
            amqp = await TCPProxy("127.0.0.1", 5672, listen_host=host.gateway).start()
            ledger = await TCPProxy("127.0.0.1", 6379, listen_host=host.gateway).start()
            self._host_proxies += [amqp, ledger]
            options.update(
                netns=host.netns,
                HUTCH_REDIS_URL=self.redis.url_at(host.gateway),
                HUTCH_AMQP_URL=f"amqp://guest:guest@{host.gateway}:{amqp.port}/",
                HUTCH_TEST_LEDGER_URL=f"redis://{host.gateway}:{ledger.port}/0",
            )
            return options
        options.update(
            HUTCH_REDIS_URL=f"redis://127.0.0.1:{self.redis_proxy.port}/0",
            HUTCH_TEST_LEDGER_URL=REDIS_URL,
        )
        if self.cluster is not None:
            options["HUTCH_AMQP_URL"] = ",".join(self.cluster.urls)  # every node: amqp_url's cluster form
        else:
            assert self.amqp_proxy is not None
            options["HUTCH_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{self.amqp_proxy.port}/"
        return options

    async def _partitions_shared(self) -> bool:
        """Every partition is owned, by more than one worker (as their logs say)."""
        owned = [worker.partitions() or [] for worker in self.workers]
        spread = sum(1 for ps in owned if ps) >= min(2, len(owned))
        return spread and {p for ps in owned for p in ps} == set(range(self.partitions))

    def _record_publishes(self) -> None:
        """Keep what the client publishes (start and event messages), to publish duplicates of later."""
        transport = self.transport
        self._publish = publish = transport.publish

        async def recording(messages: Any) -> None:
            await publish(messages)
            self.published.extend(messages)

        transport.publish = recording  # type: ignore[method-assign]

    @property
    def transport(self) -> RabbitMQTransport:
        """The client's broker transport (straight to the broker, never through a proxy)."""
        assert self.client is not None
        transport: RabbitMQTransport = self.client._dispatcher.transport  # type: ignore[attr-defined]
        return transport

    async def close(self) -> None:
        """Stop everything this run started and delete its queues and keys; idempotent."""
        steps: list[Callable[[], Awaitable[Any]]] = [worker.close for worker in self.workers]
        if self.cluster is None and self.client is not None:
            steps.append(self._delete_topology)
        if self.client is not None:
            steps.append(self.client.close)
        steps += [proxy.close for proxy in [self.redis_proxy, self.amqp_proxy, *self._host_proxies] if proxy]
        steps += [server.close for server in (self.redis, self.cluster) if server is not None]
        if self.network is not None:
            steps.append(self.network.close)
        steps.append(lambda: drop_namespace(self.namespace))  # the ledger, in the shared Redis
        self.workers, self._host_proxies = [], []
        self.client = self.redis_proxy = self.amqp_proxy = self.redis = self.cluster = self.network = None
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("chaos run %s: clean-up step failed", self.namespace)

    async def _delete_topology(self) -> None:
        transport = RabbitMQTransport(AMQP_URL, partitions=self.partitions, namespace=self.namespace)
        await transport.start()
        try:
            await transport.delete_topology()
        finally:
            await transport.close()

    # ------------------------------------------------------------------ load
    async def load(self) -> None:
        """Create every instance in waves over ``form.load_s`` and send each its one event."""
        form, rng = self.form, self.rng
        ids = [f"c{i:04d}" for i in range(form.instances)]
        per_wave = -(-len(ids) // form.waves)
        events: list[tuple[float, str]] = []
        created_all = asyncio.Event()
        sender = asyncio.create_task(self._send_events(events, created_all), name="chaos-events")
        try:
            loop = asyncio.get_running_loop()
            begin = loop.time()
            for wave in range(form.waves):
                await asyncio.sleep(max(0.0, begin + wave * form.load_s / form.waves - loop.time()))  # pacing
                batch = []
                for iid in ids[wave * per_wave : (wave + 1) * per_wave]:
                    params = {
                        "prepare": round(rng.uniform(*form.step_s), 2),
                        "finish": round(rng.uniform(*form.step_s), 2),
                        "nap": form.nap_s,
                        "window": form.window_s,
                    }
                    self.records[iid] = InstanceRecord(iid, params, {"ok": True, "for": iid})
                    batch.append({"id": iid, "params": params})
                for i in range(0, len(batch), 100):
                    chunk = batch[i : i + 100]
                    # Safe to retry: create_batch skips the ids that exist already.
                    await self._retrying("create_batch", lambda chunk=chunk: self._workflow().create_batch(chunk))
                    self.report.instances = len(self.records)
                for item in batch:
                    # A third get their event at once (buffered until the wait), the rest later.
                    delay = 0.0 if rng.random() < 1 / 3 else rng.uniform(*form.late_event_s)
                    heapq.heappush(events, (loop.time() + delay, item["id"]))
        finally:
            created_all.set()
        await sender

    def _workflow(self) -> WorkflowClient:
        assert self.client is not None
        return self.client.workflow(WORKFLOW)

    async def _send_events(self, events: list[tuple[float, str]], created_all: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as sends:  # one task per event: a slow send holds up no other
            while events or not created_all.is_set():
                if not events or events[0][0] > loop.time():
                    await asyncio.sleep(0.02)  # pacing: until the next event's send time
                    continue
                _, iid = heapq.heappop(events)
                sends.create_task(self._send_event(iid), name=f"chaos-event-{iid}")

    async def _send_event(self, iid: str) -> None:
        record = self.records[iid]
        instance = Instance(self.client, WORKFLOW, iid)  # type: ignore[arg-type]
        record.event_sent_ms = time.time() * 1000
        # A Redis error comes from reading the instance, before anything is published: a retry cannot
        # send the event twice. (A publish the broker refused was not enqueued either.)
        await self._retrying(
            f"send_event to {iid}", lambda: instance.send_event(type="approval", payload=record.approval)
        )

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()``, retried: a client call must get through once the fault is over.

        Redis errors are what a Redis fault does to the client too (it talks to the same server):
        retried quietly for up to a minute. Anything else (the broker refusing a publish, say) is a
        broken guarantee: recorded in the report and retried for a few seconds, then given up on
        (None) so that the rest of the run still gets checked.
        """
        redis_deadline = time.monotonic() + 60
        failures = 0
        while True:
            try:
                return await call()
            except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError) as exc:
                log.info("chaos: retrying %s after %r", what, exc)
                if time.monotonic() > redis_deadline:
                    raise
            except Exception as exc:
                failures += 1
                self.report.errors.append(f"{what} failed: {exc!r}")
                if failures == 5:
                    self.report.errors.append(f"{what}: gave up after {failures} failures")
                    return None
            await asyncio.sleep(0.2 * (failures + 1))

    # ------------------------------------------------------------------ faults
    def fault(self, description: str) -> None:
        """Record an injected fault (the first word is its kind, for the table)."""
        self.note(description)
        self.report.faults.append(description)

    def note(self, description: str) -> None:
        """Record what happened when (the end of a fault, say) in :attr:`timeline`."""
        log.warning("chaos %s +%.1fs: %s", self.scenario, time.monotonic() - self._started, description)
        self.timeline.append((time.time(), description))

    async def hold(self, seconds: float) -> None:
        """Keep a fault in place (or let the system run between faults) for ``seconds``."""
        await asyncio.sleep(seconds)

    def pick_worker(self) -> int:
        return self.rng.randrange(len(self.workers))

    async def kill_worker(self, i: int) -> None:
        worker = self.workers[i]
        self.fault(f"SIGKILL worker w{i} (partitions {worker.partitions()})")
        worker.kill()
        await worker.wait(timeout=10)

    async def restart_worker(self, i: int) -> None:
        self.note(f"restart worker w{i}")
        await self.workers[i].start()

    def stop_worker(self, i: int) -> None:
        self.fault(f"SIGSTOP worker w{i} (partitions {self.workers[i].partitions()})")
        self.workers[i].pause()

    def continue_worker(self, i: int) -> None:
        self.note(f"SIGCONT worker w{i}")
        self.workers[i].resume()

    async def cut(self, proxy: TCPProxy, what: str) -> None:
        cut = await proxy.disconnect_all()
        self.fault(f"cut {what} ({cut} connections reset)")

    def stall(self, proxy: TCPProxy, what: str) -> None:
        self.fault(f"stall {what} (connections open, no traffic)")
        proxy.pause()

    def unstall(self, proxy: TCPProxy, what: str) -> None:
        self.note(f"{what} traffic flows again")
        proxy.resume()

    async def cut_host(self, i: int) -> None:
        assert self.network is not None
        self.fault(f"cut-link of host h{i} (worker w{i}, partitions {self.workers[i].partitions()})")
        await self.network[i].cut()

    async def heal_host(self, i: int) -> None:
        assert self.network is not None
        self.note(f"heal link of host h{i}")
        await self.network[i].heal()

    async def restart_redis(self, hold_s: float) -> None:
        assert self.redis is not None
        self.fault("restart-redis (down, then up with its append-only file)")
        await self.redis.stop()
        await self.hold(hold_s)
        await self.redis.start()
        self.note("redis is back")

    async def duplicate_messages(self, share: float) -> None:
        """Publish again a share of the start and event messages published so far (same message ids)."""
        sample = [m for m in self.published if self.rng.random() < share]
        kinds = [decode(m.body).kind for m in sample]
        self.fault(f"duplicate {len(sample)} messages ({kinds.count('created')} starts, {kinds.count('event')} events)")
        if sample:
            assert self._publish is not None
            await self._publish(sample)

    @contextlib.asynccontextmanager
    async def publishing_duplicates(self, batch: int = 10, streams: int = 3) -> AsyncIterator[None]:
        """Keep publishing duplicates of start messages (through the client's transport) while inside.

        A publish that fails is a broken guarantee (the broker should have taken it, or the transport
        retried it), recorded in the report.
        """
        assert self._publish is not None
        publish = self._publish
        starts = [m for m in self.published if decode(m.body).kind == "created"] or self.published
        stop = asyncio.Event()
        sent = 0

        async def keep_publishing() -> None:
            nonlocal sent
            while not stop.is_set():
                try:
                    await publish([self.rng.choice(starts) for _ in range(batch)])
                    sent += batch
                except Exception as exc:
                    self.report.errors.append(f"a publish failed while a fault was in place: {exc!r}")
                    return
                await asyncio.sleep(0.01)  # pacing: a steady stream, not a flood

        # A few streams at once, so that publishes are always in flight when the fault lands.
        tasks = [asyncio.create_task(keep_publishing(), name=f"chaos-duplicates-{i}") for i in range(streams)]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            self.note(f"published {sent} duplicate start messages meanwhile")

    async def poison_messages(self, count: int) -> None:
        """Publish ``count`` messages no worker can use to random partitions: each must be dead-lettered."""

        def ghost(n: int) -> bytes:  # a valid message, for an instance that does not exist
            return encode(
                EventReceived(
                    workflow=WORKFLOW, instance_id=f"ghost-{n}", event_type="approval", payload=b"\xc0", sent_ms=0
                )
            )

        makers: list[Callable[[int], bytes]] = [
            lambda n: bytes([0xC1]) + f"garbage {n}".encode(),  # 0xc1 is never valid msgpack
            lambda n: msgpack.packb({"kind": "bogus", "n": n}),
            lambda n: msgpack.packb({"kind": "event", "workflow": WORKFLOW, "instance_id": f"x{n}"}),  # fields missing
            ghost,
        ]
        bodies = [makers[n % len(makers)](len(self.poison) + n) for n in range(count)]
        self.poison.update(bodies)
        self.report.poison_sent = len(self.poison)
        self.fault(f"poison {count} messages")
        assert self._publish is not None
        await self._publish([Outgoing(self.rng.randrange(self.partitions), body) for body in bodies])

    # ------------------------------------------------------------------ after the faults
    async def quiesce(self) -> None:
        """Wait until every instance finished (or the form's deadline passed: those are stuck)."""
        assert self.client is not None
        self.faults_ended_wall = time.time()
        store = self.client._store
        pending = dict(self.records)
        ended: list[int] = []

        async def all_finished() -> bool:
            items = list(pending)
            try:
                pipe = store.redis.pipeline(transaction=False)
                for iid in items:
                    pipe.hmget(store.keys.meta(self._partition(iid), WORKFLOW, iid), ["status", "ended"])
                rows = await pipe.execute()
            except STORE_ERRORS:
                return False
            for iid, (status, end) in zip(items, rows, strict=True):
                if status is not None and status.decode() in ("complete", "errored", "terminated"):
                    pending.pop(iid)
                    ended.append(int(end or 0))
            return not pending

        # A run that already broke a guarantee (a client call failed) fails whatever happens next:
        # it waits less for instances that may never finish.
        timeout = self.form.quiesce_timeout_s if not self.report.errors else min(10.0, self.form.quiesce_timeout_s)
        with contextlib.suppress(AssertionError):
            await eventually(all_finished, timeout=timeout, interval=0.25)
        if not pending and ended:
            self.report.quiesce_s = max(0.0, max(ended) / 1000 - self.faults_ended_wall)

    def _partition(self, iid: str) -> int:
        return partition_of(WORKFLOW, iid, self.partitions)

    async def check(self) -> Report:
        """Prove the guarantees from Redis, the ledger and the broker; returns the report."""
        assert self.client is not None
        report = self.report
        store = self.client._store
        ids = list(self.records)
        ledger = Redis.from_url(REDIS_URL)
        try:
            for i in range(0, len(ids), 100):
                chunk = ids[i : i + 100]
                snapshots = await store.load_many([(self._partition(iid), WORKFLOW, iid) for iid in chunk])
                pipe = ledger.pipeline(transaction=False)
                for iid in chunk:
                    pipe.lrange(executions_key(self.namespace, iid), 0, -1)
                executions = await pipe.execute()
                for iid, snapshot, raw in zip(chunk, snapshots, executions, strict=True):
                    check_instance(
                        report,
                        self.records[iid],
                        snapshot.meta if snapshot else None,
                        snapshot.history if snapshot else [],
                        [decode_execution(r) for r in raw],
                    )
        finally:
            await ledger.aclose()
        if report.stuck:
            await self._diagnose_stuck(report)
        await self._check_broker(report)
        report.runtime_s = time.monotonic() - self._started
        return report

    async def _diagnose_stuck(self, report: Report) -> None:
        """Say who owns the partitions of the stuck instances (from Redis) and which workers live."""
        assert self.client is not None
        store = self.client._store
        partitions = sorted({self._partition(stuck.split(" ", 1)[0]) for stuck in report.stuck})
        owners = {p: await store.redis.get(store.keys.owner(p)) for p in partitions}
        workers = [worker.worker_id() for worker in self.workers]
        alive = [w.proc is not None and w.proc.returncode is None for w in self.workers]
        report.errors.append(
            f"stuck instances are in partitions {partitions}; their owner tokens in Redis: "
            f"{ {p: (o.decode() if o else None) for p, o in owners.items()} }; the workers: "
            f"{ {w: ('running' if a else 'exited') for w, a in zip(workers, alive, strict=True)} }"
        )

    async def _check_broker(self, report: Report) -> None:
        """Dead letters, and whether the partition queues drained (tests/chaos/queues.py)."""

        async def dead_lettered() -> bool:
            letters = await self.transport.dead_letters()
            check_dead_letters(report, [letter.body for letter in letters], self.poison)
            return report.dead_letters >= len(self.poison)

        with contextlib.suppress(AssertionError):
            await eventually(dead_lettered, timeout=15, interval=0.2)
        url = AMQP_URL if self.cluster is None else next(node.url for node in self.cluster.nodes if node.running)
        report.left_in_queues = await undrained(url, self.namespace, self.partitions, self.workers)

    def worker_logs(self, tail: int = 40) -> str:
        """The last lines of every worker's output (for failure messages)."""
        out = []
        for i, worker in enumerate(self.workers):
            lines = worker.output.splitlines()[-tail:]
            out.append(f"--- worker w{i} ---\n" + "\n".join(lines))
        return "\n".join(out)
