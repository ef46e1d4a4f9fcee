"""Turns workload measurements into figures: medians over runs, next to the runtime's targets.

Targets are ``PERFORMANCE.md``'s, per runtime; a figure is ``OK`` when every target on its
line holds for the median of the runs, else ``MISS``.
"""

from __future__ import annotations

import json
import operator
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bench.workloads import Metrics

Op = Literal[">=", "<=", "<"]
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True, slots=True)
class Target:
    """``metric op value``, e.g. ``steps_per_s >= 3000``."""

    metric: str
    op: Op
    value: float
    label: str  # how the metric reads on the line ("steps/s", "p50 ms")

    def holds(self, metrics: Mapping[str, float]) -> bool:
        """Whether the target holds for these metrics (a metric that was not measured fails)."""
        value = metrics.get(self.metric)
        return value is not None and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.label} {self.op} {self.value:g}"


# Issue 15: W7 (p99 1 s on one worker, 0.5 s on two; 600 bytes a sleeper; 50 MB of worker RSS) and W8.
_ISSUE_15: dict[str, tuple[Target, ...]] = {
    "W7": (
        Target("p99_ms", "<=", 1000, "p99 ms"),
        Target("redis_bytes_per_sleeper", "<=", 600, "Redis B/sleeper"),
        Target("rss_peak_mb", "<=", 50, "worker RSS MB"),
    ),
    "W7 2 workers": (
        Target("p99_ms", "<=", 500, "p99 ms"),
        Target("redis_bytes_per_sleeper", "<=", 600, "Redis B/sleeper"),
        Target("rss_peak_mb", "<=", 50, "worker RSS MB"),
    ),
    "W8": (Target("p99_ms", "<=", 100, "p99 ms"),),
}

# PERFORMANCE.md, "Targets". W2's ratio compares the largest with the smallest scaling size.
TARGETS: dict[str, dict[str, tuple[Target, ...]]] = {
    "embedded": {
        "W1": (Target("steps_per_s", ">=", 3000, "steps/s"),),
        "W2": (Target("ms_per_step@1000", "<=", 0.5, "ms/step"),),
        "W2 scaling": (Target("ratio", "<=", 1.5, "ratio"),),
        "W2L": (Target("ratio", "<=", 1.5, "ratio to W2"),),  # issue 12: 1 MiB every 10th step
        "W3": (Target("p50_ms", "<=", 2, "p50 ms"),),
        "W4": (Target("p50_ms", "<=", 5, "p50 ms"), Target("p99_ms", "<=", 15, "p99 ms")),
        "W5": (Target("total_s", "<=", 0.03, "s"),),
        "W6": (Target("p50_ms", "<=", 1, "p50 ms"),),
        "MEM": (Target("worker_mb", "<", 20, "worker MB"),),
        # No Redis server in this process to weigh: W7's latency and RSS targets only.
        **{k: tuple(t for t in v if t.metric != "redis_bytes_per_sleeper") for k, v in _ISSUE_15.items()},
    },
    "rabbitmq": {
        "W1": (Target("steps_per_s", ">=", 3000, "steps/s"),),
        "W2": (Target("ms_per_step@1000", "<=", 1.0, "ms/step"),),
        "W2 scaling": (Target("ratio", "<=", 1.5, "ratio"),),
        "W2L": (Target("ratio", "<=", 1.5, "ratio to W2"),),  # issue 12: 1 MiB every 10th step
        "W3": (Target("p50_ms", "<=", 4, "p50 ms"),),
        "W4": (Target("p50_ms", "<=", 10, "p50 ms"), Target("p99_ms", "<=", 25, "p99 ms")),
        "W5": (Target("total_s", "<=", 0.05, "s"),),
        "W6": (Target("p50_ms", "<=", 2.5, "p50 ms"),),
        "MEM": (Target("worker_mb", "<", 20, "worker MB"),),
        **_ISSUE_15,
    },
}


@dataclass(slots=True)
class Figure:
    """One output line: a workload's median metrics over the runs, and its targets."""

    workload: str  # "W1", or "W2 scaling"
    name: str
    shown: list[tuple[str, str, str]]  # (metric, label, format spec)
    median: Metrics
    runs: list[Metrics]
    targets: tuple[Target, ...] = ()
    ok: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.targets:
            self.ok = all(t.holds(self.median) for t in self.targets)


def median_metrics(runs: Sequence[Metrics]) -> Metrics:
    """Per metric, the median over the runs that measured it."""
    keys = dict.fromkeys(k for run in runs for k in run)
    return {k: statistics.median(run[k] for run in runs if k in run) for k in keys}


def _sizes(metrics: Mapping[str, float]) -> list[int]:
    return sorted(int(k.split("@", 1)[1]) for k in metrics if k.startswith("ms_per_step@"))


def add_ratio(metrics: Metrics) -> Metrics:
    """W2: add ``ratio`` = ms/step at the largest size / ms/step at the smallest (when there are two)."""
    sizes = _sizes(metrics)
    if len(sizes) > 1:
        metrics["ratio"] = metrics[f"ms_per_step@{sizes[-1]}"] / metrics[f"ms_per_step@{sizes[0]}"]
    return metrics


