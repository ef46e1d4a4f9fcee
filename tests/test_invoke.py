"""Child workflows that return: ``step.invoke`` (SPEC §11).

The parent gets the child's output (or ``ChildWorkflowError``), a replay or a re-fired creation
never makes a second child, ``describe()`` links both ways, and ``parent_close`` decides whether a
parent's end terminates its running children. On both runtimes (embedded, and a worker in this
process on the real Redis and RabbitMQ); tests/distributed/test_invoke.py kills worker processes.
"""

from __future__ import annotations

import collections
from typing import Any

import hutch
import pytest
from hutch import ChildWorkflowError, Client, WorkflowEntrypoint, WorkflowEvent
from hutch.broker.envelopes import ChildFinished, TimerFired
from hutch.broker.partitioning import partition_of
from hutch.consumers.children import outbox_member
from hutch.consumers.orchestrator import _Item
from hutch.serialization import pack

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status, worker_of

CHILD_RUNS: collections.Counter[str] = collections.Counter()  # child instance id -> step body executions


class Child(WorkflowEntrypoint):
    """Doubles ``x``; fails when asked; waits for a "go" event first when asked."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        if event.payload.get("wait"):
            await step.wait_for_event("go", "go", timeout="1 hour")

        def double() -> int:
            CHILD_RUNS[event.instance_id] += 1
            return int(event.payload["x"]) * 2

        doubled = await step.do("double", double)
        if event.payload.get("fail"):
            raise ValueError(f"no good: {doubled}")
        return {"doubled": doubled}


class Parent(WorkflowEntrypoint):
    """Invokes one child with the params it was given; reports a ChildWorkflowError as its output."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        p = event.payload
        try:
            out = await step.invoke("child", self.env.CHILD, p.get("child", {}), id=p.get("id"), config=p.get("config"))
        except ChildWorkflowError as exc:
            return {"failed": [exc.workflow, exc.instance_id, exc.error_name, exc.message]}
        if p.get("then_wait"):
            await step.wait_for_event("more", "more", timeout="1 hour")
        return {"got": out}


WORKFLOWS = {"parent": Parent, "child": Child}


async def _only_child(client: Client, parent: str) -> str:
    detail = await client.workflow("parent").get(parent)
    (inv,) = [s for s in (await detail.describe()).steps if s.type == "invoke"]
    assert inv.child is not None
    return inv.child.instance_id


async def _child_created(client: Client, parent: str) -> str:
    async def check() -> str | None:
        detail = await (await client.workflow("parent").get(parent)).describe()
        if not detail.steps:
            return None  # not started yet
        child_id = await _only_child(client, parent)
        try:
            await client.workflow("child").get(child_id)
        except KeyError:
            return None
        return child_id

    return await eventually(check)


