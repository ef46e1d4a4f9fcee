"""Verify-before-deploy: replay recorded histories against new code without running a step (SPEC §10).

Unit tests replay histories of embedded instances with :mod:`hutch.testing` (export → file →
``load_history`` → ``replay_history`` / ``verify_histories``). The live tests run a worker on the
real Redis and RabbitMQ, leave instances sleeping for an hour, and drive ``hutch workflows verify``
and ``hutch instances export`` against that Redis as a user's CI would: compatible code exits 0,
a renamed or reordered step exits 1 naming each instance and the position where it diverges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hutch
import pytest
from click.testing import CliRunner, Result
from hutch import Client, InvalidInputError, NondeterminismError, Settings, Status, WorkflowEntrypoint
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers.runtime import start_distributed
from hutch.gateway.cli import main
from hutch.gateway.cli.verify import verify_deployment
from hutch.gateway.live_histories import instance_history
from hutch.testing import (
    InstanceHistory,
    load_history,
    replay_history,
    save_history,
    verify_histories,
)
from hutch.testing.history_file import dumps_history, loads_history

from tests.conftest import _start_distributed, drop_namespace
from tests.helpers import unique, wait_status
from tests.verify_workflows import BODY_CALLS, Compatible, Deployed, RenamedStep, Reordered, StopsEarly

ROOT = Path(__file__).resolve().parent.parent
CODE = ROOT / "tests" / "verify_workflows.py"
WF = "verify-order"


class Explodes(WorkflowEntrypoint):
    """The same steps, then run() raises where the deployed code returned: the new code would error the instance."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.do("reserve", lambda: {})
        await step.do("charge", lambda: {})
        raise KeyError("customer")


# --------------------------------------------------------------------------- unit: files and replay
async def _sleeping_history(tmp_path: Path, params: Any = None) -> InstanceHistory:
    """Run Deployed on the embedded runtime until it sleeps; export its history through a file."""
    client: Client
    async with hutch.connect({WF: Deployed}) as client:
        instance = await client.workflow(WF).create(params=params or {"sku": "Z"})
        await wait_status(instance, Status.WAITING)
        history = await instance_history(client._store, WF, instance.id)
    assert history is not None and history.status == "waiting"
    path = tmp_path / "history.json"
    save_history(history, path)
    loaded = load_history(path)
    assert loaded == history
    return loaded


async def test_an_exported_history_replays_on_compatible_code_without_running_a_step(tmp_path: Path) -> None:
    history = await _sleeping_history(tmp_path)
    before = dict(BODY_CALLS)

    same = replay_history(Deployed, history)
    changed = replay_history(Compatible, history)

    assert BODY_CALLS == before, "replay ran a step body"
    for result in (same, changed):
        assert result.instance_id == history.instance_id
        assert not result.finished  # blocked on the sleep, like the instance
        assert result.next_commands == ()


async def test_a_renamed_step_raises_nondeterminism_at_its_position(tmp_path: Path) -> None:
    history = await _sleeping_history(tmp_path)

    with pytest.raises(NondeterminismError) as raised:
        replay_history(RenamedStep, history)

    error = raised.value
    assert (error.instance_id, error.position) == (history.instance_id, 2)
    assert (error.expected, error.actual) == ("step 'charge'#1", "step 'charge card'#1")
    assert BODY_CALLS["RenamedStep"] == 0


async def test_verify_histories_gives_every_history_a_verdict(tmp_path: Path) -> None:
    sleeping = await _sleeping_history(tmp_path)
    finished_early = await _quick_history()

    report = verify_histories(Reordered, [sleeping, finished_early])
    short = verify_histories(StopsEarly, [sleeping])
    failing = verify_histories(Explodes, [finished_early])
    fine = verify_histories(Compatible, [sleeping, finished_early])

    assert [(r.instance_id, r.outcome, r.position) for r in report.results] == [
        (sleeping.instance_id, "diverged", 1),
        (finished_early.instance_id, "diverged", 1),
    ]
    assert report.results[0].expected == "step 'reserve'#1"
    assert report.results[0].actual == "sleep 'cool down'#1"
    assert not report.ok and report.problems == report.results
    # The code stops asking after "reserve": history's "charge" is where it diverges, asked for by nothing.
    assert [(r.outcome, r.position, r.expected, r.actual) for r in short.results] == [
        ("diverged", 2, "step 'charge'#1", None)
    ]
    assert "no longer asks for it" in (short.results[0].message or "")
    assert [r.outcome for r in failing.results] == ["failed"]
    assert "KeyError" in (failing.results[0].message or "")
    assert fine.ok and [r.outcome for r in fine.results] == ["ok", "ok"]
    assert fine.workflow_class == "tests.verify_workflows:Compatible"


