"""Instance lifecycle on the embedded runtime: CLOUDFLARE_SEMANTICS.md rules 14-19.

Pause/resume (``waitingForPause``, paused time not counting toward sleeps), terminate,
restart, not-found/duplicate/batch rules, the status shape, the event ``run()`` receives,
``Instance.wait`` timing out, and listing by status with a cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import hutch
import pytest
from hutch import (
    BatchTooLarge,
    Client,
    ControlAccepted,
    IllegalTransition,
    Instance,
    InstanceAlreadyExists,
    InstanceNotFound,
    Settings,
    Status,
    WaitTimeout,
    WorkflowEntrypoint,
)
from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import Limits

from tests.conftest import MakeClient, drop_namespace
from tests.helpers import eventually, unique, wait_status, wait_step


class Hooks:
    """Shared by the test and step bodies: named gates the test opens, and per-name call counts."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.calls: Counter[str] = Counter()

    async def opened(self, name: str, timeout: float = 10.0) -> None:
        """Wait (with a deadline) until a step body opened gate ``name``."""
        await asyncio.wait_for(self.gates[name].wait(), timeout)


async def open_client(
    make_client: MakeClient, workflows: dict[str, type[WorkflowEntrypoint]], **options: Any
) -> tuple[Client, Hooks]:
    """An embedded client whose workflows see a fresh :class:`Hooks` as ``self.env.hooks``."""
    hooks = Hooks()
    client = await make_client(workflows, resources={"hooks": hooks}, **options)
    return client, hooks


def names(instance_detail: Any) -> list[str]:
    return [s.name for s in instance_detail.steps]


def step_named(detail: Any, name: str) -> Any:
    matches = [s for s in detail.steps if s.name == name]
    assert len(matches) == 1, f"expected one step named {name!r}, got {names(detail)}"
    return matches[0]


class HeldThenNext(WorkflowEntrypoint):
    """Step "hold" runs until the test opens "release"; then step "next" runs."""

    async def run(self, event, step):
        hooks = self.env.hooks

        @step.do("hold", config={"retries": {"limit": 0}})
        async def hold():
            hooks.calls["hold"] += 1
            hooks.gates["hold started"].set()
            try:
                await hooks.gates["release"].wait()
            except asyncio.CancelledError:
                hooks.gates["hold cancelled"].set()
                raise
            finally:
                hooks.gates["hold ended"].set()
            return "held"

        first = await hold()

        @step.do("next")
        async def after():
            hooks.calls["next"] += 1
            return "next"

        return [first, await after()]


