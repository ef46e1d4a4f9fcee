"""A ``hutch worker`` logs JSON lines and serves Prometheus metrics of what it runs (issue 14 items 3, 4; SPEC §13).

One worker process (``--metrics-port``, ``--log-format json``) runs a step that fails once then
succeeds, sleeps long enough to be evicted and replayed, and a step that fails for good: the
scrape shows the attempts, the retry, the finished instances, the partitions and the backends'
round trips; the log has one line per failed attempt and per errored instance, each carrying
workflow, instance, step, attempt and trace id, and nothing again when the instance replays.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hutch
import pytest
from hutch import Client, Settings
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.observed_workflows import DoomedWorkflow, FlakyWorkflow
from tests.distributed.procs import WorkerProcess
from tests.helpers import eventually, unique, wait_status
from tests.prometheus import families, samples, value

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq]

WORKFLOWS = {
    "flaky": "tests.distributed.observed_workflows:FlakyWorkflow",
    "doomed": "tests.distributed.observed_workflows:DoomedWorkflow",
}
PARTITIONS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("observe")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[Client]:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=PARTITIONS)
    async with hutch.connect({"flaky": FlakyWorkflow, "doomed": DoomedWorkflow}, settings=settings) as client:
        yield client


def _json_lines(output: str) -> list[dict[str, Any]]:
    """The worker's log lines: every line of its stderr that is not the CLI's own stdout sentences."""
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]  # each must be one JSON object


async def test_a_worker_logs_json_lines_and_serves_the_metrics_of_what_it_runs(namespace: str, client: Client) -> None:
    port = _free_port()
    worker = WorkerProcess(
        namespace,
        WORKFLOWS,
        partitions=PARTITIONS,
        HUTCH_METRICS_PORT=str(port),
        HUTCH_LOG_FORMAT="json",
        HUTCH_METRICS_SAMPLE_S="0.2",
    )
    try:
        await worker.start()
        flaky = await client.workflow("flaky").create()
        doomed = await client.workflow("doomed").create()
        assert await wait_status(doomed, "errored", timeout=20) == "errored"
        # The sleep (3 s) outlasts the warm horizon: the instance is evicted and replayed to finish.
        assert await wait_status(flaky, "complete", timeout=20) == "complete"
        assert (await flaky.status()).output == 2

        async with httpx.AsyncClient() as http:

            async def scraped() -> str | None:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                # The partition gauges are sampled (every 0.2 s here), after the deliveries.
                ages = [k for k in samples(text) if k[0] == "hutch_partition_oldest_message_age_seconds"]
                return text if ages else None

            text = await eventually(scraped, timeout=10)
        page = samples(text)
        attempts = "hutch_step_attempts_total"
        assert value(page, attempts, workflow="flaky", step="flaky", outcome="error") == 1
        assert value(page, attempts, workflow="flaky", step="flaky", outcome="ok") == 1
        assert value(page, "hutch_step_retries_total", workflow="flaky", step="flaky") == 1
        assert value(page, "hutch_step_duration_seconds_count", workflow="flaky", step="flaky") == 2
        assert value(page, attempts, workflow="doomed", step="doomed", outcome="error") == 1
        assert value(page, "hutch_step_retries_total", workflow="doomed", step="doomed") == 0
        finished = "hutch_instances_finished_total"
        assert value(page, finished, workflow="flaky", status="complete") == 1
        assert value(page, finished, workflow="doomed", status="errored") == 1
        assert value(page, "hutch_partitions_owned") == PARTITIONS
        assert value(page, "hutch_partition_changes_total", change="taken") == PARTITIONS
        assert value(page, "hutch_commits_total", result="committed") >= 4
        # The retry's timer and the nap's fired, each late by no more than the timer poll.
        assert value(page, "hutch_timer_lateness_seconds_count") >= 2
        assert value(page, "hutch_timer_lateness_seconds_bucket", le="1.0") == value(
            page, "hutch_timer_lateness_seconds_count"
        )
        for p in range(PARTITIONS):
            assert ("hutch_partition_queue_depth", frozenset({("partition", str(p))})) in page
        assert value(page, "hutch_redis_round_trip_seconds_count") > 0
        assert value(page, "hutch_broker_round_trip_seconds_count") > 0
        kinds = families(text)
        for family, kind in {
            "hutch_instances_created": "counter",
            "hutch_dead_letters": "counter",
            "hutch_step_duration_seconds": "histogram",
            "hutch_partition_oldest_message_age_seconds": "gauge",
        }.items():
            assert kinds[family] == kind, family

        worker.terminate()
        assert await worker.wait(30) == 0
        lines = _json_lines(worker.output)
        assert {"ts", "level", "logger", "message"} <= set(lines[0])

        failed = [line for line in lines if line["message"].startswith("step 'flaky'#1 attempt")]
        assert len(failed) == 1, failed  # replays re-ran run() twice after it: no second line
        assert failed[0]["level"] == "WARNING" and "retrying in" in failed[0]["message"]
        trace_id = failed[0]["trace_id"]
        assert len(trace_id) == 32 and int(trace_id, 16)
        assert {k: failed[0][k] for k in ("workflow", "instance_id", "step", "step_count", "attempt")} == {
            "workflow": "flaky",
            "instance_id": flaky.id,
            "step": "flaky",
            "step_count": 1,
            "attempt": 1,
        }
        assert failed[0]["error_type"] == "RuntimeError" and failed[0]["error_message"] == "the first attempt fails"

        # What the step body logged carries its attempt; what run() logged, its instance, and only once.
        body = [line for line in lines if line["message"] == "the flaky step succeeded"]
        assert [(b["instance_id"], b["step"], b["attempt"], b["trace_id"]) for b in body] == [
            (flaky.id, "flaky", 2, trace_id)
        ]
        ran = [line for line in lines if line["message"] == "run() got past the flaky step"]
        assert len(ran) == 1, ran
        assert (ran[0].get("workflow"), ran[0].get("instance_id")) == ("flaky", flaky.id)

        errored = [line for line in lines if line.get("status") == "errored"]
        assert len(errored) == 1 and errored[0]["level"] == "ERROR"
        assert errored[0]["instance_id"] == doomed.id and errored[0]["error_type"] == "NonRetryableError"
        doomed_attempts = [line for line in lines if line["message"].startswith("step 'doomed'#1 attempt 1 failed")]
        assert len(doomed_attempts) == 1 and "no retry left" in doomed_attempts[0]["message"]

        worker_id = worker.worker_id()
        mine = [line["message"] for line in lines if line.get("worker_id") == worker_id and "worker" in line["logger"]]
        assert mine[:1] == [f"worker {worker_id} started"]
        assert f"worker {worker_id} stopped" in [line["message"] for line in lines]
    finally:
        await worker.close()
