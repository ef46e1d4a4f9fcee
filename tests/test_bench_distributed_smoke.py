"""``bench.distributed`` runs at toy sizes on the real servers (counts and sizes only, no timing asserts)."""

from __future__ import annotations

from bench import timeline
from bench.__main__ import make_connect
from bench.distributed import counts_w1, counts_w2, redis_bytes_finished, subprocess_connect, worker_rss_sleepers
from bench.workloads import mem_sleepers, w1_sequential, w6_start


async def test_counts_are_per_step_and_positive(redis_url: str, amqp_url: str) -> None:
    w1, w1_calls = await counts_w1(redis_url, amqp_url, instances=3, steps=4)
    assert w1["steps"] == 3 * 4 + 2
    # Every step costs at least a share of one Redis round trip (its commit), and the worker
    # published something (the creates' start messages are the client's, the rest the worker's).
    assert 0 < w1["redis_round_trips_per_step"] <= w1["redis_commands_per_step"]
    assert w1["all_broker_messages_per_step"] >= w1["broker_messages_per_step"] >= 0
    assert sum(w1_calls.values()) > 0
    w2, _ = await counts_w2(redis_url, amqp_url, steps=5)
    assert w2["steps"] == 7
    assert w2["redis_round_trips_per_step"] > 0


async def test_memory_figures(redis_url: str, amqp_url: str) -> None:
    rss = await worker_rss_sleepers(redis_url, amqp_url, instances=5)
    assert rss["rss_before_mb"] > 0 and rss["rss_after_gc_mb"] > 0
    assert rss["redis_bytes_per_sleeper"] > 0
    finished = await redis_bytes_finished(redis_url, amqp_url, instances=3, steps=10)
    # A finished instance keeps its meta hash and its history (10 step records at least).
    assert finished["bytes_per_instance"] > 100


async def test_two_worker_processes_share_the_work(redis_url: str, amqp_url: str) -> None:
    connect = subprocess_connect(2, redis_url=redis_url, amqp_url=amqp_url)
    metrics = await w1_sequential(connect, instances=4, steps=3)
    assert metrics["steps_per_s"] > 0
    started = await w6_start(connect, instances=2)
    assert started["p50_ms"] > 0  # the step ran after the create, in another process


async def test_timeline_stamps_every_hop_in_order(redis_url: str, amqp_url: str) -> None:
    runs = await timeline.measure("rabbitmq", redis_url, amqp_url, instances=3)
    assert len(runs) == 3
    for run in runs:
        # The path of one start, in the order the hops happen. Whether the creation notice or the
        # start message reaches the worker first is a race (the notice, unless the machine stalls),
        # and so is whether the client resumes to stamp "created" before the worker's turn: the
        # notice leaves from inside the create script, and the worker shares the client's loop.
        path = ["called", "turn", "commit", "committed", "step-scheduled"]
        assert [run[hop] for hop in path] == sorted(run[hop] for hop in path), run
        assert run["called"] < run["created"] and run["published"] < run["confirmed"] and "delivered" in run
    text = timeline.report(runs)
    assert all(f"  {hop} " in text for hop in timeline.HOPS), text


async def test_mem_measures_the_real_runtime_in_a_fresh_process(redis_url: str, amqp_url: str) -> None:
    connect = make_connect("rabbitmq", redis_url=redis_url, amqp_url=amqp_url)
    metrics = await mem_sleepers(connect, instances=20)
    assert set(metrics) == {"rss_mb", "store_mb", "worker_mb", "worker_kb_per_instance"}
    assert metrics["store_mb"] == 0  # the data is in the real Redis, not in the measured process
