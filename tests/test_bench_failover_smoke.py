"""``bench.failover`` runs at toy sizes on the real servers (shapes only: tests/distributed bounds the time)."""

from __future__ import annotations

from bench.failover import kill_bench


async def test_one_kill_is_measured_on_every_moved_partition(redis_url: str, amqp_url: str) -> None:
    row = await kill_bench(8, workers=2, kills=1, redis_url=redis_url, amqp_url=amqp_url)
    assert row["moved_partitions"] == row["per_kill"][0]["moved"] > 0
    assert 0 < row["p50_s"] <= row["p99_s"] <= row["max_s"]
