"""Events on the embedded runtime: CLOUDFLARE_SEMANTICS.md rules 9-13.

Buffering before the wait is reached (per type, FIFO, one event per wait), wait timeouts,
races of two waits (the loser stays armed unless the workflow cancels it), events sent to
finished instances, and the shape of a received event.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hutch import Client, EventAccepted, EventTimeoutError, Instance, Settings, Status, WorkflowEntrypoint

from tests.conftest import MakeClient
from tests.helpers import eventually, wait_status, wait_step

TIMED_OUT = "timed out"


class Gates:
    """Named asyncio events shared by the test and step bodies, so the test decides when a step ends."""

    def __init__(self) -> None:
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def __getitem__(self, name: str) -> asyncio.Event:
        return self._events[name]


async def open_gate_client(
    make_client: MakeClient, workflows: dict[str, type[WorkflowEntrypoint]], **options: Any
) -> tuple[Client, Gates]:
    """An embedded client whose workflows see a fresh :class:`Gates` as ``self.env.gates``."""
    gates = Gates()
    client = await make_client(workflows, resources={"gates": gates}, **options)
    return client, gates


def step_named(detail: Any, name: str) -> Any:
    matches = [s for s in detail.steps if s.name == name]
    assert len(matches) == 1, f"expected one step named {name!r}, got {[s.name for s in detail.steps]}"
    return matches[0]


# --------------------------------------------------------------------------- rule 9: buffering


class WaitsAfterHeldStep(WorkflowEntrypoint):
    """A step the test holds open, then three waits for the same event type."""

    async def run(self, event, step):
        gates = self.env.gates

        @step.do("hold")
        async def hold():
            gates["hold started"].set()
            await gates["release hold"].wait()

        await hold()
        received: list[Any] = []
        for i in (1, 2, 3):
            try:
                ev = await step.wait_for_event(f"approval {i}", "approval", timeout=0.2)
                received.append(ev.payload)
            except EventTimeoutError:
                received.append(TIMED_OUT)
        return received


async def test_events_sent_before_the_wait_are_buffered_fifo_one_per_wait(make_client: MakeClient) -> None:
    client, gates = await open_gate_client(make_client, {"buffered": WaitsAfterHeldStep})
    instance = await client.workflow("buffered").create()
    await asyncio.wait_for(gates["hold started"].wait(), 10)

    first = await instance.send_event("approval", {"n": 1})
    second = await instance.send_event("approval", {"n": 2})
    assert first == second == EventAccepted(instance_finished=False)
    gates["release hold"].set()

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    # Two buffered events satisfy the first two waits in send order; the third gets nothing.
    assert final.output == [{"n": 1}, {"n": 2}, TIMED_OUT]

    detail = await instance.describe()
    waits = [s for s in detail.steps if s.type == "waitForEvent"]
    assert [(w.name, w.outcome) for w in waits] == [
        ("approval 1", "received"),
        ("approval 2", "received"),
        ("approval 3", "timed out"),
    ]
    # The events were sent before the waits existed: they waited for the waits, not the reverse.
    for wait in waits[:2]:
        assert wait.output["timestamp"] <= wait.start


class WaitsAfterAGo(WorkflowEntrypoint):
    """Waits (evicted from memory) for "go", then takes buffered events of two types."""

    async def run(self, event, step):
        await step.wait_for_event("go", "go", timeout="1 hour")
        taken: list[Any] = []
        for name, event_type in (("item 1", "item"), ("other", "other"), ("item 2", "item"), ("item 3", "item")):
            try:
                ev = await step.wait_for_event(name, event_type, timeout=0.1)
                taken.append([ev.type, ev.payload])
            except EventTimeoutError:
                taken.append([event_type, TIMED_OUT])
        return taken


async def test_events_buffered_while_waiting_for_another_type_are_kept_per_type(make_client: MakeClient) -> None:
    client = await make_client({"per-type": WaitsAfterAGo})
    instance = await client.workflow("per-type").create()
    await wait_status(instance, Status.WAITING)

    # Interleave types: each wait must take the oldest event of its own type.
    await instance.send_event("item", "a")
    await instance.send_event("other", "x")
    await instance.send_event("item", "b")
    await instance.send_event("go")

    final = await instance.wait(timeout=10)
    assert final.output == [["item", "a"], ["other", "x"], ["item", "b"], ["item", TIMED_OUT]]


# --------------------------------------------------------------------------- rule 10: timeouts


class CatchesEventTimeout(WorkflowEntrypoint):
    async def run(self, event, step):
        try:
            await step.wait_for_event("approval", "approval", timeout=0.05)
        except EventTimeoutError as exc:
            caught = {"name": type(exc).__name__, "message": str(exc)}
        else:
            caught = None
        # A timed-out wait consumed nothing and the instance keeps working: a later wait still receives.
        later = await step.wait_for_event("second chance", "approval", timeout="1 hour")
        return {"caught": caught, "later": later.payload}


async def test_wait_timeout_raises_a_catchable_event_timeout_error_and_is_not_retried(
    make_client: MakeClient,
) -> None:
    client = await make_client({"catches": CatchesEventTimeout})
    instance = await client.workflow("catches").create()
    await wait_step(instance, "second chance")
    await instance.send_event("approval", "late")

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert final.output["caught"]["name"] == "EventTimeoutError"
    assert "approval" in final.output["caught"]["message"]
    assert final.output["later"] == "late"

    detail = await instance.describe()
    timed_out = step_named(detail, "approval")  # exactly one: the wait was not retried
    assert timed_out.count == 1
    assert timed_out.outcome == "timed out"
    assert timed_out.success is False
    assert timed_out.error is not None and timed_out.error.name == "EventTimeoutError"
    assert step_named(detail, "second chance").outcome == "received"


class LetsEventTimeoutEscape(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.wait_for_event("approval", "approval", timeout=0.05)
        return "unreachable"


async def test_uncaught_wait_timeout_errors_the_instance(make_client: MakeClient) -> None:
    client = await make_client({"escapes": LetsEventTimeoutEscape})
    instance = await client.workflow("escapes").create()

    final = await instance.wait(timeout=10)
    assert final.status == Status.ERRORED
    assert final.output is None
    assert final.error is not None
    assert final.error.name == "EventTimeoutError"
    assert "approval" in final.error.message


class WaitsWithDefaultTimeout(WorkflowEntrypoint):
    async def run(self, event, step):
        ev = await step.wait_for_event("approval", "approval")
        return ev.payload


async def test_default_wait_timeout_is_24_hours(make_client: MakeClient) -> None:
    client = await make_client({"default-timeout": WaitsWithDefaultTimeout})
    instance = await client.workflow("default-timeout").create()
    detail = await wait_step(instance, "approval")

    wait = step_named(detail, "approval")
    assert wait.due is not None
    # due is stamped when the wait is issued; allow for the clock moving between the two reads.
    assert abs((wait.due - wait.start) - timedelta(hours=24)) < timedelta(seconds=1)
    assert wait.event_type == "approval"

    await instance.send_event("approval", {"ok": True})
    assert (await instance.wait(timeout=10)).output == {"ok": True}


# --------------------------------------------------------------------------- rule 11: races of waits


class RacesTwoWaits(WorkflowEntrypoint):
    """Two waits for the same type raced with asyncio.wait; the loser is kept or cancelled."""

    async def run(self, event, step):
        async def wait(name: str) -> Any:
            return (await step.wait_for_event(name, "go", timeout="1 hour")).payload

        tasks = [asyncio.create_task(wait(name), name=name) for name in ("left", "right")]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        winner, loser = done.pop(), pending.pop()
        if not event.payload.get("cancel_loser"):
            return {"winner": winner.get_name(), "loser": loser.get_name(), "got": [winner.result(), await loser]}
        loser.cancel()
        try:
            await loser
        except asyncio.CancelledError:
            pass
        # With no "go" wait armed, the next "go" is buffered until this later wait takes it.
        await step.wait_for_event("gate", "release", timeout="1 hour")
        after = await step.wait_for_event("after", "go", timeout="1 hour")
        return {"winner": winner.get_name(), "loser": loser.get_name(), "got": [winner.result(), after.payload]}


async def test_losing_wait_of_a_race_stays_armed_and_takes_the_next_event(make_client: MakeClient) -> None:
    client = await make_client({"race": RacesTwoWaits})
    instance = await client.workflow("race").create(params={"cancel_loser": False})
    await wait_step(instance, "right")

    await instance.send_event("go", 1)
    # Exactly one wait took the first event; the instance is parked again on the other one.
    detail = await eventually(lambda: _one_received(instance))
    assert detail.status == Status.WAITING

    await instance.send_event("go", 2)
    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    output = final.output
    assert {output["winner"], output["loser"]} == {"left", "right"}
    assert output["got"] == [1, 2]

    detail = await instance.describe()
    assert step_named(detail, output["winner"]).output["payload"] == 1
    loser = step_named(detail, output["loser"])
    assert loser.outcome == "received"
    assert loser.output["payload"] == 2


async def _one_received(instance: Instance) -> Any:
    detail = await instance.describe()
    outcomes = sorted(str(s.outcome) for s in detail.steps if s.name in ("left", "right"))
    return detail if outcomes == ["None", "received"] and detail.status == Status.WAITING else None


async def test_cancelled_losing_wait_is_disarmed_and_the_next_event_is_buffered(make_client: MakeClient) -> None:
    client = await make_client({"race": RacesTwoWaits})
    instance = await client.workflow("race").create(params={"cancel_loser": True})
    await wait_step(instance, "right")

    await instance.send_event("go", 1)
    detail = await wait_step(instance, "gate")
    cancelled = [s for s in detail.steps if s.name in ("left", "right") and s.outcome == "cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0].output is None
    assert cancelled[0].end is not None

    # No "go" wait is armed now: this event must be buffered, not swallowed by the cancelled wait.
    await instance.send_event("go", 2)
    await instance.send_event("release")

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert final.output["got"] == [1, 2]
    assert final.output["loser"] == cancelled[0].name

    detail = await instance.describe()
    assert step_named(detail, final.output["loser"]).outcome == "cancelled"
    assert step_named(detail, "after").output["payload"] == 2


# --------------------------------------------------------------------------- rule 12: finished instances


class Finishes(WorkflowEntrypoint):
    """Completes, errors or parks on a long sleep (to be terminated), as the params say."""

    async def run(self, event, step):
        how = event.payload["how"]
        if how == "error":
            await step.do("boom", _boom, config={"retries": {"limit": 0}})
        if how == "terminate":
            await step.sleep("forever", "1 day")
        return {"done": how}


def _boom() -> None:
    raise ValueError("boom")


class Probe(WorkflowEntrypoint):
    async def run(self, event, step):
        return (await step.wait_for_event("ping", "ping", timeout="1 hour")).payload


@pytest.mark.parametrize("how", ["complete", "error", "terminate"])
async def test_event_to_a_finished_instance_is_accepted_reported_and_changes_nothing(
    make_client: MakeClient, how: str
) -> None:
    # One partition: the probe's event is handled after the first one, so once the probe
    # finished, the event to the finished instance has been processed too.
    client = await make_client({"finishes": Finishes, "probe": Probe}, settings=Settings(partitions=1))
    instance = await client.workflow("finishes").create(params={"how": how})
    if how == "terminate":
        await wait_step(instance, "forever")
        await instance.terminate()
    before = await instance.wait(timeout=10)
    assert before.status in (Status.COMPLETE, Status.ERRORED, Status.TERMINATED)
    detail_before = await instance.describe()
    probe = await client.workflow("probe").create()
    await wait_status(probe, Status.WAITING)

    accepted = await instance.send_event("approval", {"ok": True})
    assert accepted == EventAccepted(instance_finished=True)

    await probe.send_event("ping", "pong")
    assert (await probe.wait(timeout=10)).output == "pong"
    assert await instance.status() == before
    assert await instance.describe() == detail_before


# --------------------------------------------------------------------------- rule 13: the event's shape


class ReportsEvent(WorkflowEntrypoint):
    async def run(self, event, step):
        ev = await step.wait_for_event("approval", "approval", timeout="1 hour")
        ts = ev.timestamp
        return {
            "type": ev.type,
            "payload": ev.payload,
            "is_datetime": isinstance(ts, datetime),
            "utcoffset_s": None if ts.utcoffset() is None else ts.utcoffset().total_seconds(),
            "ts": ts.timestamp(),
            "mapping": [ev["type"], ev["payload"]],
        }


async def test_received_event_has_type_payload_and_aware_send_timestamp(make_client: MakeClient) -> None:
    client = await make_client({"reports": ReportsEvent})
    instance = await client.workflow("reports").create()
    await wait_step(instance, "approval")

    sent_after = time.time()
    await instance.send_event("approval", {"ok": True, "by": "ada"})
    sent_before = time.time()

    output = (await instance.wait(timeout=10)).output
    assert output["type"] == "approval"
    assert output["payload"] == {"ok": True, "by": "ada"}
    assert output["mapping"] == ["approval", {"ok": True, "by": "ada"}]
    assert output["is_datetime"] is True
    assert output["utcoffset_s"] == 0.0
    # The send time, at millisecond precision.
    assert sent_after - 0.001 <= output["ts"] <= sent_before + 0.001

    wait = step_named(await instance.describe(), "approval")
    assert wait.output == {
        "type": "approval",
        "payload": {"ok": True, "by": "ada"},
        "timestamp": datetime.fromtimestamp(output["ts"], tz=UTC),
    }
