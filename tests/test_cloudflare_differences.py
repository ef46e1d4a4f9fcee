"""Edge cases where Hutch and Cloudflare could differ, each decided one way and pinned here.

Matching Cloudflare: a negative ``step.sleep`` completes at once; ``create_batch([])`` is an
error. Differing on purpose (README, "Where Hutch differs from Cloudflare, deliberately"): a
``sleep_until`` a past time completes at once; a repeated id inside one batch is an error; an
event timeout names the wait and the event type. The name of an uncaught ``NonRetryableError``
(kept, where Cloudflare reports ``WorkflowFatalError``) is pinned by
``tests/test_steps.py::test_uncaught_non_retryable_error_keeps_its_name_and_message``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hutch import (
    EventTimeoutError,
    InstanceDetail,
    InstanceNotFound,
    InstanceStatus,
    InvalidDuration,
    InvalidInputError,
    StepDetail,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)

from tests.conftest import MakeClient
from tests.helpers import unique

RunFn = Callable[[WorkflowEvent, WorkflowStep], Awaitable[Any]]

EVICT = 0.01  # seconds: a sleep just long enough to evict the instance and replay it on wake-up


def workflow(run: RunFn) -> type[WorkflowEntrypoint]:
    class EdgeWorkflow(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await run(event, step)

    return EdgeWorkflow


async def run_to_end(make_client: MakeClient, run: RunFn) -> tuple[InstanceStatus, InstanceDetail]:
    client = await make_client({"edge": workflow(run)})
    client.runtime_worker.orchestrator.warm_horizon_ms = 0  # EVICT sleeps must evict, so waking replays
    instance = await client.workflow("edge").create()
    final = await instance.wait(timeout=15)
    return final, await instance.describe()


def sleeps(detail: InstanceDetail) -> dict[str, StepDetail]:
    return {s.name: s for s in detail.steps if s.type == "sleep"}


# --------------------------------------------------------------------------- sleeps


async def test_sleep_until_a_past_time_completes_at_once(make_client: MakeClient) -> None:
    """Cloudflare raises; Hutch wakes at once: a deadline reached late is not an error, live or on replay."""
    runs = 0

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        nonlocal runs
        runs += 1
        await step.sleep_until("past datetime", datetime(2000, 1, 1, tzinfo=UTC))
        await step.sleep_until("past epoch", 946_684_800)
        await step.sleep("evict", EVICT)
        return "woke"

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == "woke"
    assert runs > 1, "replays, which always run later than the live run, passed the past sleeps too"
    for name in ("past datetime", "past epoch"):
        sleep = sleeps(detail)[name]
        assert sleep.outcome == "completed"
        assert sleep.due == sleep.start, "due at once, not at the past time"


async def test_a_negative_sleep_completes_at_once(make_client: MakeClient) -> None:
    """As on Cloudflare. A negative amount that is not a duration at all is still rejected."""
    caught: list[str] = []

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("negative seconds", -5)
        await step.sleep("negative float", -0.5)
        await step.sleep("negative timedelta", timedelta(seconds=-1))
        for bad in (-math.inf, math.nan):
            try:
                await step.sleep(f"sleep {bad}", bad)
            except InvalidDuration as exc:
                caught.append(str(exc))
        await step.sleep("evict", EVICT)
        return "woke"

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    for name in ("negative seconds", "negative float", "negative timedelta"):
        sleep = sleeps(detail)[name]
        assert sleep.outcome == "completed" and sleep.due == sleep.start
    rejected = [
        "duration -inf must be a finite, non-negative amount of time",
        "duration nan must be a finite, non-negative amount of time",
    ]
    assert caught[:2] == rejected and set(caught) == set(rejected)  # the same on every replay
    assert "sleep -inf" not in sleeps(detail) and "sleep nan" not in sleeps(detail)


# --------------------------------------------------------------------------- create_batch


class Noop(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return None


async def test_an_empty_batch_is_an_error(make_client: MakeClient) -> None:
    """As on Cloudflare."""
    client = await make_client({"noop": Noop})

    with pytest.raises(InvalidInputError, match="create_batch needs at least one instance"):
        await client.workflow("noop").create_batch([])


async def test_a_repeated_id_in_one_batch_is_an_error_and_creates_nothing(make_client: MakeClient) -> None:
    """Cloudflare's local engine de-duplicates, silently dropping one item's params; Hutch refuses the batch."""
    client = await make_client({"noop": Noop})
    noop = client.workflow("noop")
    twice, other = unique("twice"), unique("other")

    with pytest.raises(InvalidInputError, match=f"instance id {twice!r} appears twice in one batch"):
        await noop.create_batch([{"id": twice, "params": {"v": 1}}, {"id": other}, {"id": twice, "params": {"v": 2}}])

    for iid in (twice, other):
        with pytest.raises(InstanceNotFound):
            await noop.get(iid)


# --------------------------------------------------------------------------- events


async def test_an_event_timeout_names_the_wait_and_the_event_type(make_client: MakeClient) -> None:
    """Cloudflare raises WorkflowTimeoutError("Execution timed out after <ms>ms"), a step timeout's message."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            await step.wait_for_event("manager approval", "approval", timeout="10 milliseconds")
        except EventTimeoutError as exc:
            return str(exc)
        return None

    final, detail = await run_to_end(make_client, run)

    assert final.status == "complete", final.error
    assert final.output == "wait_for_event 'manager approval'#1 timed out waiting for an event of type 'approval'"
    wait = next(s for s in detail.steps if s.type == "waitForEvent")
    assert wait.error is not None and wait.error.name == "EventTimeoutError"