class Sleeps(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.sleep("nap", event.payload.get("seconds", 3600))
        return "rested"


class Noop(WorkflowEntrypoint):
    async def run(self, event, step):
        return event.payload


class WaitsForApproval(WorkflowEntrypoint):
    async def run(self, event, step):
        return (await step.wait_for_event("approval", "approval", timeout="1 hour")).payload


# --------------------------------------------------------------------------- rule 14: pause / resume


async def test_pause_mid_step_waits_for_the_step_then_pauses_and_resume_replays(make_client: MakeClient) -> None:
    client, hooks = await open_client(make_client, {"held": HeldThenNext})
    instance = await client.workflow("held").create()
    await hooks.opened("hold started")

    await instance.pause()
    assert (await instance.status()).status == Status.WAITING_FOR_PAUSE
    hooks.gates["release"].set()
    await wait_status(instance, Status.PAUSED)

    # The step's result is kept, but a paused instance makes no progress: "next" never starts.
    with pytest.raises(WaitTimeout):
        await instance.wait(timeout=0.3)
    detail = await instance.describe()
    assert detail.status == Status.PAUSED
    assert names(detail) == ["hold"]
    assert step_named(detail, "hold").outcome == "succeeded"
    assert hooks.calls["next"] == 0

    await instance.resume()
    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert final.output == ["held", "next"]
    # Resume continued by replay: the finished step was not executed again.
    assert hooks.calls == Counter({"hold": 1, "next": 1})


async def test_paused_time_does_not_count_toward_a_sleep(make_client: MakeClient) -> None:
    client = await make_client({"sleeps": Sleeps})
    instance = await client.workflow("sleeps").create(params={"seconds": 1.0})
    due_before = step_named(await wait_step(instance, "nap"), "nap").due
    assert due_before is not None

    await instance.pause()
    assert (await instance.status()).status == Status.PAUSED
    held_from = time.time()
    # Hold it paused past the sleep's original due time; it must not finish meanwhile.
    with pytest.raises(WaitTimeout):
        await instance.wait(timeout=1.2)
    held_for = time.time() - held_from
    assert datetime.now(UTC) > due_before
    await instance.resume()

    nap = step_named(await instance.describe(), "nap")
    assert nap.due is not None
    # The pause was committed before the hold began and the resume after it ended, so the
    # sleep's due time moved later by at least the hold (millisecond rounding aside).
    assert (nap.due - due_before).total_seconds() >= held_for - 0.005
    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    nap = step_named(await instance.describe(), "nap")
    assert nap.outcome == "completed"
    assert nap.end is not None and nap.end >= nap.due


async def test_pause_and_resume_of_a_finished_instance_are_illegal_transitions(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    instance = await client.workflow("noop").create(id="done-2", params={"x": 1})
    await instance.wait(timeout=10)

    for action in ("pause", "resume"):
        pattern = f"cannot {action} instance 'done-2' since it is in status 'complete'"
        with pytest.raises(IllegalTransition, match=pattern) as info:
            await getattr(instance, action)()
        assert (info.value.action, info.value.status) == (action, "complete")
    assert (await instance.status()).status == Status.COMPLETE


async def test_control_actions_report_that_they_were_applied(make_client: MakeClient) -> None:
    client = await make_client({"sleeps": Sleeps})
    instance = await client.workflow("sleeps").create()
    await wait_step(instance, "nap")
    # Resuming an instance that is not paused has nothing to do: applied, at once.
    assert await instance.resume() == ControlAccepted(applied=True, status=Status.WAITING)

    assert await instance.pause() == ControlAccepted(applied=True, status=Status.PAUSED)
    assert await instance.pause() == ControlAccepted(applied=True, status=Status.PAUSED)  # already paused
    assert await instance.resume() == ControlAccepted(applied=True, status=Status.WAITING)
    restarted = await instance.restart()
    assert restarted.applied and restarted.status in (Status.QUEUED, Status.RUNNING, Status.WAITING)
    assert await instance.terminate() == ControlAccepted(applied=True, status=Status.TERMINATED)


# --------------------------------------------------------------------------- rule 15: terminate


async def test_terminate_mid_step_cancels_the_step_body(make_client: MakeClient) -> None:
    client, hooks = await open_client(make_client, {"held": HeldThenNext})
    instance = await client.workflow("held").create()
    await hooks.opened("hold started")

    await instance.terminate()
    assert (await instance.status()).status == Status.TERMINATED
    await hooks.opened("hold cancelled")
    await hooks.opened("hold ended")

    detail = await instance.describe()
    assert detail.status == Status.TERMINATED
    assert detail.end is not None
    assert detail.output is None
    assert names(detail) == ["hold"]
    assert hooks.calls["next"] == 0


async def test_terminate_a_paused_sleeping_instance(make_client: MakeClient) -> None:
    client = await make_client({"sleeps": Sleeps})
    instance = await client.workflow("sleeps").create()
    await wait_step(instance, "nap")
    await instance.pause()
    assert (await instance.status()).status == Status.PAUSED

    await instance.terminate()
    final = await instance.wait(timeout=1)
    assert final.status == Status.TERMINATED
    assert final.output is None
    # Terminated is final: resume does not bring it back.
    with pytest.raises(IllegalTransition, match="cannot resume"):
        await instance.resume()
    assert (await instance.status()).status == Status.TERMINATED


async def test_terminate_while_waiting_for_pause_cancels_the_step(make_client: MakeClient) -> None:
    client, hooks = await open_client(make_client, {"held": HeldThenNext})
    instance = await client.workflow("held").create()
    await hooks.opened("hold started")
    await instance.pause()
    assert (await instance.status()).status == Status.WAITING_FOR_PAUSE

    await instance.terminate()
    assert (await instance.status()).status == Status.TERMINATED
    await hooks.opened("hold cancelled")


async def test_terminate_a_finished_instance_is_an_illegal_transition(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    instance = await client.workflow("noop").create(id="done-1", params={"x": 1})
    await instance.wait(timeout=10)

    pattern = r"cannot terminate instance 'done-1' since it is in status 'complete'"
    with pytest.raises(IllegalTransition, match=pattern) as info:
        await instance.terminate()
    assert (info.value.instance_id, info.value.action, info.value.status) == ("done-1", "terminate", "complete")
    final = await instance.status()
    assert final.status == Status.COMPLETE
    assert final.output == {"x": 1}


async def test_a_change_no_worker_applies_is_reported_as_not_applied(redis_url: str, amqp_url: str) -> None:
    # A remote client, and no worker: the requests stay queued in RabbitMQ.
    namespace = unique("idle")
    settings = Settings(partitions=2, redis_url=redis_url, amqp_url=amqp_url, namespace=namespace)
    try:
        async with hutch.connect({"sleeps": Sleeps}, settings=settings) as client:
            try:
                client.control_timeout = 0.2
                instance = await client.workflow("sleeps").create(id="idle-1")
                loop = asyncio.get_running_loop()
                started = loop.time()

                assert await instance.pause() == ControlAccepted(applied=False, status=Status.QUEUED)
                assert 0.2 <= loop.time() - started < 5  # the client's wait, not the default 10 s
                assert await instance.terminate(timeout=0.05) == ControlAccepted(applied=False, status=Status.QUEUED)
                assert await instance.restart(timeout=0) == ControlAccepted(applied=False, status=Status.QUEUED)
                # Nothing to do for a resume of an instance that is not paused: applied without a worker.
                assert await instance.resume() == ControlAccepted(applied=True, status=Status.QUEUED)
            finally:
                dispatcher = client._dispatcher
                assert isinstance(dispatcher, BrokerDispatcher) and isinstance(dispatcher.transport, RabbitMQTransport)
                await dispatcher.transport.delete_topology()
    finally:
        await drop_namespace(namespace)


# --------------------------------------------------------------------------- rule 16: restart


class CountsRuns(WorkflowEntrypoint):
    async def run(self, event, step):
        hooks = self.env.hooks

        @step.do("count")
        async def count():
            hooks.calls["count"] += 1
            return hooks.calls["count"]

        n = await count()
        return {"run": n, "ts": event.timestamp.timestamp(), "params": dict(event.payload)}


async def test_restart_a_finished_instance_runs_from_scratch_with_the_original_event(
    make_client: MakeClient,
) -> None:
    client, hooks = await open_client(make_client, {"counts": CountsRuns})
    instance = await client.workflow("counts").create(params={"order": 42})
    first = await instance.wait(timeout=10)
    assert first.output["run"] == 1
    detail_before = await instance.describe()

    await instance.restart()
    second = await instance.wait(timeout=10)
    assert second.status == Status.COMPLETE
    assert second.output == {"run": 2, "ts": first.output["ts"], "params": {"order": 42}}

    detail = await instance.describe()
    assert detail.queued == detail_before.queued
    assert detail.params == {"order": 42}
    # History of the first run is gone: one "count" step, the new run's.
    assert names(detail) == ["count"]
    assert step_named(detail, "count").output == 2
    assert len(step_named(detail, "count").attempts) == 1
    assert hooks.calls["count"] == 2  # once per run: the restart did not reuse the first run's result


class SlowStepIgnoresCancellation(WorkflowEntrypoint):
    """The first run's step keeps going after cancellation and returns late; later runs' steps return promptly."""

    async def run(self, event, step):
        hooks = self.env.hooks

        @step.do("slow", config={"retries": {"limit": 0}})
        async def slow():
            hooks.calls["slow"] += 1
            if hooks.calls["slow"] > 1:
                hooks.gates["fresh started"].set()
                await hooks.gates["release fresh"].wait()
                return "fresh"
            hooks.gates["stale started"].set()
            try:
                await hooks.gates["never"].wait()
            except asyncio.CancelledError:
                # Like a body that does not honour cancellation: it finishes anyway, later.
                await hooks.gates["release stale"].wait()
                hooks.gates["stale returning"].set()
                return "stale"
            return "unreachable"

        return await slow()


async def test_restart_a_running_instance_ignores_the_old_runs_late_result(make_client: MakeClient) -> None:
    client, hooks = await open_client(make_client, {"slow": SlowStepIgnoresCancellation})
    instance = await client.workflow("slow").create()
    await hooks.opened("stale started")

    await instance.restart()
    await hooks.opened("fresh started")
    # The old run's step returns now, while the new run's step of the same name is in flight.
    hooks.gates["release stale"].set()
    await hooks.opened("stale returning")
    hooks.gates["release fresh"].set()

    final = await instance.wait(timeout=10)
    assert final.status == Status.COMPLETE
    assert final.output == "fresh"
    slow = step_named(await instance.describe(), "slow")
    assert slow.output == "fresh"
    assert [(a.attempt, a.success) for a in slow.attempts] == [(1, True)]


async def test_restart_a_waiting_instance(make_client: MakeClient) -> None:
    client = await make_client({"approval": WaitsForApproval})
    instance = await client.workflow("approval").create()
    await wait_step(instance, "approval")

    await instance.restart()
    detail = await wait_step(instance, "approval")
    assert detail.status == Status.WAITING
    await instance.send_event("approval", "yes")
    assert (await instance.wait(timeout=10)).output == "yes"
    assert names(await instance.describe()) == ["approval"]


# --------------------------------------------------------------------------- rule 17: ids


async def test_unknown_id_is_not_found(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    with pytest.raises(InstanceNotFound) as info:
        await client.workflow("noop").get("no-such-instance")
    assert (info.value.workflow, info.value.instance_id) == ("noop", "no-such-instance")
    assert "no-such-instance" in str(info.value)


async def test_duplicate_id_on_create_is_rejected_and_the_original_kept(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    workflow = client.workflow("noop")
    original = await workflow.create(id="order-1", params={"v": 1})
    await original.wait(timeout=10)

    with pytest.raises(InstanceAlreadyExists) as info:
        await workflow.create(id="order-1", params={"v": 2})
    assert info.value.instance_id == "order-1"
    detail = await (await workflow.get("order-1")).describe()
    assert detail.params == {"v": 1}
    assert detail.output == {"v": 1}


async def test_create_batch_skips_existing_ids_and_returns_only_new_ones(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    workflow = client.workflow("noop")
    await (await workflow.create(id="a", params={"v": "old"})).wait(timeout=10)

    created = await workflow.create_batch([{"id": i, "params": {"v": i}} for i in ("a", "b", "c")])
    assert [i.id for i in created] == ["b", "c"]
    for instance in created:
        assert (await instance.wait(timeout=10)).output == {"v": instance.id}
    assert (await (await workflow.get("a")).status()).output == {"v": "old"}


async def test_create_batch_over_100_is_rejected_and_creates_nothing(make_client: MakeClient) -> None:
    client = await make_client({"noop": Noop})
    workflow = client.workflow("noop")
    with pytest.raises(BatchTooLarge, match="101"):
        await workflow.create_batch([{"id": f"i{n}"} for n in range(101)])
    with pytest.raises(InstanceNotFound):
        await workflow.get("i0")
    assert len(await workflow.create_batch([{"id": f"i{n}"} for n in range(100)])) == 100


# --------------------------------------------------------------------------- rule 18: status


async def test_status_shape_through_running_waiting_and_complete(make_client: MakeClient) -> None:
    class StepThenWait(WorkflowEntrypoint):
        async def run(self, event, step):
            hooks = self.env.hooks

            @step.do("work")
            async def work():
                hooks.gates["work started"].set()
                await hooks.gates["release"].wait()
                return 1

            await work()
            return (await step.wait_for_event("approval", "approval", timeout="1 hour")).payload

    client, hooks = await open_client(make_client, {"phases": StepThenWait})
    instance = await client.workflow("phases").create()
    await hooks.opened("work started")

    running = await instance.status()
    assert running.model_dump() == {"status": Status.RUNNING, "output": None, "error": None}

    hooks.gates["release"].set()
    await wait_status(instance, Status.WAITING)
    assert (await instance.status()).model_dump() == {"status": Status.WAITING, "output": None, "error": None}

    await instance.send_event("approval", {"ok": True})
    final = await instance.wait(timeout=10)
    assert final.model_dump() == {"status": Status.COMPLETE, "output": {"ok": True}, "error": None}


async def test_sleeping_instance_reports_waiting(make_client: MakeClient) -> None:
    client = await make_client({"sleeps": Sleeps})
    instance = await client.workflow("sleeps").create()
    await wait_step(instance, "nap")
    assert (await instance.status()).model_dump() == {"status": Status.WAITING, "output": None, "error": None}


async def test_errored_instance_reports_error_and_no_output(make_client: MakeClient) -> None:
    class Fails(WorkflowEntrypoint):
        async def run(self, event, step):
            await step.do("boom", _boom, config={"retries": {"limit": 0}})

    client = await make_client({"fails": Fails})
    final = await (await client.workflow("fails").create()).wait(timeout=10)
    assert final.status == Status.ERRORED
    assert final.output is None
    assert final.error is not None
    assert (final.error.name, final.error.message) == ("ValueError", "boom")


def _boom() -> None:
    raise ValueError("boom")


# --------------------------------------------------------------------------- rule 19: the run() event


class ReportsRunEvent(WorkflowEntrypoint):
    async def run(self, event, step):
        ts = event.timestamp
        return {
            "payload": dict(event.payload),
            "ts": ts.timestamp(),
            "utcoffset_s": None if ts.utcoffset() is None else ts.utcoffset().total_seconds(),
            "instance_id": event.instance_id,
            "workflow_name": event.workflow_name,
            "mapping": {"payload": dict(event["payload"]), "instanceId": event["instanceId"]},
        }


@pytest.mark.parametrize(("params", "payload"), [(None, {}), ({"orderId": 7}, {"orderId": 7})])
async def test_run_receives_the_creation_event(make_client: MakeClient, params: Any, payload: Any) -> None:
    client = await make_client({"reports": ReportsRunEvent})
    created_after = time.time()
    instance = await client.workflow("reports").create(id="evt-1", params=params)
    created_before = time.time()

    output = (await instance.wait(timeout=10)).output
    assert output["payload"] == payload
    assert output["mapping"] == {"payload": payload, "instanceId": "evt-1"}
    assert output["instance_id"] == "evt-1"
    assert output["workflow_name"] == "reports"
    assert output["utcoffset_s"] == 0.0
    assert created_after - 0.001 <= output["ts"] <= created_before + 0.001
    assert datetime.fromtimestamp(output["ts"], tz=UTC) == (await instance.describe()).queued


# --------------------------------------------------------------------------- Instance.wait and listing


async def test_wait_raises_wait_timeout_when_not_finished(make_client: MakeClient) -> None:
    client = await make_client({"approval": WaitsForApproval})
    instance = await client.workflow("approval").create(id="slow-approval")
    await wait_step(instance, "approval")

    with pytest.raises(WaitTimeout, match="slow-approval") as info:
        await instance.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert (await instance.status()).status == Status.WAITING


class MaybeWaits(WorkflowEntrypoint):
    async def run(self, event, step):
        if event.payload.get("wait"):
            await step.wait_for_event("approval", "approval", timeout="1 hour")
        return "done"


async def _page_through(client: Client, workflow: str, status: Status | None, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page = await client.workflow(workflow).list(status=status, cursor=cursor, limit=limit)
        assert len(page.instances) <= limit
        seen.extend(page.instances)
        cursor = page.cursor
        if cursor is None:
            return seen
    raise AssertionError("listing never ended")


async def _newest_first(instances: list[Instance]) -> list[str]:
    created = {i.id: (await i.describe()).queued for i in instances}
    return sorted(created, key=lambda iid: (created[iid], iid), reverse=True)


async def test_list_by_status_newest_first_pages_without_duplicates(make_client: MakeClient) -> None:
    client = await make_client({"mixed": MaybeWaits, "other": Noop}, settings=Settings(partitions=4))
    workflow = client.workflow("mixed")
    done: list[Instance] = []
    parked: list[Instance] = []
    for n in range(11):
        done.append(await workflow.create(id=f"done-{n:02d}-{unique('i')}"))
    await client.workflow("other").create()  # another workflow's instances are never listed
    for instance in done:
        await instance.wait(timeout=10)
    for n in range(3):
        parked.append(await workflow.create(id=f"parked-{n}", params={"wait": True}))
    for instance in parked:
        await wait_status(instance, Status.WAITING)

    complete = await _page_through(client, "mixed", Status.COMPLETE, limit=4)
    assert complete == await _newest_first(done)
    waiting = await _page_through(client, "mixed", Status.WAITING, limit=2)
    assert waiting == await _newest_first(parked)
    everything = await _page_through(client, "mixed", None, limit=5)
    assert everything == await _newest_first(done + parked)
    assert await _page_through(client, "mixed", Status.ERRORED, limit=3) == []


async def test_list_pages_through_instances_created_in_the_same_millisecond(make_client: MakeClient) -> None:
    # One batch shares one creation time, so every row ties on the score; the cursor must still advance.
    client = await make_client({"noop": Noop}, settings=Settings(partitions=1))
    created = await client.workflow("noop").create_batch([{"id": f"b{n:03d}"} for n in range(100)])
    listed = await _page_through(client, "noop", None, limit=7)
    assert len(listed) == len(set(listed))
    assert listed == sorted((i.id for i in created), reverse=True)


async def test_a_finished_instance_leaves_the_listing_when_its_retention_ends(make_client: MakeClient) -> None:
    # Retention 1 s: Redis expires the instance's keys, and the next finish in its partition (there
    # is one partition) prunes its index entries.
    limits = Limits(retention=timedelta(seconds=1))
    client = await make_client({"noop": Noop}, settings=Settings(partitions=1), limits=limits)
    workflow = client.workflow("noop")
    first = await workflow.create(id="first", params={})
    assert (await first.wait(timeout=10)).status == Status.COMPLETE
    assert (await workflow.list()).instances == ["first"]

    async def expired() -> bool:
        try:
            await workflow.get("first")
        except InstanceNotFound:
            return True
        return False

    await eventually(expired, timeout=5, interval=0.05)
    # Not listed from the moment get() says it does not exist, though nothing pruned it yet.
    assert (await workflow.list()).instances == []
    assert (await workflow.list(Status.COMPLETE)).instances == []

    second = await workflow.create(id="second", params={})
    assert (await second.wait(timeout=10)).status == Status.COMPLETE
    store = client._store
    sets = [store.keys.status_index(0, "noop", s) for s in ("complete", "all")] + [store.keys.retention(0)]
    assert [await store.redis.zrange(key, 0, -1) for key in sets] == [[b"noop:second"]] * 3


class TickingClock(Clock):
    """Every reading is a millisecond after the last: the clock always ticks between two reads."""

    def __init__(self) -> None:
        self._ms = super().now_ms()

    def now_ms(self) -> int:
        self._ms += 1
        return self._ms


class SleepThenWait(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.sleep("nap", "1 ms")
        await step.wait_for_event("approval", "approval", timeout="1 hour")


async def test_a_timer_is_due_exactly_its_duration_after_it_was_issued(make_client: MakeClient) -> None:
    # The due time and the command's timestamp are one reading of the clock: a 1 h wait shows as
    # 1 h (describe, `hutch run`), not 59 min 59.999 s when the clock ticked between two readings.
    client = await make_client({"timers": SleepThenWait}, clock=TickingClock())
    instance = await client.workflow("timers").create()
    detail = await wait_step(instance, "approval")
    nap, approval = step_named(detail, "nap"), step_named(detail, "approval")
    assert nap.due - nap.start == timedelta(milliseconds=1)
    assert approval.due - approval.start == timedelta(hours=1)
