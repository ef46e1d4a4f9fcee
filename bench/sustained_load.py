"""W8, sustained load: an open-loop generator creating instances of a 5-step workflow at a fixed rate.

Open loop: create ``i`` is issued at ``start + i / rate`` whether or not earlier ones finished (each
create is its own task), so a worker that falls behind shows it as growing latency and backlog
rather than slowing the generator down. On the ``rabbitmq`` runtime the worker is a ``hutch
worker`` subprocess (``--workers``, default 1) and the generator is this process.

Figures:

- ``p50_ms`` / ``p99_ms``: create call (client clock) to the instance's ``ended`` time (stamped by
  the worker in its final commit), for every instance created in the run;
- ``achieved_per_s``: creates issued / seconds the generator ran (below ``rate`` when the client
  itself cannot keep up);
- ``depth_slope_per_s`` / ``timer_lag_slope_ms_per_s``: least-squares slope of the partition
  queues' ready messages and of the oldest due timer's lateness, sampled every second; a flat
  backlog is ~0; ``depth_max``, ``timer_lag_max_ms``;
- the rate search (``--only W8``, not in the smoke size): ``max_rate_per_s``, the highest rate of
  the trials whose p99 stayed within :data:`P99_BUDGET_MS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hutch import Client, Instance, WorkflowEntrypoint

from bench.timer_storm import check_alive, process_runtime
from bench.workloads import Connect, Metrics, _warm_up, percentile

P99_BUDGET_MS = 100.0
"""W8's target: p99 create → complete within this, at 500 instances/s."""


def _noop(i: int) -> Any:
    async def noop() -> dict[str, int]:
        return {"i": i}

    return noop


class FiveSteps(WorkflowEntrypoint):
    """W8: five sequential no-op steps."""

    async def run(self, event: Any, step: Any) -> dict[str, int]:
        for i in range(5):
            await step.do(f"step {i}", _noop(i))
        return {"steps": 5}


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in points) / var


async def _queue_depth(client: Client) -> int:
    """Ready messages over every partition queue of the client's broker."""
    transport: Any = client._dispatcher.transport  # type: ignore[attr-defined]
    partitions = range(transport.partitions)
    if hasattr(transport, "ready_count"):
        return sum(await asyncio.gather(*(transport.ready_count(p) for p in partitions)))
    return sum(transport.depth(p)[0] for p in partitions)


async def _timer_lag_ms(client: Client) -> float:
    """How late the oldest due timer is (0 when none is due)."""
    store: Any = client._store
    now_ms = int(time.time() * 1000)
    due = await store.due_timers(range(store.partitions), now_ms, limit=1)
    return float(max(0, now_ms - min(d for _, _, d in due))) if due else 0.0


async def _sample(
    client: Client, start: float, stop: asyncio.Event, depth: list[tuple[float, float]], lag: list[tuple[float, float]]
) -> None:
    """Every second until ``stop`` is set: the queue depth and the timer lag (never cancelled mid-read)."""
    while not stop.is_set():
        t = time.perf_counter() - start
        depth.append((t, float(await _queue_depth(client))))
        lag.append((t, await _timer_lag_ms(client)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.perf_counter() - start - t)))


async def _ended_ms(instance: Instance, timeout: float) -> int:
    final = await instance.wait(timeout=timeout)
    if final.status.value != "complete":
        raise RuntimeError(f"W8 instance {instance.id} ended {final.status.value}: {final.error}")
    meta = await instance._meta()
    return int(meta["ended"])


async def run_at(client: Client, rate: float, duration_s: float, pids: Callable[[], list[int]] = lambda: []) -> Metrics:
    """One open-loop run at ``rate`` creates/s for ``duration_s`` seconds on an open runtime."""
    wf = client.workflow("five")
    total = max(1, round(rate * duration_s))
    created: list[tuple[float, Instance]] = []

    async def create() -> None:
        called = time.time()
        created.append((called, await wf.create()))

    depth: list[tuple[float, float]] = []
    lag: list[tuple[float, float]] = []
    start = time.perf_counter()
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(client, start, stop, depth, lag))
    tasks: set[asyncio.Task[None]] = set()
    try:
        for i in range(total):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(create())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        generated_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        stop.set()  # the backlog is sampled while the generator runs, not while it drains
        await sampler
        latencies: list[float] = []
        for i in range(0, len(created), 500):
            check_alive(pids())
            part = created[i : i + 500]
            ended = await asyncio.gather(*(_ended_ms(inst, timeout=120) for _, inst in part))
            latencies += [end - called * 1000 for (called, _), end in zip(part, ended, strict=True)]
    finally:
        stop.set()
        await sampler
    metrics = {
        "rate_per_s": rate,
        "achieved_per_s": total / generated_s if generated_s > 0 else float(total),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "depth_slope_per_s": slope(depth),
        "depth_max": max((d for _, d in depth), default=0.0),
        "timer_lag_slope_ms_per_s": slope(lag),
        "timer_lag_max_ms": max((v for _, v in lag), default=0.0),
    }
    print(
        f"W8 at {rate:g}/s for {duration_s:g} s: achieved {metrics['achieved_per_s']:.0f}/s, "
        f"p50 {metrics['p50_ms']:.1f} ms, p99 {metrics['p99_ms']:.1f} ms, depth max {metrics['depth_max']:.0f}",
        file=sys.stderr,
        flush=True,
    )
    return metrics


async def w8_sustained(
    connect: Connect,
    *,
    rate: float = 500,
    duration_s: float = 60,
    search_s: float = 15,
    search_trials: int = 5,
) -> Metrics:
    """W8: ``rate`` creates/s for ``duration_s``; then up to ``search_trials`` runs of ``search_s`` s (max rate)."""
    runtime, pids, _scope = process_runtime(connect)
    async with runtime({"five": FiveSteps}) as client:
        await _warm_up(client, "five", {})
        out = await run_at(client, rate, duration_s, pids)
        if search_trials:
            out["max_rate_per_s"] = await _search(client, rate, out["p99_ms"], search_s, search_trials, pids)
    return out


async def _search(
    client: Client, rate: float, p99_ms: float, seconds: float, trials: int, pids: Callable[[], list[int]]
) -> float:
    """The highest rate whose p99 stayed within budget: 1.5 times higher while it does, then bisect."""
    ok, bad = (rate, None) if p99_ms <= P99_BUDGET_MS else (0.0, rate)
    for _ in range(trials):
        trial = ok * 1.5 if bad is None else (ok + bad) / 2 if ok else bad / 2
        if bad is not None and bad - ok <= max(10.0, 0.05 * bad):
            break
        metrics = await run_at(client, trial, seconds, pids)
        if metrics["p99_ms"] <= P99_BUDGET_MS and metrics["achieved_per_s"] >= 0.95 * trial:
            ok = trial
        else:
            bad = trial
    return ok
