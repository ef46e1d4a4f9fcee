"""``python -m bench.fleet``: search and bulk figures on the real runtime (issue 13, SPEC §12).

1. *search*: 100 000 finished instances written straight into the store (meta hash and status
   index entries, as a finishing commit leaves them, pipelined), then ``client.search(limit=50)``
   of the newest, across workflows and within one: p50 and p99 over many calls. Target: p50 <= 5 ms.
2. *bulk terminate*: 10 000 instances created through the client and waiting for an event (run by
   ``--workers`` ``hutch worker`` processes; the job runs in this process, as in a gateway), then one
   bulk terminate job: instances per second from the job's
   creation to its end (each request durably accepted by RabbitMQ), and until every instance is
   terminated. Target: >= 2 000 instances/s.

Examples::

    python -m bench.fleet                             # both, on 127.0.0.1's Redis and RabbitMQ
    python -m bench.fleet --instances 20000 --terminate 2000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import time
from typing import Any

from hutch import Client, Status, WorkflowEntrypoint
from hutch.keys import ALL, instance_member
from hutch.serialization import pack

from bench.distributed import subprocess_connect

SEARCH_TARGET_MS = 5.0
TERMINATE_TARGET_PER_S = 2000.0


class Waiter(WorkflowEntrypoint):
    """Waits for an event that never comes (until terminated)."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.wait_for_event("go", "go", timeout="1 day")


async def seed_finished(client: Client, workflow: str, count: int) -> None:
    """Write ``count`` complete instances of ``workflow`` as a finishing commit leaves them, pipelined."""
    store = client._store
    base = int(time.time() * 1000) - count
    for start in range(0, count, 5000):
        pipe = store.redis.pipeline(transaction=False)
        for n in range(start, min(count, start + 5000)):
            iid = f"done-{n:07d}"
            p = client._partition(workflow, iid)
            created = base + n
            meta = {"wf": workflow, "id": iid, "status": "complete", "seq": 3, "run": 0, "created": created}
            pipe.hset(store.keys.meta(p, workflow, iid), mapping={**meta, "ver": pack("v1")})  # type: ignore[arg-type]
            member = instance_member(workflow, iid)
            pipe.zadd(store.keys.status_index(p, workflow, ALL), {member: created})
            pipe.zadd(store.keys.status_index(p, workflow, "complete"), {member: created})
        await pipe.execute()
    await store.redis.sadd(store.keys.workflows(), workflow)


async def search_latency(client: Client, calls: int, **filters: Any) -> dict[str, float]:
    """p50/p99 in ms of a search of the 50 newest."""
    took = []
    for _ in range(calls):
        t0 = time.perf_counter()
        page = await client.search(limit=50, **filters)
        took.append((time.perf_counter() - t0) * 1000)
        assert len(page.instances) == 50
    took.sort()
    return {"p50_ms": statistics.median(took), "p99_ms": took[int(len(took) * 0.99) - 1]}


async def bulk_terminate(client: Client, count: int) -> dict[str, float]:
    """Rate of a bulk terminate of ``count`` waiting instances."""
    waiter = client.workflow("waiter")
    for start in range(0, count, 100):
        await waiter.create_batch([{"id": f"w-{n:06d}"} for n in range(start, min(count, start + 100))])
    deadline = time.monotonic() + 300
    while True:
        page = await client.search(workflow="waiter", status="waiting", limit=1000)
        waiting = len(page.instances)
        if waiting == min(count, 1000) and await _count(client, "waiter", Status.WAITING) == count:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("instances did not all reach waiting")
        await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    job = await client.bulk("terminate", workflow="waiter", status="waiting")
    progress = await job.wait(timeout=600, poll_s=0.01)
    job_s = time.perf_counter() - t0
    assert progress.done == count and progress.failed == 0, progress
    while True:  # polled: the bench reads the indexes as an operator would
        if await _count(client, "waiter", Status.TERMINATED) >= count:
            break
        await asyncio.sleep(0.02)
    applied_s = time.perf_counter() - t0
    return {"job_per_s": count / job_s, "applied_per_s": count / applied_s, "job_s": job_s, "applied_s": applied_s}


async def _count(client: Client, workflow: str, status: Status) -> int:
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for p in range(store.partitions):
        pipe.zcard(store.keys.status_index(p, workflow, status.value))
    return int(sum(await pipe.execute()))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements, on ``args.workers`` ``hutch worker`` processes and a remote client (as a gateway is)."""
    connect = subprocess_connect(args.workers, redis_url=args.redis_url, amqp_url=args.amqp_url)
    results: dict[str, Any] = {"workers": args.workers}
    # By its module's name, not __main__'s: the worker processes import it (python -m bench.fleet).
    waiter: type[WorkflowEntrypoint] = importlib.import_module("bench.fleet").Waiter
    async with connect({"waiter": waiter}) as client:
        results["partitions"] = client._store.partitions
        await seed_finished(client, "done", args.instances)
        await search_latency(client, 20)  # warm the scripts and connections
        results["search_all_workflows"] = await search_latency(client, args.calls)
        results["search_one_workflow"] = await search_latency(client, args.calls, workflow="done")
        results["search_by_status"] = await search_latency(client, args.calls, workflow="done", status="complete")
        results["bulk_terminate"] = await bulk_terminate(client, args.terminate)
    return results


def cli() -> None:
    """Parse the options, run, print the figures next to their targets."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--workers", type=int, default=2, help="hutch worker processes")
    parser.add_argument("--instances", type=int, default=100_000, help="finished instances to search among")
    parser.add_argument("--calls", type=int, default=500, help="searches timed per figure")
    parser.add_argument("--terminate", type=int, default=10_000, help="instances the bulk terminate ends")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name in ("search_all_workflows", "search_one_workflow", "search_by_status"):
        r = results[name]
        ok = "ok" if r["p50_ms"] <= SEARCH_TARGET_MS else "MISSED"
        print(f"{name:22} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  (target p50 <= 5 ms: {ok})")
    b = results["bulk_terminate"]
    ok = "ok" if b["job_per_s"] >= TERMINATE_TARGET_PER_S else "MISSED"
    print(
        f"bulk terminate {args.terminate}: job {b['job_per_s']:,.0f}/s ({b['job_s']:.2f} s), all terminated "
        f"{b['applied_per_s']:,.0f}/s ({b['applied_s']:.2f} s)  (target >= 2000/s: {ok})"
    )


if __name__ == "__main__":
    cli()
