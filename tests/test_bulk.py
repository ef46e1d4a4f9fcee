"""Bulk actions by filter as durable jobs (SPEC §12, issue 13 item 2), on both runtimes.

Terminate, pause, resume, delete and restart over a fleet of about 2 000 instances in every stable
status; a restart job killed between acting on a batch and recording it resumes in another runner
and finishes without restarting any instance twice; a cancelled job acts on nothing more.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hutch import BulkJobNotFound, Client, InvalidInputError
from hutch.bulk import BulkJobs, BulkRunner, BulkState
from hutch.search import SearchFilter

from tests.conftest import MakeClient
from tests.fleet import WORKFLOWS, FleetTruth, Release, build_fleet, read_truth
from tests.helpers import eventually


@pytest.fixture
async def fleet(make_client: MakeClient) -> Any:
    client = await make_client(WORKFLOWS)
    members = await build_fleet(client)
    yield client, members
    Release.event.set()


@pytest.mark.also_on_cluster
async def test_bulk_terminate_pause_resume_and_delete_act_on_exactly_what_the_filter_matches(
    fleet: tuple[Client, list[tuple[str, str]]],
) -> None:
    client, members = fleet
    before = await read_truth(client, members)

    job = await client.bulk("terminate", workflow="fleet", status="waiting")
    progress = await job.wait(timeout=60)
    assert (progress.state, progress.total, progress.done, progress.failed) == (BulkState.DONE, 360, 360, 0)

    async def terminated() -> FleetTruth:
        truth = await read_truth(client, members)
        assert truth.counts()["terminated"] == 660 and truth.counts()["waiting"] == 0, truth.counts()
        return truth

    after = await eventually(terminated, timeout=30, interval=0.1)
    changed = {m for m in members if before.rows[m][1] != after.rows[m][1]}
    assert changed == {m for m in members if before.rows[m][1] == "waiting"}

    again = await (await client.bulk("terminate", workflow="fleet", status="terminated")).wait(timeout=60)
    assert (again.total, again.done, again.skipped, again.failed) == (660, 660, 660, 0), "idempotent"

    resumed = await (await client.bulk("resume", SearchFilter(status="paused", id_prefix="wait-0"))).wait(60)
    assert (resumed.total, resumed.done, resumed.failed) == (300, 300, 0)
    await eventually(lambda: _count(client, members, "waiting", 300), timeout=30, interval=0.1)

    queued = await (await client.bulk("terminate", status="queued")).wait(60)
    assert (queued.total, queued.done, queued.skipped, queued.failed) == (199, 199, 0, 0)

    async def queued_terminated() -> bool:
        limited = Counter(row[1] for m, row in (await read_truth(client, members)).rows.items() if m[0] == "limited")
        assert limited == {"terminated": 199, "running": 1}, limited
        return True

    await eventually(queued_terminated, timeout=30, interval=0.1)

    paused_finished = await (await client.bulk("pause", workflow="other")).wait(60)
    assert (paused_finished.total, paused_finished.failed) == (50, 50)
    assert (
        len(paused_finished.failures) == 50 and "finished instance cannot pause" in paused_finished.failures[0].reason
    )

    deleted = await (await client.bulk("delete", status="errored")).wait(60)
    assert (deleted.total, deleted.done, deleted.failed) == (300, 300, 0)
    assert (await client.search(status="errored")).instances == []
    gone = await read_truth(client, members)
    assert not [m for m in members if m[1].startswith("error-") and m in gone.rows]
    assert len(gone.rows) == len(members) - 300


async def _count(client: Client, members: list[tuple[str, str]], status: str, n: int) -> bool:
    counts = (await read_truth(client, members)).counts()
    assert counts[status] == n, counts
    return True


class Killed(BaseException):
    """Stands for the runner's process dying."""


