"""hutch.metrics: one registry of every family, merged across processes under PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hutch import metrics

from tests.prometheus import families, samples, value

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_the_exposition_of_one_process_has_every_family_and_parses() -> None:
    text = metrics.exposition().decode()
    kinds = families(text)
    for name in (
        "hutch_instances_created",
        "hutch_instances_finished",
        "hutch_step_attempts",
        "hutch_step_retries",
        "hutch_commits",
        "hutch_dead_letters",
        "hutch_partition_changes",
    ):
        assert kinds[name] == "counter", name
    for name in ("hutch_step_duration_seconds", "hutch_timer_lateness_seconds", "hutch_redis_round_trip_seconds"):
        assert kinds[name] == "histogram", name
    for name in ("hutch_partitions_owned", "hutch_partition_queue_depth", "hutch_partition_oldest_message_age_seconds"):
        assert kinds[name] == "gauge", name


def test_processes_sharing_a_multiprocess_dir_are_reported_together(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = "from hutch import metrics; metrics.INSTANCES_CREATED.labels('order').inc({n})"
    _python(record.format(n=2), env)
    _python(record.format(n=3), env)
    text = _python("import sys; from hutch import metrics; sys.stdout.write(metrics.exposition().decode())", env)
    assert value(samples(text), "hutch_instances_created_total", workflow="order") == 5


def test_observing_a_turns_durations_at_once_counts_as_observing_them_one_by_one() -> None:
    # The worker adds a turn's step durations to the histogram in one go (consumers/observed.py),
    # through prometheus_client's bucket internals: any value, a bound exactly, past the last one.
    from hutch.consumers.observed import _observe_all
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = [0.0, 0.001, 0.0011, 0.005, 0.2, 0.25, 7.5, 299.0, 300.0, 1e6, 0.001, 0.0004]
    texts = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        child = Histogram("h", "h", ["step"], buckets=metrics.STEP_DURATION._upper_bounds[:-1], registry=registry)
        series = child.labels("s")
        if bulk:
            _observe_all(series, values[:5])
            _observe_all(series, values[5:])
        else:
            for v in values:
                series.observe(v)
        texts.append({k: v for k, v in samples(generate_latest(registry).decode()).items() if k[0] != "h_created"})
    one_by_one, at_once = texts
    key = ("h_sum", frozenset({("step", "s")}))
    assert at_once.pop(key) == pytest.approx(one_by_one.pop(key))  # summed in another order
    assert at_once == one_by_one  # every bucket and the count
    assert value(texts[1], "h_count", step="s") == len(values)


def test_a_turns_counts_reach_the_metrics_when_it_is_flushed() -> None:
    from types import SimpleNamespace

    from hutch.consumers import observed
    from hutch.consumers.items import StepDone
    from hutch.store.base import Transition

    def attempts(outcome: str) -> float:
        text = metrics.exposition().decode()
        return value(text, "hutch_step_attempts_total", workflow="tally", step="s", outcome=outcome)

    before_ok, before_error = attempts("ok"), attempts("error")
    history = [
        {"k": "attend", "n": "s", "c": 1, "a": 1, "ok": True, "t": 5},
        {"k": "attend", "n": "s", "c": 2, "a": 1, "ok": False, "err": {}, "retry_at": 9, "t": 5},
    ]
    instance = SimpleNamespace(workflow="tally", instance_id="i", trace="", history=history, appended=2)
    transition = Transition(0, "tally", "i", 3, 1, history=[b"", b""])
    done = StepDone(0, "tally", "i", 0, "s", 1, 1, 1000, 1250, ok=True, value=None, value_bytes=b"")
    observed.committed(instance, transition, [done])  # type: ignore[arg-type]
    observed.committed(instance, transition, [])  # type: ignore[arg-type]
    assert attempts("ok") == before_ok  # counted, not yet added
    observed.flush()
    assert attempts("ok") == before_ok + 2 and attempts("error") == before_error + 2
    text = samples(metrics.exposition().decode())
    assert value(text, "hutch_step_duration_seconds_count", workflow="tally", step="s") == 1
    assert value(text, "hutch_step_duration_seconds_sum", workflow="tally", step="s") == 0.25
    assert value(text, "hutch_step_retries_total", workflow="tally", step="s") == 2
