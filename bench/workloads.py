"""The six standard workloads of ``WORKLOADS.md``, runnable on any Hutch runtime.

Every workload is an ``async`` function taking a :data:`Connect` factory — called with the
workflows to register, it returns what ``hutch.connect(workflows, ...)`` returns (an async
context manager yielding a :class:`~engine.Client`) — plus its sizes, and returns the run's
measurements as a flat ``{metric: value}`` dict. Each opens its own runtime, runs one small
untimed warm-up instance (first-use costs such as loading the Lua scripts are not the
engine's steady state), then measures.

Clocks: times that cross the engine (a step's start, the completion of the step after a
wait) are taken inside the step body with ``time.time()``, the same wall clock the engine
stamps history with, so they stay comparable when the worker is another process on this
machine. Wall durations measured only by the client use ``time.perf_counter()``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from hutch import Client, Instance, Status, WorkflowEntrypoint

from bench.child_process import die_with_parent

Connect = Callable[[Mapping[str, type[WorkflowEntrypoint]]], AbstractAsyncContextManager[Client]]
"""Opens a runtime with these workflows registered, e.g. ``lambda wfs: engine.connect(wfs)``."""


@dataclass(frozen=True, slots=True)
class RuntimeConnect:
    """A :data:`Connect` that a fresh interpreter can rebuild: ``bench.__main__.make_connect(**recipe)``.

    MEM needs it: RSS growth means nothing in a process where earlier workloads freed memory the
    sleepers then reuse, so MEM measures in a new interpreter opening the same runtime.
    """

    open: Connect = field(repr=False)
    recipe: dict[str, Any]

    def __call__(self, workflows: Mapping[str, type[WorkflowEntrypoint]]) -> AbstractAsyncContextManager[Client]:
        return self.open(workflows)


Metrics = dict[str, float]


# ---------------------------------------------------------------------------- workflows
def _noop(i: int) -> Callable[[], Awaitable[dict[str, int]]]:
    """The standard no-op step: an ``async def`` returning ``{"i": i}``."""

    async def noop() -> dict[str, int]:
        return {"i": i}

    return noop


async def _now() -> dict[str, float]:
    """A step that records when it ran (epoch seconds)."""
    return {"t": time.time()}


class Sequential(WorkflowEntrypoint):
    """W1/W2: ``params["steps"]`` sequential no-op steps."""

    async def run(self, event: Any, step: Any) -> dict[str, int]:
        n = event.payload["steps"]
        for i in range(n):
            await step.do(f"step {i}", _noop(i))
        return {"steps": n}


class WaitForGo(WorkflowEntrypoint):
    """W3: wait for an event of type ``go``, then one step that records its completion time."""

    async def run(self, event: Any, step: Any) -> dict[str, float]:
        await step.wait_for_event("wait for go", "go", timeout="1 hour")
        after: dict[str, float] = await step.do("after go", _now)
        return after


class SleepThenStep(WorkflowEntrypoint):
    """W4: sleep ``params["sleep_s"]``, then one step that records its start time."""

    async def run(self, event: Any, step: Any) -> dict[str, float]:
        await step.sleep("nap", event.payload["sleep_s"])
        after: dict[str, float] = await step.do("after nap", _now)
        return after


class FanOut(WorkflowEntrypoint):
    """W5: ``params["width"]`` no-op steps gathered, then one final step."""

    async def run(self, event: Any, step: Any) -> dict[str, int]:
        width = event.payload["width"]
        results = await asyncio.gather(*(step.do(f"branch {i}", _noop(i)) for i in range(width)))
        await step.do("final", _noop(width))
        return {"branches": len(results)}


class SleepHour(WorkflowEntrypoint):
    """MEM: one sleep of an hour."""

    async def run(self, event: Any, step: Any) -> None:
        await step.sleep("nap", "1 hour")


class FirstStep(WorkflowEntrypoint):
    """W6: one step that records its start time."""

    async def run(self, event: Any, step: Any) -> dict[str, float]:
        first: dict[str, float] = await step.do("first", _now)
        return first


# ---------------------------------------------------------------------------- helpers
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def _finish(instance: Instance, timeout: float) -> dict[str, Any]:
    """Wait for ``instance`` to complete; its output. Anything but ``complete`` is a bench failure."""
    final = await instance.wait(timeout=timeout)
    if final.status is not Status.COMPLETE:
        raise RuntimeError(f"bench instance {instance.id} ended {final.status.value}: {final.error}")
    output: dict[str, Any] = final.output
    return output


async def _until_status(instance: Instance, status: Status, timeout: float = 30.0) -> None:
    """Poll until the instance reaches ``status`` (short interval: this is outside the timed part)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await instance.status()).status is not status:
        if loop.time() > deadline:
            raise RuntimeError(f"bench instance {instance.id} did not reach {status.value} within {timeout} s")
        await asyncio.sleep(0.0005)