async def test_the_parent_gets_the_childs_output_and_describe_links_both_ways(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    parent = await client.workflow("parent").create(id=unique("p"), params={"child": {"x": 21}})
    final = await parent.wait(timeout=20)
    assert final.status == "complete", final
    assert final.output == {"got": {"doubled": 42}}

    detail = await parent.describe()
    (inv,) = detail.steps
    assert (inv.type, inv.name, inv.count, inv.success, inv.output) == ("invoke", "child", 1, True, {"doubled": 42})
    assert inv.config == {"parent_close": "terminate"}
    assert inv.child is not None and inv.child.workflow == "child"
    child_id = inv.child.instance_id
    assert child_id.startswith(f"{parent.id}-child-")

    child = await client.workflow("child").get(child_id)
    child_detail = await child.describe()
    assert child_detail.status == "complete"
    assert child_detail.parent is not None
    assert (child_detail.parent.workflow, child_detail.parent.instance_id) == ("parent", parent.id)
    assert (child_detail.parent.step, child_detail.parent.count) == ("child", 1)
    assert child_detail.trigger == {"source": "workflow", "workflow": "parent", "instance_id": parent.id}
    assert CHILD_RUNS[child_id] == 1


async def test_a_failing_child_raises_child_workflow_error_with_its_id_and_error(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    parent = await client.workflow("parent").create(id=unique("p"), params={"child": {"x": 2, "fail": True}})
    final = await parent.wait(timeout=20)
    assert final.status == "complete", final
    child_id = await _only_child(client, parent.id)
    assert final.output == {"failed": ["child", child_id, "ValueError", "no good: 4"]}
    (inv,) = (await parent.describe()).steps
    assert inv.success is False and inv.error is not None and inv.error.name == "ChildWorkflowError"
    assert child_id in inv.error.message and "ValueError: no good: 4" in inv.error.message


@pytest.mark.embedded_only
async def test_an_uncaught_child_error_errors_the_parent() -> None:
    class Strict(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: Any) -> Any:
            return await step.invoke("child", "child", {"x": 1, "fail": True})

    async with await hutch.connect({"strict": Strict, "child": Child}) as client:
        parent = await client.workflow("strict").create(params={})
        final = await parent.wait(timeout=10)
        assert final.status == "errored" and final.error is not None
        assert final.error.name == "ChildWorkflowError"
        assert "ValueError: no good: 2" in final.error.message


async def test_an_id_held_by_another_instance_fails_the_invoke(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    taken = unique("taken")
    await client.workflow("child").create(id=taken, params={"x": 5})
    parent = await client.workflow("parent").create(id=unique("p"), params={"child": {"x": 1}, "id": taken})
    final = await parent.wait(timeout=20)
    assert final.output is not None
    workflow, child_id, error_name, _ = final.output["failed"]
    assert (workflow, child_id, error_name) == ("child", taken, "InstanceAlreadyExists")
    assert CHILD_RUNS[taken] == 1  # the instance that held the id ran as its own creator asked, once


async def test_replays_and_a_refired_creation_never_make_a_second_child(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    parent = await client.workflow("parent").create(
        id=unique("p"), params={"child": {"x": 3, "wait": True}, "then_wait": True}
    )
    child_id = await _child_created(client, parent.id)
    child = await client.workflow("child").get(child_id)
    await wait_status(child, "waiting")

    # The creation's outbox timer fires again, as after a crash between creating the child and
    # removing the timer: the child exists, it is this invoke's, so nothing more happens.
    worker = worker_of(client)
    member = outbox_member("child", "parent", parent.id, 0, "child", 1)
    partition = partition_of("parent", parent.id, worker.transport.partitions)
    worker.orchestrator._post_timer(partition, TimerFired(workflow="parent", instance_id=parent.id, timer=member))
    await worker.orchestrator.settle()
    assert (await client.workflow("child").list()).instances == [child_id]

    # The child's end arrives twice in one batch (its outbox timer fired again after a crash, say):
    # the invoke is settled once. The child's own end, later, settles nothing either.
    copy = ChildFinished(
        workflow="parent",
        instance_id=parent.id,
        name="child",
        count=1,
        run=0,
        child_workflow="child",
        child_id=child_id,
        status="complete",
        output=pack({"doubled": 6}),
    )
    for _ in range(2):
        worker.orchestrator._inbox.put_nowait(_Item(partition, ("parent", parent.id), copy, None))
    await eventually(lambda: _has_output(client, parent.id))
    await child.send_event("go")
    assert (await child.wait(timeout=20)).output == {"doubled": 6}
    # The parent was evicted while it waited, so this resumes it by replay, past the invoke.
    await parent.send_event("more")
    final = await parent.wait(timeout=20)
    assert final.output == {"got": {"doubled": 6}}
    assert CHILD_RUNS[child_id] == 1
    assert (await client.workflow("child").list()).instances == [child_id]
    (inv, _) = (await parent.describe()).steps
    assert inv.child is not None and inv.child.instance_id == child_id
    history = await client._store.history(partition, "parent", parent.id)
    assert len([r for r in history if r["k"] == "res" and r["ref"] == "invoke"]) == 1


async def _has_output(client: Client, parent: str) -> bool:
    (inv, *_) = (await (await client.workflow("parent").get(parent)).describe()).steps
    return inv.success is True


@pytest.mark.parametrize("policy", ["terminate", "abandon"])
async def test_terminating_the_parent_applies_its_parent_close_policy(make_client: MakeClient, policy: str) -> None:
    client = await make_client(WORKFLOWS)
    parent = await client.workflow("parent").create(
        id=unique("p"), params={"child": {"x": 4, "wait": True}, "config": {"parent_close": policy}}
    )
    child_id = await _child_created(client, parent.id)
    child = await client.workflow("child").get(child_id)
    await wait_status(child, "waiting")
    await wait_status(parent, "waiting")
    assert (await parent.terminate()).applied
    if policy == "terminate":
        await wait_status(child, "terminated", timeout=20)
        assert CHILD_RUNS[child_id] == 0
    else:
        await child.send_event("go")
        final = await child.wait(timeout=20)
        assert final.status == "complete" and final.output == {"doubled": 8}
        assert (await parent.status()).status == "terminated"  # the child's end changes nothing there


async def test_a_terminated_child_raises_child_workflow_error(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    parent = await client.workflow("parent").create(id=unique("p"), params={"child": {"x": 4, "wait": True}})
    child_id = await _child_created(client, parent.id)
    child = await client.workflow("child").get(child_id)
    await wait_status(child, "waiting")
    await child.terminate()
    final = await parent.wait(timeout=20)
    assert final.output == {"failed": ["child", child_id, "Terminated", "the child instance was terminated"]}


def test_invoke_config_and_derived_ids() -> None:
    from hutch import InvokeConfig
    from hutch.children import derived_child_id
    from hutch.config import check_instance_id

    assert InvokeConfig.resolve(None).parent_close == "terminate"
    assert InvokeConfig.resolve({"parent_close": "abandon"}).parent_close == "abandon"
    with pytest.raises(ValueError):
        InvokeConfig.resolve({"parent_close": "ignore"})
    ids = {
        derived_child_id("p", name, count, run, 100) for name in ("a b", "a_b") for count in (1, 2) for run in (0, 1)
    }
    assert len(ids) == 8  # names that clean to the same text, counts and runs all differ
    long = derived_child_id("p" * 100, "x" * 256, 1, 0, 100)
    assert check_instance_id(long) == long and len(long) == 100


async def test_the_billing_example_invokes_children_concurrently(make_client: MakeClient) -> None:
    from examples.billing import SAMPLE, InvoiceWorkflow, ShippedOrderWorkflow

    client = await make_client({"order": ShippedOrderWorkflow, "billing": InvoiceWorkflow})
    order = await client.workflow("order").create(id=unique("order"), params=SAMPLE)
    final = await order.wait(timeout=30)
    assert final.output is not None
    assert final.output["cents"] == 2 * 1250 + 499
    assert [f["error"] for f in final.output["failed"]] == ["nothing to bill"]
    detail = await order.describe()
    assert [(s.type, s.name, s.success) for s in detail.steps] == [
        ("invoke", "bill s1", True),
        ("invoke", "bill s2", True),
        ("invoke", "bill s3", False),
    ]


# ----------------------------------------------------------------------------- parent_close beyond terminate
class Canceller(WorkflowEntrypoint):
    """Starts a child, cancels the invoke on a "stop" event, then stays alive until a "finish" event."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        p = event.payload
        pending = step.invoke("child", "child", p["child"], config=p["config"])
        await step.wait_for_event("stop", "stop", timeout="1 hour")
        pending.cancel()
        await step.wait_for_event("finish", "finish", timeout="1 hour")
        return {"cancelled": pending.cancelled()}


class Leaver(WorkflowEntrypoint):
    """Starts a child and returns without awaiting it: on a "leave" event, or at once when asked."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        p = event.payload
        step.invoke("child", "child", p["child"], config=p["config"])
        if not p.get("at_once"):
            await step.wait_for_event("leave", "leave", timeout="1 hour")
        return "left"


async def _child_of(client: Client, workflow: str, parent: str) -> Any:
    async def created() -> Any:
        steps = (await (await client.workflow(workflow).get(parent)).describe()).steps
        invokes = [s for s in steps if s.type == "invoke" and s.child is not None]
        if not invokes:
            return None
        try:
            return await client.workflow("child").get(invokes[0].child.instance_id)
        except KeyError:
            return None

    return await eventually(created)


async def _child_left_running(child: Any) -> None:
    """The child was left alone: still waiting, and it completes when its event comes."""
    await wait_status(child, "waiting")
    await child.send_event("go")
    final = await child.wait(timeout=20)
    assert final.status == "complete" and final.output == {"doubled": 10}


@pytest.mark.parametrize("policy", ["terminate", "abandon"])
async def test_workflow_code_cancelling_an_invoke_applies_its_parent_close_policy(
    make_client: MakeClient, policy: str
) -> None:
    client = await make_client({"canceller": Canceller, "child": Child})
    params = {"child": {"x": 5, "wait": True}, "config": {"parent_close": policy}}
    parent = await client.workflow("canceller").create(id=unique("c"), params=params)
    child = await _child_of(client, "canceller", parent.id)
    await wait_status(child, "waiting")
    await parent.send_event("stop")

    async def invoke_cancelled() -> bool:
        (invoke, *_) = (await parent.describe()).steps
        return invoke.outcome == "cancelled"

    await eventually(invoke_cancelled)
    if policy == "terminate":
        await wait_status(child, "terminated", timeout=20)
        assert CHILD_RUNS[child.id] == 0
    else:
        await _child_left_running(child)
    assert (await parent.status()).status == "waiting"  # the parent itself runs on, waiting for "finish"
    await parent.send_event("finish")
    assert (await parent.wait(timeout=20)).output == {"cancelled": True}


@pytest.mark.parametrize("policy", ["terminate", "abandon"])
async def test_a_parent_returning_without_awaiting_its_child_applies_its_parent_close_policy(
    make_client: MakeClient, policy: str
) -> None:
    client = await make_client({"leaver": Leaver, "child": Child})
    params = {"child": {"x": 5, "wait": True}, "config": {"parent_close": policy}}
    parent = await client.workflow("leaver").create(id=unique("l"), params=params)
    child = await _child_of(client, "leaver", parent.id)
    await wait_status(child, "waiting")
    await parent.send_event("leave")
    assert (await parent.wait(timeout=20)).output == "left"
    if policy == "terminate":
        await wait_status(child, "terminated", timeout=20)
        assert CHILD_RUNS[child.id] == 0
    else:
        await _child_left_running(child)


async def test_an_abandoned_child_runs_even_when_its_parent_ended_before_creating_it(make_client: MakeClient) -> None:
    # The parent returns in the turn that issued the invoke, so it ends before its owner creates
    # the child: with "abandon" the child must still be created and run.
    client = await make_client({"leaver": Leaver, "child": Child})
    params = {"child": {"x": 5, "wait": True}, "config": {"parent_close": "abandon"}, "at_once": True}
    parent = await client.workflow("leaver").create(id=unique("l"), params=params)
    assert (await parent.wait(timeout=20)).output == "left"
    child = await _child_of(client, "leaver", parent.id)
    assert (await child.describe()).parent is not None
    await _child_left_running(child)


# ----------------------------------------------------------------------------- the child's creation fields
async def test_a_child_is_created_with_the_fields_a_client_writes_plus_its_parent() -> None:
    from hutch.client import creation_fields
    from hutch.consumers.children import StartChild, carry_out
    from hutch.history import InvokeCommand

    class Recording:
        """The store and transport calls of creating one child."""

        partitions = 4

        def __init__(self) -> None:
            self.rows: list[tuple[int, str, str, int, dict[str, Any]]] = []
            self.published: list[Any] = []

        async def create_many(self, rows: Any) -> list[bool]:
            self.rows.extend(rows)
            return [True] * len(rows)

        async def publish(self, messages: Any) -> None:
            self.published.extend(messages)

    parent: Any = {"wf": "parent", "id": "p-1", "n": "bill", "c": 1, "run": 0}
    command: InvokeCommand = {
        "k": "invoke", "n": "bill", "c": 1, "g": 0, "t": 5, "wf": "child", "id": "c-1", "pb": pack({"x": 1}),
        "close": "terminate",
    }  # fmt: skip
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    fake = Recording()
    item = StartChild(member=b"m", partition=0, parent=parent, command=command, trace=trace)
    assert await carry_out([item], store=fake, transport=fake, now_ms=1234, inline_threshold=64 * 1024) == [item]  # type: ignore[arg-type]
    ((partition, workflow, instance_id, created, fields),) = fake.rows
    assert (partition, workflow, instance_id, created) == (partition_of("child", "c-1", 4), "child", "c-1", 1234)
    trigger = {"source": "workflow", "workflow": "parent", "instance_id": "p-1"}
    written, ref = creation_fields("child", "c-1", pack({"x": 1}), 1234, trigger, trace, 64 * 1024)
    assert ref is None and fields == {**written, "parent": pack(parent)}
    assert len(fake.published) == 1  # its start message
