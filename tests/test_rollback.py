"""Terminate with rollback (SPEC §12, issue 13 item 3): ``instance.terminate(rollback=True)``.

The saga's registered undos run as durable steps (``rollback <step>``), last completed first, each
receiving a :class:`TerminatedWithRollback`; the workflow's own code gets nothing more; the
instance ends ``terminated``. A crash in the middle resumes with the undos that had not finished.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from hutch import Status, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from hutch.broker import Outgoing, Redrive, partition_of
from hutch.broker.envelopes import encode

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status
from tests.test_replay import crash_cache

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()  # (instance, body) -> executions
UNDONE: dict[str, list[list[Any]]] = collections.defaultdict(list)  # instance -> what each undo received
GATES: dict[str, asyncio.Event] = {}  # instance -> opened by the test to let a gated undo finish
NO_RETRY = {"retries": {"limit": 0}}


class Booking(WorkflowEntrypoint):
    """Three rollback steps, then a wait that only an event ends, then a step that must never run.

    Params: ``gate`` (the step whose undo waits for the test's gate), ``fail`` (steps whose undo fails),
    ``hold`` (a step "hold" that never finishes runs before the wait: the rollback finds it running).
    """

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        options = dict(event.payload or {})

        def declare(name: str) -> Any:
            @step.with_rollback(name, config=NO_RETRY)
            def forward() -> str:
                CALLS[(iid, name)] += 1
                return f"{name}-id"

            @forward.undo(config=NO_RETRY)
            async def undo(error: Exception, result: str) -> str:
                CALLS[(iid, f"undo {name}")] += 1
                UNDONE[iid].append([name, type(error).__name__, result])
                if options.get("gate") == name:
                    await GATES[iid].wait()
                if name in options.get("fail", ()):
                    raise RuntimeError(f"could not undo {name}")
                return f"undid {name}"

            return forward

        for name in ("flight", "hotel", "car"):
            await declare(name)()
        if options.get("hold"):

            @step.do("hold", config={"retries": {"limit": 2, "delay": 0.01, "backoff": "constant"}})
            async def hold() -> None:
                CALLS[(iid, "hold")] += 1
                await asyncio.Event().wait()  # runs until cancelled

            await hold()
        await step.wait_for_event("confirm", "confirm", timeout="1 hour")

        @step.do("charge", config=NO_RETRY)
        def charge() -> str:
            CALLS[(iid, "charge")] += 1
            return "charged"

        return await charge()


def calls(iid: str) -> dict[str, int]:
    return {name: n for (i, name), n in CALLS.items() if i == iid}


async def test_terminate_with_rollback_runs_the_undos_last_first_then_ends_terminated(
    make_client: MakeClient,
) -> None:
    client = await make_client({"booking": Booking})
    iid = unique("rollback")
    instance = await client.workflow("booking").create(id=iid)
    await wait_status(instance, Status.WAITING)

    accepted = await instance.terminate(rollback=True)
    assert accepted.applied
    final = await _finished(instance)
    assert final.status == Status.TERMINATED and final.error is None, final
    assert UNDONE[iid] == [
        ["car", "TerminatedWithRollback", "car-id"],
        ["hotel", "TerminatedWithRollback", "hotel-id"],
        ["flight", "TerminatedWithRollback", "flight-id"],
    ]
    detail = await instance.describe()
    names = [s.name for s in detail.steps]
    assert names == ["flight", "hotel", "car", "confirm", "rollback car", "rollback hotel", "rollback flight"]
    assert [s.output for s in detail.steps[-3:]] == ["undid car", "undid hotel", "undid flight"]
    # The workflow's code got nothing more: an event now finds it finished; charge never ran.
    assert (await instance.send_event("confirm")).instance_finished
    assert "charge" not in calls(iid)


async def test_terminate_without_rollback_runs_no_undo(make_client: MakeClient) -> None:
    client = await make_client({"booking": Booking})
    iid = unique("no-rollback")
    instance = await client.workflow("booking").create(id=iid)
    await wait_status(instance, Status.WAITING)
    await instance.terminate()
    assert (await instance.status()).status == Status.TERMINATED
    assert UNDONE[iid] == []


async def test_failed_undos_still_end_terminated_with_their_errors(make_client: MakeClient) -> None:
    client = await make_client({"booking": Booking})
    iid = unique("rollback-fails")
    instance = await client.workflow("booking").create(id=iid, params={"fail": ["hotel"]})
    await wait_status(instance, Status.WAITING)
    await instance.terminate(rollback=True)
    final = await _finished(instance)
    assert final.status == Status.TERMINATED, final
    assert final.error is not None and "could not undo hotel" in final.error.message
    assert [u[0] for u in UNDONE[iid]] == ["car", "hotel", "flight"]  # every undo ran, though one failed


async def test_a_crash_during_the_rollback_resumes_without_rerunning_finished_undos(
    make_client: MakeClient,
) -> None:
    client = await make_client({"booking": Booking})
    iid = unique("rollback-crash")
    GATES[iid] = asyncio.Event()
    instance = await client.workflow("booking").create(id=iid, params={"gate": "hotel", "hold": True})
    await eventually(lambda: _ran(iid, "hold"))
    await instance.terminate(rollback=True)
    await eventually(lambda: _ran(iid, "undo hotel"))  # car's undo committed; hotel's runs; flight's is not issued

    worker = client.runtime_worker
    crash_cache(client, "booking", iid)  # the next input rebuilds the run from Redis, rollback marker included
    GATES[iid].set()
    partition = partition_of("booking", iid, worker.transport.partitions)  # type: ignore[attr-defined]
    await worker.transport.publish([Outgoing(partition, encode(Redrive(workflow="booking", instance_id=iid)))])  # type: ignore[attr-defined]

    final = await _finished(instance)
    assert final.status == Status.TERMINATED, final
    counts = calls(iid)
    assert (counts["undo car"], counts["undo hotel"], counts["undo flight"]) == (1, 1, 1)
    # The step running when the rollback began was stopped for good: the rebuilt owner did not retry it.
    assert counts["hold"] == 1 and "charge" not in counts
    names = [s.name for s in (await instance.describe()).steps]
    assert names[-3:] == ["rollback car", "rollback hotel", "rollback flight"]


async def test_terminate_with_rollback_of_a_paused_instance(make_client: MakeClient) -> None:
    client = await make_client({"booking": Booking})
    iid = unique("rollback-paused")
    instance = await client.workflow("booking").create(id=iid)
    await wait_status(instance, Status.WAITING)
    await instance.pause()
    await instance.terminate(rollback=True)
    final = await _finished(instance)
    assert final.status == Status.TERMINATED
    assert [u[0] for u in UNDONE[iid]] == ["car", "hotel", "flight"]


async def _ran(iid: str, name: str) -> bool:
    return CALLS[(iid, name)] > 0


async def _finished(instance: Any) -> Any:
    await wait_status(instance, Status.TERMINATED)
    return await instance.status()
