"""The examples, tested the way a user tests their own workflows: with ``hutch.testing``.

These tests use only the public toolkit — the ``hutch_env`` fixture (its workflows chosen by
overriding ``hutch_workflows``), modifiers, and the waits that skip virtual time — and assert what
a user would: outputs, errors and the steps ``describe()`` shows. They double as documentation
for the "Testing your workflows" section of the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import pytest
from hutch import NonRetryableError, ReceivedEvent, WorkflowEntrypoint
from hutch.testing import TestEnv, TestInstance, UnexpectedStatus

from examples.approval import ApprovalWorkflow
from examples.dag import SalesReportWorkflow
from examples.fanout import FanOutWorkflow
from examples.order import OrderWorkflow
from examples.saga import TripBookingWorkflow

ORDER = {"orderId": "A-1", "items": [{"sku": "X", "qty": 2}, {"sku": "Y", "qty": 1}]}
REQUEST = {"requestId": "PR-7", "requester": "ada", "amountCents": 120_000}


@pytest.fixture
def hutch_workflows() -> Mapping[str, type[WorkflowEntrypoint]]:
    return {
        "approval": ApprovalWorkflow,
        "order": OrderWorkflow,
        "fanout": FanOutWorkflow,
        "sales-report": SalesReportWorkflow,
        "trip": TripBookingWorkflow,
    }


async def step_names(instance: TestInstance) -> list[str]:
    return [s.name for s in (await instance.describe()).steps]


# --------------------------------------------------------------------------- approval
async def test_a_mocked_approval_event_provisions_the_request(hutch_env: TestEnv) -> None:
    hutch_env.modify("PR-7").mock_event("approval", {"approved": True, "approver": "grace"})
    instance = await hutch_env.create("approval", id="PR-7", params=REQUEST)

    assert await instance.output() == {"requestId": "PR-7", "decision": "approved", "reason": "decided", "by": "grace"}
    decision = await instance.wait_for_step_result("manager approval")
    assert isinstance(decision, ReceivedEvent) and decision.payload["approver"] == "grace"
    assert await instance.wait_for_step_result("provision") == {"requestId": "PR-7", "budgetReservedCents": 120_000}
    assert await step_names(instance) == ["record request", "notify approver", "manager approval", "provision"]
    assert hutch_env.clock.skipped < timedelta(hours=1)  # the event came at once: no need to wait out the day


async def test_a_mocked_rejection_notifies_the_requester(hutch_env: TestEnv) -> None:
    hutch_env.modify_all().mock_event("approval", {"approved": False, "approver": "grace"})
    instance = await hutch_env.create("approval", params=REQUEST)

    assert (await instance.output())["decision"] == "rejected"
    assert await instance.wait_for_step_result("notify requester") == {"to": "ada", "message": "PR-7 rejected"}
    assert "provision" not in await step_names(instance)


async def test_nobody_deciding_escalates_after_the_timeout_of_virtual_time(hutch_env: TestEnv) -> None:
    instance = await hutch_env.create("approval", params={**REQUEST, "timeout": "3 days"})

    output = await instance.output()

    assert output == {"requestId": "PR-7", "decision": "rejected", "reason": "timed out", "by": None}
    assert hutch_env.clock.skipped >= timedelta(days=3) - timedelta(minutes=1)
    escalation = await instance.wait_for_step_result("escalate")
    assert escalation["to"] == "finance-leads@example.com"


async def test_a_forced_event_timeout_takes_the_escalation_path_at_once(hutch_env: TestEnv) -> None:
    hutch_env.modify_all().force_event_timeout("manager approval")
    instance = await hutch_env.create("approval", params=REQUEST)

    assert (await instance.output())["reason"] == "timed out"
    assert hutch_env.clock.skipped == timedelta(0)


async def test_a_request_with_a_bad_amount_errors_without_waiting(hutch_env: TestEnv) -> None:
    instance = await hutch_env.create("approval", params={**REQUEST, "amountCents": -5})

    error = await instance.error()

    assert (error.name, error.message) == ("NonRetryableError", "'amountCents' must be a non-negative integer")
    assert await step_names(instance) == ["record request"]


# --------------------------------------------------------------------------- order
async def test_an_order_ships_after_the_inventory_retry_and_the_cool_down(hutch_env: TestEnv) -> None:
    instance = await hutch_env.create("order", id="A-1", params=ORDER)

    output = await instance.output()

    assert output["status"] == "shipped" and output["totalCents"] == 2 * 1250 + 499
    reserve = (await instance.describe()).steps[1]
    assert reserve.name == "reserve inventory"
    assert [a.success for a in reserve.attempts] == [False, True]


async def test_a_declined_card_fails_the_order_before_shipping(hutch_env: TestEnv) -> None:
    hutch_env.modify("A-2").mock_step_error("charge card", NonRetryableError("card declined"))
    instance = await hutch_env.create("order", id="A-2", params={**ORDER, "orderId": "A-2"})

    error = await instance.error()

    assert (error.name, error.message) == ("NonRetryableError", "card declined")
    assert "ship" not in await step_names(instance)
    with pytest.raises(UnexpectedStatus, match="errored"):
        await instance.output()


async def test_a_flaky_payment_provider_is_retried(hutch_env: TestEnv) -> None:
    # charge card allows 2 retries: two failures are absorbed, the third attempt charges.
    hutch_env.modify_all().mock_step_error("charge card", ConnectionError("provider timeout"), times=2)
    instance = await hutch_env.create("order", params=ORDER)

    assert (await instance.output())["chargeId"].startswith("ch_")
    charge = next(s for s in (await instance.describe()).steps if s.name == "charge card")
    assert [a.success for a in charge.attempts] == [False, False, True]


async def test_shipping_is_mocked_and_the_cool_down_skipped(hutch_env: TestEnv) -> None:
    with hutch_env.auto_time_skipping_disabled():
        hutch_env.modify_all().disable_sleeps().mock_step_result("ship", {"trackingNumber": "TRK-TEST"})
        hutch_env.modify_all().mock_step_result("reserve inventory", {"reservationId": "res-mock"})
        instance = await hutch_env.create("order", params=ORDER)

        output = await instance.output()

    assert output["trackingNumber"] == "TRK-TEST" and output["reservationId"] == "res-mock"
    assert hutch_env.clock.skipped == timedelta(0)


async def test_an_inventory_service_that_always_times_out_errors_the_order(hutch_env: TestEnv) -> None:
    hutch_env.modify_all().force_step_timeout("reserve inventory")
    instance = await hutch_env.create("order", params=ORDER)

    error = await instance.error()

    assert (error.name, error.message) == ("StepTimeoutError", "Execution timed out after 10000ms")
    reserve = next(s for s in (await instance.describe()).steps if s.name == "reserve inventory")
    assert len(reserve.attempts) == 4


# --------------------------------------------------------------------------- fan-out, DAG, saga
async def test_fanout_aggregates_a_mocked_document_count(hutch_env: TestEnv) -> None:
    hutch_env.modify_all().mock_step_result("count words 2", {"mocked": 10})
    instance = await hutch_env.create("fanout", params={"documents": ["a b", "ignored", "b c"]})

    output = await instance.output()

    assert output["documents"] == 3
    assert output["totalWords"] == 14  # 2 + 10 + 2
    assert output["top"][0] == ["mocked", 10]


async def test_the_sales_report_dag_with_mocked_orders(hutch_env: TestEnv) -> None:
    orders = [{"id": "o-9", "customer": "c-2", "cents": 100}]
    hutch_env.modify_all().mock_step_result("fetch orders", orders)
    instance = await hutch_env.create("sales-report", params={"region": "eu"})

    output = await instance.output()

    assert output == {"region": "eu", "lines": ["o-9: Grace Hopper 1.00"], "orders": 1, "cents": 100}
    assert (await step_names(instance)).count("fetch orders") == 1


async def test_a_declined_card_rolls_the_trip_back_newest_first(hutch_env: TestEnv) -> None:
    hutch_env.modify("T-1").mock_step_error("charge card", NonRetryableError("card declined"))
    instance = await hutch_env.create("trip", id="T-1", params={"tripId": "T-1"})

    assert await instance.output() == {"tripId": "T-1", "status": "cancelled", "reason": "card declined"}
    names = await step_names(instance)
    assert names[-2:] == ["rollback book hotel", "rollback book flight"]
    assert await instance.wait_for_step_result("rollback book flight") == {
        "cancelled": "FL-T-1",
        "because": "card declined",
    }


async def test_a_failing_undo_is_retried_by_its_own_config(hutch_env: TestEnv) -> None:
    modifier = hutch_env.modify_all()
    modifier.mock_step_error("charge card", NonRetryableError("card declined"))
    modifier.mock_step_error("rollback book hotel", ConnectionError("hotel API down"), times=3)
    instance = await hutch_env.create("trip", params={"tripId": "T-2"})

    assert (await instance.output())["status"] == "cancelled"
    undo = next(s for s in (await instance.describe()).steps if s.name == "rollback book hotel")
    assert [a.success for a in undo.attempts] == [False, False, False, True]
    # its own exponential policy from 1 s: 1 + 2 + 4 s of virtual time between the attempts
    assert undo.attempts[-1].start - undo.attempts[0].start >= timedelta(seconds=7)
