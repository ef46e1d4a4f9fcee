"""Capacity figures for docs/scaling.md: Redis server CPU and worker+client Python CPU per instance.

One in-process worker and client (as ``python -m bench.distributed``; or ``--workers N``
subprocesses and a remote client) run ``--instances`` instances of ``--steps`` sequential no-op
steps; the figures are deltas of Redis ``INFO cpu`` (server main thread, user+sys) and of this
process's CPU time (``resource.getrusage``) over the timed part (creates to last completion; connect
and warm-up excluded). Use a private Redis (``redis-server --port 6390 --save ''``) so other
clients' commands are not counted.

``--create batch`` uses ``create_batch`` (100 per call), ``single`` one ``create()`` per instance
(``--concurrency`` at a time), ``--rate R`` paces single creates at R per second;
``HUTCH_BENCH_BEAM_PID`` adds the RabbitMQ node's CPU. ``--running N``: worker RSS and Redis bytes
per instance with a step running; ``--replay 10,1000``: history bytes and replay time.

Usage::

    python -m bench.capacity --redis-url redis://127.0.0.1:6390/0 --instances 2000 --steps 10 --create single
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from typing import Any

import redis
from hutch import Status, WorkflowEntrypoint

from bench.distributed import Instrumented
from bench.workloads import Sequential, _finish, _until_status


class StepsThenWait(WorkflowEntrypoint):
    """``params["steps"]`` no-op steps, then a wait for ``go``: the worker evicts it, the event replays it."""

    async def run(self, event: Any, step: Any) -> dict[str, int]:
        n = event.payload["steps"]
        for i in range(n):
            await step.do(f"step {i}", _noop_step(i))
        await step.wait_for_event("wait for go", "go", timeout="1 hour")
        return {"steps": n}


def _noop_step(i: int) -> Any:
    async def noop() -> dict[str, int]:
        return {"i": i}

    return noop


RUNNING = 0


class LongStep(WorkflowEntrypoint):
    """One step that stays running ``params["hold_s"]`` seconds (an instance that is *running*, not waiting)."""

    async def run(self, event: Any, step: Any) -> None:
        hold = event.payload["hold_s"]

        async def hold_step() -> None:
            global RUNNING
            RUNNING += 1
            try:
                await asyncio.sleep(hold)
            finally:
                RUNNING -= 1

        await step.do("hold", hold_step)


async def running(redis_url: str, amqp_url: str, instances: int) -> None:
    """Worker RSS and Redis bytes per instance whose step is running (set HUTCH_MAX_CONCURRENT_STEPS >= n)."""
    from bench.distributed import _namespace_bytes
    from bench.workloads import _collect, _rss_bytes

    inst = Instrumented(redis_url, amqp_url)
    async with inst.connect({"long": LongStep}) as client:
        wf = client.workflow("long")
        _collect()
        rss0, bytes0 = _rss_bytes(), await _namespace_bytes(redis_url, inst.namespace)
        created: list[Any] = []
        for i in range(0, instances, client.limits.max_batch):
            n = min(client.limits.max_batch, instances - i)
            created += await wf.create_batch([{"params": {"hold_s": 3600}} for _ in range(n)])
        deadline = time.perf_counter() + 60
        while RUNNING < instances and time.perf_counter() < deadline:  # noqa: ASYNC110 - outside any timing
            await asyncio.sleep(0.1)
        _collect()
        rss1, bytes1 = _rss_bytes(), await _namespace_bytes(redis_url, inst.namespace)
        print(
            f"running instances={instances}  steps_running={RUNNING}"
            f"  worker_rss_bytes_per_running={(rss1 - rss0) / instances:.0f}"
            f"  redis_bytes_per_running={(bytes1 - bytes0) / instances:.0f}",
            flush=True,
        )
        for instance in created:  # do not wait for an hour at shutdown
            await instance.terminate()


def _beam_cpu() -> float:
    """CPU seconds of the RabbitMQ node (``HUTCH_BENCH_BEAM_PID``), 0 when unset."""
    pid = os.environ.get("HUTCH_BENCH_BEAM_PID")
    if not pid:
        return 0.0
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def replay(redis_url: str, amqp_url: str, sizes: list[int]) -> None:
    """History bytes and the replay time (``send_event`` to completion) of an evicted instance of n steps."""
    from hutch.broker.partitioning import partition_of
    from hutch.keys import Keys

    inst = Instrumented(redis_url, amqp_url)
    probe = redis.Redis.from_url(redis_url)
    async with inst.connect({"wait": StepsThenWait}) as client:
        wf = client.workflow("wait")
        partitions = client.settings.partitions if hasattr(client, "settings") else 16
        for n in sizes:
            instance = await wf.create(params={"steps": n})
            await _until_status(instance, Status.WAITING, timeout=600)
            await asyncio.sleep(0.5)  # let the worker evict it
            keys, p = Keys(inst.namespace), partition_of("wait", instance.id, partitions)
            history = probe.memory_usage(keys.history(p, "wait", instance.id), samples=0) or 0
            meta = probe.memory_usage(keys.meta(p, "wait", instance.id), samples=0) or 0
            r0, c0, t0 = _redis_cpu(probe), _own_cpu(), time.perf_counter()
            await instance.send_event("go", {})
            await _finish(instance, timeout=600)
            wall = time.perf_counter() - t0
            print(
                f"replay steps={n}  history_bytes={history}  meta_bytes={meta}"
                f"  history_bytes_per_step={history / max(n, 1):.1f}"
                f"  event_to_complete_ms={wall * 1e3:.1f}  python_cpu_ms={(_own_cpu() - c0) * 1e3:.1f}"
                f"  redis_cpu_ms={(_redis_cpu(probe) - r0) * 1e3:.1f}",
                flush=True,
            )
    probe.close()


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    """CPU seconds of this process's live children (the ``hutch worker`` subprocesses)."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                try:
                    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except FileNotFoundError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def run(
    redis_url: str, amqp_url: str, instances: int, steps: int, create: str, concurrency: int, rate: float, workers: int
) -> dict[str, float]:
    from bench.distributed import subprocess_connect

    connect = (
        subprocess_connect(workers, redis_url=redis_url, amqp_url=amqp_url)
        if workers
        else Instrumented(redis_url, amqp_url).connect
    )
    probe = redis.Redis.from_url(redis_url)
    async with connect({"seq": Sequential}) as client:
        wf = client.workflow("seq")
        await _finish(await wf.create(params={"steps": 2}), timeout=60)
        params = {"steps": steps}
        r0, p0, b0, t0 = _redis_cpu(probe), _own_cpu(), _beam_cpu(), time.perf_counter()
        w0 = _children_cpu()
        created: list[Any] = []
        if create == "batch":
            for i in range(0, instances, client.limits.max_batch):
                size = min(client.limits.max_batch, instances - i)
                created += await wf.create_batch([{"params": params} for _ in range(size)])
        elif rate > 0:
            tasks = []
            for i in range(instances):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(wf.create(params=params)))
            created = list(await asyncio.gather(*tasks))
        else:
            for i in range(0, instances, concurrency):
                n = min(concurrency, instances - i)
                created += await asyncio.gather(*(wf.create(params=params) for _ in range(n)))
        t_created = time.perf_counter()
        for instance in created:
            await _finish(instance, timeout=600)
        wall = time.perf_counter() - t0
        worker_cpu = _children_cpu() - w0
        redis_cpu, own_cpu, beam_cpu = _redis_cpu(probe) - r0, _own_cpu() - p0, _beam_cpu() - b0
    probe.close()
    return {
        "instances": instances,
        "steps": steps,
        "wall_s": wall,
        "create_s": t_created - t0,
        "instances_per_s": instances / wall,
        "steps_per_s": instances * steps / wall,
        "redis_cpu_s": redis_cpu,
        "redis_cpu_us_per_instance": redis_cpu / instances * 1e6,
        "redis_cpu_util": redis_cpu / wall,
        "python_cpu_s": own_cpu,  # the client only with --workers
        "python_cpu_us_per_instance": own_cpu / instances * 1e6,
        "python_cpu_util": own_cpu / wall,
        "worker_processes_cpu_s": worker_cpu,
        "worker_processes_cpu_us_per_instance": worker_cpu / instances * 1e6,
        "worker_processes_cpu_util": worker_cpu / wall,
        "rabbitmq_cpu_s": beam_cpu,
        "rabbitmq_cpu_util": beam_cpu / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6390/0"))
    parser.add_argument(
        "--amqp-url", default=os.environ.get("HUTCH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--create", choices=("batch", "single"), default="batch")
    parser.add_argument("--concurrency", type=int, default=50, help="single creates in flight at once")
    parser.add_argument("--rate", type=float, default=0.0, help="single creates paced at this many per second")
    parser.add_argument(
        "--workers", type=int, default=0, help="N > 0: N `hutch worker` subprocesses, this process only the client"
    )
    parser.add_argument("--running", type=int, default=0, help="n instances with a running step: RSS, Redis bytes")
    parser.add_argument("--replay", default="", help="comma-separated step counts: history bytes and replay time")
    args = parser.parse_args(argv)
    if args.running:
        asyncio.run(running(args.redis_url, args.amqp_url, args.running))
        return 0
    if args.replay:
        asyncio.run(replay(args.redis_url, args.amqp_url, [int(n) for n in args.replay.split(",")]))
        return 0
    out = asyncio.run(
        run(
            args.redis_url,
            args.amqp_url,
            args.instances,
            args.steps,
            args.create,
            args.concurrency,
            args.rate,
            args.workers,
        )
    )
    print(
        f"capacity create={args.create} rate={args.rate:g}  "
        + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
