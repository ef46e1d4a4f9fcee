"""Golden histories: recorded instance histories replayed against the current example code.

Each ``tests/histories/*.json`` file holds one finished instance of an example workflow: its
class, id, params, creation time, final status/output/error and the history records exactly as
the store holds them (``bytes`` values written as ``{"$bytes": "<base64>"}``). The tests rebuild
``run()`` from a file with :meth:`hutch.executor.WorkflowRun.replay` — no runtime, no Redis —
and check that replay asks for exactly the recorded commands and reaches the recorded outcome.
A change to an example that would break instances already in flight (a renamed, reordered,
added or removed step) fails here with :class:`~hutch.NondeterminismError`.

``order_renamed_step.json`` is the order history with ``charge card`` renamed, as if the code
had been changed under a running instance: its replay must raise ``NondeterminismError``.

To (re)record every file after an intended change to an example, from the repository root::

    python -m tests.test_golden_histories

It runs each scenario on the embedded runtime (a few seconds) and rewrites the files; review
the diff before committing.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hutch
import pytest
from hutch import Client, Env, Instance, NondeterminismError, WorkflowEntrypoint
from hutch.config import DEFAULT_LIMITS
from hutch.errors import error_record
from hutch.events import WorkflowEvent
from hutch.executor import WorkflowRun
from hutch.gateway.loader import workflow_name
from hutch.history import Command
from hutch.testing.history_file import from_json, to_json

from examples.approval import ApprovalWorkflow
from examples.fanout import FanOutWorkflow
from examples.order import OrderWorkflow
from tests.helpers import wait_step

HISTORIES = Path(__file__).parent / "histories"
EXAMPLES = ("examples.order", "examples.approval", "examples.fanout")
WRONG = "order_renamed_step"


# --------------------------------------------------------------------------- the JSON format
# to_json/from_json: the value encoding of exported history files (hutch.testing.history_file), shared.
def load(name: str) -> dict[str, Any]:
    golden: dict[str, Any] = json.loads((HISTORIES / f"{name}.json").read_text())
    golden["history"] = from_json(golden["history"])
    return golden


def dump(golden: dict[str, Any]) -> str:
    """The file text: readable metadata, then one history record per line (reviewable diffs)."""
    head = {k: v for k, v in golden.items() if k != "history"}
    records = ",\n".join("    " + json.dumps(to_json(r)) for r in golden["history"])
    return json.dumps(head, indent=2)[:-2] + ',\n  "history": [\n' + records + "\n  ]\n}\n"


# --------------------------------------------------------------------------- replay
@dataclass
class Replayed:
    ok: bool
    value: Any  # the output, or the exception run() ended with
    new_commands: list[Command]


def workflow_class(path: str) -> type[WorkflowEntrypoint]:
    module, _, name = path.partition(":")
    cls: type[WorkflowEntrypoint] = getattr(importlib.import_module(module), name)
    return cls


def replay(golden: dict[str, Any]) -> Replayed:
    """Re-run the current code of the golden's class against its recorded history."""
    cls = workflow_class(golden["class"])
    event = WorkflowEvent.build(golden["params"], golden["created_ms"], golden["instance_id"], golden["workflow"])
    run = WorkflowRun(cls(Env()), event, limits=DEFAULT_LIMITS, now_ms=lambda: golden["created_ms"])
    try:
        run.replay(golden["history"])
        assert run.finished, "replay did not reach the end of run(): the code asks for more than history recorded"
        ok, value = run.outcome()
        return Replayed(ok, value, run.take_commands())
    finally:
        run.close()


def goldens() -> list[str]:
    return sorted(p.stem for p in HISTORIES.glob("*.json") if p.stem != WRONG)


@pytest.mark.parametrize("name", goldens())
def test_golden_history_replays_to_the_recorded_outcome(name: str) -> None:
    golden = load(name)

    result = replay(golden)

    if not result.ok and isinstance(result.value, NondeterminismError):
        pytest.fail(f"{name}: {result.value}")
    assert result.new_commands == [], f"{name}: replay issued commands beyond history"
    if golden["status"] == "complete":
        assert result.ok, f"{name}: replay raised {result.value!r}"
        # The recorded output went through msgpack (tuples became lists); compare as JSON.
        assert json.loads(json.dumps(result.value)) == golden["output"]
    else:
        assert not result.ok
        assert error_record(result.value) == golden["error"]


def test_a_renamed_step_is_detected_as_nondeterminism() -> None:
    golden = load(WRONG)

    result = replay(golden)

    assert not result.ok
    assert isinstance(result.value, NondeterminismError)
    message = str(result.value)
    assert "replay asked for step 'charge card'#1" in message
    assert "history has step 'charge credit card'#1 at position 3" in message
    assert golden["instance_id"] in message


