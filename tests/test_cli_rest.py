"""The ``hutch`` REST commands against a running ``hutch dev`` (and ``hutch gateway``), as a user runs them.

``hutch dev`` runs as a real subprocess (``python -m hutch dev``) serving the examples'
workflows on a free port; the tests wait for ``/healthz`` and then drive it through the CLI:
in process with click's ``CliRunner`` and ``--url``, and as real ``python -m hutch``
subprocesses. Every server is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from click.testing import CliRunner, Result
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.runtime import start_distributed
from hutch.gateway.cli import main, render
from hutch.gateway.http_client import ApiRequestError, GatewayClient, GatewayUnreachable, UnexpectedResponse
from hutch.settings import Settings
from rich.console import Console

from bench.child_process import die_with_parent
from examples.approval import ApprovalWorkflow
from tests.conftest import drop_namespace
from tests.helpers import unique
from tests.test_gateway_api import TOKEN as GATEWAY_TOKEN
from tests.test_gateway_api import gateway_without_workers

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = {
    "approval": "examples/approval.py:ApprovalWorkflow",
    "order": "examples/order.py:OrderWorkflow",
    "fanout": "examples/fanout.py:FanOutWorkflow",
}
ORDER_PARAMS = '{"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}'
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy (AssertionError means not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: AssertionError | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s") from last
        time.sleep(interval)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no Hutch settings from the developer's shell, no hutch.toml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env.update({"PYTHONPATH": str(ROOT), "HUTCH_CONFIG": str(ROOT / "tests" / "no-such-hutch.toml")}, **extra)
    return env


def hutch(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run the CLI in process; never a traceback, whatever happens."""
    runner_env: dict[str, str | None] = {"HUTCH_URL": None, "HUTCH_TOKEN": None, **(env or {})}
    result = CliRunner().invoke(main, list(args), env=runner_env, catch_exceptions=False)
    assert "Traceback" not in result.output, result.output
    return result


