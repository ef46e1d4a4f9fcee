"""The RabbitMQ + Redis runtime beyond one in-process worker: worker subprocesses, and counted costs.

Two things live here:

- :func:`subprocess_connect`: the ``Connect`` factory behind ``python -m bench --runtime rabbitmq
  --workers N``: ``N`` ``hutch worker`` processes (``python -m hutch worker``) share the
  partitions of a fresh namespace; the bench process is only a remote client. W3/W4/W6 need no
  change for it: their times are taken inside step bodies with ``time.time()`` and travel back
  as the instance's *output* (Redis), never through process memory. MEM is skipped there: it
  measures the bench process's RSS, which holds no worker.
- ``python -m bench.distributed``: per-step costs of W1 and W2 with an instrumented in-process
  worker (broker messages published and Redis round trips, counted by wrapping the worker's
  ``RabbitMQTransport.publish`` and its Redis client's ``execute_command`` / pipeline
  ``execute``), the worker's RSS with 10 000 instances sleeping an hour (before, after creation,
  after a GC), and Redis bytes per finished 10-step instance (``MEMORY USAGE`` over its keys).

Usage::

    python -m bench.distributed [--w1-instances 200] [--w2-steps 1000] [--sleepers 10000] [--finished 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hutch
from hutch import Client, Settings, Status, WorkflowEntrypoint

from bench.child_process import die_with_parent
from bench.workloads import (
    Connect,
    Metrics,
    Sequential,
    SleepHour,
    _collect,
    _count,
    _finish,
    _rss_bytes,
    _until_status,
    w1_sequential,
    w2_long,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- worker subprocesses
class _WorkerProcess:
    """One ``hutch worker`` subprocess, its output in a temporary file."""

    def __init__(self, workflows: Mapping[str, type[WorkflowEntrypoint]], env: Mapping[str, str]) -> None:
        self._args = [sys.executable, "-m", "hutch", "worker"]
        for name, cls in workflows.items():
            self._args += ["--workflow", f"{name}={cls.__module__}:{cls.__qualname__}"]
        self._env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self._log = tempfile.NamedTemporaryFile(prefix="hutch-bench-worker-", suffix=".log", delete=False)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self._args,
            cwd=ROOT,
            env=self._env,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    @property
    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def owned(self) -> list[int] | None:
        """The partitions the worker last said it owns, or None before it said so."""
        owned = None
        for line in self.output.splitlines():
            if "owns partitions" in line:
                text = line.split("owns partitions", 1)[1].split("(")[0].strip()
                owned = [int(p) for p in text.strip("[]").split(",") if p.strip()]
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"bench worker exited with {self.proc.returncode}:\n{self.output}")
        return owned

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)  # drain, as a deployment stops a worker
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)


def subprocess_connect(workers: int, *, redis_url: str, amqp_url: str, pids: list[int] | None = None) -> Connect:
    """A ``Connect`` that starts ``workers`` worker processes on a fresh namespace, and a remote client.

    It returns once every partition is owned and no two workers claim the same one (the
    membership rebalance has settled), so the measurement does not include the hand-over.
    ``pids``, when given, holds the running workers' PIDs while the runtime is open.
    """

    @contextlib.asynccontextmanager
    async def connect(workflows: Mapping[str, type[WorkflowEntrypoint]]) -> AsyncIterator[Client]:
        from bench.__main__ import _drop_namespace

        namespace = f"bench-{uuid.uuid4().hex[:10]}"
        settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace)
        env = {"HUTCH_REDIS_URL": redis_url, "HUTCH_AMQP_URL": amqp_url, "HUTCH_NAMESPACE": namespace}
        procs = [_WorkerProcess(workflows, env) for _ in range(workers)]
        try:
            for proc in procs:
                await proc.start()
                if pids is not None and proc.proc is not None:
                    pids.append(proc.proc.pid)
            await _settled(procs, settings.partitions, timeout=60)
            async with hutch.connect(workflows, settings=settings) as client:
                yield client
        finally:
            if pids is not None:
                pids.clear()
            for proc in procs:
                await proc.stop()
            await _drop_namespace(redis_url, namespace, amqp_url)

    return connect


async def _settled(procs: list[_WorkerProcess], partitions: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        owned = [proc.owned() for proc in procs]
        if all(o for o in owned):
            flat = [p for o in owned for p in o or ()]
            if len(flat) == len(set(flat)) == partitions:
                return
        if loop.time() > deadline:
            logs = "\n".join(proc.output for proc in procs)
            raise RuntimeError(f"bench workers did not split {partitions} partitions within {timeout} s:\n{logs}")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- instrumented worker
@dataclass
class Counters:
    """What the in-process worker sent: broker messages (and confirm batches) and Redis round trips."""

    messages: int = 0
    all_messages: int = 0  # every RabbitMQTransport in this process: the worker's and the client's
    publish_calls: int = 0
    redis_round_trips: int = 0
    redis_commands: int = 0
    by_command: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.messages = self.all_messages = self.publish_calls = self.redis_round_trips = self.redis_commands = 0
        self.by_command = {}

    def _command(self, name: str) -> None:
        self.by_command[name] = self.by_command.get(name, 0) + 1


def _count_redis(redis: Any, counters: Counters) -> None:
    """Count every round trip of this client: one per command, one per pipeline execute."""
    execute_command, pipeline = redis.execute_command, redis.pipeline

    async def counted_command(*args: Any, **options: Any) -> Any:
        counters.redis_round_trips += 1
        counters.redis_commands += 1
        counters._command(str(args[0]).lower())
        return await execute_command(*args, **options)

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted_execute(*eargs: Any, **ekwargs: Any) -> Any:
            if pipe.command_stack:
                counters.redis_round_trips += 1
                counters.redis_commands += len(pipe.command_stack)
                counters._command(
                    "pipeline[" + ",".join(sorted({str(c[0][0]).lower() for c in pipe.command_stack})) + "]"
                )
            return await execute(*eargs, **ekwargs)

        pipe.execute = counted_execute
        return pipe

    redis.execute_command, redis.pipeline = counted_command, counted_pipeline


@dataclass
class Instrumented:
    """An in-process worker (as ``make_connect("rabbitmq")``) whose costs are counted."""

    redis_url: str
    amqp_url: str
    worker: Counters = field(default_factory=Counters)
    namespace: str = ""
    worker_pid_rss: Callable[[], int] = _rss_bytes

    @contextlib.asynccontextmanager
    async def connect(self, workflows: Mapping[str, type[WorkflowEntrypoint]]) -> AsyncIterator[Client]:
        """The runtime, counted; ``amqp_url=""`` swaps RabbitMQ for the in-process transport (real Redis)."""
        from hutch.broker.transports.rabbitmq import RabbitMQTransport
        from hutch.consumers.runtime import open_store, open_transport
        from hutch.consumers.worker import Worker

        from bench.__main__ import _drop_namespace

        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        settings = Settings(redis_url=self.redis_url, amqp_url=self.amqp_url, namespace=self.namespace)
        store = open_store(settings)
        transport: Any = open_transport(settings) if self.amqp_url else _inprocess(settings)
        _count_redis(store.redis, self.worker)
        counters = self.worker
        class_publish = type(transport).publish

        async def counted_any(transport_: RabbitMQTransport, messages: Any) -> None:
            counters.all_messages += len(messages)
            await class_publish(transport_, messages)

        # Class first, then the worker's instance: the instance wrapper calls the counted class method.
        type(transport).publish = counted_any
        publish = transport.publish

        async def counted_publish(messages: Any) -> None:
            counters.publish_calls += 1
            counters.messages += len(messages)
            await publish(messages)

        transport.publish = counted_publish
        try:
            await transport.start()
            from hutch.watch import InstanceWatch

            # In-process transport: the client shares the worker's watch (as the embedded runtime
            # does), so waiting does not poll Redis; it has its own, uncounted, Redis client.
            watch = InstanceWatch()
            client_store = open_store(settings)
            worker = Worker(
                store=store,
                transport=transport,
                workflows=dict(workflows),
                settings=settings,
                distributed=bool(self.amqp_url),
                **({} if self.amqp_url else {"watch": watch}),
            )
            await worker.start()
            try:
                if self.amqp_url:
                    async with hutch.connect(workflows, settings=settings) as client:
                        yield client
                else:
                    yield _local_client(client_store, transport, workflows, watch)
            finally:
                await worker.shutdown(timeout=5)
                await client_store.close()
        finally:
            type(transport).publish = class_publish
            if self.amqp_url:
                await transport.delete_topology()  # on the open connection, as the one-worker bench does
            await transport.close()
            await store.close()
            await _drop_namespace(self.redis_url, self.namespace)


def _inprocess(settings: Settings) -> Any:
    from hutch.broker.transports.inprocess import InProcessTransport

    return InProcessTransport(settings.partitions)


def _local_client(store: Any, transport: Any, workflows: Mapping[str, type[WorkflowEntrypoint]], watch: Any) -> Client:
    """A client on the in-process transport, with its own (uncounted) Redis client."""
    from hutch.broker.dispatch import BrokerDispatcher
    from hutch.clock import Clock
    from hutch.config import Limits

    return Client(
        store, BrokerDispatcher(transport), workflows=list(workflows), limits=Limits(), clock=Clock(), watch=watch
    )


def _per_step(counters: Counters, steps: int, elapsed: float) -> Metrics:
    return {
        "steps": steps,
        "broker_messages_per_step": counters.messages / steps,
        "all_broker_messages_per_step": counters.all_messages / steps,
        "publish_confirm_batches_per_step": counters.publish_calls / steps,
        "redis_round_trips_per_step": counters.redis_round_trips / steps,
        "redis_commands_per_step": counters.redis_commands / steps,
        "steps_per_s_instrumented": steps / elapsed,
    }


async def counts_w1(redis_url: str, amqp_url: str, instances: int, steps: int) -> tuple[Metrics, dict[str, int]]:
    """W1 with counted worker costs; the counts include the 2-step warm-up instance (in ``steps``)."""
    inst = Instrumented(redis_url, amqp_url)
    started = time.perf_counter()
    await w1_sequential(inst.connect, instances=instances, steps=steps)
    return _per_step(inst.worker, instances * steps + 2, time.perf_counter() - started), inst.worker.by_command


async def counts_w2(redis_url: str, amqp_url: str, steps: int) -> tuple[Metrics, dict[str, int]]:
    """W2 (one instance of ``steps`` steps) with counted worker costs (warm-up included)."""
    inst = Instrumented(redis_url, amqp_url)
    started = time.perf_counter()
    await w2_long(inst.connect, sizes=(steps,))
    return _per_step(inst.worker, steps + 2, time.perf_counter() - started), inst.worker.by_command


# ---------------------------------------------------------------------------- memory
async def worker_rss_sleepers(redis_url: str, amqp_url: str, instances: int) -> Metrics:
    """RSS of this process (the worker, plus a client) before/after creating ``instances`` sleepers, and after GC."""
    inst = Instrumented(redis_url, amqp_url)
    async with inst.connect({"sleeper": SleepHour}) as client:
        wf = client.workflow("sleeper")
        warm = await wf.create()
        await _until_status(warm, Status.WAITING)
        _collect()
        before = _rss_bytes()
        batch = client.limits.max_batch
        for i in range(0, instances, batch):
            await wf.create_batch([{} for _ in range(min(batch, instances - i))])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 300
        while await _count(wf, Status.WAITING, instances + 1) < instances + 1:
            if loop.time() > deadline:
                raise RuntimeError(f"not all {instances} sleepers were waiting within 300 s")
            await asyncio.sleep(0.05)
        after = _rss_bytes()
        _collect()
        after_gc = _rss_bytes()
        redis_bytes = await _namespace_bytes(redis_url, inst.namespace)
    mb = 2**20
    return {
        "rss_before_mb": before / mb,
        "rss_after_create_mb": after / mb,
        "rss_after_gc_mb": after_gc / mb,
        "rss_growth_after_gc_mb": (after_gc - before) / mb,
        "redis_bytes_per_sleeper": redis_bytes / (instances + 1),
    }


async def _namespace_bytes(redis_url: str, namespace: str) -> int:
    from hutch.consumers.runtime import open_redis

    redis = open_redis(redis_url)  # a redis+cluster:// URL: every node's keys
    try:
        total = 0
        async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
            total += await redis.memory_usage(key, samples=0) or 0
        return total
    finally:
        await redis.aclose()


async def redis_bytes_finished(redis_url: str, amqp_url: str, instances: int, steps: int = 10) -> Metrics:
    """Redis bytes per finished ``steps``-step instance: ``MEMORY USAGE`` of its meta/history/event keys.

    ``shared_bytes_per_instance`` is its share of the partition-wide keys (status indexes etc.:
    the namespace total minus the per-instance keys, divided by the instances).
    """
    from hutch.broker.partitioning import partition_of
    from hutch.consumers.runtime import open_redis
    from hutch.keys import Keys

    inst = Instrumented(redis_url, amqp_url)
    async with inst.connect({"seq": Sequential}) as client:
        wf = client.workflow("seq")
        created = []
        for i in range(0, instances, client.limits.max_batch):
            size = min(client.limits.max_batch, instances - i)
            created += await wf.create_batch([{"params": {"steps": steps}} for _ in range(size)])
        for instance in created:
            await _finish(instance, timeout=120)
        keys, partitions = Keys(inst.namespace), Settings().partitions
        redis = open_redis(redis_url)
        try:
            own = 0
            for instance in created:
                p = partition_of("seq", instance.id, partitions)
                for key in (keys.meta(p, "seq", instance.id), keys.history(p, "seq", instance.id)):
                    own += await redis.memory_usage(key, samples=0) or 0
                own += await redis.memory_usage(keys.event_buffer(p, "seq", instance.id), samples=0) or 0
        finally:
            await redis.aclose()
        total = await _namespace_bytes(redis_url, inst.namespace)
    return {
        "bytes_per_instance": own / instances,
        "shared_bytes_per_instance": (total - own) / instances,
    }


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Print the counts and memory figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--amqp-url", default=os.environ.get("HUTCH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--w1-instances", type=int, default=200)
    parser.add_argument("--w1-steps", type=int, default=10)
    parser.add_argument("--w2-steps", type=int, default=1000)
    parser.add_argument("--sleepers", type=int, default=10_000)
    parser.add_argument("--finished", type=int, default=200, help="finished 10-step instances for Redis bytes")
    parser.add_argument("--only", default="counts,rss,bytes", help="comma-separated: counts, rss, bytes")
    parser.add_argument(
        "--inprocess-transport",
        action="store_true",
        help="real Redis, in-process transport instead of RabbitMQ (when the broker is unavailable)",
    )
    args = parser.parse_args(argv)
    if args.inprocess_transport:
        args.amqp_url = ""
    parts = {p.strip() for p in args.only.split(",")}
    runtime = "redis+in-process-transport" if not args.amqp_url else "rabbitmq"
    r, a = args.redis_url, args.amqp_url

    def show(label: str, metrics: Mapping[str, float]) -> None:
        print(
            f"{runtime} {label}  "
            + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
            flush=True,
        )

    if "counts" in parts:
        w1, w1_cmds = asyncio.run(counts_w1(r, a, args.w1_instances, args.w1_steps))
        show("W1 counts (in-process worker)", w1)
        show("W1 worker redis calls", w1_cmds)
        w2, w2_cmds = asyncio.run(counts_w2(r, a, args.w2_steps))
        show("W2 counts (in-process worker)", w2)
        show("W2 worker redis calls", w2_cmds)
    if "rss" in parts:
        show(f"MEM worker RSS, {args.sleepers} sleepers", asyncio.run(worker_rss_sleepers(r, a, args.sleepers)))
    if "bytes" in parts:
        show(
            f"Redis bytes per finished 10-step instance ({args.finished})",
            asyncio.run(redis_bytes_finished(r, a, args.finished)),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