async def _warm_up(client: Client, workflow: str, params: dict[str, Any]) -> None:
    await _finish(await client.workflow(workflow).create(params=params), timeout=60)


# ---------------------------------------------------------------------------- workloads
async def w1_sequential(connect: Connect, *, instances: int = 200, steps: int = 10) -> Metrics:
    """W1: ``instances`` created at once, each ``steps`` sequential no-op steps.

    Measured from the first create call to the completion of the last instance. Creation
    uses ``create_batch`` (at most 100 per call), the client API for "many at once".
    """
    async with connect({"seq": Sequential}) as client:
        wf = client.workflow("seq")
        await _warm_up(client, "seq", {"steps": 2})
        batch = client.limits.max_batch
        items = [{"params": {"steps": steps}} for _ in range(instances)]
        start, cpu = time.perf_counter(), time.process_time()
        created: list[Instance] = []
        for i in range(0, instances, batch):
            created += await wf.create_batch(items[i : i + batch])
        # One waiter at a time: an instance already complete returns at once, so this ends when
        # the last one completes, without hundreds of concurrent waiters competing with the worker.
        for instance in created:
            await _finish(instance, timeout=300)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "wall_s": wall,
        # This process's CPU time over the same span: the worker's and the client's when both run here.
        "process_cpu_s": cpu,
        "steps_per_s": instances * steps / wall,
        "instances_per_s": instances / wall,
    }


async def w2_long(connect: Connect, *, sizes: Sequence[int] = (1000,)) -> Metrics:
    """W2: one instance of ``n`` sequential no-op steps, for each ``n`` in ``sizes`` (in one runtime).

    ``ms_per_step@n`` = create-to-completion time / n. Comparing sizes shows whether the
    per-step cost grows with history length (replay per step would make it linear).
    """
    out: Metrics = {}
    async with connect({"seq": Sequential}) as client:
        wf = client.workflow("seq")
        await _warm_up(client, "seq", {"steps": 2})
        for n in sizes:
            start = time.perf_counter()
            await _finish(await wf.create(params={"steps": n}), timeout=600)
            total = time.perf_counter() - start
            out[f"total_s@{n}"] = total
            out[f"ms_per_step@{n}"] = total * 1000 / n
    return out


LARGE_RESULT_BYTES = 1024 * 1024 - 64
"""W2L's large result: 1 MiB less room for msgpack's header, so it fits the default 1 MiB value limit."""


async def _large() -> bytes:
    return b"x" * LARGE_RESULT_BYTES


class SequentialLarge(WorkflowEntrypoint):
    """W2L: ``params["steps"]`` sequential steps, every 10th returning a 1 MiB result (stored by reference)."""

    async def run(self, event: Any, step: Any) -> dict[str, int]:
        n = event.payload["steps"]
        for i in range(n):
            await step.do(f"step {i}", _large if i % 10 == 9 else _noop(i))
        return {"steps": n}


async def w2_large(connect: Connect, *, steps: int = 1000) -> Metrics:
    """W2L: W2 with a 1 MiB result in every 10th step, against plain W2 in the same runtime.

    ``ratio`` = ms/step with large results / ms/step of plain W2 (the claim check's budget is 1.5).
    """
    out: Metrics = {}
    async with connect({"seq": Sequential, "large": SequentialLarge}) as client:
        await _warm_up(client, "seq", {"steps": 2})
        await _warm_up(client, "large", {"steps": 10})
        for name, label in (("seq", "plain"), ("large", "large")):
            start = time.perf_counter()
            await _finish(await client.workflow(name).create(params={"steps": steps}), timeout=600)
            out[f"ms_per_step_{label}@{steps}"] = (time.perf_counter() - start) * 1000 / steps
    out["ratio"] = out[f"ms_per_step_large@{steps}"] / out[f"ms_per_step_plain@{steps}"]
    return out


async def w3_event(connect: Connect, *, instances: int = 50) -> Metrics:
    """W3: event round trip, ``instances`` sequential repeats.

    Each instance is awaited until it is ``waiting`` on the event; the clock starts at the
    ``send_event`` call and stops when the step after the wait completes (its body's time).
    """
    samples: list[float] = []
    async with connect({"wait": WaitForGo}) as client:
        wf = client.workflow("wait")
        warm = await wf.create()
        await _until_status(warm, Status.WAITING)
        await warm.send_event("go")
        await _finish(warm, timeout=60)
        for _ in range(instances):
            instance = await wf.create()
            await _until_status(instance, Status.WAITING)
            sent = time.time()
            await instance.send_event("go")
            output = await _finish(instance, timeout=60)
            samples.append((output["t"] - sent) * 1000)
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