def ok_json(*args: str, env: Mapping[str, str | None] | None = None) -> Any:
    """Run a command with ``--json``; it must exit 0 and print JSON."""
    result = hutch(*args, "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@dataclass
class Server:
    """A ``hutch dev`` or ``hutch gateway`` subprocess with its output in a file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after a deadline, which fails the caller's assert)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


def start_server(log: Path, command: str, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start ``python -m hutch COMMAND ARGS --port <free>`` and wait until ``/healthz`` answers."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hutch", command, "--port", str(port), *args],
            cwd=ROOT,
            env=env or clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"hutch {command} exited with {process.returncode}:\n{server.output}")
        try:
            return httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(healthy, timeout=START_TIMEOUT_S, interval=0.05)
    except BaseException:
        server.stop()
        raise
    return server


def dev_args(*extra: str) -> list[str]:
    args = [arg for name, target in WORKFLOWS.items() for arg in ("--workflow", f"{name}={target}")]
    return [*args, "--no-access-log", *extra]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("dev") / "dev.log", "dev", *dev_args())
    yield server
    status = server.stop()
    assert status == 0, f"hutch dev exited with {status} on SIGTERM:\n{server.output}"
    assert "hutch dev stopped" in server.output


def describe(url: str, workflow: str, instance_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = ok_json("instances", "describe", workflow, instance_id, "--url", url)
    return detail


def wait_for_status(url: str, workflow: str, instance_id: str, *statuses: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        detail = describe(url, workflow, instance_id)
        return detail if detail["status"] in statuses else None

    return poll(check)


def trigger_waiting_approval(url: str) -> str:
    """An approval instance parked on its wait for the 'approval' event."""
    iid = unique("pr")
    ok_json("workflows", "trigger", "approval", json.dumps({"requestId": iid}), "--id", iid, "--url", url)
    wait_for_status(url, "approval", iid, "waiting")
    return iid


# ----------------------------------------------------------------------------- hutch dev + the CLI
def test_workflows_list_shows_every_served_workflow(dev: Server) -> None:
    listed = ok_json("workflows", "list", "--url", dev.url)
    assert sorted(w["name"] for w in listed) == ["approval", "fanout", "order"]
    assert all(set(w["instances"]) >= {"queued", "running", "complete", "errored"} for w in listed)

    table = hutch("workflows", "list", "--url", dev.url)
    assert table.exit_code == 0, table.output
    assert ["approval", "fanout", "order"] == [
        line.split()[0] for line in table.stdout.splitlines() if line.split() and line.split()[0] in WORKFLOWS
    ]


def test_trigger_list_describe_latest_then_an_event_completes_the_approval(dev: Server) -> None:
    iid = unique("pr")
    created = ok_json(
        "workflows", "trigger", "approval", json.dumps({"requestId": iid, "amountCents": 120}), "--id", iid,
        "--url", dev.url,
    )  # fmt: skip
    assert created == {"id": iid, "workflow": "approval", "status": "queued"}

    waiting = wait_for_status(dev.url, "approval", iid, "waiting")
    assert [(s["type"], s["name"]) for s in waiting["steps"]] == [
        ("step", "record request"),
        ("step", "notify approver"),
        ("waitForEvent", "manager approval"),
    ]
    rows = ok_json("instances", "list", "approval", "--url", dev.url)
    assert rows[0]["id"] == iid and rows[0]["status"] == "waiting", rows  # newest first
    assert ok_json("instances", "list", "approval", "--status", "complete", "--url", dev.url) == [
        row for row in rows if row["status"] == "complete"
    ]

    shown = hutch("instances", "describe", "approval", "--url", dev.url)  # no id: the latest
    assert shown.exit_code == 0, shown.output
    for fragment in (iid, "waiting", "record request", "notify approver", "manager approval", "'approval'"):
        assert fragment in shown.stdout, (fragment, shown.stdout)

    sent = hutch(
        "events", "send", "approval", iid, "approval", '{"approved": true, "approver": "grace"}', "--url", dev.url
    )
    assert sent.exit_code == 0, sent.output
    assert f"Sent event 'approval' to instance {iid} of approval" in sent.stdout
    assert "already finished" not in sent.stdout

    done = wait_for_status(dev.url, "approval", iid, "complete")
    assert done["output"] == {"requestId": iid, "decision": "approved", "reason": "decided", "by": "grace"}
    steps = done["steps"]
    assert [s["name"] for s in steps] == ["record request", "notify approver", "manager approval", "provision"]
    assert steps[2]["outcome"] == "received" and steps[2]["output"]["payload"]["approver"] == "grace"

    again = hutch("events", "send", "approval", iid, "approval", "--url", dev.url, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["instance_finished"] is True
    warned = hutch("events", "send", "approval", iid, "approval", "--url", dev.url)
    assert "already finished, so nothing will receive this event" in warned.stdout


def test_create_or_send_creates_the_instance_with_its_event_then_sends_to_it(dev: Server) -> None:
    iid = unique("cos")
    decision = '{"approved": true, "approver": "grace"}'
    args = [
        "events",
        "create-or-send",
        "approval",
        iid,
        "approval",
        decision,
        "--params",
        json.dumps({"requestId": iid}),
    ]
    created = ok_json(*args, "--event-id", "decision-1", "--url", dev.url)
    assert created == {
        "id": iid, "workflow": "approval", "created": True, "event_type": "approval", "instance_finished": False,
    }  # fmt: skip
    # The instance started with the event buffered: its wait takes it at once.
    done = wait_for_status(dev.url, "approval", iid, "complete")
    assert done["params"] == {"requestId": iid} and done["output"]["by"] == "grace"

    again = hutch(*args, "--event-id", "decision-1", "--url", dev.url)
    assert again.exit_code == 0, again.output
    assert f"Sent event 'approval' to the existing instance {iid} of approval" in again.stdout
    assert "already finished, so nothing will receive this event" in again.stdout

    fresh = unique("cos")
    shown = hutch("events", "create-or-send", "approval", fresh, "approval", "--params", "{}", "--url", dev.url)
    assert shown.exit_code == 0, shown.output
    assert f"Created instance {fresh} of approval with event 'approval'" in shown.stdout
    assert f"hutch instances describe approval {fresh}" in shown.stdout
    bad = hutch("events", "create-or-send", "approval", fresh, "approval", "--params", "{nope", "--url", dev.url)
    assert bad.exit_code == 2 and "--params" in bad.output and "not valid JSON" in bad.output
    refused = hutch("events", "create-or-send", "approval", fresh, "approval", "--event-id", "", "--url", dev.url)
    assert refused.exit_code == 1 and "event id" in refused.output, refused.output


def test_describe_shows_the_timeline_with_retries_and_the_sleep(dev: Server) -> None:
    iid = unique("order")
    ok_json("workflows", "trigger", "order", ORDER_PARAMS, "--id", iid, "--url", dev.url)
    detail = wait_for_status(dev.url, "order", iid, "complete")
    reserve = next(s for s in detail["steps"] if s["name"] == "reserve inventory")
    assert [a["success"] for a in reserve["attempts"]] == [False, True]

    for columns in ("80", "160"):  # narrow: details as notes after the table; wide: in a column
        shown = hutch("instances", "describe", "order", iid, "--url", dev.url, env={"COLUMNS": columns})
        assert shown.exit_code == 0, shown.output
        out = shown.stdout
        assert all(len(line) <= int(columns) for line in out.splitlines()), out
        reserve_line = next(line for line in out.splitlines() if "reserve inventory" in line)
        assert "2 (1 retry)" in reserve_line and "succeeded" in reserve_line
        attempt = next(line for line in out.splitlines() if "↳ attempt 1" in line)
        assert "failed" in attempt
        error = next(line for line in out.splitlines() if "ConnectionError:" in line)
        assert "retry at +" in error
        sleep = next(line for line in out.splitlines() if "cool down" in line)
        assert "sleep" in sleep and "woke" in sleep
        for name in ("validate order", "charge card", "ship"):
            assert name in out
        assert "Status    complete" in out and '"trackingNumber"' in out


def test_terminate_pause_resume_and_restart(dev: Server) -> None:
    iid = trigger_waiting_approval(dev.url)

    paused = ok_json("instances", "pause", "approval", iid, "--url", dev.url)
    assert paused["status"] == "paused"
    resumed = hutch("instances", "resume", "approval", iid, "--url", dev.url)
    assert resumed.exit_code == 0, resumed.output
    assert f"Resumed instance {iid} of approval; status now" in resumed.stdout
    wait_for_status(dev.url, "approval", iid, "waiting")

    terminated = hutch("instances", "terminate", "approval", iid, "--url", dev.url)
    assert terminated.exit_code == 0, terminated.output
    assert f"Terminated instance {iid} of approval; status now terminated" in terminated.stdout
    assert describe(dev.url, "approval", iid)["status"] == "terminated"

    again = hutch("instances", "terminate", "approval", iid, "--url", dev.url)
    assert again.exit_code == 1
    assert f"cannot terminate instance '{iid}'" in again.stderr and "HTTP 409" in again.stderr

    restarted = ok_json("instances", "restart", "approval", iid, "--url", dev.url)
    assert restarted["status"] in ("queued", "running", "waiting")
    detail = wait_for_status(dev.url, "approval", iid, "waiting")
    assert [s["name"] for s in detail["steps"]][-1] == "manager approval"
    ok_json("instances", "terminate", "approval", "latest", "--url", dev.url)  # 'latest' works here too
    assert describe(dev.url, "approval", iid)["status"] == "terminated"


def test_api_errors_exit_1_with_the_apis_message(dev: Server) -> None:
    api = httpx.post(f"{dev.url}/api/workflows/nope/instances", json={})
    assert api.status_code == 404
    message = api.json()["errors"][0]["message"]

    unknown = hutch("workflows", "trigger", "nope", "--url", dev.url)
    assert unknown.exit_code == 1
    assert unknown.stdout == ""
    assert unknown.stderr.strip() == f"Error: {message} (HTTP 404, code 10004)"
    assert hutch("instances", "list", "nope", "--json", "--url", dev.url).exit_code == 1

    missing = hutch("instances", "describe", "approval", "no-such-instance", "--url", dev.url)
    assert missing.exit_code == 1 and "'no-such-instance'" in missing.stderr and "HTTP 404" in missing.stderr

    nothing_yet = hutch("instances", "describe", "fanout", "latest", "--url", dev.url)
    assert nothing_yet.exit_code == 1 and "workflow 'fanout' has no instances yet" in nothing_yet.stderr

    iid = trigger_waiting_approval(dev.url)
    taken = hutch("workflows", "trigger", "approval", "--id", iid, "--url", dev.url)
    assert taken.exit_code == 1 and "HTTP 409" in taken.stderr and iid in taken.stderr
    # The hint is the command's own (the API's names its batch endpoint, the engine's the SDK's create_batch).
    assert "already exists; pass another --id, or none for a random one" in taken.stderr
    assert "create_batch" not in taken.stderr and "/batch" not in taken.stderr
    bad_id = hutch("workflows", "trigger", "approval", "--id", "-bad id", "--url", dev.url)
    assert bad_id.exit_code == 1 and "HTTP 400" in bad_id.stderr
    ok_json("instances", "terminate", "approval", iid, "--url", dev.url)


def test_usage_errors_and_an_unreachable_gateway_exit_2(dev: Server) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = hutch("workflows", "list", "--url", nobody)
    assert unreachable.exit_code == 2
    assert f"cannot reach the Hutch gateway at {nobody}: connection refused" in unreachable.stderr

    bad_json = hutch("workflows", "trigger", "order", "{not json", "--url", dev.url)
    assert bad_json.exit_code == 2 and "PARAMS_JSON" in bad_json.stderr and "not valid JSON" in bad_json.stderr
    bad_payload = hutch("events", "send", "approval", "x", "approval", "[1,", "--url", dev.url)
    assert bad_payload.exit_code == 2 and "PAYLOAD_JSON" in bad_payload.stderr
    bad_url = hutch("workflows", "list", "--url", "ftp://example.com")
    assert bad_url.exit_code == 2 and "http:// or https://" in bad_url.stderr
    bad_status = hutch("instances", "list", "order", "--status", "sleeping", "--url", dev.url)
    assert bad_status.exit_code == 2


def test_the_real_command_line_with_hutch_url_from_the_environment(dev: Server) -> None:
    env = clean_env(HUTCH_URL=dev.url)
    iid = unique("order")
    run = subprocess.run(
        [sys.executable, "-m", "hutch", "workflows", "trigger", "order", ORDER_PARAMS, "--id", iid, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"id": iid, "workflow": "order", "status": "queued"}
    assert wait_for_status(dev.url, "order", iid, "complete")["output"]["orderId"] == "A-1"

    down = subprocess.run(
        [sys.executable, "-m", "hutch", "instances", "list", "order"],
        cwd=ROOT,
        env=clean_env(HUTCH_URL=f"http://127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2
    assert down.stdout == "" and "Traceback" not in down.stderr
    assert down.stderr.startswith("Error: cannot reach the Hutch gateway"), down.stderr


def test_dev_with_a_token_requires_it(tmp_path: Path) -> None:
    server = start_server(tmp_path / "dev.log", "dev", *dev_args("--token", "s3cret", "--token", "older"))
    try:
        missing = hutch("workflows", "list", "--url", server.url)
        assert missing.exit_code == 1
        assert "missing bearer token" in missing.stderr and "HTTP 401" in missing.stderr
        assert "--token or HUTCH_TOKEN" in missing.stderr
        wrong = hutch("workflows", "list", "--url", server.url, "--token", "guess")
        assert wrong.exit_code == 1 and "invalid bearer token" in wrong.stderr
        assert hutch("workflows", "list", "--url", server.url, env={"HUTCH_TOKEN": "s3cret"}).exit_code == 0
        assert hutch("workflows", "list", "--url", server.url, "--token", "older").exit_code == 0
        assert "2 API token(s) required" in server.output
    finally:
        status = server.stop()
    assert status == 0, server.output


def test_dev_refuses_what_it_cannot_do_safely_with_a_usage_error() -> None:
    workflow = ["--workflow", f"approval={WORKFLOWS['approval']}"]
    env: dict[str, str | None] = {"HUTCH_CONFIG": str(ROOT / "tests" / "no-such-hutch.toml")}
    public = hutch("dev", *workflow, "--host", "0.0.0.0", env=env)
    assert public.exit_code == 2 and "only listens on a loopback address" in public.stderr

    none = hutch("dev", env={**env, "HUTCH_REDIS_URL": None, "HUTCH_AMQP_URL": None})
    assert none.exit_code == 2 and "no workflows to serve" in none.stderr

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = hutch("dev", *workflow, "--port", str(taken.getsockname()[1]), env=env)
    assert busy.exit_code == 2 and "cannot listen on 127.0.0.1:" in busy.stderr


APPROVAL_TOML = '[[workflows]]\nname = "approval"\nclass_name = "examples.approval:ApprovalWorkflow"\n'
EVERY_SECOND_TOML = '\n[[triggers.crons]]\nschedule = "* * * * * *"\nworkflow = "approval"\n'


def cron_instances(url: str, at_least: int) -> list[str] | None:
    """The ids of the approval instances the every-second cron created, once there are ``at_least``."""
    ids = [row["id"] for row in ok_json("instances", "list", "approval", "--url", url)]
    fired = [iid for iid in ids if iid.startswith("cron-approval-")]
    return fired if len(fired) >= at_least else None


def test_dev_fires_the_crons_of_hutch_toml(tmp_path: Path) -> None:
    config = tmp_path / "hutch.toml"
    config.write_text(APPROVAL_TOML + EVERY_SECOND_TOML)
    server = start_server(tmp_path / "dev.log", "dev", "--no-access-log", env=clean_env(HUTCH_CONFIG=str(config)))
    try:
        # Two fire times: the schedule keeps firing, it is not only the catch-up of the last one at start.
        fired = poll(lambda: cron_instances(server.url, at_least=2), timeout=20)
        assert len(set(fired)) == len(fired)
        assert "crons * * * * * *" in server.output  # the ready line says what runs
    finally:
        status = server.stop()
    assert status == 0, server.output


def test_dev_refuses_triggers_it_cannot_serve_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "hutch.toml"

    def dev_exits(toml: str) -> str:
        """Start hutch dev (embedded) on ``toml``; it must exit 2 at once with one line on stderr."""
        config.write_text(toml)
        run = subprocess.run(
            [sys.executable, "-m", "hutch", "dev", "--port", "0", "--no-access-log"],
            cwd=ROOT,
            env=clean_env(HUTCH_CONFIG=str(config)),
            capture_output=True,
            text=True,
            timeout=60,  # a hutch dev that started anyway would serve until then
        )
        assert run.returncode == 2 and run.stdout == "", run
        (line,) = run.stderr.splitlines()
        return line

    line = dev_exits(APPROVAL_TOML + '\n[[queues.consumers]]\nqueue = "orders"\nworkflow = "approval"\n')
    assert line.startswith("Error: hutch.toml has [[queues.consumers]] (queue 'orders')"), line
    assert "HUTCH_AMQP_URL" in line
    line = dev_exits(APPROVAL_TOML + EVERY_SECOND_TOML.replace('workflow = "approval"', 'workflow = "report"'))
    assert "[[triggers.crons]] workflow 'report'" in line and "not registered" in line, line


def test_dev_with_servers_runs_crons_and_queue_consumers(redis_url: str, amqp_url: str, tmp_path: Path) -> None:
    namespace, queue = unique("devtrig"), unique("dev-orders")
    config = tmp_path / "hutch.toml"
    config.write_text(
        APPROVAL_TOML
        + EVERY_SECOND_TOML
        + f'\n[[queues.consumers]]\nqueue = "{queue}"\nworkflow = "approval"\nid = "{{body.requestId}}"\n'
    )
    env = clean_env(
        HUTCH_CONFIG=str(config),
        HUTCH_REDIS_URL=redis_url,
        HUTCH_AMQP_URL=amqp_url,
        HUTCH_NAMESPACE=namespace,
        HUTCH_PARTITIONS="2",
    )
    try:
        server = start_server(tmp_path / "dev.log", "dev", "--no-access-log", env=env)
        try:
            # The queue exists once hutch dev answers: the consumer declared it before serving.
            asyncio.run(publish(amqp_url, queue, {"requestId": "from-queue"}))
            created = poll(lambda: describe(server.url, "approval", "from-queue"), timeout=20)
            assert created["trigger"]["source"] == "queue", created["trigger"]
            poll(lambda: cron_instances(server.url, at_least=1), timeout=20)
            assert f"queues {queue}" in server.output
        finally:
            status = server.stop()
        assert status == 0, server.output
    finally:
        asyncio.run(drop_queues_and_namespace(amqp_url, namespace, [queue, f"{queue}.dead-letter"]))


async def publish(amqp_url: str, queue: str, body: Any) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(json.dumps(body).encode(), content_type="application/json")
        await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await connection.close()


async def drop_queues_and_namespace(amqp_url: str, namespace: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
    finally:
        await connection.close()
    transport = RabbitMQTransport(amqp_url, partitions=2, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


def test_gateway_needs_backends_and_a_token() -> None:
    env: dict[str, str | None] = {
        "HUTCH_CONFIG": str(ROOT / "tests" / "no-such-hutch.toml"),
        "HUTCH_REDIS_URL": None,
        "HUTCH_AMQP_URL": None,
        "HUTCH_GATEWAY_TOKENS": None,
    }
    embedded = hutch("gateway", "--token", "t", env=env)
    assert embedded.exit_code == 2 and "HUTCH_REDIS_URL and HUTCH_AMQP_URL" in embedded.stderr
    assert "hutch dev" in embedded.stderr
    urls = {"HUTCH_REDIS_URL": "redis://127.0.0.1:1/0", "HUTCH_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}
    tokenless = hutch("gateway", env={**env, **urls})
    assert tokenless.exit_code == 2 and "HUTCH_GATEWAY_TOKENS" in tokenless.stderr


# ----------------------------------------------------------------------------- hutch gateway, distributed
@pytest.fixture
async def deployment(redis_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A worker (in this process) and a ``hutch gateway`` subprocess on the real Redis and RabbitMQ."""
    namespace = unique("cli")
    config = tmp_path / "hutch.toml"
    config.write_text('[[workflows]]\nname = "approval"\nclass_name = "examples.approval:ApprovalWorkflow"\n')
    settings = Settings(partitions=2, redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, heartbeat_s=0.2)
    worker_client, worker = await start_distributed(
        {"approval": ApprovalWorkflow}, settings=settings, limits=Limits(), clock=Clock(), resources={},
        binding_names={},
    )  # fmt: skip
    env = clean_env(
        HUTCH_CONFIG=str(config),
        HUTCH_REDIS_URL=redis_url,
        HUTCH_AMQP_URL=amqp_url,
        HUTCH_NAMESPACE=namespace,
        HUTCH_PARTITIONS="2",
        HUTCH_GATEWAY_TOKENS="new-token, old-token",
    )
    try:
        server = await asyncio.to_thread(start_server, tmp_path / "hutch.gateway.log", "gateway", env=env)
        try:
            yield server
        finally:
            status = await asyncio.to_thread(server.stop)
            assert status == 0, server.output
            assert "hutch gateway stopped" in server.output
    finally:
        await worker.shutdown(timeout=0)
        assert isinstance(worker.transport, RabbitMQTransport)
        await worker.transport.delete_topology()
        await worker_client.close()
        await drop_namespace(namespace)


async def test_the_cli_drives_a_remote_deployment_through_hutch_gateway(deployment: Server) -> None:
    url, token = deployment.url, {"HUTCH_TOKEN": "old-token"}
    assert "hutch gateway listening on" in deployment.output and "2 API tokens" in deployment.output

    def cli(*args: str) -> Any:
        return ok_json(*args, "--url", url, env=token)

    assert [w["name"] for w in await asyncio.to_thread(cli, "workflows", "list")] == ["approval"]
    created = await asyncio.to_thread(cli, "workflows", "trigger", "approval", '{"requestId": "R-1"}', "--id", "r-1")
    assert created == {"id": "r-1", "workflow": "approval", "status": "queued"}
    await asyncio.to_thread(poll, lambda: cli("instances", "describe", "approval", "r-1")["status"] == "waiting")
    await asyncio.to_thread(cli, "events", "send", "approval", "r-1", "approval", '{"approved": false}')
    await asyncio.to_thread(poll, lambda: cli("instances", "describe", "approval", "latest")["status"] == "complete")
    detail = await asyncio.to_thread(cli, "instances", "describe", "approval", "r-1")
    assert detail["output"]["decision"] == "rejected"
    assert [s["name"] for s in detail["steps"]][-1] == "notify requester"

    denied = await asyncio.to_thread(hutch, "workflows", "list", "--url", url)
    assert denied.exit_code == 1 and "HTTP 401" in denied.stderr


async def test_a_change_no_worker_applied_exits_3_and_says_it_stays_queued(redis_url: str, amqp_url: str) -> None:
    async with gateway_without_workers(redis_url, amqp_url) as deployment:
        await deployment.client.workflow("sleeper").create(id="idle-1")
        remote = ("sleeper", "idle-1", "--url", deployment.url, "--token", GATEWAY_TOKEN)

        paused = await asyncio.to_thread(hutch, "instances", "pause", *remote)
        assert paused.exit_code == 3, paused.output
        said = " ".join(paused.stdout.split())
        assert "Not applied yet: no worker applied the pause of instance idle-1 of sleeper" in said
        assert "it stays queued" in said and said.endswith("Status now queued")
        terminated = await asyncio.to_thread(hutch, "instances", "terminate", *remote, "--json")
        assert terminated.exit_code == 3, terminated.output
        assert json.loads(terminated.stdout)["applied"] is False


# ----------------------------------------------------------------------------- the HTTP client alone
def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> GatewayClient:
    return GatewayClient("http://gw.test", "tok", transport=httpx.MockTransport(handler))


async def test_client_unwraps_the_envelope_and_raises_its_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"success": True, "errors": [], "messages": [], "result": {"ok": 1}})
        body = {"success": False, "errors": [{"code": 10005, "message": "instance 'x' not found"}], "result": None}
        return httpx.Response(404, json=body)

    async with mock_client(handler) as api:
        assert await api.send_event("wf", "i-1", "a/b c", {"k": 1}) == {"ok": 1}
        with pytest.raises(ApiRequestError) as raised:
            await api.describe_instance("wf", "x")
    assert raised.value.status_code == 404 and raised.value.codes == [10005]
    assert str(raised.value) == "instance 'x' not found"
    # Each name stays one path segment; the token goes in the Authorization header.
    assert seen[0].url.raw_path == b"/api/workflows/wf/instances/i-1/events/a%2Fb%20c"
    assert seen[0].headers["authorization"] == "Bearer tok" and json.loads(seen[0].content) == {"k": 1}


