"""Failover and handover of partitions between ``hutch worker`` processes, measured.

Three measurements, each on a fresh namespace of the shared Redis and RabbitMQ (deleted after):

- ``kill`` (default): ``kill -9`` of one of the workers, ``--kills`` times (a replacement joins
  after each). Every partition runs an instance whose first step attempt is in flight; for each
  partition the killed worker held, the time from the kill to the start of the step's next
  attempt on a survivor (the step body stamps it, so it is the first step start there). Reported
  as p50/p99/max over all moved partitions of all kills, per partition count.
- ``rolling``: a graceful rolling deploy under load: two workers, ``--instances`` instances of a
  four-step workflow (two steps of 1-2 s) created ten every 0.2 s meanwhile; SIGTERM one worker,
  start its replacement, wait until the partitions settled, then the next. Every step body counts
  its executions: the figure is how many ran more than once (completed, then discarded and run
  again, or interrupted).
- ``blocked``: the price of short timeouts. A step that blocks its worker's event loop
  (``time.sleep`` in an ``async`` body) for a given time, under given settings: does another
  worker take the blocked worker's partitions while it is alive (a false failover), and how many
  step executions run twice because of it (the blocking step, and a 3 s step running next to it).

Usage::

    python -m bench.failover [--partitions 16 256] [--kills 5] [--workers 2] [--only kill,rolling,blocked] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import hutch
from hutch import Client, Instance, Settings, WorkflowEntrypoint
from hutch.broker.partitioning import partition_of
from hutch.consumers.membership import assign
from redis.asyncio import Redis

from bench.child_process import die_with_parent

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- the workflows (run by the workers)
_ledger: Redis | None = None


def _redis() -> Redis:
    """The worker process's client for the bench's own counters (the worker's Redis)."""
    global _ledger
    if _ledger is None:
        _ledger = Redis.from_url(os.environ["HUTCH_REDIS_URL"])
    return _ledger


def _key(kind: str, *parts: str) -> str:
    return ":".join([os.environ["HUTCH_NAMESPACE"], "bench", kind, *parts])


class StampWorkflow(WorkflowEntrypoint):
    """One step; each attempt records when it started. The first runs ``hold`` seconds, later ones end at once."""

    async def run(self, event: Any, step: Any) -> Any:
        iid, hold = event.instance_id, float(event.payload.get("hold", 60.0))

        async def work(ctx: Any) -> int:
            await _redis().rpush(_key("starts", iid), f"{ctx.attempt}:{time.time()}")
            if ctx.attempt == 1:
                await asyncio.sleep(hold)
            return int(ctx.attempt)

        return await step.do("work", work, config={"retries": {"limit": 5, "delay": "1 second"}})


class ChainWorkflow(WorkflowEntrypoint):
    """Four steps (0 s, 2 s, 0 s, 1 s), each execution counted."""

    STEPS = (("quick-1", 0.0), ("long-1", 2.0), ("quick-2", 0.0), ("long-2", 1.0))

    async def run(self, event: Any, step: Any) -> Any:
        iid = event.instance_id
        for name, seconds in self.STEPS:

            async def body(name: str = name, seconds: float = seconds) -> str:
                await _redis().hincrby(_key("runs", iid), name, 1)
                if seconds:
                    await asyncio.sleep(seconds)
                return name

            await step.do(name, body)
        return len(self.STEPS)


class BlockWorkflow(WorkflowEntrypoint):
    """One step that blocks the event loop for ``block`` seconds (``busy`` params: a 3 s well-behaved step instead)."""

    async def run(self, event: Any, step: Any) -> Any:
        iid, block = event.instance_id, float(event.payload.get("block", 0.0))

        async def body() -> str:
            await _redis().incr(_key("runs", iid))
            if block:
                time.sleep(block)  # noqa: ASYNC251 -- the mistake being measured: blocking work in an async body
            else:
                await asyncio.sleep(3.0)
            return "done"

        return await step.do("body", body)


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {
    "stamp": StampWorkflow,
    "chain": ChainWorkflow,
    "block": BlockWorkflow,
}


# ---------------------------------------------------------------------------- worker processes
class _Worker:
    """One ``hutch worker`` subprocess (the bench's workflows), its output in a temporary file."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._args = [sys.executable, "-m", "hutch", "worker"]
        for name in WORKFLOWS:
            self._args += ["--workflow", f"{name}=bench.failover:{WORKFLOWS[name].__name__}"]
        self._env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self._log = tempfile.NamedTemporaryFile(prefix="hutch-failover-", suffix=".log", delete=False)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> _Worker:
        self.proc = await asyncio.create_subprocess_exec(
            *self._args,
            cwd=ROOT,
            env=self._env,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        await _until(self._said_id, 60, "a worker did not start")
        return self

    def _said_id(self) -> bool:
        return any(line.startswith("hutch worker ") for line in self.output.splitlines())

    @property
    def output(self) -> str:
        text = Path(self._log.name).read_text(errors="replace")
        if self.proc is not None and self.proc.returncode not in (None, -9, 0):
            raise RuntimeError(f"bench worker exited with {self.proc.returncode}:\n{text}")
        return text

    def worker_id(self) -> str:
        for line in self.output.splitlines():
            if line.startswith("hutch worker ") and " connected to " in line:
                return line.split()[2]
        raise RuntimeError("the worker has not said its id yet")

    def owned_history(self) -> list[list[int]]:
        """Every set of partitions the worker said it owns, in order."""
        history = []
        for line in self.output.splitlines():
            if "owns partitions" in line:
                text = line.split("owns partitions", 1)[1].split("(")[0].strip()
                history.append([int(p) for p in text.strip("[]").split(",") if p.strip()])
        return history

    def owned(self) -> list[int]:
        """The partitions the worker last said it owns."""
        history = self.owned_history()
        return history[-1] if history else []

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)


async def _until(check: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise RuntimeError(f"timed out after {timeout} s: {what}")
        await asyncio.sleep(interval)


def _settled(workers: Iterable[_Worker], partitions: int) -> bool:
    """Whether each worker holds exactly its share under the plan of these workers (the dead ones expired)."""
    ids = {w.worker_id(): w for w in workers}
    return all(ids[w].owned() == share for w, share in assign(ids, partitions).items())


@contextlib.asynccontextmanager
async def _deployment(
    partitions: int, redis_url: str, amqp_url: str, **env: str
) -> AsyncIterator[tuple[Client, Redis, dict[str, str]]]:
    """A fresh namespace (deleted after), a remote client and the workers' environment."""
    namespace = f"bench-failover-{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=partitions)
    worker_env = {
        "HUTCH_REDIS_URL": redis_url,
        "HUTCH_AMQP_URL": amqp_url,
        "HUTCH_NAMESPACE": namespace,
        "HUTCH_PARTITIONS": str(partitions),
        **env,
    }
    redis = Redis.from_url(redis_url)
    try:
        async with hutch.connect(WORKFLOWS, settings=settings) as client:
            yield client, redis, worker_env
    finally:
        await _drop(redis, namespace, amqp_url, partitions)
        await redis.aclose()


async def _drop(redis: Redis, namespace: str, amqp_url: str, partitions: int) -> None:
    from hutch.broker.transports.rabbitmq import RabbitMQTransport

    transport = RabbitMQTransport(amqp_url, partitions=partitions, namespace=namespace)
    await transport.start()
    try:
        await transport.delete_topology()
    finally:
        await transport.close()
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])


