"""W7, the timer storm: many instances each sleeping until the same instant, then one step.

The instances are created with ``create_batch`` and all sleep until one due time, chosen far
enough ahead that every one of them is ``waiting`` before it (the run fails rather than measure
a creation backlog as lateness). Figures:

- ``p50_ms`` / ``p99_ms`` / ``max_ms``: lateness of the step after the sleep, its body's start
  (``time.time()``, carried back in the output) minus the due time;
- ``redis_bytes_per_sleeper``: ``MEMORY USAGE`` summed over the namespace's keys while all sleep,
  over the sleepers; ``redis_used_per_sleeper``: the server's ``INFO memory`` ``used_memory``
  growth from before the creates, over the sleepers (other clients of a shared Redis add noise);
- ``rss_sleeping_mb`` / ``rss_peak_mb``: the worker processes' RSS growth from before the creates
  to when all sleep, and to its highest sample (every 0.25 s) through the storm. On the
  ``rabbitmq`` runtime the workers are ``hutch worker`` subprocesses (``--workers``, default 1) and
  the client is this process; on ``embedded`` everything is this process (``rss_scope`` 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hutch import Client, Instance, Status, WorkflowEntrypoint

from bench.workloads import Connect, Metrics, RuntimeConnect, _rss_bytes, _warm_up, percentile


async def _now() -> dict[str, float]:
    return {"t": time.time()}


class SleepUntilThenStep(WorkflowEntrypoint):
    """W7: sleep until ``params["due"]`` (epoch seconds), then one step that records its start time."""

    async def run(self, event: Any, step: Any) -> dict[str, float]:
        await step.sleep_until("nap", event.payload["due"])
        after: dict[str, float] = await step.do("after nap", _now)
        return after


# ---------------------------------------------------------------------------- where the worker runs
def process_runtime(connect: Connect) -> tuple[Connect, Callable[[], list[int]], str]:
    """The runtime W7/W8 run on: workers in subprocesses when the runtime has a broker.

    Returns the ``Connect``, a function giving the worker PIDs whose RSS is measured (this
    process's own PID when the worker runs here) and what that RSS covers.
    """
    import os

    recipe = connect.recipe if isinstance(connect, RuntimeConnect) else {}
    if recipe.get("runtime") != "rabbitmq":
        return connect, lambda: [os.getpid()], "this process (worker + client)"
    from bench import distributed

    pids: list[int] = []
    sub = distributed.subprocess_connect(
        recipe["workers"], redis_url=recipe["redis_url"], amqp_url=recipe["amqp_url"], pids=pids
    )
    return sub, lambda: list(pids), f"{recipe['workers']} worker subprocess(es)"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_alive(pids: list[int]) -> None:
    """Raise if a worker process has exited (a dead worker would leave the bench waiting until its deadline)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state in ("Z", "X", "gone"):
            raise RuntimeError(f"bench worker process {pid} exited (its log: /tmp/hutch-bench-worker-*.log)")


def rss_of(pids: list[int]) -> int:
    """Summed resident set size of these processes (bytes)."""
    import os

    total = 0
    for pid in pids:
        if pid == os.getpid():
            total += _rss_bytes()
            continue
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
    return total


@contextlib.asynccontextmanager
async def rss_sampler(pids: Callable[[], list[int]], interval: float = 0.25) -> AsyncIterator[list[int]]:
    """Samples the workers' RSS every ``interval`` s while open; yields the list of samples."""
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(rss_of(pids()))
            await asyncio.sleep(interval)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------------- Redis memory
def _redis_of(client: Client) -> Any:
    """The client's Redis connection (None for an in-process fakeredis: its bytes mean nothing here)."""
    redis = client._store.redis
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    return None if "server" in kwargs else redis


async def used_memory(redis: Any) -> int:
    """The server's ``used_memory`` (bytes)."""
    info = await redis.info("memory")
    return int(info["used_memory"])


async def namespace_bytes(redis: Any, namespace: str) -> tuple[int, int]:
    """``MEMORY USAGE`` summed over every key of ``namespace`` (pipelined), and the key count."""
    total = keys = 0
    batch: list[bytes] = []

    async def flush() -> None:
        nonlocal total
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        total += sum(v or 0 for v in await pipe.execute())
        batch.clear()

    async for key in redis.scan_iter(match=f"{namespace}:*", count=2000):
        batch.append(key)
        keys += 1
        if len(batch) >= 1000:
            await flush()
    if batch:
        await flush()
    return total, keys


# ---------------------------------------------------------------------------- the workload
async def _create_all(client: Client, instances: int, due: float) -> list[Instance]:
    wf = client.workflow("storm")
    batch = client.limits.max_batch
    created: list[Instance] = []
    pending: set[asyncio.Task[list[Instance]]] = set()
    # A few batches in flight at once: creation is the setup here, not the figure.
    for i in range(0, instances, batch):
        items = [{"params": {"due": due}} for _ in range(min(batch, instances - i))]
        pending.add(asyncio.create_task(wf.create_batch(items)))
        if len(pending) >= 4:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            created += [inst for task in done for inst in task.result()]
    for task in pending:
        created += await task
    return created


async def _all_waiting(
    client: Client, instances: int, due: float, started: float, pids: Callable[[], list[int]]
) -> float:
    """Wait until every storm instance is ``waiting``; the seconds to spare before ``due``."""
    while (waiting := await _in_status(client, Status.WAITING)) < instances:
        check_alive(pids())
        if time.time() > due:
            raise RuntimeError(
                f"W7: {waiting} of {instances} instances were sleeping by the due time, "
                f"{due - started:.0f} s after the first create; give them a longer lead (--w7-lead-s)"
            )
        await asyncio.sleep(0.5)
    return due - time.time()


async def _in_status(client: Client, status: Status) -> int:
    """Storm instances in ``status``: the status index's size over the partitions (a ZCARD each, no listing)."""
    store: Any = client._store
    pipe = store.redis.pipeline(transaction=False)
    for p in range(store.partitions):
        pipe.zcard(store.keys.status_index(p, "storm", status.value))
    return sum(await pipe.execute())


async def _lateness(
    client: Client, created: list[Instance], due: float, timeout: float, pids: Callable[[], list[int]]
) -> list[float]:
    """Each instance's step-after-sleep start minus ``due`` (ms), read once all are complete.

    Completion is polled through the status index's size twice a second, so the client adds
    next to nothing to the storm it measures; the outputs are read afterwards.
    """
    await asyncio.sleep(max(0.0, due - time.time()))
    deadline = time.time() + timeout
    while await _in_status(client, Status.COMPLETE) < len(created) + 1:  # + the warm-up instance
        check_alive(pids())
        if time.time() > deadline:
            raise RuntimeError(f"W7: not every instance was complete {timeout} s after the due time")
        await asyncio.sleep(0.5)
    samples: list[float] = []
    for i in range(0, len(created), 500):
        states = await asyncio.gather(*(inst.status() for inst in created[i : i + 500]))
        if any(st.status is not Status.COMPLETE for st in states):
            raise RuntimeError(f"W7: an instance ended {[st.status.value for st in states][:5]}")
        samples += [(st.output["t"] - due) * 1000 for st in states]
    return samples


async def w7_timer_storm(connect: Connect, *, instances: int = 100_000, lead_s: float | None = None) -> Metrics:
    """W7: ``instances`` sleepers due at one instant; lateness, Redis bytes and worker RSS (see the module)."""
    runtime, pids, _scope = process_runtime(connect)
    # Creating an instance and committing its sleep took ~2 ms of wall time each on this loaded
    # 2-core machine (one worker); the lead doubles that (the run fails if it was not enough).
    lead = lead_s if lead_s is not None else 10 + instances * 0.004
    async with runtime({"storm": SleepUntilThenStep}) as client:
        await _warm_up(client, "storm", {"due": time.time()})
        redis = _redis_of(client)
        namespace = client._store.keys.namespace if redis is not None else ""
        used_before = await used_memory(redis) if redis is not None else 0
        rss_before = rss_of(pids())
        started = time.time()
        due = round(started + lead, 3)
        async with rss_sampler(pids) as rss_samples:
            created = await _create_all(client, instances, due)
            created_s = time.time() - started
            spare_s = await _all_waiting(client, instances, due, started, pids)
            _progress(f"W7: {instances} created in {created_s:.1f} s, all sleeping {due - spare_s - started:.1f} s in")
            rss_sleeping = rss_of(pids())
            if redis is not None:
                used_after = await used_memory(redis)
                ns_bytes, _ = await namespace_bytes(redis, namespace)
            else:
                used_after = ns_bytes = 0
            if time.time() > due:
                raise RuntimeError("W7: measuring Redis memory ran past the due time; give the sleepers a longer lead")
            samples = await _lateness(client, created, due, timeout=600, pids=pids)
    mb = 2**20
    metrics = {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "rss_sleeping_mb": (rss_sleeping - rss_before) / mb,
        "rss_peak_mb": (max(rss_samples, default=rss_before) - rss_before) / mb,
        "spare_s": spare_s,
    }
    if redis is not None:  # an in-process fakeredis has no Redis memory to measure
        metrics["redis_bytes_per_sleeper"] = ns_bytes / instances
        metrics["redis_used_per_sleeper"] = (used_after - used_before) / instances
    return metrics
