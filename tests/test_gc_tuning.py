"""consumers/gc_tuning.py: a worker process freezes its start-up heap and collects young garbage less often."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hutch.consumers import gc_tuning

ROOT = Path(__file__).resolve().parent.parent


def _in_a_fresh_process(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_tuning_freezes_what_the_process_holds_and_raises_the_young_threshold() -> None:
    before, _, after, frozen = _in_a_fresh_process(
        "import gc; from hutch.consumers import gc_tuning; b = gc.get_threshold()[0]; gc_tuning.tune(); "
        "print(b, '-', gc.get_threshold()[0], gc.get_freeze_count())"
    )
    assert int(before) < gc_tuning.GEN0_THRESHOLD == int(after)
    assert int(frozen) > 10_000  # the modules, classes and schemas imported by then


def test_the_worker_command_tunes_its_process_before_it_runs() -> None:
    # `hutch worker` owns its process: it tunes the collector, then runs the worker.
    out = _in_a_fresh_process(
        "import asyncio, gc; from hutch.gateway.cli import worker as cli\n"
        "def fake_run(coro): coro.close(); print(gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
        "asyncio.run = fake_run\n"
        "cli.worker.main(['--redis-url', 'redis://127.0.0.1:1', '--amqp-url', 'amqp://127.0.0.1:1', "
        "'--workflow', 'x=bench.workloads:Sequential'], standalone_mode=False)"
    )
    assert out == [str(gc_tuning.GEN0_THRESHOLD), "True"]
