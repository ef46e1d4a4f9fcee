"""What the worker's metrics cost: W1 with metrics recording on and off, in one run (issue 14, Performance).

    python -m bench.metrics_overhead --runtime rabbitmq --runs 5

Runs alternate (on, off, on, off, ...) so that drift of the machine or the servers hits both
alike; the figure is each side's median steps/s and the ratio off/on, whose target is 1.05 at
most (metrics within 5 %). The worker runs in this process (``--workers`` is not offered): the
switch (:func:`hutch.metrics.set_enabled`) is this process's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Sequence

from hutch import metrics

from bench.__main__ import RUNTIMES, make_connect
from bench.workloads import SMOKE, STANDARD, w1_sequential

TARGET_RATIO = 1.05


def main(argv: Sequence[str] | None = None) -> int:
    """Run W1 ``--runs`` times with metrics on and as many with them off; print the medians and the ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=RUNTIMES, default="embedded")
    parser.add_argument("--runs", type=int, default=5, help="runs on each side (default 5)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs")
    parser.add_argument("--redis-url", default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--amqp-url", default=os.environ.get("HUTCH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else STANDARD
    connect = make_connect(args.runtime, redis_url=args.redis_url, amqp_url=args.amqp_url)
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(args.runs * 2):
            on = i % 2 == 0
            metrics.set_enabled(on)
            print(f"[W1 metrics {'on' if on else 'off'} {i // 2 + 1}/{args.runs}]", file=sys.stderr, flush=True)
            result = asyncio.run(w1_sequential(connect, instances=sizes.w1_instances, steps=sizes.w1_steps))
            rates[on].append(float(result["steps_per_s"]))
    finally:
        metrics.set_enabled(True)
    on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
    ratio = off_rate / on_rate
    print(
        json.dumps(
            {
                "runtime": args.runtime,
                "runs": args.runs,
                "steps_per_s": {"metrics_on": round(on_rate, 1), "metrics_off": round(off_rate, 1)},
                "runs_steps_per_s": {"metrics_on": rates[True], "metrics_off": rates[False]},
                "off_over_on": round(ratio, 4),
                "target": f"<= {TARGET_RATIO}",
                "ok": ratio <= TARGET_RATIO,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
