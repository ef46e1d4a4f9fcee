"""What the worker's metrics cost: W1 with metrics recording on and off, in one run (issue 14, Performance).

    python -m bench.metrics_overhead --runtime rabbitmq --runs 10

Runs alternate in ABBA order (on, off, off, on, on, off, ...) so that drift of the machine or the
servers hits both sides alike. Each run reports W1's steps/s and the CPU time this process spent
per step over the timed part (``time.process_time()``: the worker and the client, which run
here): on a shared
machine the CPU time moves far less than the wall clock. The figures are each side's median,
quartiles and range, and the ratios off/on of the medians, whose target is 1.05 at most (metrics
within 5 %). The worker runs in this process (``--workers`` is not offered): the switch
(:func:`hutch.metrics.set_enabled`) is this process's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

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
    cpu_us: dict[bool, list[float]] = {True: [], False: []}
    steps = sizes.w1_instances * sizes.w1_steps
    try:
        for i in range(args.runs * 2):
            on = i % 4 in (0, 3)  # ABBA: on, off, off, on, ...
            metrics.set_enabled(on)
            print(f"[W1 metrics {'on' if on else 'off'} {len(rates[on]) + 1}/{args.runs}]", file=sys.stderr, flush=True)
            result = asyncio.run(w1_sequential(connect, instances=sizes.w1_instances, steps=sizes.w1_steps))
            cpu_us[on].append(float(result["process_cpu_s"]) / steps * 1e6)
            rates[on].append(float(result["steps_per_s"]))
    finally:
        metrics.set_enabled(True)
    on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
    on_cpu, off_cpu = statistics.median(cpu_us[True]), statistics.median(cpu_us[False])
    recording = recording_cost()
    ratio, cpu_ratio = off_rate / on_rate, on_cpu / off_cpu
    print(
        json.dumps(
            {
                "runtime": args.runtime,
                "runs": args.runs,
                "steps_per_s": {"metrics_on": _spread(rates[True]), "metrics_off": _spread(rates[False])},
                "process_cpu_us_per_step": {"metrics_on": _spread(cpu_us[True]), "metrics_off": _spread(cpu_us[False])},
                "off_over_on": round(ratio, 4),
                "cpu_on_over_off": round(cpu_ratio, 4),
                # What recording adds per committed step, measured alone (far below the runs' spread).
                "recording_us_per_step": recording,
                "recording_share_of_w1_cpu": round(recording["added"] / off_cpu, 4),
                "target": f"<= {TARGET_RATIO}",
                "ok": ratio <= TARGET_RATIO and cpu_ratio <= TARGET_RATIO,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0


def recording_cost(rounds: int = 7, turns: int = 300, per_turn: int = 64) -> dict[str, float]:
    """CPU µs per committed step of what the worker records, on and off: W1's steps replayed through it alone.

    Each step of W1 commits one transition appending an ended attempt (ok) and three more records;
    the orchestrator hands it to ``observed.committed`` and flushes once per turn (``per_turn``
    transitions, the turn size under W1). Rounds alternate on and off; medians.
    """
    from hutch.consumers import observed
    from hutch.consumers.items import StepDone
    from hutch.store.base import Transition

    workflow = "bench-metrics"
    cases = []
    for i in range(10):  # W1's ten step names: ten series
        name = f"step {i}"
        history: list[Any] = [
            {"k": "attend", "n": name, "c": 1, "a": 1, "ok": True, "t": 2},
            {"k": "res", "ref": "step", "n": name, "c": 1, "ok": True, "vb": b"", "t": 2, "g": i},
            {"k": "step", "n": f"step {i + 1}", "c": 1, "g": i + 1, "t": 2, "cfg": {}},
            {"k": "att", "n": f"step {i + 1}", "c": 1, "a": 1, "t": 2},
        ]
        instance = SimpleNamespace(workflow=workflow, instance_id="i", trace="", history=history, appended=4)
        transition = Transition(0, workflow, "i", i, 1, history=[b""] * len(history))
        done = StepDone(0, workflow, "i", 0, name, 1, 1, 1, 2, ok=True)
        cases.append((instance, transition, [done]))
    flush = getattr(observed, "flush", lambda: None)  # a version that records per step has none
    sides: dict[bool, list[float]] = {True: [], False: []}
    try:
        for r in range(rounds * 2):
            on = r % 4 in (0, 3)
            metrics.set_enabled(on)
            cpu = time.process_time()
            for t in range(turns):
                for n in range(per_turn):
                    instance, transition, inputs = cases[(t + n) % len(cases)]
                    observed.committed(instance, transition, inputs)  # type: ignore[arg-type]
                flush()
            sides[on].append((time.process_time() - cpu) / (turns * per_turn) * 1e6)
    finally:
        metrics.set_enabled(True)
    on_us, off_us = statistics.median(sides[True]), statistics.median(sides[False])
    return {"on": round(on_us, 3), "off": round(off_us, 3), "added": round(on_us - off_us, 3)}


def _spread(values: list[float]) -> dict[str, float | list[float]]:
    """Median, quartiles, range and every run's value (rounded)."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {
        "median": round(statistics.median(values), 1),
        "q1": round(q1, 1),
        "q3": round(q3, 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "runs": [round(v, 1) for v in values],
    }


if __name__ == "__main__":
    sys.exit(main())