async def test_client_sends_event_ids_and_create_or_send_requests() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True, "errors": [], "messages": [], "result": {"ok": 1}})

    async with mock_client(handler) as api:
        await api.send_event("wf", "i-1", "go", {"k": 1}, event_id="key 1")
        await api.send_event("wf", "i-1", "go")
        await api.create_or_send("wf", "i-2", "go", [1], params={"p": 2}, event_id="key-2")
        await api.create_or_send("wf", "i-3", "go")
    assert [(r.method, r.url.path, dict(r.url.params)) for r in seen] == [
        ("POST", "/api/workflows/wf/instances/i-1/events/go", {"event_id": "key 1"}),
        ("POST", "/api/workflows/wf/instances/i-1/events/go", {}),
        ("POST", "/api/workflows/wf/instances/create_or_send", {}),
        ("POST", "/api/workflows/wf/instances/create_or_send", {}),
    ]
    assert json.loads(seen[2].content) == {
        "id": "i-2", "params": {"p": 2}, "event_type": "go", "payload": [1], "event_id": "key-2",
    }  # fmt: skip
    assert json.loads(seen[3].content) == {"id": "i-3", "params": None, "event_type": "go", "payload": None}


async def test_client_reports_answers_that_are_not_the_api_and_servers_that_are_down() -> None:
    async with mock_client(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")) as api:
        with pytest.raises(UnexpectedResponse, match="HTTP 502 without the Hutch API envelope"):
            await api.list_workflows()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with mock_client(refuse) as api:
        with pytest.raises(GatewayUnreachable, match=re.escape("cannot reach the Hutch gateway at http://gw.test")):
            await api.list_workflows()


async def test_client_follows_the_cursor_up_to_the_limit() -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
    asked: list[tuple[str | None, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        asked.append((cursor, request.url.params["per_page"]))
        ids, nxt = pages[cursor]
        rows = [{"id": i} for i in ids]
        info = {"count": len(rows), "per_page": 2, "cursor": nxt}
        return httpx.Response(200, json={"success": True, "errors": [], "result": rows, "result_info": info})

    async with mock_client(handler) as api:
        assert [r["id"] for r in await api.recent_instances("wf", limit=3)] == ["a", "b", "c"]
        assert [r["id"] for r in await api.recent_instances("wf", limit=50)] == ["a", "b", "c", "d", "e"]
    assert asked[:2] == [(None, "3"), ("c1", "1")]


# ----------------------------------------------------------------------------- rendering alone
def at(seconds: float) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).isoformat()


STUCK = {
    "id": "o-9",
    "workflow": "order",
    "status": "errored",
    "params": {"orderId": "9"},
    "trigger": {"source": "queue", "queue": "orders"},
    "queued": at(0),
    "start": at(0.5),
    "end": at(40),
    "error": {"name": "NonRetryableError", "message": "card declined"},
    "steps": [
        {
            "type": "step", "name": "charge card", "count": 1, "start": at(0.5), "end": at(40), "success": False,
            "attempts": [
                {"attempt": 1, "start": at(0.5), "end": at(1), "success": False, "retry_at": at(10),
                 "error": {"name": "TimeoutError", "message": "gateway slow"}},
                {"attempt": 2, "start": at(10), "end": at(40), "success": False,
                 "error": {"name": "NonRetryableError", "message": "card declined"}},
            ],
            "error": {"name": "NonRetryableError", "message": "card declined"},
        },
        {"type": "step", "name": "audit", "count": 2, "start": at(40), "attempts": [
            {"attempt": 1, "start": at(40), "end": at(41), "success": False, "retry_at": at(100),
             "error": {"name": "OSError", "message": "disk"}}]},
        {"type": "sleep", "name": "cool down", "count": 1, "start": at(41), "due": at(3641)},
        {"type": "waitForEvent", "name": "ack", "count": 1, "start": at(41), "end": at(50), "success": False,
         "event_type": "ack", "outcome": "timed out"},
    ],
}  # fmt: skip


@pytest.mark.parametrize("width", [80, 160])
def test_the_timeline_shows_failures_retries_sleeps_and_timeouts(width: int) -> None:
    console = Console(width=width, record=True, highlight=False, file=io.StringIO())
    console.print(render.instance_view(STUCK, console, now=datetime(2026, 1, 1, 0, 1, tzinfo=UTC)))
    out = console.export_text()
    # Text wrapped inside a cell continues on the next line; dropping the column rules joins it up again.
    flat = " ".join(out.replace("│", " ").split())
    assert all(len(line) <= width for line in out.splitlines())
    assert "Status errored" in flat and "Error NonRetryableError: card declined" in flat
    assert 'Trigger queue {"queue": "orders"}' in flat and "Duration 39.50 s" in flat
    charge = next(line for line in out.splitlines() if "charge card" in line).split()
    assert charge[:5] == ["1", "│", "step", "│", "charge"] and "2" in charge and "✗" in charge and "failed" in charge
    assert "+0 ms" in " ".join(charge) and "39.50 s" in " ".join(charge)
    assert "retry at +9.50 s; TimeoutError: gateway slow" in flat  # attempt 1's error and when it retried
    assert "NonRetryableError: card declined" in flat
    assert "audit #2" in flat and "↻ retrying" in flat and "attempt 2 in 40.00 s" in flat
    assert "☾ sleeping" in flat and "until 2026-01-01 01:00:41 UTC (in 59 min 41 s)" in flat
    assert "✗ timed out" in flat and "no 'ack' event came" in flat


def test_lists_render_status_counts_and_durations() -> None:
    console = Console(width=120, record=True, highlight=False, file=io.StringIO())
    console.print(render.workflows_table([{"name": "order", "instances": {"running": 2, "complete": 5, "errored": 0}}]))
    console.print(
        render.instances_table(
            "order",
            [
                {"id": "a", "status": "running", "created_on": at(0), "started_on": at(1)},
                {
                    "id": "b",
                    "status": "complete",
                    "created_on": at(0),
                    "started_on": at(1),
                    "ended_on": at(3.5),
                    "version": "2",
                },
            ],
            now=datetime(2026, 1, 1, 0, 0, 11, tzinfo=UTC),
        )
    )
    rows = [line.split() for line in console.export_text().splitlines()]
    assert ["order", "│", "7", "│", "running", "2", "·", "complete", "5"] in rows
    assert ["a", "│", "running", "│", "-", "│", "2026-01-01", "00:00:00", "│", "10.00", "s…"] in rows
    assert ["b", "│", "complete", "│", "2", "│", "2026-01-01", "00:00:00", "│", "2.50", "s"] in rows


CHILD = {
    "id": "order-7-bill_s1-5f2c", "workflow": "billing", "status": "running", "params": {"shipment": "s1"},
    "trigger": {"source": "workflow", "workflow": "order", "instance_id": "order-7"},
    "queued": at(0), "start": at(0.5), "version": "3", "waiting_for_version": "4",
    "parent": {"workflow": "order", "instance_id": "order-7", "step": "bill s1", "count": 2},
    "steps": [
        {"type": "step", "name": "call api", "count": 1, "start": at(0.5), "attempts": [
            {"attempt": 1, "start": at(0.5), "end": at(1), "success": False, "retry_at": at(3),
             "retry_delay_from": "error", "error": {"name": "HTTPStatusError", "message": "429 Too Many Requests"}},
            {"attempt": 2, "start": at(3), "end": at(4), "success": False, "retry_at": at(5),
             "retry_delay_from": "backoff", "error": {"name": "TimeoutError", "message": "slow"}},
        ]},
        {"type": "step", "name": "validate", "count": 1, "start": at(4), "end": at(4.5), "success": False,
         "error": {"name": "ValueError", "message": "bad sku"}, "attempts": [
            {"attempt": 1, "start": at(4), "end": at(4.5), "success": False, "retry_refused": True,
             "error": {"name": "ValueError", "message": "bad sku"}}]},
        {"type": "invoke", "name": "tax", "count": 1, "start": at(5), "end": at(6), "success": True,
         "output": {"cents": 99}, "outcome": "succeeded", "config": {"parent_close": "terminate"},
         "child": {"workflow": "tax", "instance_id": "tax-1"}},
        {"type": "invoke", "name": "audit", "count": 1, "start": at(6), "end": at(7), "success": False,
         "error": {"name": "ChildWorkflowError", "message": "child audit/audit-1 errored"}, "outcome": "failed",
         "child": {"workflow": "audit", "instance_id": "audit-1"}},
        {"type": "invoke", "name": "ship", "count": 1, "start": at(7),
         "child": {"workflow": "ship", "instance_id": "ship-1"}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("width", [80, 160])
def test_describe_shows_invokes_with_their_child_the_parent_retry_sources_and_versions(width: int) -> None:
    console = Console(width=width, record=True, highlight=False, file=io.StringIO())
    console.print(render.instance_view(CHILD, console, now=datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)))
    out = console.export_text()
    flat = " ".join(out.replace("│", " ").split())
    assert all(len(line) <= width for line in out.splitlines())
    assert "Parent order-7 of order, its invoke 'bill s1' #2" in flat
    assert "Version 3" in flat and "Waiting for version '4': no worker owning it has that version" in flat
    assert "retry at +2.50 s (delay from the error); HTTPStatusError: 429 Too Many Requests" in flat
    assert "retry at +4.50 s (backoff); TimeoutError: slow" in flat
    assert "retry_if refused a retry; ValueError: bad sku" in flat
    for name, outcome in (("tax", "✓ returned"), ("audit", "✗ failed"), ("ship", "▶ running")):
        row = next(line for line in out.splitlines() if f" {name} " in line and "invoke" in line)
        assert outcome in row, (name, row)
    assert 'child tax-1 of tax {"cents": 99}' in flat
    assert "child audit-1 of audit: ChildWorkflowError: child audit/audit-1 errored" in flat
    assert "child ship-1 of ship" in flat


def test_list_filters_and_bulk_terminate_with_a_progress_bar(dev: Server) -> None:
    """``hutch instances list`` with wrangler's flags, and ``hutch instances bulk`` (issue 13 items 1, 2, 5)."""
    prefix = unique("bk")
    ids = [f"{prefix}-{n}" for n in range(3)]
    for iid in ids:
        ok_json("workflows", "trigger", "approval", json.dumps({"requestId": iid}), "--id", iid, "--url", dev.url)
        wait_for_status(dev.url, "approval", iid, "waiting")
    newest = ok_json("instances", "list", "approval", "--id-prefix", prefix, "--url", dev.url)
    assert [r["id"] for r in newest] == ids[::-1]
    oldest = ok_json("instances", "list", "approval", "--id-prefix", prefix, "--reverse", "--url", dev.url)
    assert [r["id"] for r in oldest] == ids
    second = ok_json("instances", "list", "approval", "--id-prefix", prefix, "--page", "2", "--per-page", "1",
                     "--url", dev.url)  # fmt: skip
    assert [r["id"] for r in second] == [ids[1]]
    everywhere = ok_json("instances", "list", "--id-prefix", prefix, "--date-start", "2000-01-01", "--url", dev.url)
    assert {(r["workflow"], r["id"]) for r in everywhere} == {("approval", i) for i in ids}
    assert ok_json("instances", "list", "approval", "--date-end", "2000-01-01", "--url", dev.url) == []

    args = ["instances", "bulk", "terminate", "approval", "--id-prefix", prefix, "--url", dev.url]
    refused = CliRunner().invoke(main, args, input="n\n", env={"HUTCH_URL": None, "HUTCH_TOKEN": None})
    assert refused.exit_code == 1 and "terminate every instance matching" in refused.output
    assert {r["status"] for r in ok_json("instances", "list", "approval", "--id-prefix", prefix, "--url", dev.url)} == {
        "waiting"
    }
    done = hutch("instances", "bulk", "terminate", "approval", "--id-prefix", prefix, "--yes", "--url", dev.url)
    assert done.exit_code == 0, done.output
    assert "terminate: done, 3 of 3 done (0 with nothing to do), 0 failed" in done.stdout
    for iid in ids:
        wait_for_status(dev.url, "approval", iid, "terminated")
    paused = hutch("instances", "bulk", "pause", "approval", "--id-prefix", prefix, "--yes", "--url", dev.url)
    assert paused.exit_code == 4 and "a finished instance cannot pause" in paused.stdout
