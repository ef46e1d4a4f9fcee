"""The ``hutch.gateway.cli`` package: one copy of each option, of each formatting rule, of the trigger start-up."""

from __future__ import annotations

import ast
import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import hutch
import pytest
from hutch import Settings, WorkflowEntrypoint
from hutch.consumers.serve import start_triggers
from hutch.errors import InvalidInputError
from hutch.gateway.cli import main, render
from hutch.gateway.cli.formatting import duration_text, ms_text, until_text
from hutch.gateway.cli.progress_view import HumanSink
from hutch.gateway.progress import ProgressEvent
from hutch.triggers import CronSpec, TriggersConfig
from rich.console import Console

from tests.helpers import eventually

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"


def command(*path: str) -> click.Command:
    ctx = click.Context(main)
    found: click.Command | None = main
    for name in path:
        assert isinstance(found, click.Group)
        found = found.get_command(ctx, name)
    assert found is not None, path
    return found


def option(cmd: click.Command, name: str) -> click.Option:
    (found,) = [p for p in cmd.params if isinstance(p, click.Option) and name in p.opts]
    return found


def test_nothing_below_the_cli_imports_it() -> None:
    """The CLI is the top of the gateway: only the package's re-exports reach into it."""
    upward = []
    for path in GATEWAY.rglob("*.py"):
        relative = path.relative_to(GATEWAY)
        if relative.parts[0] == "cli" or relative == Path("__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            upward += [f"{relative}: {name}" for name in names if name.startswith("hutch.gateway.cli")]
    assert upward == []


@pytest.mark.parametrize(
    "path", [("dev",), ("gateway",), ("worker",), ("admin", "repartition")], ids=lambda p: " ".join(p)
)
def test_every_server_command_reads_the_backend_urls_from_the_same_variables(path: tuple[str, ...]) -> None:
    cmd = command(*path)
    assert option(cmd, "--redis-url").envvar == "HUTCH_REDIS_URL"
    assert option(cmd, "--amqp-url").envvar == "HUTCH_AMQP_URL"


def test_the_long_running_commands_share_their_logging_and_request_options() -> None:
    dev, gateway, worker = command("dev"), command("gateway"), command("worker")
    levels = [option(cmd, "--log-level") for cmd in (dev, gateway, worker)]
    assert {(o.default, tuple(o.type.choices)) for o in levels} == {("INFO", ("DEBUG", "INFO", "WARNING"))}  # type: ignore[attr-defined]
    assert option(dev, "--access-log").to_info_dict() == option(gateway, "--access-log").to_info_dict()


@pytest.mark.parametrize(
    "path",
    [
        ("workflows", "list"),
        ("workflows", "trigger"),
        ("instances", "list"),
        ("instances", "describe"),
        ("instances", "pause"),
        ("instances", "resume"),
        ("instances", "terminate"),
        ("instances", "restart"),
        ("events", "send"),
    ],
    ids=lambda p: " ".join(p),
)
def test_every_rest_command_takes_the_same_url_token_and_json_options(path: tuple[str, ...]) -> None:
    reference = command("workflows", "list")
    for name in ("--url", "--token", "--json"):
        assert option(command(*path), name).to_info_dict() == option(reference, name).to_info_dict()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.005, "5 ms"), (1.25, "1.25 s"), (125, "2 min 5 s"), (11_400, "3 h 10 min"), (187_200, "2 d 4 h")],
)
def test_durations_have_one_format(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
    assert ms_text(round(seconds * 1000)) == text
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    assert until_text(t0 + timedelta(seconds=seconds), t0) == text


def test_a_duration_reads_the_same_in_the_live_view_and_in_the_timeline() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    end = t0 + timedelta(seconds=125)
    live = Console(record=True, width=120, file=io.StringIO())
    sink = HumanSink(live)
    sink.event(ProgressEvent("attempt.succeeded", end, step="charge", count=1, attempt=1, duration_ms=125_000))
    detail = {
        "id": "i-1", "workflow": "order", "status": "complete", "params": None, "queued": t0.isoformat(),
        "start": t0.isoformat(), "end": end.isoformat(), "output": None, "error": None,
        "steps": [{"type": "step", "name": "charge", "count": 1, "start": t0.isoformat(), "end": end.isoformat(),
                   "success": True, "attempts": [{"attempt": 1, "start": t0.isoformat(), "end": end.isoformat(),
                                                   "success": True}]}],
    }  # fmt: skip
    timeline = Console(record=True, width=160, file=io.StringIO())
    timeline.print(render.instance_view(detail, timeline, now=end))
    assert "charge               succeeded in 2 min 5 s" in live.export_text()
    (row,) = [line for line in timeline.export_text().splitlines() if "charge" in line]
    assert "2 min 5 s" in row


class Tick(WorkflowEntrypoint):
    """Returns its params."""

    async def run(self, event, step):  # type: ignore[no-untyped-def]
        return await step.do("tick", lambda: dict(event.payload))


async def test_start_triggers_runs_the_crons_of_the_settings_and_says_which() -> None:
    """``hutch dev`` and ``hutch worker`` start their triggers through this one function."""
    crons = [CronSpec(schedule="* * * * * *", workflow="tick", params={"report": "daily"})]
    settings = Settings().model_copy(update={"redis_url": "", "amqp_url": "", "triggers": TriggersConfig(crons=crons)})
    async with hutch.connect({"tick": Tick}, settings=settings) as client:
        async with contextlib.AsyncExitStack() as running:
            started = await start_triggers(running, client, settings)
            assert started == ["crons * * * * * *"]

            async def fired() -> list[str]:
                return (await client.workflow("tick").list(limit=10)).instances

            await eventually(fired, timeout=10)


async def test_start_triggers_refuses_a_cron_for_a_workflow_the_process_does_not_serve() -> None:
    crons = [CronSpec(schedule="* * * * * *", workflow="nope")]
    settings = Settings().model_copy(update={"redis_url": "", "amqp_url": "", "triggers": TriggersConfig(crons=crons)})
    async with hutch.connect({"tick": Tick}, settings=settings) as client:
        async with contextlib.AsyncExitStack() as running:
            with pytest.raises(InvalidInputError, match="nope"):
                await start_triggers(running, client, settings)