async def w4_timer(connect: Connect, *, instances: int = 50, sleep_s: float = 1.0) -> Metrics:
    """W4: ``instances`` created at once each sleep ``sleep_s``, then one step.

    Lateness = the step's start (its body's time) - the sleep's due time (from ``describe()``).
    """
    samples: list[float] = []
    async with connect({"sleep": SleepThenStep}) as client:
        wf = client.workflow("sleep")
        await _warm_up(client, "sleep", {"sleep_s": 0.01})
        batch = client.limits.max_batch
        items = [{"params": {"sleep_s": sleep_s}} for _ in range(instances)]
        created: list[Instance] = []
        for i in range(0, instances, batch):
            created += await wf.create_batch(items[i : i + batch])
        for instance in created:
            output = await _finish(instance, timeout=sleep_s + 60)
            detail = await instance.describe()
            (nap,) = [s for s in detail.steps if s.type == "sleep"]
            assert nap.due is not None
            samples.append((output["t"] - nap.due.timestamp()) * 1000)
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


async def w5_fanout(connect: Connect, *, width: int = 100) -> Metrics:
    """W5: one instance gathers ``width`` no-op steps, then one final step; create to completion."""
    async with connect({"fanout": FanOut}) as client:
        wf = client.workflow("fanout")
        await _warm_up(client, "fanout", {"width": 2})
        start = time.perf_counter()
        await _finish(await wf.create(params={"width": width}), timeout=120)
        total = time.perf_counter() - start
    return {"total_s": total}


async def w6_start(connect: Connect, *, instances: int = 50) -> Metrics:
    """W6: from the create call to the first step's start, ``instances`` sequential creates."""
    samples: list[float] = []
    async with connect({"first": FirstStep}) as client:
        wf = client.workflow("first")
        await _warm_up(client, "first", {})
        for _ in range(instances):
            called = time.time()
            output = await _finish(await wf.create(), timeout=60)
            samples.append((output["t"] - called) * 1000)
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


async def mem_sleepers(connect: Connect, *, instances: int = 10_000, fresh_process: bool = True) -> Metrics:
    """MEM: memory held for ``instances`` instances that all sleep an hour.

    ``rss_mb`` is the process's RSS growth from before the creates to when every instance is
    ``waiting`` (after a garbage collection). Memory a previous run freed is reused without
    growing RSS, so given a :class:`RuntimeConnect` each run measures in a fresh Python process
    opening the same runtime (``fresh_process=False``, or a plain ``Connect``, measures here: only
    a process's first run is then meaningful). The embedded store (fakeredis) lives in the process
    too: ``store_mb`` is the size of its data (the Python objects reachable from its databases; 0
    against a real Redis), and ``worker_mb`` = ``rss_mb - store_mb`` is what the worker and the
    client hold — the figure the target is about.
    """
    if fresh_process and isinstance(connect, RuntimeConnect):
        return await _mem_in_fresh_process(connect.recipe, instances)
    async with connect({"sleeper": SleepHour}) as client:
        return await _measure_sleepers(client, instances)


async def _measure_sleepers(client: Client, instances: int) -> Metrics:
    wf = client.workflow("sleeper")
    warm = await wf.create()
    await _until_status(warm, Status.WAITING)
    _collect()
    rss_before, store_before = _rss_bytes(), _store_bytes(client)
    batch = client.limits.max_batch
    for i in range(0, instances, batch):
        await wf.create_batch([{} for _ in range(min(batch, instances - i))])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 300
    while await _count(wf, Status.WAITING, instances + 1) < instances + 1:
        if loop.time() > deadline:
            raise RuntimeError(f"not all {instances} bench instances were waiting within 300 s")
        await asyncio.sleep(0.05)
    _collect()
    rss = (_rss_bytes() - rss_before) / 2**20
    store = (_store_bytes(client) - store_before) / 2**20
    return {
        "rss_mb": rss,
        "store_mb": store,
        "worker_mb": rss - store,
        "worker_kb_per_instance": (rss - store) * 1024 / instances,
    }


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ``bench`` imports from


async def _mem_in_fresh_process(recipe: dict[str, Any], instances: int) -> Metrics:
    """Run the MEM measurement in a new interpreter on the runtime ``recipe`` opens; its metrics."""
    code = (
        "import asyncio, json, bench.workloads as w\n"
        "from bench.__main__ import make_connect\n"
        f"connect = make_connect(**{recipe!r})\n"
        f"metrics = asyncio.run(w.mem_sleepers(connect, instances={instances}, fresh_process=False))\n"
        "print(json.dumps(metrics))\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=_REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the MEM measurement process failed: {err.decode(errors='replace')[-2000:]}")
    metrics: Metrics = json.loads(out.decode().strip().splitlines()[-1])
    return metrics