@pytest.mark.parametrize("dies", ["after sending", "before sending"])
async def test_a_restart_job_killed_mid_way_resumes_and_restarts_each_instance_once(
    fleet: tuple[Client, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    """The runner dies in its fourth batch: after sending its restarts and before recording them, or
    after marking them and before sending them (the next runner must send those, and only those)."""
    client, members = fleet
    jobs = BulkJobs(client._store)
    job_id = await jobs.create("restart", SearchFilter(workflow="fleet", status="complete"), client.clock.now_ms())
    first = BulkRunner(client, lease_s=2, batch=64)
    assert await first._claimable() == [job_id]
    recorded = sent = 0
    original, send = BulkRunner._record, client._dispatcher.control_many

    async def record_then_die(self: BulkRunner, job: str, pos: int, outcomes: Any) -> Any:
        nonlocal recorded
        if recorded == 3 and dies == "after sending":  # the fourth batch was acted on, not recorded
            raise Killed()
        recorded += 1
        return await original(self, job, pos, outcomes)

    async def die_before_sending(items: Any, action: Any, **options: Any) -> None:
        nonlocal sent
        if sent == 3 and dies == "before sending":  # the fourth batch's restarts are marked, not sent
            raise Killed()
        sent += 1
        await send(items, action, **options)

    monkeypatch.setattr(BulkRunner, "_record", record_then_die)
    monkeypatch.setattr(client._dispatcher, "control_many", die_before_sending)
    with pytest.raises(Killed):
        await first.advance(job_id)
    monkeypatch.setattr(BulkRunner, "_record", original)
    monkeypatch.setattr(client._dispatcher, "control_many", send)
    half = await jobs.read(job_id)
    assert (half.state, half.total, half.done) == (BulkState.RUNNING, 700, 192)

    second = BulkRunner(client, lease_s=5, batch=64)
    claimed = await eventually(second._claimable, timeout=30, interval=0.05)  # once the dead runner's lease ends
    assert claimed == [job_id]
    await second.advance(job_id)
    done = await jobs.read(job_id)
    assert (done.state, done.total, done.done, done.failed) == (BulkState.DONE, 700, 700, 0)

    async def restarted_once() -> bool:
        store = client._store
        pipe = store.redis.pipeline(transaction=False)
        completes = [m for m in members if m[1].startswith("complete-")]
        for wf, iid in completes:
            pipe.hmget(store.keys.meta(client._partition(wf, iid), wf, iid), ["run", "status"])
        rows = await pipe.execute()
        assert {int(run) for run, _ in rows} == {1}, "every instance restarted exactly once"
        assert {status.decode() for _, status in rows} == {"complete"}
        return True

    await eventually(restarted_once, timeout=60, interval=0.2)


async def test_a_batch_slower_than_the_lease_stays_its_runners(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner renews its lease while it acts: another runner does not take over (and redo) a slow batch."""
    client = await make_client(WORKFLOWS)
    for instance in await client.workflow("other").create_batch([{"id": f"o-{n}"} for n in range(5)]):
        await instance.wait(timeout=30)
    jobs = BulkJobs(client._store)
    job_id = await jobs.create("restart", SearchFilter(workflow="other"), client.clock.now_ms())
    first, second = BulkRunner(client, lease_s=0.3), BulkRunner(client, lease_s=0.3)
    assert await first._claimable() == [job_id]
    send = client._dispatcher.control_many
    others_claims: list[list[str]] = []

    async def slow_send(items: Any, action: Any, **options: Any) -> None:
        for _ in range(8):  # 1.2 s: four leases
            await asyncio.sleep(0.15)
            others_claims.append(await second._claimable())
        await send(items, action, **options)

    monkeypatch.setattr(client._dispatcher, "control_many", slow_send)
    await first.advance(job_id)
    assert others_claims == [[]] * 8, "the job stayed the first runner's"
    done = await jobs.read(job_id)
    assert (done.state, done.total, done.done, done.failed) == (BulkState.DONE, 5, 5, 0)
    for n in range(5):
        await eventually(lambda n=n: _run_is(client, f"o-{n}", 1), timeout=30, interval=0.05)


async def _run_is(client: Client, iid: str, n: int) -> bool:
    run = await client._store.redis.hget(client._store.keys.meta(client._partition("other", iid), "other", iid), "run")
    assert int(run) == n, run
    return True


async def test_a_cancelled_job_acts_on_nothing_more(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    jobs = BulkJobs(client._store)
    job_id = await jobs.create("terminate", SearchFilter(workflow="fleet"), client.clock.now_ms())
    cancelled = await client.bulk_job(job_id).cancel()
    assert cancelled.state == BulkState.CANCELLED
    assert job_id not in await jobs.active(), "no runner picks it up"
    assert (await client.bulk_job(job_id).cancel()).state == BulkState.CANCELLED, "cancelling twice is fine"
    with pytest.raises(BulkJobNotFound, match="bulk job 'nope' not found"):
        await client.bulk_job("nope").progress()
    with pytest.raises(InvalidInputError, match="bulk action 'explode'"):
        await client.bulk("explode", workflow="fleet")  # type: ignore[arg-type]


@pytest.mark.also_on_cluster  # its items and record are written by one script: one hash tag
async def test_a_job_over_given_ids_acts_on_exactly_those(make_client: MakeClient) -> None:
    """The dashboard's "selected instances": no search, the given ids (a gone one is skipped), once each."""
    client = await make_client(WORKFLOWS)
    fleet = client.workflow("fleet")
    ids = [f"sel-{n}" for n in range(5)]
    for iid in ids:
        await fleet.create(id=iid, params={"kind": "wait"})

    async def all_waiting() -> bool:
        return {(await (await fleet.get(i)).status()).status for i in ids} == {"waiting"}

    await eventually(all_waiting, timeout=30, interval=0.1)
    job = await client.bulk("terminate", SearchFilter(workflow="fleet"), ids=[ids[0], ids[2], ids[2], "sel-gone"])
    first = await job.progress()
    assert first.state in (BulkState.RUNNING, BulkState.DONE) and first.total == 3, first  # never "collecting"
    done = await job.wait(timeout=60)
    assert (done.state, done.total, done.done, done.skipped, done.failed) == (BulkState.DONE, 3, 3, 1, 0), done

    async def settled() -> dict[str, str]:
        statuses = {i: str((await (await fleet.get(i)).status()).status) for i in ids}
        assert statuses[ids[0]] == statuses[ids[2]] == "terminated", statuses
        return statuses

    statuses = await eventually(settled, timeout=30, interval=0.1)
    assert {statuses[i] for i in (ids[1], ids[3], ids[4])} == {"waiting"}, statuses
    with pytest.raises(InvalidInputError, match="workflow and no other filter"):
        await client.bulk("terminate", SearchFilter(workflow="fleet", status="waiting"), ids=ids)
    with pytest.raises(InvalidInputError, match="workflow and no other filter"):
        await client.bulk("terminate", ids=ids)
    with pytest.raises(InvalidInputError, match="instance id"):
        await client.bulk("terminate", SearchFilter(workflow="fleet"), ids=["bad id!"])