def figures(
    runtime: str, workload: str, name: str, runs: Sequence[Metrics], *, main_size: int = 1000, workers: int = 1
) -> list[Figure]:
    """The figures (lines) of one workload from its runs' metrics (``workers``: worker processes, for W7's target)."""
    targets = TARGETS.get(runtime, {})
    runs = [add_ratio(dict(r)) if workload == "W2" else dict(r) for r in runs]
    median = median_metrics(runs)
    if workload == "W1":
        shown = [("steps_per_s", "steps/s", ".0f"), ("instances_per_s", "instances/s", ".0f"), ("wall_s", "s", ".3f")]
        return [Figure(workload, name, shown, median, runs, targets.get(workload, ()))]
    if workload == "W2":
        sizes = _sizes(median)
        size = main_size if main_size in sizes else sizes[-1]
        # Target metric names are written for the standard size; smaller runs (smoke) map onto them.
        main = {**median, "ms_per_step@1000": median[f"ms_per_step@{size}"]}
        shown = [(f"ms_per_step@{size}", "ms/step", ".3f"), (f"total_s@{size}", "total s", ".3f")]
        out = [Figure(workload, f"{name} @{size}", shown, main, runs, targets.get(workload, ()))]
        if len(sizes) > 1:
            scaling = [(f"ms_per_step@{n}", f"@{n}", ".3f") for n in sizes]
            scaling.append(("ratio", f"ratio({sizes[-1]}/{sizes[0]})", ".2f"))
            out.append(Figure("W2", "scaling ms/step", scaling, median, runs, targets.get("W2 scaling", ())))
        return out
    if workload == "W2L":
        size = _sizes({k.replace("_plain", ""): v for k, v in median.items() if "_plain@" in k})[-1]
        shown = [
            (f"ms_per_step_plain@{size}", "W2 ms/step", ".3f"),
            (f"ms_per_step_large@{size}", "W2L ms/step", ".3f"),
            ("ratio", "ratio", ".2f"),
        ]
        return [Figure(workload, f"{name} @{size}", shown, median, runs, targets.get(workload, ()))]
    if workload == "MEM":
        shown = [
            ("worker_mb", "worker MB", ".1f"),
            ("worker_kb_per_instance", "KB/instance", ".2f"),
            ("rss_mb", "RSS MB", ".1f"),
            ("store_mb", "in-process store MB", ".1f"),
        ]
        return [Figure(workload, name, shown, median, runs, targets.get(workload, ()))]
    if workload == "W7":
        shown = [
            ("p50_ms", "p50 ms", ".0f"),
            ("p99_ms", "p99 ms", ".0f"),
            ("max_ms", "max ms", ".0f"),
            ("redis_bytes_per_sleeper", "Redis B/sleeper", ".0f"),
            ("redis_used_per_sleeper", "used_memory B/sleeper", ".0f"),
            ("rss_sleeping_mb", "worker RSS MB sleeping", ".1f"),
            ("rss_peak_mb", "peak", ".1f"),
        ]
        key = "W7 2 workers" if workers >= 2 else "W7"
        return [Figure(workload, f"{name} ({workers} worker)", shown, median, runs, targets.get(key, ()))]
    if workload == "W8":
        shown = [
            ("rate_per_s", "rate/s", ".0f"),
            ("achieved_per_s", "achieved/s", ".0f"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("depth_slope_per_s", "depth slope/s", ".2f"),
            ("depth_max", "depth max", ".0f"),
            ("timer_lag_slope_ms_per_s", "timer lag slope ms/s", ".2f"),
            ("timer_lag_max_ms", "timer lag max ms", ".0f"),
            ("max_rate_per_s", "max rate/s @p99<=100ms", ".0f"),
        ]
        return [Figure(workload, name, shown, median, runs, targets.get(workload, ()))]
    if workload == "W5":
        return [Figure(workload, name, [("total_s", "s", ".4f")], median, runs, targets.get(workload, ()))]
    shown = [("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f")]
    return [Figure(workload, name, shown, median, runs, targets.get(workload, ()))]


def line(runtime: str, figure: Figure) -> str:
    """``embedded W1 sequential  steps/s=4123  instances/s=412  (target steps/s >= 3000)  OK``."""
    values = "  ".join(f"{label}={figure.median[m]:{fmt}}" for m, label, fmt in figure.shown if m in figure.median)
    text = f"{runtime} {figure.workload} {figure.name}  {values}"
    if figure.targets:
        text += f"  (target {', '.join(map(str, figure.targets))})  {'OK' if figure.ok else 'MISS'}"
    return text


def header(meta: Mapping[str, Any]) -> str:
    """One comment line with what produced the figures."""
    return "# " + "  ".join(f"{k}={v}" for k, v in meta.items())


def as_json(meta: Mapping[str, Any], figs: Sequence[Figure]) -> str:
    """Everything, including each run's raw metrics, as one JSON document."""
    out = []
    for f in figs:
        d = asdict(f)
        d["targets"] = [asdict(t) for t in f.targets]
        d["shown"] = [m for m, _, _ in f.shown]
        out.append(d)
    return json.dumps({"meta": dict(meta), "figures": out}, indent=2)