def _collect() -> None:
    """A full garbage collection, so RSS is compared without collectable garbage.

    It may finalize objects something else in this process leaked before (a test suite running
    the bench): their ResourceWarnings are not this measurement's to report.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _store_bytes(client: Client) -> int:
    """Bytes of the objects an in-process fakeredis store holds (0 for a real Redis)."""
    server = getattr(client._store.redis, "connection_pool", None)
    server = server.connection_kwargs.get("server") if server is not None else None
    if server is None or not hasattr(server, "dbs"):
        return 0
    roots = [part for db in server.dbs.values() for part in (db._dict, db._expiry_heap)]
    seen: set[int] = set()
    total = 0
    while roots:
        obj = roots.pop()
        if id(obj) in seen or isinstance(obj, type | type(sys) | type(_rss_bytes)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        roots.extend(gc.get_referents(obj))
    return total


async def _count(wf: Any, status: Status, at_most: int) -> int:
    """How many instances of ``wf`` are in ``status`` (paging the listing, up to ``at_most``)."""
    count, cursor = 0, None
    while count < at_most:
        page = await wf.list(status, cursor=cursor, limit=1000)
        count += len(page.instances)
        if page.cursor is None:
            break
        cursor = page.cursor
    return count


# ---------------------------------------------------------------------------- the suite
@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each workload is; :data:`STANDARD` is ``WORKLOADS.md``, :data:`SMOKE` is for tests."""

    w1_instances: int = 200
    w1_steps: int = 10
    w2_steps: int = 1000
    w2_scaling: tuple[int, ...] = (10, 100, 1000, 5000)
    w3_instances: int = 50
    w4_instances: int = 50
    w4_sleep_s: float = 1.0
    w5_width: int = 100
    w6_instances: int = 50
    mem_instances: int = 10_000
    w7_instances: int = 100_000
    w7_lead_s: float | None = None  # None: 10 s + 4 ms per instance (bench/timer_storm.py)
    w8_rate: float = 500
    w8_duration_s: float = 60
    w8_search_s: float = 15
    w8_search_trials: int = 5


STANDARD = Sizes()
SMOKE = Sizes(
    w1_instances=3,
    w1_steps=5,
    w2_steps=5,
    w2_scaling=(2, 5),
    w3_instances=3,
    w4_instances=3,
    w4_sleep_s=0.05,
    w5_width=5,
    w6_instances=3,
    mem_instances=20,
    w7_instances=30,
    w7_lead_s=2.0,
    w8_rate=20,
    w8_duration_s=1,
    w8_search_s=0.5,
    w8_search_trials=1,
)


@dataclass(frozen=True, slots=True)
class Workload:
    """One standard workload: its id, name and how to run it at given sizes."""

    id: str
    name: str
    run: Callable[[Connect, Sizes, bool], Coroutine[Any, Any, Metrics]] = field(repr=False)


def _w2(connect: Connect, sizes: Sizes, scaling: bool) -> Coroutine[Any, Any, Metrics]:
    steps = sorted({*sizes.w2_scaling, sizes.w2_steps}) if scaling else [sizes.w2_steps]
    return w2_long(connect, sizes=steps)


def _w7(connect: Connect, sizes: Sizes, scaling: bool) -> Coroutine[Any, Any, Metrics]:
    from bench.timer_storm import w7_timer_storm

    return w7_timer_storm(connect, instances=sizes.w7_instances, lead_s=sizes.w7_lead_s)


def _w8(connect: Connect, sizes: Sizes, scaling: bool) -> Coroutine[Any, Any, Metrics]:
    from bench.sustained_load import w8_sustained

    return w8_sustained(
        connect,
        rate=sizes.w8_rate,
        duration_s=sizes.w8_duration_s,
        search_s=sizes.w8_search_s,
        search_trials=sizes.w8_search_trials,
    )


WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in (
        Workload("W1", "sequential", lambda c, s, _: w1_sequential(c, instances=s.w1_instances, steps=s.w1_steps)),
        Workload("W2", "long", _w2),
        Workload("W2L", "long, large results", lambda c, s, _: w2_large(c, steps=s.w2_steps)),
        Workload("W3", "event", lambda c, s, _: w3_event(c, instances=s.w3_instances)),
        Workload("W4", "timer", lambda c, s, _: w4_timer(c, instances=s.w4_instances, sleep_s=s.w4_sleep_s)),
        Workload("W5", "fan-out", lambda c, s, _: w5_fanout(c, width=s.w5_width)),
        Workload("W6", "start", lambda c, s, _: w6_start(c, instances=s.w6_instances)),
        Workload("MEM", "sleepers", lambda c, s, _: mem_sleepers(c, instances=s.mem_instances)),
        Workload("W7", "timer storm", _w7),
        Workload("W8", "sustained load", _w8),
    )
}

ON_REQUEST = frozenset({"W7", "W8"})
"""Workloads that run only when named (``--only W7``): minutes each at the standard size."""
