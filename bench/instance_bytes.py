"""Where a finished instance's Redis bytes go: per key, per meta field, per history record.

Runs ``--instances`` instances of ``--steps`` no-op steps to completion (an in-process worker on
the in-process transport, real Redis: the store format is the same whatever the broker), then
reads one finished instance's keys back: ``MEMORY USAGE`` and ``OBJECT ENCODING`` of each, the
byte length of each meta field and of each history record, and the namespace-wide keys' share
per instance (status indexes, retention set). Use a private Redis (``--redis-aof`` style
``redis-server --port 6390 --save ''``) or the shared one; the namespace is deleted afterwards.

Usage::

    python -m bench.instance_bytes [--redis-url redis://127.0.0.1:6379/0] [--instances 200] [--steps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections import Counter
from typing import Any

from hutch import Settings

from bench.distributed import Instrumented
from bench.timer_storm import namespace_bytes
from bench.workloads import Sequential, _finish


async def measure(redis_url: str, instances: int, steps: int) -> dict[str, Any]:
    """Run the instances and weigh their keys (see the module)."""
    from hutch.broker.partitioning import partition_of
    from hutch.consumers.runtime import open_redis
    from hutch.history import decode_history
    from hutch.keys import Keys
    from hutch.serialization import unpack

    inst = Instrumented(redis_url, "")
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
            per_key: dict[str, list[int]] = {}
            for instance in created:
                p = partition_of("seq", instance.id, partitions)
                for name, key in zip(
                    ("meta", "hist", "evbuf", "blobs"), keys.instance_keys(p, "seq", instance.id), strict=True
                ):
                    per_key.setdefault(name, []).append(await redis.memory_usage(key, samples=0) or 0)
            sample = created[0]
            p = partition_of("seq", sample.id, partitions)
            meta_key, hist_key = keys.meta(p, "seq", sample.id), keys.history(p, "seq", sample.id)
            # No decode_responses on the store's client: keys and values are bytes.
            meta: dict[bytes, bytes] = await redis.hgetall(meta_key)  # type: ignore[assignment]
            hist: list[bytes] = await redis.lrange(hist_key, 0, -1)  # type: ignore[assignment]
            kinds: Counter[str] = Counter()
            kind_bytes: Counter[str] = Counter()
            created = int(meta[b"created"])
            for record in hist:
                # A format 2 record may hold two (hutch.history): its bytes count under both kinds' names.
                kind = "+".join(str(r["k"]) for r in decode_history([record], created))
                kinds[kind] += 1
                kind_bytes[kind] += len(record)
            total, key_count = await namespace_bytes(redis, inst.namespace)
            out: dict[str, Any] = {
                "instances": instances,
                "steps": steps,
                "key_name_bytes": {"meta": len(meta_key), "hist": len(hist_key)},
                "memory_usage_mean": {k: statistics.mean(v) for k, v in per_key.items()},
                "encoding": {
                    "meta": await redis.object("encoding", meta_key),
                    "hist": await redis.object("encoding", hist_key),
                },
                "ttl_s": {"meta": await redis.ttl(meta_key), "hist": await redis.ttl(hist_key)},
                "meta_fields": {k.decode(): len(v) for k, v in meta.items()},
                "meta_payload_bytes": sum(len(k) + len(v) for k, v in meta.items()),
                "history_records": dict(kinds),  # stored records, by the kinds each holds
                "history_record_bytes": dict(kind_bytes),
                "history_payload_bytes": sum(len(r) for r in hist),
                "history_sample_record": unpack(hist[len(hist) // 2]) if hist else None,
                "namespace_keys": key_count,
                "namespace_bytes_per_instance": total / instances,
            }
            own = sum(statistics.mean(v) for v in per_key.values())
            out["own_bytes_per_instance"] = own
            out["shared_bytes_per_instance"] = total / instances - own
            return out
        finally:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    """Print the breakdown, one line per figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.instance_bytes", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    for key, value in asyncio.run(measure(args.redis_url, args.instances, args.steps)).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
