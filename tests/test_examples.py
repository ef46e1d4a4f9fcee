"""Every example under ``examples/`` runs to completion on the embedded runtime, through the public API."""

from __future__ import annotations

from hutch import InstanceDetail, StepDetail

from examples.approval import ApprovalWorkflow
from examples.fanout import SAMPLE_DOCUMENTS, FanOutWorkflow
from examples.order import OrderWorkflow
from tests.conftest import MakeClient
from tests.helpers import wait_step

ORDER_PARAMS = {"orderId": "A-1", "items": [{"sku": "X", "qty": 2}, {"sku": "Y", "qty": 1}]}


def step(detail: InstanceDetail, name: str) -> StepDetail:
    matches = [s for s in detail.steps if s.name == name]
    assert len(matches) == 1, f"expected one step {name!r}, got {[s.name for s in detail.steps]}"
    return matches[0]


async def test_order_retries_the_inventory_step_then_ships(make_client: MakeClient) -> None:
    client = await make_client({"order": OrderWorkflow})
    instance = await client.workflow("order").create(id="A-1", params=ORDER_PARAMS)

    final = await instance.wait(timeout=20)

    assert final.status == "complete", final.error
    assert final.output["orderId"] == "A-1"
    assert final.output["status"] == "shipped"
    assert final.output["totalCents"] == 2 * 1250 + 499
    assert final.output["reservationId"] == "res-A-1"
    assert final.output["chargeId"].startswith("ch_")
    assert final.output["trackingNumber"].startswith("TRK")
    detail = await instance.describe()
    assert [(s.type, s.name) for s in detail.steps] == [
        ("step", "validate order"),
        ("step", "reserve inventory"),
        ("step", "charge card"),
        ("sleep", "cool down"),
        ("step", "ship"),
    ]
    reserve = step(detail, "reserve inventory")
    assert [a.success for a in reserve.attempts] == [False, True]
    first = reserve.attempts[0]
    assert first.error is not None and first.error.name == "ConnectionError"
    assert first.retry_at is not None and first.end is not None
    # exponential backoff from 200 ms: the first retry is due 200 ms after the failure
    assert abs((first.retry_at - first.end).total_seconds() - 0.2) < 0.01
    assert reserve.attempts[1].start >= first.retry_at
    assert all(len(s.attempts) == 1 for s in detail.steps if s.type == "step" and s.name != "reserve inventory")
    cool_down = step(detail, "cool down")
    assert cool_down.outcome == "completed"
    assert cool_down.end is not None and cool_down.due is not None and cool_down.end >= cool_down.due


async def test_order_with_bad_items_fails_at_once_without_retrying(make_client: MakeClient) -> None:
    client = await make_client({"order": OrderWorkflow})
    instance = await client.workflow("order").create(params={"orderId": "B-2", "items": [{"sku": "NOPE", "qty": 1}]})

    final = await instance.wait(timeout=10)

    assert final.status == "errored"
    assert final.error is not None
    assert final.error.name == "NonRetryableError"
    assert final.error.message == "order B-2: unknown SKU 'NOPE'"
    detail = await instance.describe()
    assert [s.name for s in detail.steps] == ["validate order"]
    assert len(detail.steps[0].attempts) == 1


async def test_approval_approved_by_an_event_provisions(make_client: MakeClient) -> None:
    client = await make_client({"approval": ApprovalWorkflow})
    params = {"requestId": "PR-7", "requester": "ada", "amountCents": 120_000, "timeout": "1 hour"}
    instance = await client.workflow("approval").create(params=params)
    # Send the decision once the wait is armed (the path a human takes), not before.
    await wait_step(instance, "manager approval")

    accepted = await instance.send_event("approval", {"approved": True, "approver": "grace"})
    final = await instance.wait(timeout=10)

    assert accepted.instance_finished is False
    assert final.status == "complete", final.error
    assert final.output == {"requestId": "PR-7", "decision": "approved", "reason": "decided", "by": "grace"}
    detail = await instance.describe()
    assert [s.name for s in detail.steps] == ["record request", "notify approver", "manager approval", "provision"]
    wait = step(detail, "manager approval")
    assert wait.outcome == "received"
    assert wait.output is not None and wait.output["payload"] == {"approved": True, "approver": "grace"}
    assert step(detail, "record request").output["approver"] == "manager@example.com"


async def test_approval_rejected_by_an_event_notifies_the_requester(make_client: MakeClient) -> None:
    client = await make_client({"approval": ApprovalWorkflow})
    instance = await client.workflow("approval").create(params={"requestId": "PR-9", "amountCents": 5_000_000})
    await wait_step(instance, "manager approval")

    await instance.send_event("approval", {"approved": False, "approver": "cfo"})
    final = await instance.wait(timeout=10)

    assert final.output == {"requestId": "PR-9", "decision": "rejected", "reason": "decided", "by": "cfo"}
    detail = await instance.describe()
    assert [s.name for s in detail.steps][-1] == "notify requester"
    assert step(detail, "record request").output["approver"] == "cfo@example.com"
    # the default timeout applies when params give none
    wait = step(detail, "manager approval")
    assert wait.due is not None and round((wait.due - wait.start).total_seconds()) == 24 * 3600


async def test_approval_times_out_then_escalates_and_auto_rejects(make_client: MakeClient) -> None:
    client = await make_client({"approval": ApprovalWorkflow})
    instance = await client.workflow("approval").create(params={"requestId": "PR-8", "timeout": "100 milliseconds"})

    final = await instance.wait(timeout=10)

    # EventTimeoutError was caught by the workflow: the instance completes with a rejection.
    assert final.status == "complete", final.error
    assert final.output == {"requestId": "PR-8", "decision": "rejected", "reason": "timed out", "by": None}
    detail = await instance.describe()
    assert [s.name for s in detail.steps] == ["record request", "notify approver", "manager approval", "escalate"]
    wait = step(detail, "manager approval")
    assert wait.outcome == "timed out"
    assert wait.error is not None and wait.error.name == "EventTimeoutError"
    assert step(detail, "escalate").output["to"] == "finance-leads@example.com"


async def test_fanout_runs_the_document_steps_concurrently_then_aggregates(make_client: MakeClient) -> None:
    client = await make_client({"fanout": FanOutWorkflow})
    documents = ["the quick brown fox", "the lazy dog", "The end. The END!"]
    instance = await client.workflow("fanout").create(params={"documents": documents})

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final.error
    assert final.output == {
        "documents": 3,
        "totalWords": 4 + 3 + 4,
        "distinctWords": 7,
        "top": [["the", 4], ["end", 2], ["brown", 1], ["dog", 1], ["fox", 1]],
    }
    detail = await instance.describe()
    names = [s.name for s in detail.steps]
    assert names == ["count words 1", "count words 2", "count words 3", "aggregate"]
    fan = detail.steps[:3]
    # They overlapped: every document step started before any of them ended.
    assert max(s.attempts[0].start for s in fan) < min(s.attempts[0].end for s in fan if s.attempts[0].end)
    assert fan[2].output == {"the": 2, "end": 2}
    assert detail.steps[3].start >= max(s.end for s in fan if s.end)


async def test_fanout_without_documents_uses_the_sample_corpus(make_client: MakeClient) -> None:
    client = await make_client({"fanout": FanOutWorkflow})
    instance = await client.workflow("fanout").create()

    final = await instance.wait(timeout=10)

    assert final.status == "complete", final.error
    assert final.output["documents"] == len(SAMPLE_DOCUMENTS)
    detail = await instance.describe()
    assert len([s for s in detail.steps if s.name.startswith("count words")]) == len(SAMPLE_DOCUMENTS)