async def _quick_history() -> InstanceHistory:
    client: Client
    async with hutch.connect({WF: Deployed}) as client:
        instance = await client.workflow(WF).create(params={"quick": True})
        assert (await instance.wait(timeout=10)).status == Status.COMPLETE
        history = await instance_history(client._store, WF, instance.id)
    assert history is not None
    return history


def test_history_values_survive_the_file_format() -> None:
    history = InstanceHistory(
        workflow=WF,
        instance_id="i-1",
        created_ms=1,
        status="running",
        params={"$bytes": "not bytes", "raw": b"\x00\xff"},
        history=[{"k": "res", "vb": b"\x00\xffdata", "ev": {"payload": [b"x", {"$dict": {"$bytes": 1}}]}}],
    )

    text = dumps_history(history)

    assert loads_history(text) == history
    assert json.loads(text)["format"] == "hutch.history" and json.loads(text)["version"] == 1


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{not json", "is not JSON"),
        ('{"history": []}', "is not a Hutch instance history"),
        ('{"format": "hutch.history", "version": 2}', "version 2 Hutch history; this Hutch reads version 1"),
        ('{"format": "hutch.history", "version": 1, "workflow": "w"}', "is not a valid Hutch history"),
    ],
)
def test_a_file_that_is_not_a_history_this_version_reads_is_refused(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(text)

    with pytest.raises(InvalidInputError, match=complaint) as raised:
        load_history(path)

    assert str(path) in str(raised.value)


# --------------------------------------------------------------------------- live: the CLI on a real store
@dataclass
class Live:
    client: Client
    namespace: str
    waiting: list[str]
    complete: str


@pytest.fixture
async def live(redis_url: str, amqp_url: str) -> AsyncIterator[Live]:
    """A worker running Deployed in a namespace of its own (4 partitions): 3 instances asleep, 1 complete."""
    namespaces: list[str] = []
    client = await _start_distributed({WF: Deployed}, namespaces, settings=Settings(partitions=4))
    try:
        workflow = client.workflow(WF)
        waiting = [await workflow.create(id=unique("v"), params={"sku": f"S{i}"}) for i in range(3)]
        quick = await workflow.create(id=unique("q"), params={"quick": True})
        for instance in waiting:
            await wait_status(instance, Status.WAITING)
        assert (await quick.wait(timeout=10)).status == Status.COMPLETE
        yield Live(client, namespaces[0], [i.id for i in waiting], quick.id)
    finally:
        worker = client.runtime_worker
        if worker is not None:
            await worker.shutdown(timeout=0)
            await worker.transport.delete_topology()
        await client.close()
        for namespace in namespaces:
            await drop_namespace(namespace)


async def cli(live: Live, *args: str) -> Result:
    """``hutch ARGS`` against the live namespace, in a thread (the command runs its own event loop).

    The default partition count (16) is deliberately not the deployment's 4: the commands must
    use the count the deployment recorded.
    """
    env = {"HUTCH_NAMESPACE": live.namespace, "HUTCH_REDIS_URL": "redis://127.0.0.1:6379/0", "COLUMNS": "200"}
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_verify_passes_compatible_code_and_names_each_diverging_instance(live: Live, tmp_path: Path) -> None:
    compatible = await cli(live, "workflows", "verify", WF, "--code", f"{CODE}:Compatible")
    renamed = await cli(live, "workflows", "verify", WF, "--code", f"{CODE}:RenamedStep")
    renamed_json = await cli(live, "workflows", "verify", WF, "--code", f"{CODE}:RenamedStep", "--json")

    assert compatible.exit_code == 0, compatible.output
    assert "ok" in compatible.output and "all 3 unfinished instances" in compatible.output
    assert renamed.exit_code == 1, renamed.output
    assert "3 would fail on the new code" in renamed.output
    for line in (next(line for line in renamed.output.splitlines() if iid in line) for iid in live.waiting):
        assert "waiting" in line and "diverged" in line
        assert "step 'charge'#1" in line and "step 'charge card'#1" in line
        assert " 2 " in line  # the position
    assert renamed_json.exit_code == 1
    found = json.loads(renamed_json.output)
    assert found["unfinished"] == 3  # the complete instance is not replayed
    results = found["report"]["results"]
    assert sorted(r["instance_id"] for r in results) == sorted(live.waiting)
    assert {(r["outcome"], r["position"], r["expected"], r["actual"]) for r in results} == {
        ("diverged", 2, "step 'charge'#1", "step 'charge card'#1")
    }


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_verify_a_sample_and_a_reordered_workflow(live: Live) -> None:
    sampled = await cli(live, "workflows", "verify", WF, "--code", f"{CODE}:Reordered", "--sample", "2", "--json")
    human = await cli(live, "workflows", "verify", WF, "--code", f"{CODE}:Compatible", "--sample", "2")

    assert sampled.exit_code == 1, sampled.output
    found = json.loads(sampled.output)
    results = found["report"]["results"]
    assert found["unfinished"] == 3 and len(results) == 2
    assert {r["instance_id"] for r in results} < set(live.waiting)
    assert {(r["position"], r["expected"], r["actual"]) for r in results} == {
        (1, "step 'reserve'#1", "sleep 'cool down'#1")
    }
    assert human.exit_code == 0 and "2 of 3 unfinished instances" in human.output


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_an_exported_live_instance_replays_in_a_test(live: Live, tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    iid = live.waiting[0]

    exported = await cli(live, "instances", "export", WF, iid, "--out", str(path))
    to_stdout = await cli(live, "instances", "export", WF, iid)
    missing = await cli(live, "instances", "export", WF, "no-such-id")

    assert exported.exit_code == 0, exported.output
    history = load_history(path)
    assert (history.workflow, history.instance_id, history.status) == (WF, iid, "waiting")
    assert history.params == {"sku": "S0"}
    assert loads_history(to_stdout.stdout) == history
    assert not replay_history(Compatible, history).finished
    with pytest.raises(NondeterminismError, match="position 2"):
        replay_history(RenamedStep, history)
    assert missing.exit_code == 1 and "has no instance 'no-such-id'" in missing.output


@pytest.mark.redis
async def test_verify_against_a_namespace_without_a_deployment_says_so(redis_url: str) -> None:
    namespace = unique("empty")
    env = {"HUTCH_NAMESPACE": namespace, "HUTCH_REDIS_URL": redis_url}

    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["workflows", "verify", WF, "--code", f"{CODE}:Compatible"], env=env
    )

    assert result.exit_code == 2, result.output
    assert f"namespace {namespace!r} has no deployment recorded" in result.output


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_verify_reads_a_redis_cluster_deployment(redis_cluster_url: str, amqp_url: str) -> None:
    """The listing and the reads go through indexes and per-instance keys: no keyspace scan, cluster-safe."""
    namespace = unique("test")
    settings = Settings(redis_url=redis_cluster_url, amqp_url=amqp_url, namespace=namespace, partitions=6)
    client, worker = await start_distributed(
        {WF: Deployed}, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
    )
    try:
        instances = [await client.workflow(WF).create(params={"sku": f"C{i}"}) for i in range(4)]
        for instance in instances:
            await wait_status(instance, Status.WAITING)
        reader = settings.model_copy(update={"partitions": 16})  # the recorded 6 must win

        fine = await verify_deployment(reader, WF, Compatible)
        broken = await verify_deployment(reader, WF, RenamedStep)
        sampled = await verify_deployment(reader, WF, RenamedStep, sample=3)
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()
        await client.close()
        await drop_namespace(namespace, redis_cluster_url)

    assert fine.ok and fine.unfinished == 4 and len(fine.report.results) == 4
    assert not broken.ok
    assert sorted(r.instance_id for r in broken.report.problems) == sorted(i.id for i in instances)
    assert {r.position for r in broken.report.results} == {2}
    assert sampled.unfinished == 4 and len(sampled.report.results) == 3
