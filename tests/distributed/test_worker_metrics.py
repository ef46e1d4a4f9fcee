"""``hutch worker --metrics-port``: a worker serves Prometheus ``/metrics`` for the compose stack's
scrape (issue 14 items 4 and 5); a port it cannot bind stops it with a message, before it connects."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from click.testing import CliRunner
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.gateway.cli import main

from tests.conftest import AMQP_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.helpers import unique

WORKFLOWS = {"ledger": "tests.distributed.workflows:LedgerWorkflow"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("wmetrics")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=2, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_worker_serves_prometheus_metrics_on_its_metrics_port(namespace: str) -> None:
    port = _free_port()
    worker = WorkerProcess(namespace, WORKFLOWS, partitions=2, HUTCH_METRICS_PORT=str(port))
    try:
        await worker.start()
        assert f"serving metrics on http://127.0.0.1:{port}/metrics" in worker.output
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "python_info{" in response.text and "process_cpu_seconds_total" in response.text
    finally:
        await worker.close()


def test_a_metrics_port_in_use_stops_the_worker_before_it_connects() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Unreachable backends: the worker must fail on the port, before it tries them.
        result = CliRunner().invoke(
            main,
            ["worker", "--metrics-port", str(port), "--redis-url", "redis://127.0.0.1:1/0"],
            env={"HUTCH_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
        )
    assert result.exit_code == 1, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