def _ids_per_partition(workflow: str, partitions: int, prefix: str) -> list[str]:
    """One instance id per partition, in partition order."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        iid = f"{prefix}-{n}"
        found.setdefault(partition_of(workflow, iid, partitions), iid)
        n += 1
    return [found[p] for p in range(partitions)]


async def _create(client: Client, workflow: str, ids: list[str], params: dict[str, Any]) -> None:
    for i in range(0, len(ids), 100):
        await client.workflow(workflow).create_batch([{"id": iid, "params": params} for iid in ids[i : i + 100]])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- kill -9
async def kill_bench(partitions: int, *, workers: int, kills: int, redis_url: str, amqp_url: str) -> dict[str, Any]:
    """``kill -9`` of a worker → the start of the next step attempt on each partition it held."""
    latencies: list[float] = []
    per_kill: list[dict[str, Any]] = []
    async with _deployment(partitions, redis_url, amqp_url) as (client, redis, env):
        procs = [await _Worker(env).start() for _ in range(workers)]
        try:
            await _until(lambda: _settled(procs, partitions), 120, "the workers did not split the partitions")
            for k in range(kills):
                ids = _ids_per_partition("stamp", partitions, f"k{k}")
                await _create(client, "stamp", ids, {"hold": 120.0})
                starts = [_key_of(env, "starts", iid) for iid in ids]

                async def first_attempts_running(starts: list[str] = starts) -> bool:
                    pipe = redis.pipeline(transaction=False)
                    for key in starts:
                        pipe.llen(key)
                    return all(n >= 1 for n in await pipe.execute())

                await _until(first_attempts_running, 60, "first attempts did not all start")
                victim = procs[k % workers]
                moved = victim.owned()
                killed_at = time.time()
                victim.signal(signal.SIGKILL)
                await victim.wait()

                async def next_attempts(moved: list[int] = moved, starts: list[str] = starts) -> list[float] | None:
                    pipe = redis.pipeline(transaction=False)
                    for p in moved:
                        pipe.lrange(starts[p], 0, -1)
                    stamps = []
                    for rows in await pipe.execute():
                        later = [float(r.decode().split(":")[1]) for r in rows if not r.startswith(b"1:")]
                        if not later:
                            return None
                        stamps.append(min(later))
                    return stamps

                stamps = await _until(next_attempts, 60, "a killed worker's partition did not progress", 0.005)
                moved_latencies = [s - killed_at for s in stamps]
                latencies += moved_latencies
                per_kill.append({"moved": len(moved), "max_s": max(moved_latencies)})
                print(
                    f"  P={partitions} kill {k + 1}/{kills}: {len(moved)} partitions moved, "
                    f"p50 {statistics.median(moved_latencies) * 1000:.0f} ms, max {max(moved_latencies) * 1000:.0f} ms",
                    file=sys.stderr,
                )
                # End this round's instances (their first attempts sleep) so the joiner's handovers
                # are not held up by them, then let a replacement join.
                await asyncio.gather(*(_terminate(client, "stamp", iid) for iid in ids))
                await victim.close()
                procs[k % workers] = await _Worker(env).start()
                await _until(lambda: _settled(procs, partitions), 120, "the replacement did not settle")
        finally:
            for proc in procs:
                await proc.close()
    return {
        "partitions": partitions,
        "workers": workers,
        "kills": kills,
        "moved_partitions": len(latencies),
        "p50_s": statistics.median(latencies),
        "p99_s": _percentile(latencies, 0.99),
        "max_s": max(latencies),
        "per_kill": per_kill,
    }


async def _terminate(client: Client, workflow: str, iid: str) -> None:
    with contextlib.suppress(Exception):  # a finished one cannot be terminated
        await (await client.workflow(workflow).get(iid)).terminate()


def _key_of(env: Mapping[str, str], kind: str, *parts: str) -> str:
    return ":".join([env["HUTCH_NAMESPACE"], "bench", kind, *parts])


# ---------------------------------------------------------------------------- rolling deploy
async def rolling_bench(*, instances: int, redis_url: str, amqp_url: str, partitions: int = 16) -> dict[str, Any]:
    """SIGTERM each of two workers in turn, a replacement started after each: step executions that ran twice."""
    async with _deployment(partitions, redis_url, amqp_url) as (client, redis, env):
        procs = [await _Worker(env).start() for _ in range(2)]
        try:
            await _until(lambda: _settled(procs, partitions), 120, "the workers did not split the partitions")
            created: list[Instance] = []

            async def feed() -> None:
                # Under load: a steady stream of new instances for the length of the deploy.
                while len(created) < instances:
                    batch = [{"params": {}} for _ in range(min(10, instances - len(created)))]
                    created.extend(await client.workflow("chain").create_batch(batch))
                    await asyncio.sleep(0.2)

            feeder = asyncio.create_task(feed())
            await _until(lambda: len(created) >= min(instances, 50), 60, "instances were not created")
            started = time.monotonic()
            await _replace_each(procs, env, partitions)
            deployed_s = time.monotonic() - started
            await feeder
            for inst in created:
                final = await inst.wait(timeout=300)
                if final.status.value != "complete":
                    raise RuntimeError(f"{inst.id} ended {final.status.value}: {final.error}")
            runs, by_step = await _step_runs(redis, env, [inst.id for inst in created])
        finally:
            for proc in procs:
                await proc.close()
    return {
        "instances": instances,
        "step_executions": sum(runs),
        "steps": instances * len(ChainWorkflow.STEPS),
        "re_executed": sum(n - 1 for n in runs),
        "re_executed_by_step": by_step,
        "deploy_s": deployed_s,
    }


async def _replace_each(procs: list[_Worker], env: dict[str, str], partitions: int) -> None:
    """SIGTERM each worker in turn and start its replacement once it exited, waiting for the partitions to settle."""
    for i in range(len(procs)):
        procs[i].signal(signal.SIGTERM)
        code = await procs[i].wait(120)
        if code != 0:
            raise RuntimeError(f"a worker stopped with {code}:\n{procs[i].output}")
        await procs[i].close()
        procs[i] = await _Worker(env).start()
        await _until(lambda: _settled(procs, partitions), 120, "the replacement did not settle")


async def _step_runs(redis: Redis, env: dict[str, str], ids: list[str]) -> tuple[list[int], dict[str, int]]:
    """How many times each step of the instances ran, and the runs beyond the first summed by step name."""
    pipe = redis.pipeline(transaction=False)
    for iid in ids:
        pipe.hgetall(_key_of(env, "runs", iid))
    counted = await pipe.execute()
    runs = [int(n) for counts in counted for n in counts.values()]
    by_step: dict[str, int] = {}
    for counts in counted:
        for name, n in counts.items():
            if int(n) > 1:
                by_step[name.decode()] = by_step.get(name.decode(), 0) + int(n) - 1
    return runs, by_step


# ---------------------------------------------------------------------------- a blocked event loop
BLOCKED_CASES: list[tuple[str, dict[str, str]]] = [
    ("defaults (ttl 3 s, AMQP heartbeat 1 s, dead after 2 s)", {}),
    ("ttl 1 s", {"HUTCH_WORKER_TTL_S": "1", "HUTCH_HEARTBEAT_S": "0.33"}),
    (
        "ttl 6 s, AMQP heartbeat 5 s, dead after 6 s",
        {
            "HUTCH_WORKER_TTL_S": "6",
            "HUTCH_HEARTBEAT_S": "1",
            "HUTCH_AMQP_HEARTBEAT_S": "5",
            "HUTCH_AMQP_DEAD_AFTER_S": "6",
        },
    ),
]


async def blocked_bench(
    *, blocks: list[float], redis_url: str, amqp_url: str, partitions: int = 16
) -> list[dict[str, Any]]:
    """Block one worker's event loop: false failovers and steps run twice, per settings and block length."""
    out = []
    for label, settings in BLOCKED_CASES:
        for block in blocks:
            async with _deployment(partitions, redis_url, amqp_url, **settings) as (client, redis, env):
                procs = [await _Worker(env).start() for _ in range(2)]
                try:
                    await _until(lambda: _settled(procs, partitions), 120, "the workers did not split")  # noqa: B023
                    victim, other = procs
                    mine = victim.owned()
                    ids = _ids_per_partition("block", partitions, f"b{round(block * 1000)}")
                    blocker = ids[mine[0]]
                    busy = [ids[p] for p in mine[1:]]
                    await _create(client, "block", busy, {})
                    await _create(client, "block", [blocker], {"block": block})
                    instances = [await client.workflow("block").get(iid) for iid in [blocker, *busy]]
                    for inst in instances:
                        await inst.wait(timeout=60)
                    pipe = redis.pipeline(transaction=False)
                    for iid in [blocker, *busy]:
                        pipe.get(_key_of(env, "runs", iid))
                    runs = [int(n or 0) for n in await pipe.execute()]
                    taken = any(set(mine) & set(owned) for owned in other.owned_history())
                finally:
                    for proc in procs:
                        await proc.close()
            row = {
                "settings": label,
                "block_s": block,
                "false_failover": taken,
                "re_executed": sum(n - 1 for n in runs),
            }
            print(f"  {label}, block {block:g} s: {row}", file=sys.stderr)
            out.append(row)
    return out


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", default=os.environ.get("HUTCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--amqp-url", default=os.environ.get("HUTCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--partitions", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--instances", type=int, default=200, help="instances of the rolling deploy")
    parser.add_argument("--blocks", type=float, nargs="+", default=[0.5, 1.5, 2.5, 4.0])
    parser.add_argument("--only", default="kill,rolling,blocked")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))

    async def run() -> dict[str, Any]:
        results: dict[str, Any] = {}
        if "kill" in only:
            results["kill"] = [
                await kill_bench(
                    p, workers=args.workers, kills=args.kills, redis_url=args.redis_url, amqp_url=args.amqp_url
                )
                for p in args.partitions
            ]
        if "rolling" in only:
            results["rolling"] = await rolling_bench(
                instances=args.instances, redis_url=args.redis_url, amqp_url=args.amqp_url
            )
        if "blocked" in only:
            results["blocked"] = await blocked_bench(
                blocks=args.blocks, redis_url=args.redis_url, amqp_url=args.amqp_url
            )
        return results

    results = asyncio.run(run())
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for row in results.get("kill", []):
        print(
            f"kill -9, P={row['partitions']}, {row['workers']} workers, {row['kills']} kills, "
            f"{row['moved_partitions']} moved partitions: first step start after the kill "
            f"p50 {row['p50_s'] * 1000:.0f} ms, p99 {row['p99_s'] * 1000:.0f} ms, max {row['max_s'] * 1000:.0f} ms"
        )
    if "rolling" in results:
        row = results["rolling"]
        print(
            f"rolling deploy of 2 workers, {row['instances']} instances: {row['step_executions']} step executions "
            f"for {row['steps']} steps, {row['re_executed']} re-executed (deploy took {row['deploy_s']:.1f} s)"
        )
    for row in results.get("blocked", []):
        print(
            f"event loop blocked {row['block_s']:g} s, {row['settings']}: "
            f"{'false failover' if row['false_failover'] else 'no failover'}, {row['re_executed']} step(s) run twice"
        )


if __name__ == "__main__":
    main()
