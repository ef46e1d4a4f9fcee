"""hutch.logs: JSON and text lines with the instance and step they are about; replay logs nothing (SPEC §13)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from hutch import logs
from hutch.gateway.cli import main


@dataclass
class _Event:
    workflow_name: str
    instance_id: str


@dataclass
class _Run:
    event: _Event
    replaying: bool = False


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"tests.logs.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_a_json_line_carries_the_bound_context_the_extras_and_the_traceback(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with logs.bound(workflow="order", instance_id="o-1", step="charge", step_count=1, attempt=2):
        with logs.bound(trace_id=logs.trace_id(traceparent)):
            try:
                raise ValueError("card declined")
            except ValueError:
                logger.exception("step %r failed", "charge", extra={"retry_at_ms": 5})
    logger.info("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "step 'charge' failed" and first["level"] == "ERROR"
    assert {k: first[k] for k in (*logs.FIELDS, "retry_at_ms")} == {
        "workflow": "order",
        "instance_id": "o-1",
        "step": "charge",
        "step_count": 1,
        "attempt": 2,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "retry_at_ms": 5,
    }
    assert "ValueError: card declined" in first["exc"]
    assert first["ts"].endswith("+00:00") and first["logger"] == logger.name
    assert not set(logs.FIELDS) & set(second)  # the context ended with its block


def test_the_text_format_appends_the_context_fields(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs._TextFormatter(logs._TEXT))
    with logs.bound(workflow="order", instance_id="o-1"):
        logger.warning("hello")
    assert stream.getvalue().rstrip().endswith("hello [workflow=order instance_id=o-1]")


async def test_tasks_started_in_a_bound_block_carry_its_fields_and_bind_is_per_task(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())

    async def attempt(n: int) -> None:
        logs.bind(attempt=n)
        await asyncio.sleep(0)
        logger.info("attempt")

    with logs.bound(workflow="order"):
        await asyncio.gather(attempt(1), attempt(2))
    logger.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sorted((line["message"], line.get("workflow", ""), line.get("attempt", 0)) for line in lines) == [
        ("after", "", 0),
        ("attempt", "order", 1),
        ("attempt", "order", 2),
    ]


def test_what_a_replaying_run_logs_is_dropped_and_a_live_run_logs_with_its_instance(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    run = _Run(_Event("order", "o-7"), replaying=True)
    with logs.running(run):
        logger.info("during replay")
        run.replaying = False
        logger.info("live")
    assert [
        (line["message"], line["workflow"], line["instance_id"])
        for line in map(json.loads, stream.getvalue().splitlines())
    ] == [("live", "order", "o-7")]


def test_configure_writes_json_off_a_terminal_and_text_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert logs.default_format() == "json"  # pytest's stderr is no terminal
        logs.configure("INFO")
        logging.getLogger("tests.logs").info("as json")
        assert json.loads(capsys.readouterr().err)["message"] == "as json"
        logs.configure("INFO", "text")
        logging.getLogger("tests.logs").info("as text")
        assert capsys.readouterr().err.rstrip().endswith("INFO tests.logs: as text")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.mark.parametrize("command", ["worker", "dev", "gateway"])
def test_every_server_command_takes_log_format(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--log-format [json|text]" in result.output
    refused = CliRunner().invoke(main, [command, "--log-format", "xml"])
    assert refused.exit_code == 2 and "'xml' is not one of 'json', 'text'" in refused.output
