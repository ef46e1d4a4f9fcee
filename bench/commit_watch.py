"""What the live view's watched-instance check in commit.lua costs a workflow nobody watches.

commit.lua looks its partitions' watched sets up (``Keys.watched``) to announce every commit of an
instance a gateway's live page follows (:mod:`hutch.commits`). This measures that check alone: the
same step commits (a meta field and a history record per instance, no status change, nothing
watched) are run alternately, in blocks, with commit.lua and with commit.lua stripped of the
check, on a private ``redis-server`` (AOF off), and each block's server time per ``EVALSHA`` is
read from ``INFO commandstats``. That time is wall time inside the server, so on a loaded machine
a block the server was descheduled in reads high: the figures are the median, the lower quartile
and the least of the blocks of each side (the least is the least disturbed). The client's time is
left out, as the check adds no round trip.

Example::

    python -m bench.commit_watch --batch 1
    python -m bench.commit_watch --batch 16 --calls 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from hutch import keys
from hutch.serialization import pack
from hutch.store.base import Transition
from hutch.store.redis import RedisStore, _ScriptCall
from redis.asyncio import Redis

from bench.private_redis import AofRedis

CHECK = """    if watching[j] == nil then watching[j] = redis.call('EXISTS', KEYS[5 * j]) == 1 end
    if watching[j] and redis.call('ZSCORE', KEYS[5 * j], p[1]) then
      changed[#changed + 1] = {j, (seq[1] + 1) .. ' ' .. p[1]}
    end
"""
"""The check, as commit.lua has it (the bench fails if it does not, rather than measure nothing)."""

PARTITION = 3


def without_check(script: str) -> str:
    """commit.lua with the watched-instance check taken out (same KEYS and ARGV)."""
    if CHECK not in script:
        raise RuntimeError("commit.lua's watched-instance check changed: update bench/commit_watch.py")
    return script.replace(CHECK, "")


async def measure(url: str, *, blocks: int, calls: int, batch: int) -> dict[str, list[float]]:
    """Server µs per commit call in each block, with the check and without it."""
    redis = Redis.from_url(url)
    store = RedisStore(redis, 16, namespace="bench-commit-watch")
    try:
        await redis.config_set("appendonly", "no")
        shas = {
            "with": await redis.script_load(store._commit.script),
            "without": await redis.script_load(without_check(store._commit.script)),
        }
        ids = [f"i{n}" for n in range(batch)]
        for iid in ids:
            fields = {"wf": "wf", "id": iid, "status": "running", "seq": 0, "run": 0, "created": 1}
            await store.create(PARTITION, "wf", iid, 1, fields)
        record = pack({"k": "step", "n": "s", "c": 1, "o": b"x" * 40})
        seq = 0
        per_block: dict[str, list[float]] = {"with": [], "without": []}
        for block in range(blocks):
            for side in ("with", "without") if block % 2 == 0 else ("without", "with"):  # ABBA
                await redis.config_resetstat()
                for _ in range(calls):
                    call = _ScriptCall()
                    for iid in ids:
                        call.instances.add(iid)
                        call.order.append(0)
                        at = call.slot(PARTITION, store._partition_keys, "")
                        step = Transition(PARTITION, "wf", iid, seq, 1, meta={"step": seq}, history=[record])
                        store._commit_call(step, at, call)
                    call_keys, args = call.command(keys.FINISHED_SUFFIX, keys.CHANGED_SUFFIX, store.prune_per_finish)
                    results = await redis.evalsha(shas[side], len(call_keys), *call_keys, *args)
                    if any(int(r) != 1 for r in results):
                        raise RuntimeError(f"a commit did not apply: {results}")
                    seq += 1
                stats = await redis.info("commandstats")
                per_block[side].append(float(stats["cmdstat_evalsha"]["usec_per_call"]))
        return per_block
    finally:
        await redis.aclose()


def main() -> None:
    """Run the comparison on a private redis-server and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100, help="blocks of calls per side (default 100)")
    parser.add_argument("--calls", type=int, default=200, help="commit calls per block (default 200)")
    parser.add_argument("--batch", type=int, default=1, help="transitions per call, one partition (default 1)")
    args = parser.parse_args()
    with AofRedis("no") as server:
        result = asyncio.run(measure(server.url, blocks=args.blocks, calls=args.calls, batch=args.batch))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"commit.lua, {args.batch} transition(s) per call, nobody watching; {args.blocks} blocks x {args.calls} "
        f"calls per side; server µs per call; load {load}"
    )
    for side in ("with", "without"):
        values = result[side]
        p25 = statistics.quantiles(values, n=4)[0]
        print(f"  {side:7} the check: median {statistics.median(values):.2f}  p25 {p25:.2f}  min {min(values):.2f}")


if __name__ == "__main__":
    main()
