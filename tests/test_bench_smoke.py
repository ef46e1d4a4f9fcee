"""The benchmark suite runs: every workload at tiny sizes through the bench's own code (no timing asserts)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hutch.serialization import pack
from hutch.store.base import CommitResult, Transition
from hutch.store.redis import RedisStore

from bench import report
from bench.__main__ import main, make_connect, parse_args
from bench.sustained_load import slope
from bench.workloads import SMOKE, WORKLOADS, Sequential, percentile
from tests.conftest import MakeClient
from tests.helpers import unique

EXPECTED_METRICS = {
    "W1": {"wall_s", "process_cpu_s", "steps_per_s", "instances_per_s"},
    "W2": {f"{m}@{n}" for n in (*SMOKE.w2_scaling, SMOKE.w2_steps) for m in ("total_s", "ms_per_step")},
    "W2L": {f"ms_per_step_{k}@{SMOKE.w2_steps}" for k in ("plain", "large")} | {"ratio"},
    "W3": {"p50_ms", "p99_ms"},
    "W4": {"p50_ms", "p99_ms"},
    "W5": {"total_s"},
    "W6": {"p50_ms", "p99_ms"},
    "MEM": {"rss_mb", "store_mb", "worker_mb", "worker_kb_per_instance"},
    # Embedded: no Redis server to weigh, so no Redis bytes per sleeper (the rabbitmq test below has them).
    "W7": {"p50_ms", "p99_ms", "max_ms", "rss_sleeping_mb", "rss_peak_mb", "spare_s"},
    "W8": {
        "rate_per_s",
        "achieved_per_s",
        "p50_ms",
        "p99_ms",
        "depth_slope_per_s",
        "depth_max",
        "timer_lag_slope_ms_per_s",
        "timer_lag_max_ms",
        "max_rate_per_s",
    },
}


@pytest.mark.parametrize("wid", sorted(WORKLOADS))
async def test_workload_runs_at_smoke_size(wid: str) -> None:
    connect = make_connect("embedded", redis_url="", amqp_url="")
    metrics = await WORKLOADS[wid].run(connect, SMOKE, True)
    assert set(metrics) == EXPECTED_METRICS[wid]
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    if wid in ("W1", "W2", "W5"):
        assert all(v > 0 for v in metrics.values()), metrics
    if wid in ("W4", "W7"):
        # The step after a sleep can never start before the sleep was due (due is floored to the ms).
        assert metrics["p50_ms"] >= -1, metrics
    if wid == "W7":
        assert metrics["spare_s"] > 0, metrics  # every sleeper was waiting before the due time
    if wid == "W8":
        assert metrics["rate_per_s"] == SMOKE.w8_rate and metrics["achieved_per_s"] > 0.5 * SMOKE.w8_rate, metrics
        assert metrics["p50_ms"] > 0 and metrics["max_rate_per_s"] >= 0, metrics


def test_cli_prints_one_line_per_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke", "--runs", "2", "--only", "w1,W2,W6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# engine=hutch ") and "runtime=embedded" in lines[0] and "python=" in lines[0]
    figure_lines = lines[1:]
    assert [ln.split()[1] for ln in figure_lines] == ["W1", "W2", "W2", "W6"]
    assert all(ln.startswith("embedded ") and ln.endswith((" OK", " MISS")) for ln in figure_lines)
    assert "steps/s=" in figure_lines[0] and "(target steps/s >= 3000)" in figure_lines[0]
    assert "ratio(5/2)=" in figure_lines[2]


def test_cli_json_has_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke", "--runs", "2", "--only", "W5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["runtime"] == "embedded" and doc["meta"]["engine"].startswith("hutch ")
    (fig,) = doc["figures"]
    assert fig["workload"] == "W5" and len(fig["runs"]) == 2
    assert fig["median"]["total_s"] == pytest.approx(statistics.median(r["total_s"] for r in fig["runs"]))
    assert fig["targets"] == [{"metric": "total_s", "op": "<=", "value": 0.03, "label": "s"}]


def test_heavy_workloads_run_only_when_named() -> None:
    assert not {"W7", "W8"} & set(parse_args([]).ids)
    assert parse_args(["--only", "w7,W8"]).ids == ["W7", "W8"]


def test_redis_aof_implies_rabbitmq_and_refuses_embedded(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--redis-aof", "everysec"]).runtime == "rabbitmq"
    with pytest.raises(SystemExit):
        parse_args(["--redis-aof", "always", "--runtime", "embedded"])
    assert "--redis-aof needs --runtime rabbitmq" in capsys.readouterr().err


def test_redis_aof_runs_w7_on_a_private_persistent_redis(amqp_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """One command: a private redis-server with AOF, W7 against it (Redis bytes measured), the server stopped."""
    assert main(["--smoke", "--runs", "1", "--only", "W7", "--redis-aof", "always", "--amqp-url", amqp_url]) == 0
    out, err = capsys.readouterr()
    header, line = out.splitlines()
    assert "runtime=rabbitmq" in header and "redis_durability=aof appendfsync=always" in header, header
    assert line.startswith("rabbitmq W7 timer storm (1 worker)") and "Redis B/sleeper=" in line, line
    pid = int(re.search(r"private redis-server pid (\d+)", err).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped (and reaped) by its PID


def test_slope_of_backlog_samples() -> None:
    assert slope([(0, 5), (1, 5), (2, 5)]) == 0
    assert slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2)
    assert slope([(0, 1)]) == 0


def test_cli_rejects_unknown_workload(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--only", "W9"])
    assert exc.value.code == 2
    assert "unknown workload(s) W9" in capsys.readouterr().err


def test_profile_writes_html_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyinstrument")
    assert main(["--smoke", "--profile", "W2", "--profile-out", str(tmp_path / "w2")]) == 0
    assert (tmp_path / "w2.html").stat().st_size > 0
    assert "w2_long" in (tmp_path / "w2.txt").read_text()


def test_targets_and_median() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5
    runs = [{"p50_ms": 3.0, "p99_ms": 9.0}, {"p50_ms": 1.0, "p99_ms": 20.0}, {"p50_ms": 2.0, "p99_ms": 10.0}]
    (fig,) = report.figures("embedded", "W4", "timer", runs)
    assert fig.median == {"p50_ms": 2.0, "p99_ms": 10.0} and fig.ok is True
    (fig,) = report.figures("embedded", "W4", "timer", [{"p50_ms": 2.0, "p99_ms": 16.0}])
    assert fig.ok is False and report.line("embedded", fig).endswith("(target p50 ms <= 5, p99 ms <= 15)  MISS")
    w2 = report.figures("embedded", "W2", "long", [{"ms_per_step@10": 0.4, "ms_per_step@5000": 0.8}])
    assert w2[1].median["ratio"] == pytest.approx(2.0) and w2[1].ok is False


# ---------------------------------------------------------------------------- guards of the fixes the bench led to
async def test_store_reloads_its_scripts_after_the_server_lost_them() -> None:
    """Commits and creates EVALSHA without redis-py's per-pipeline SCRIPT EXISTS; a NOSCRIPT reloads and resends."""
    store = RedisStore(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()), 2, namespace=unique("ns"))
    fields = {"wf": "wf", "id": "a", "status": "queued", "seq": 0, "run": 0, "created": 1}
    try:
        assert await store.create_many([(0, "wf", "a", 1, fields)]) == [True]  # first use: NOSCRIPT, loaded
        await store.redis.script_flush()
        assert await store.create_many([(0, "wf", "b", 1, {**fields, "id": "b"}), (0, "wf", "a", 1, fields)]) == [
            True,
            False,
        ]
        await store.redis.script_flush()
        tx = Transition(0, "wf", "a", 0, 1, meta={"status": "running"}, history=[pack({"k": "life"})])
        stale = Transition(0, "wf", "b", 5, 1)
        assert await store.commit_many([tx, stale], {}) == [CommitResult.COMMITTED, CommitResult.CONFLICT]
        meta = await store.read_meta(0, "wf", "a")
        assert meta is not None and meta["seq"] == 1 and meta["status"] == "running"
    finally:
        await store.close()


async def test_wait_does_not_read_the_store_on_every_step(make_client: MakeClient) -> None:
    """Embedded ``wait()`` wakes on each commit but reads the status only when the notified one is final."""
    client = await make_client({"seq": Sequential})
    store = client._store
    reads = 0
    read_meta = store.read_meta

    async def counting(*args: Any) -> dict[str, Any] | None:
        nonlocal reads
        reads += 1
        return await read_meta(*args)

    store.read_meta = counting  # type: ignore[method-assign]
    instance = await client.workflow("seq").create(params={"steps": 40})
    reads = 0
    final = await instance.wait(timeout=30)
    assert final.status == "complete" and final.output == {"steps": 40}
    # Before: one read per step (41). Now: the first and the final read, plus one per poll timeout.
    assert reads < 15, reads
