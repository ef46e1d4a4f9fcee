"""``python -m bench``: run the standard workloads and print each figure next to its target.

Examples::

    python -m bench                          # embedded runtime, all workloads, median of 3 runs
    python -m bench --only W1,W2 --runs 5
    python -m bench --no-scaling --json      # W2 at 1000 steps only; JSON with every run
    python -m bench --profile W2             # pyinstrument profile of one W2 run
    python -m bench --runtime rabbitmq       # against RabbitMQ + Redis (URLs from the options/env)
    python -m bench --runtime rabbitmq --workers 2   # two `hutch worker` processes, remote client
    python -m bench --runtime rabbitmq --redis-url redis+cluster://127.0.0.1:7000,127.0.0.1:7001  # on a Redis Cluster
    python -m bench --redis-aof everysec     # rabbitmq runtime on a private Redis with AOF (or: always)
    python -m bench --runtime rabbitmq --only W7 --runs 1 [--workers 2]   # timer storm (named only)
    python -m bench --runtime rabbitmq --only W8 --runs 1                 # sustained load (named only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import os
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import hutch
from hutch import Client, Settings, WorkflowEntrypoint
from hutch.consumers import gc_tuning

from bench import report
from bench.private_redis import AofRedis, durability
from bench.workloads import (
    ON_REQUEST,
    SMOKE,
    STANDARD,
    WORKLOADS,
    Connect,
    Metrics,
    RuntimeConnect,
    Sizes,
    Workload,
)

RUNTIMES = ("embedded", "rabbitmq")
RESULTS_DIR = Path(__file__).parent / "results"
_SIZE_OPTIONS = ("w7_instances", "w7_lead_s", "w8_rate", "w8_duration_s")
"""Sizes the command line may set (``--w7-instances`` ...)."""


def make_connect(runtime: str, *, redis_url: str, amqp_url: str, workers: int = 1) -> Connect:
    """The ``connect()`` factory the workloads use for ``runtime``.

    ``workers`` > 1 (rabbitmq only) runs that many worker subprocesses sharing the partitions and
    a remote client in this process (:func:`bench.distributed.subprocess_connect`).
    """
    recipe = {"runtime": runtime, "redis_url": redis_url, "amqp_url": amqp_url, "workers": workers}
    # This process runs the worker (but with --workers > 1): the collector as `hutch worker` sets it.
    gc_tuning.tune()
    if workers > 1:
        if runtime != "rabbitmq":
            raise ValueError("--workers > 1 needs --runtime rabbitmq")
        from bench.distributed import subprocess_connect

        return RuntimeConnect(subprocess_connect(workers, redis_url=redis_url, amqp_url=amqp_url), recipe)
    if runtime == "embedded":
        # Explicit empty URLs: HUTCH_REDIS_URL / HUTCH_AMQP_URL in the environment must not
        # silently turn the embedded figures into remote ones.
        settings = Settings(redis_url="", amqp_url="")
        return RuntimeConnect(lambda workflows: hutch.connect(workflows, settings=settings), recipe)

    @contextlib.asynccontextmanager
    async def remote(workflows: Mapping[str, type[WorkflowEntrypoint]]) -> AsyncIterator[Client]:
        # "One worker process": a worker in this process next to the client, as in the embedded
        # runtime, on a namespace of its own per workload run, deleted afterwards (shared servers).
        from hutch.consumers.runtime import open_store, open_transport
        from hutch.consumers.worker import Worker

        namespace = f"bench-{uuid.uuid4().hex[:10]}"
        settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace)
        store, transport = open_store(settings), open_transport(settings)
        try:
            await transport.start()
            worker = Worker(
                store=store, transport=transport, workflows=dict(workflows), settings=settings, distributed=True
            )
            await worker.start()
            try:
                async with hutch.connect(workflows, settings=settings) as client:
                    yield client
            finally:
                await worker.shutdown(timeout=5)
        finally:
            await transport.delete_topology()
            await transport.close()
            await store.close()
            await _drop_namespace(redis_url, namespace)

    return RuntimeConnect(remote, recipe)


async def _drop_namespace(redis_url: str, namespace: str, amqp_url: str = "") -> None:
    """Delete a bench namespace from the shared servers: its Redis keys and, given ``amqp_url``, its queues.

    Leftover quorum queues are not harmless: each reserves file handles in the broker, and a few
    hundred of them exhaust a default (``ulimit -n 1024``) broker, which then stops accepting
    connections.
    """
    from hutch.consumers.runtime import open_redis

    if amqp_url:
        from hutch.broker.transports.rabbitmq import RabbitMQTransport

        transport = RabbitMQTransport(amqp_url, partitions=Settings().partitions, namespace=namespace)
        await transport.start()
        try:
            await transport.delete_topology()
        finally:
            await transport.close()
    redis = open_redis(redis_url)  # a redis+cluster:// URL: every node's keys
    try:
        batch = [key async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        for i in range(0, len(batch), 500):
            await redis.delete(*batch[i : i + 500])
    finally:
        await redis.aclose()


def _one_worker(runtime: str, ids: Sequence[str]) -> str:
    # W7 and W8 keep the client out of the worker's process (its RSS, its CPU): a subprocess there.
    if runtime == "rabbitmq" and ON_REQUEST & set(ids):
        return "1 in-process (W7/W8: 1 subprocess)"
    return "1 in-process"


def describe_run(runtime: str, runs: int, sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    """What produced the figures: engine version, runtime and its settings, Python, machine."""
    settings = Settings()
    meta: dict[str, Any] = {
        "engine": f"hutch {importlib.metadata.version('hutch')}",
        "runtime": runtime,
    }
    if runtime == "embedded":
        meta["store"] = (
            f"fakeredis {importlib.metadata.version('fakeredis')} (lupa {importlib.metadata.version('lupa')})"
        )
        meta["transport"] = "in-process"
    else:
        meta["store"] = args.redis_url
        meta["redis_durability"] = durability(args.redis_url)
        meta["transport"] = args.amqp_url.rsplit("@", 1)[-1]  # no credentials in reports
    meta |= {
        "workers": f"{args.workers} subprocesses" if args.workers > 1 else _one_worker(runtime, args.ids),
        "partitions": settings.partitions,
        "max_concurrent_steps": settings.max_concurrent_steps,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load1": f"{os.getloadavg()[0]:.2f}",
        "runs": runs,
        "sizes": " ".join(
            ["smoke" if args.smoke else "standard"]
            + [f"{k}={getattr(sizes, k)}" for k in _SIZE_OPTIONS if getattr(args, k, None) is not None]
        ),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return meta


def run_workload(workload: Workload, connect: Connect, sizes: Sizes, scaling: bool) -> Metrics:
    """One run of one workload on a fresh event loop."""
    return asyncio.run(workload.run(connect, sizes, scaling))


def profile(workload: Workload, connect: Connect, sizes: Sizes, runtime: str, out: Path | None) -> int:
    """Run ``workload`` once under pyinstrument; write HTML and text profiles and print the text one."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    # async_mode="disabled": sample every frame on the thread (worker, client and workflow loop
    # alike), which is what shows where the per-step time goes.
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    # Import the runtime first, so one-off import costs (fakeredis, lupa) stay out of the profile.
    importlib.import_module("hutch.consumers.runtime")
    with profiler:
        metrics = run_workload(workload, connect, sizes, scaling=False)
    base = out or RESULTS_DIR / f"profile-{workload.id}-{runtime}"
    base.parent.mkdir(parents=True, exist_ok=True)
    html, text = base.with_suffix(".html"), base.with_suffix(".txt")
    html.write_text(profiler.output_html())
    summary = profiler.output_text(unicode=False, color=False, show_all=False)
    text.write_text(summary)
    print(summary)
    print(f"{workload.id} metrics under the profiler (slower than unprofiled): {metrics}")
    print(f"profile written to {html} and {text}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="Hutch's standard workloads vs targets.")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default embedded; rabbitmq with --redis-aof")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; figures are medians (default 3)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated workload ids, e.g. W1,W2 (default: all but {', '.join(sorted(ON_REQUEST))})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (with every run) instead")
    parser.add_argument(
        "--scaling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="W2 also at 10, 100 and 5000 steps with the 5000/10 ratio (default: on)",
    )
    parser.add_argument("--profile", metavar="WORKLOAD", help="profile one run of this workload with pyinstrument")
    parser.add_argument("--profile-out", type=Path, help="profile path without suffix (default bench/results/...)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, to check the bench runs (figures mean nothing)"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="rabbitmq only; redis+cluster://host:port[,host:port...] for a Redis Cluster",
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("HUTCH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="rabbitmq only",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="rabbitmq only: >1 runs that many `hutch worker` subprocesses and a remote client (MEM skipped)",
    )
    parser.add_argument(
        "--redis-aof",
        choices=("everysec", "always"),
        help="run on a private redis-server with AOF and this appendfsync, on a free port (implies rabbitmq)",
    )
    parser.add_argument("--w7-instances", type=int, help=f"W7's sleepers (default {STANDARD.w7_instances})")
    parser.add_argument("--w7-lead-s", type=float, help="seconds from W7's first create to the due time")
    parser.add_argument("--w8-rate", type=float, help=f"W8's creates per second (default {STANDARD.w8_rate:g})")
    parser.add_argument("--w8-duration-s", type=float, help=f"W8's seconds (default {STANDARD.w8_duration_s:g})")
    args = parser.parse_args(argv)
    if args.redis_aof and args.runtime == "embedded":
        parser.error("--redis-aof needs --runtime rabbitmq (the embedded runtime has no Redis server)")
    args.runtime = args.runtime or ("rabbitmq" if args.redis_aof else "embedded")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.workers < 1 or (args.workers > 1 and args.runtime != "rabbitmq"):
        parser.error("--workers must be 1, or more with --runtime rabbitmq")
    ids = (
        [w.strip().upper() for w in args.only.split(",") if w.strip()]
        if args.only
        else [w for w in WORKLOADS if w not in ON_REQUEST]
    )
    unknown = [w for w in ids if w not in WORKLOADS]
    if args.profile:
        args.profile = args.profile.strip().upper()
        unknown += [] if args.profile in WORKLOADS else [args.profile]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if args.workers > 1 and "MEM" in ids:
        # MEM measures this process's RSS, and with worker subprocesses no worker lives here
        # (python -m bench.distributed measures an in-process worker's RSS instead).
        if args.only:
            parser.error("MEM measures an in-process worker; it does not run with --workers > 1")
        ids.remove("MEM")
    args.ids = ids
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; returns the exit status."""
    args = parse_args(argv)
    if not args.redis_aof:
        return _run(args)
    # A private Redis that persists, for this run only: stopped by its PID whatever happens.
    with AofRedis(args.redis_aof) as server:
        print(f"[private redis-server pid {server.proc.pid if server.proc else '?'} on {server.url}]", file=sys.stderr)
        args.redis_url = server.url
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else STANDARD
    overrides = {k: getattr(args, k) for k in _SIZE_OPTIONS}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    connect = make_connect(args.runtime, redis_url=args.redis_url, amqp_url=args.amqp_url, workers=args.workers)
    if args.profile:
        return profile(WORKLOADS[args.profile], connect, sizes, args.runtime, args.profile_out)
    meta = describe_run(args.runtime, args.runs, sizes, args)
    if not args.json:
        print(report.header(meta), flush=True)
    all_figures: list[report.Figure] = []
    for wid in args.ids:
        workload = WORKLOADS[wid]
        runs: list[Metrics] = []
        for i in range(args.runs):
            print(f"[{wid} run {i + 1}/{args.runs}]", file=sys.stderr, flush=True)
            try:
                runs.append(run_workload(workload, connect, sizes, args.scaling))
            except (NotImplementedError, ImportError) as exc:
                print(f"runtime {args.runtime} is not available yet: {exc}", file=sys.stderr)
                return 2
        figs = report.figures(args.runtime, wid, workload.name, runs, workers=args.workers)
        all_figures += figs
        if not args.json:
            for fig in figs:
                print(report.line(args.runtime, fig), flush=True)
    if args.json:
        print(report.as_json(meta, all_figures))
    missed = any(f.ok is False for f in all_figures)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
