"""``hutch run``: live progress, JSON lines, events, exit codes and error messages.

Most tests drive the click command in-process with ``CliRunner``; one runs the real
``python -m hutch`` in a subprocess, as a user would from the repository root.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hutch import AttemptDetail, InstanceDetail, Settings, Status, StepDetail
from hutch.gateway.cli import main
from hutch.gateway.loader import load_workflow, workflow_name
from hutch.gateway.progress import ProgressTracker

ROOT = Path(__file__).resolve().parent.parent
ORDER = f"{ROOT / 'examples' / 'order.py'}:OrderWorkflow"
APPROVAL = str(ROOT / "examples" / "approval.py")
FANOUT = str(ROOT / "examples" / "fanout.py")
ORDER_PARAMS = '{"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}'
ORDER_OUTPUT = {
    "orderId": "A-1",
    "status": "shipped",
    "totalCents": 2500,
    "chargeId": "ch_2b12ce97d8fb",
    "reservationId": "res-A-1",
    "trackingNumber": "TRK3127F60E77",
}


def hutch(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output + result.stderr
    return result


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def output_after_outcome(text: str, outcome: str) -> Any:
    """The pretty JSON printed after the ``✓ complete in ...`` line."""
    _, sep, tail = text.partition(outcome)
    assert sep, f"{outcome!r} not in output:\n{text}"
    return json.loads(tail.split("\n", 1)[1])


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def progress_line(text: str, *parts: str) -> str:
    """The one line containing every part, in order of the output."""
    found = [line for line in lines(text) if all(p in line for p in parts)]
    assert len(found) == 1, f"expected one line with {parts}, got {found} in:\n{text}"
    return found[0]


# --------------------------------------------------------------------------- the live view
def test_run_order_shows_each_step_the_retry_and_the_sleep_then_the_output() -> None:
    result = hutch("run", ORDER, "--params", ORDER_PARAMS, "--id", "A-1")

    assert result.exit_code == 0, result.output
    out = result.output
    assert lines(out)[:2] == [f"Running order-workflow ({ORDER})", "instance A-1"]
    progress_line(out, "✓ validate order", "succeeded in")
    progress_line(out, "✗ reserve inventory", "attempt 1 failed in", "ConnectionError: inventory service unavailable")
    progress_line(out, "↻ reserve inventory", "retrying (attempt 2) at", "(in 200 ms)")
    progress_line(out, "✓ reserve inventory", "succeeded on attempt 2")
    progress_line(out, "✓ charge card", "succeeded in")
    progress_line(out, "☾ cool down", "sleeping 1.00 s, until")
    progress_line(out, "☀ cool down", "woke after")
    progress_line(out, "✓ ship", "succeeded in")
    order = ["validate order", "reserve inventory", "charge card", "cool down", "ship"]
    firsts = [next(i for i, line in enumerate(lines(out)) if name in line) for name in order]
    assert firsts == sorted(firsts), out
    assert output_after_outcome(out, "✓ complete in") == ORDER_OUTPUT


def test_run_as_a_real_subprocess_from_the_repository_root() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hutch", "run", "examples/order.py:OrderWorkflow", "--params", ORDER_PARAMS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warnings, log noise or tracebacks
    out = proc.stdout
    assert lines(out)[0] == "Running order-workflow (examples/order.py:OrderWorkflow)"
    progress_line(out, "reserve inventory", "attempt 1 failed", "ConnectionError")
    progress_line(out, "reserve inventory", "retrying (attempt 2)")
    progress_line(out, "cool down", "sleeping 1.00 s")
    progress_line(out, "ship", "succeeded")
    assert output_after_outcome(out, "✓ complete in") == ORDER_OUTPUT


def test_module_path_without_a_class_picks_the_one_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    result = hutch("run", "examples.fanout", "--params", '{"documents": ["a b", "b c"]}')

    assert result.exit_code == 0, result.output
    assert lines(result.output)[0] == "Running fan-out-workflow (examples.fanout)"
    progress_line(result.output, "count words 1", "succeeded")
    progress_line(result.output, "count words 2", "succeeded")
    progress_line(result.output, "aggregate", "succeeded")
    assert output_after_outcome(result.output, "✓ complete in")["top"] == [["b", 2], ["a", 1], ["c", 1]]


def test_an_event_is_sent_when_the_instance_waits_for_it() -> None:
    result = hutch(
        "run",
        APPROVAL,
        "--params",
        '{"requestId": "PR-7", "timeout": "1 hour"}',
        "--event",
        'approval={"approved": true, "approver": "grace"}',
    )

    assert result.exit_code == 0, result.output
    out = result.output
    wait = progress_line(out, "⧗ manager approval", "waiting for event 'approval', timeout at", "(in 1 h)")
    assert "--event" not in wait  # no hint: the event is on its way
    progress_line(out, "→ manager approval", "sent 'approval' event", '"approver": "grace"')
    progress_line(out, "✓ manager approval", "received 'approval' after")
    progress_line(out, "✓ provision", "succeeded")
    assert output_after_outcome(out, "✓ complete in")["by"] == "grace"


def test_a_wait_without_a_matching_event_times_out_and_hints_at_event() -> None:
    result = hutch("run", APPROVAL, "--params", '{"requestId": "PR-8", "timeout": "100 milliseconds"}')

    assert result.exit_code == 0, result.output
    out = result.output
    progress_line(out, "⧗ manager approval", "(in 100 ms); send one with --event approval=JSON")
    progress_line(out, "✗ manager approval", "timed out after", "waiting for 'approval'")
    progress_line(out, "✓ escalate", "succeeded")
    assert output_after_outcome(out, "✓ complete in")["reason"] == "timed out"


# --------------------------------------------------------------------------- --json
def test_json_lines_report_every_transition_then_the_result() -> None:
    result = hutch("run", ORDER, "--params", ORDER_PARAMS, "--id", "A-1", "--json")

    assert result.exit_code == 0, result.output
    events = json_lines(result.output)
    assert events[0]["event"] == "created"
    assert events[0]["instance_id"] == "A-1"
    assert events[0]["workflow"] == "order-workflow"
    assert events[-1] == {"status": "complete", "output": ORDER_OUTPUT, "error": None}
    kinds = [(e["event"], e.get("step"), e.get("attempt")) for e in events[1:-1] if e["event"] != "status"]
    assert kinds == [
        ("attempt.started", "validate order", 1),
        ("attempt.succeeded", "validate order", 1),
        ("attempt.started", "reserve inventory", 1),
        ("attempt.failed", "reserve inventory", 1),
        ("retry.scheduled", "reserve inventory", 2),
        ("attempt.started", "reserve inventory", 2),
        ("attempt.succeeded", "reserve inventory", 2),
        ("attempt.started", "charge card", 1),
        ("attempt.succeeded", "charge card", 1),
        ("sleep.started", "cool down", None),
        ("sleep.completed", "cool down", None),
        ("attempt.started", "ship", 1),
        ("attempt.succeeded", "ship", 1),
    ]
    # queued/running/complete always; changes in between as polling observed them (waiting while asleep)
    statuses = [e["status"] for e in events[1:-1] if e["event"] == "status"]
    assert statuses[:2] == ["queued", "running"] and statuses[-1] == "complete"
    assert "waiting" in statuses
    assert events[-2] == {"event": "status", "at": events[-2]["at"], "status": "complete"}
    by_kind = {e["event"]: e for e in events[1:-1] if e["event"] != "status"}
    failed = by_kind["attempt.failed"]
    assert failed["error"]["name"] == "ConnectionError"
    assert isinstance(failed["duration_ms"], int)
    retry = by_kind["retry.scheduled"]
    assert _ms(retry["retry_at"]) - _ms(retry["at"]) == 200
    sleep = by_kind["sleep.started"]
    assert _ms(sleep["wake_at"]) - _ms(sleep["at"]) == 1000
    assert by_kind["sleep.completed"]["duration_ms"] >= 1000
    assert by_kind["attempt.succeeded"]["output"]["trackingNumber"] == ORDER_OUTPUT["trackingNumber"]
    assert "\x1b[" not in result.output  # no colours


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_json_lines_for_events_and_waits() -> None:
    result = hutch(
        "run", APPROVAL, "--params", '{"requestId": "PR-7"}', "--event", 'approval={"approved": false}', "--json"
    )

    assert result.exit_code == 0, result.output
    events = json_lines(result.output)
    by_kind = {e.get("event"): e for e in events}
    assert by_kind["wait.started"]["event_type"] == "approval"
    assert "timeout_at" in by_kind["wait.started"]
    assert by_kind["event.sent"]["payload"] == {"approved": False}
    assert by_kind["wait.received"]["payload"] == {"approved": False}
    assert events[-1]["output"]["decision"] == "rejected"


# --------------------------------------------------------------------------- failures of the instance: exit 1
def test_an_errored_instance_exits_1_with_its_error() -> None:
    params = '{"orderId": "B-2", "items": [{"sku": "NOPE", "qty": 1}]}'

    result = hutch("run", ORDER, "--params", params)

    assert result.exit_code == 1
    progress_line(result.output, "✗ validate order", "attempt 1 failed", "unknown SKU 'NOPE'")
    progress_line(result.output, "✗ validate order", "gave up after 1 attempt")
    assert lines(result.output)[-2].startswith("✗ errored in")
    assert lines(result.output)[-1] == "NonRetryableError: order B-2: unknown SKU 'NOPE'"


def test_an_errored_instance_in_json_mode() -> None:
    result = hutch("run", ORDER, "--params", '{"orderId": "B-2", "items": []}', "--json")

    assert result.exit_code == 1
    assert json_lines(result.output)[-1] == {
        "status": "errored",
        "output": None,
        "error": {"name": "NonRetryableError", "message": "order B-2 has no items"},
    }


def test_timeout_gives_up_with_exit_1() -> None:
    result = hutch("run", APPROVAL, "--params", '{"timeout": "1 hour"}', "--timeout", "0.3")

    assert result.exit_code == 1
    assert lines(result.output)[-1] == "✗ still waiting after 0.3 s (--timeout); gave up"

    as_json = hutch("run", APPROVAL, "--params", '{"timeout": "1 hour"}', "--timeout", "0.3", "--json")
    assert as_json.exit_code == 1
    final = json_lines(as_json.output)[-1]
    assert final["status"] == "waiting"
    assert final["error"]["name"] == "WaitTimeout"


def test_an_event_no_wait_asked_for_is_reported() -> None:
    result = hutch("run", FANOUT, "--event", "approval={}")

    assert result.exit_code == 0
    assert "! --event approval was not sent: the instance never waited for a 'approval' event" in lines(result.output)


# --------------------------------------------------------------------------- bad usage: exit 2, no traceback
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "{bad"], "Invalid value for --params: not valid JSON"),
        (["--event", "approval={x"], "Invalid value for --event approval: not valid JSON"),
        (["--event", "={}"], "must look like TYPE=JSON"),
        (["--id", "no/slashes"], "instance id 'no/slashes' must match"),
        (["--timeout", "0"], "Invalid value for '--timeout'"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = hutch("run", ORDER, *args)

    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples/missing.py", "file 'examples/missing.py' does not exist"),
        (f"{ROOT / 'examples' / 'order.py'}:Missing", "has no class 'Missing'; workflows defined there: OrderWorkflow"),
        (f"{ROOT / 'examples' / 'order.py'}:PRICES_CENTS", "is not a WorkflowEntrypoint subclass"),
        ("examples.not_there:X", "no module named 'examples.not_there'"),
        (f"{ROOT / 'examples' / '__init__.py'}", "defines no WorkflowEntrypoint subclass"),
        ("examples/order.py:", "must look like 'path/to/file.py:Class'"),
    ],
)
def test_unknown_targets_exit_2(target: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    result = hutch("run", target)

    assert result.exit_code == 2
    assert message in result.stderr


def test_a_file_with_several_workflows_needs_a_class(tmp_path: Path) -> None:
    path = tmp_path / "two_workflows.py"
    path.write_text(
        "from engine import WorkflowEntrypoint\n"
        "class Alpha(WorkflowEntrypoint):\n    async def run(self, event, step): return 1\n"
        "class Beta(WorkflowEntrypoint):\n    async def run(self, event, step): return 2\n"
    )

    ambiguous = hutch("run", str(path))
    chosen = hutch("run", f"{path}:Beta", "--json")

    assert ambiguous.exit_code == 2
    assert "defines several workflows (Alpha, Beta); pick one with" in ambiguous.stderr
    assert chosen.exit_code == 0
    assert json_lines(chosen.output)[-1] == {"status": "complete", "output": 2, "error": None}


def test_a_file_that_fails_to_import_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken_workflow.py"
    path.write_text("from engine import WorkflowEntrypoint\n\nraise RuntimeError('boom at import')\n")

    result = hutch("run", str(path))

    assert result.exit_code == 2
    assert f"({path}:3): RuntimeError: boom at import" in result.stderr


def test_workflow_names_are_derived_from_class_names() -> None:
    assert workflow_name(type("OrderWorkflow", (), {})) == "order-workflow"
    assert workflow_name(type("HTTPFetchWorkflow", (), {})) == "http-fetch-workflow"
    assert workflow_name(type("FanOutV2", (), {})) == "fan-out-v2"
    assert len(workflow_name(type("A" + "b" * 100, (), {}))) <= 64


def test_version_prints_the_installed_distribution_version() -> None:
    result = hutch("--version")

    assert result.exit_code == 0
    assert result.output == f"hutch {importlib.metadata.version('hutch')}\n"


# --------------------------------------------------------------------------- one loader for every class path
def test_hutch_toml_run_from_the_repository_root_finds_its_workflows_like_the_readme_says() -> None:
    # README "Run it distributed": HUTCH_CONFIG=compose/hutch.toml hutch worker, from the repository
    # root. A console script's sys.path lacks the current directory; python -P gives the same.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_") and k != "PYTHONPATH"}
    env |= {
        "HUTCH_CONFIG": "compose/hutch.toml",
        "HUTCH_REDIS_URL": "redis://127.0.0.1:1/0",  # refused: the worker gets as far as connecting
        "HUTCH_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    }
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "hutch", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert "cannot import" not in proc.stderr, proc.stderr
    assert "Error: cannot connect to Redis at redis://127.0.0.1:1/0" in proc.stderr, proc.stderr
    assert proc.returncode == 1


def test_hutch_toml_and_workflow_targets_resolve_modules_next_to_the_hutch_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"flows_{os.urandom(4).hex()}"  # a name no other test imports
    project = tmp_path / "project"
    (project / package).mkdir(parents=True)
    (project / package / "__init__.py").write_text("")
    (project / package / "local.py").write_text(
        "from engine import WorkflowEntrypoint\n"
        "class LocalFlow(WorkflowEntrypoint):\n    async def run(self, event, step): return 1\n"
    )
    (project / "hutch.toml").write_text(f'[[workflows]]\nname = "local"\nclass_name = "{package}.local:LocalFlow"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HUTCH_CONFIG", "../project/hutch.toml")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader's additions are undone after the test
    try:
        from_toml = Settings().workflow_classes()["local"]
        from_target = load_workflow(f"{package}.local:LocalFlow")  # hutch worker/dev --workflow
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == package]:
            del sys.modules[name]

    assert from_toml.__name__ == "LocalFlow"
    assert from_target is from_toml  # one loader, one module


def test_gateway_public_surface_is_pinned() -> None:
    import hutch.gateway

    assert hutch.gateway.__all__ == [
        "Active",
        "HumanSink",
        "JsonSink",
        "ProgressEvent",
        "ProgressSink",
        "ProgressTracker",
        "RunResult",
        "TargetError",
        "follow",
        "load_workflow",
        "workflow_name",
    ]
    for name in hutch.gateway.__all__:
        assert inspect.getdoc(getattr(hutch.gateway, name)), f"hutch.gateway.{name} has no docstring"


def test_tracker_reports_each_change_once_in_time_order() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)

    def at(ms: int) -> datetime:
        return t0 + timedelta(milliseconds=ms)

    def detail(status: str, steps: list[StepDetail]) -> InstanceDetail:
        return InstanceDetail(id="i", workflow="w", status=Status(status), queued=t0, start=at(1), steps=steps)

    running = StepDetail(
        type="step", name="fetch", count=1, start=at(2), attempts=[AttemptDetail(attempt=1, start=at(2))]
    )
    done = running.model_copy(
        update={
            "end": at(40),
            "success": True,
            "output": {"n": 1},
            "attempts": [AttemptDetail(attempt=1, start=at(2), end=at(40), success=True)],
        }
    )
    nap = StepDetail(type="sleep", name="nap", count=1, start=at(40), due=at(10_040))
    tracker = ProgressTracker()

    first = tracker.update(detail("running", [running]))
    again = tracker.update(detail("running", [running]))
    second = tracker.update(detail("waiting", [done, nap]))
    resumed = tracker.update(detail("waiting", [done, nap.model_copy(update={"due": at(20_000)})]))
    cancelled = tracker.update(
        detail("terminated", [done, nap.model_copy(update={"due": at(20_000), "end": at(50), "outcome": "cancelled"})])
    )

    assert [(e.kind, e.status or e.step) for e in first] == [
        ("status", "queued"),
        ("status", "running"),
        ("attempt.started", "fetch"),
    ]
    assert again == []
    assert [(e.kind, e.step) for e in second] == [
        ("attempt.succeeded", "fetch"),
        ("sleep.started", "nap"),
        ("status", None),
    ]
    assert second[0].duration_ms == 38 and second[0].output == {"n": 1}
    assert second[1].to_json()["wake_at"] == "2030-01-01T00:00:10.040Z"
    assert [(e.kind, e.due) for e in resumed] == [("sleep.rescheduled", at(20_000))]
    assert [(e.kind, e.status) for e in cancelled] == [("sleep.cancelled", None), ("status", "terminated")]
    assert ProgressTracker.active(detail("waiting", [done, nap]))[0].kind == "sleep"


def test_tracker_and_live_view_report_invokes_retry_sources_and_a_version_wait() -> None:
    import io

    from hutch import ErrorInfo, InstanceLink
    from hutch.gateway.cli.progress_view import HumanSink
    from rich.console import Console

    t0 = datetime(2030, 1, 1, tzinfo=UTC)

    def at(ms: int) -> datetime:
        return t0 + timedelta(milliseconds=ms)

    def detail(steps: list[StepDetail], waiting_for: str | None = None) -> InstanceDetail:
        return InstanceDetail(
            id="i", workflow="w", status=Status.RUNNING, queued=t0, start=at(1), steps=steps,
            version="1", waiting_for_version=waiting_for,
        )  # fmt: skip

    child = InstanceLink(workflow="billing", instance_id="c-1")
    bill = StepDetail(type="invoke", name="bill", count=1, start=at(2), child=child)
    boom = ErrorInfo(name="HTTPStatusError", message="429")
    flaky = StepDetail(
        type="step", name="call api", count=1, start=at(2),
        attempts=[AttemptDetail(attempt=1, start=at(2), end=at(3), success=False, error=boom, retry_at=at(2003),
                                retry_delay_from="error")],
    )  # fmt: skip
    refused = StepDetail(
        type="step", name="validate", count=1, start=at(2), end=at(4), success=False, error=boom,
        attempts=[AttemptDetail(attempt=1, start=at(2), end=at(4), success=False, error=boom, retry_refused=True)],
    )  # fmt: skip
    tracker = ProgressTracker()
    first = tracker.update(detail([bill, flaky, refused], waiting_for="2"))
    returned = bill.model_copy(update={"end": at(50), "success": True, "output": {"cents": 7}, "outcome": "succeeded"})
    failed = StepDetail(
        type="invoke", name="bill", count=2, start=at(50), end=at(60), success=False,
        child=InstanceLink(workflow="billing", instance_id="c-2"),
        error=ErrorInfo(name="ChildWorkflowError", message="child billing/c-2 errored"), outcome="failed",
    )  # fmt: skip
    second = tracker.update(detail([returned, flaky, refused, failed], waiting_for="2"))

    by_kind = {e.kind: e for e in first}
    assert by_kind["invoke.started"].to_json() == {
        "event": "invoke.started", "at": "2030-01-01T00:00:00.002Z", "step": "bill", "count": 1,
        "child_workflow": "billing", "child_id": "c-1",
    }  # fmt: skip
    assert by_kind["retry.scheduled"].to_json()["retry_delay_from"] == "error"
    assert by_kind["step.failed"].to_json()["retry_refused"] is True
    assert by_kind["version.waiting"].to_json()["version"] == "2"
    assert [(e.kind, e.count) for e in second] == [("invoke.returned", 1), ("invoke.started", 2), ("invoke.failed", 2)]
    assert second[0].to_json()["output"] == {"cents": 7} and second[0].duration_ms == 48
    (active,) = [a for a in ProgressTracker.active(detail([bill])) if a.kind == "invoke"]
    assert (active.step, active.child) == ("bill", "billing/c-1")

    out = io.StringIO()
    sink = HumanSink(Console(file=out, width=200, highlight=False))
    for event in [*first, *second]:
        sink.event(event)
    text = out.getvalue()
    progress_line(text, "bill", "invoked child billing/c-1")
    progress_line(text, "bill", "child billing/c-1 returned after 48 ms")
    progress_line(text, "bill #2", "child billing/c-2 failed after 10 ms: ChildWorkflowError")
    progress_line(text, "call api", "retrying (attempt 2)", "the delay the error asked for")
    progress_line(text, "validate", "gave up after 1 attempt: retry_if refused to retry its error")
    progress_line(text, "instance waits for code version '2'")