def test_every_example_workflow_has_a_golden_history() -> None:
    recorded = {load(name)["class"] for name in goldens()}
    defined = {
        f"{module}:{cls.__name__}"
        for module in EXAMPLES
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass)
        if issubclass(cls, WorkflowEntrypoint) and cls.__module__ == module
    }
    assert defined, "no example workflows found"
    assert defined <= recorded, f"record a golden history for {sorted(defined - recorded)}"


def test_bytes_and_marker_lookalikes_survive_the_json_encoding() -> None:
    records = [
        {"k": "res", "vb": b"\x00\xffdata", "ev": {"payload": [b"x", {"$bytes": "eA=="}, {"$dict": {"$bytes": 1}}]}}
    ]

    encoded = json.dumps(to_json(records))

    assert from_json(json.loads(encoded)) == records


async def test_a_fresh_recording_replays_identically() -> None:
    """The recorder and the replay agree on today's code (so re-recording is always safe)."""
    golden = await record(SCENARIOS["fanout"])
    restored = json.loads(dump(golden))
    restored["history"] = from_json(restored["history"])

    result = replay(restored)

    assert result.ok and result.new_commands == []
    assert result.value == golden["output"]


# --------------------------------------------------------------------------- recording
@dataclass(frozen=True)
class Scenario:
    cls: type[WorkflowEntrypoint]
    instance_id: str
    params: Any
    drive: Callable[[Instance], Awaitable[None]] | None = None  # e.g. send an event once the wait is armed


async def _approve(instance: Instance) -> None:
    await wait_step(instance, "manager approval")  # the live path: the event arrives while the wait is armed
    await instance.send_event("approval", {"approved": True, "approver": "grace"})


SCENARIOS = {
    "order": Scenario(OrderWorkflow, "golden-order", {"orderId": "A-1", "items": [{"sku": "X", "qty": 2}]}),
    "order_invalid": Scenario(
        OrderWorkflow, "golden-order-invalid", {"orderId": "B-2", "items": [{"sku": "NOPE", "qty": 1}]}
    ),
    "approval_approved": Scenario(
        ApprovalWorkflow, "golden-approval", {"requestId": "PR-7", "timeout": "1 hour"}, _approve
    ),
    "approval_timeout": Scenario(
        ApprovalWorkflow, "golden-approval-timeout", {"requestId": "PR-8", "timeout": "100 milliseconds"}
    ),
    "fanout": Scenario(FanOutWorkflow, "golden-fanout", {"documents": ["the quick brown fox", "the lazy dog"]}),
}


async def record(scenario: Scenario, *, raw: bool = False) -> dict[str, Any]:
    """Run one scenario on the embedded runtime and return its golden record (``raw``: and the stored list)."""
    name = workflow_name(scenario.cls)
    client: Client
    async with hutch.connect({name: scenario.cls}) as client:
        instance = await client.workflow(name).create(id=scenario.instance_id, params=scenario.params)
        if scenario.drive is not None:
            await scenario.drive(instance)
        final = await instance.wait(timeout=30)
        detail = await instance.describe()
        # The raw records are not public API; the recorder is a development tool and reads the store.
        history = await client._store.history(instance._partition, name, instance.id)
        stored = await client._store.redis.lrange(
            client._store.keys.history(instance._partition, name, instance.id), 0, -1
        )
    extra = {"raw": stored} if raw else {}
    return {
        **extra,
        "class": f"{scenario.cls.__module__}:{scenario.cls.__name__}",
        "workflow": name,
        "instance_id": instance.id,
        "created_ms": round(detail.queued.timestamp() * 1000),
        "params": scenario.params,
        "status": final.status.value,
        "output": final.output,
        "error": final.error.model_dump() if final.error else None,
        "history": history,
    }


def renamed_step(golden: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A copy of ``golden`` whose history calls step ``old`` ``new`` (what a code rename looks like)."""
    history = [{**r, "n": new} if r.get("n") == old else dict(r) for r in golden["history"]]
    return {**golden, "history": history}


async def record_all() -> None:
    """Re-record every golden history file."""
    HISTORIES.mkdir(exist_ok=True)
    for name, scenario in SCENARIOS.items():
        golden = await record(scenario)
        (HISTORIES / f"{name}.json").write_text(dump(golden))
        print(f"recorded {name}: {golden['status']}, {len(golden['history'])} records")
        if name == "order":
            wrong = renamed_step(golden, "charge card", "charge credit card")
            (HISTORIES / f"{WRONG}.json").write_text(dump(wrong))
            print(f"recorded {WRONG}: 'charge card' renamed in history")


if __name__ == "__main__":
    asyncio.run(record_all())
