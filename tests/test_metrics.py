"""hutch.metrics: one registry of every family, merged across processes under PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
