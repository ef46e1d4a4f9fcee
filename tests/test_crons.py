"""Cron triggers: exactly one instance per fire time across workers, catch-up, time zones, config errors."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import hutch
import pytest
from hutch import Client, Settings, Status, WorkflowEntrypoint
from hutch.clock import Clock
from hutch.consumers.crons import CronTrigger, latest_fire_time, next_fire_time
from hutch.errors import InvalidInputError
from hutch.triggers import CronSpec
from pydantic import ValidationError

from tests.conftest import MakeClient
from tests.helpers import eventually


class Tick(WorkflowEntrypoint):
    """Returns its params."""

    async def run(self, event, step):
        return await step.do("tick", lambda: dict(event.payload))


ID = re.compile(r"^cron-tick-(\d{8}T\d{6}Z)$")


async def second_client(client: Client, runtime: str) -> tuple[Client, bool]:
    """Another client on the same store, as a second worker has (the same one in embedded mode)."""
    if runtime == "embedded":
        return client, False
    settings: Settings = client.runtime_worker.settings
    return await hutch.connect(settings=settings.model_copy()), True


async def test_two_workers_create_exactly_one_instance_per_fire_time(make_client: MakeClient, runtime: str) -> None:
    client = await make_client({"tick": Tick})
    other, owned = await second_client(client, runtime)
    spec = CronSpec(schedule="* * * * * *", workflow="tick", params={"report": "daily"})
    ticks = client.workflow("tick")
    workers = [CronTrigger(client, [spec]), CronTrigger(other, [spec])]
    try:
        async with workers[0], workers[1]:

            async def three_fires() -> list[str]:
                ids = (await ticks.list(limit=1000)).instances
                assert len(ids) >= 4, ids  # the start-up catch-up, then at least three seconds
                return ids

            await eventually(three_fires, timeout=10)
    finally:
        if owned:
            await other.close()

    ids = (await ticks.list(limit=1000)).instances
    # Every fire time was created once, by one of the two, and the other saw it existed.
    assert sum(w.created for w in workers) == len(ids)
    fire_times = sorted(datetime.strptime(ID.match(i).group(1), "%Y%m%dT%H%M%SZ") for i in ids)  # type: ignore[union-attr]
    assert len(set(fire_times)) == len(ids)
    # No second was skipped between the first and the last fire.
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(fire_times)] == [1.0] * (len(ids) - 1)
    for instance_id in ids:
        instance = await ticks.get(instance_id)
        final = await instance.wait(timeout=10)
        assert final.status is Status.COMPLETE and final.output == {"report": "daily"}
        detail = await instance.describe()
        stamp = ID.match(instance_id).group(1)  # type: ignore[union-attr]
        scheduled = datetime.fromisoformat(detail.trigger["scheduled_time"])
        assert scheduled.strftime("%Y%m%dT%H%M%SZ") == stamp
        assert detail.trigger["source"] == "cron" and detail.trigger["schedule"] == "* * * * * *"


# --------------------------------------------------------------------------- with a controlled clock


class ManualClock(Clock):
    """A clock that moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self._ms = int(start.timestamp() * 1000)
        self._tick = asyncio.Event()
        self.sleepers = 0  # tasks waiting for the clock to move

    async def idle(self) -> None:
        """Wait until something sleeps on this clock (the trigger finished what was due)."""

        async def sleeping() -> bool:
            assert self.sleepers > 0
            return True

        await eventually(sleeping)

    def now_ms(self) -> int:
        return self._ms

    def set(self, moment: datetime) -> None:
        self._ms = int(moment.timestamp() * 1000)
        self._tick.set()
        self._tick = asyncio.Event()

    async def sleep_until(self, due_ms: int, wake: asyncio.Event) -> None:
        while self._ms < due_ms and not wake.is_set():
            waiters = {asyncio.ensure_future(self._tick.wait()), asyncio.ensure_future(wake.wait())}
            self.sleepers += 1
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.sleepers -= 1
                for task in waiters:
                    task.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC)


async def ids_of(client: Client) -> list[str]:
    return sorted((await client.workflow("tick").list(limit=1000)).instances)


async def has(client: Client, expected: list[str]) -> bool:
    got = await ids_of(client)
    assert got == expected, got
    return True


async def test_the_latest_missed_fire_within_the_window_is_caught_up_at_start() -> None:
    clock = ManualClock(at(1, 9, 30))
    spec = CronSpec(schedule="0 9 * * *", workflow="tick", name="daily")
    async with hutch.connect({"tick": Tick}) as client:
        async with CronTrigger(client, [spec], clock=clock):
            await eventually(lambda: has(client, ["cron-daily-20240101T090000Z"]))
            await clock.idle()
            clock.set(at(2, 9))
            await eventually(lambda: has(client, ["cron-daily-20240101T090000Z", "cron-daily-20240102T090000Z"]))


async def test_a_missed_fire_older_than_the_window_is_skipped() -> None:
    clock = ManualClock(at(1, 9, 30))
    spec = CronSpec(schedule="0 9 * * *", workflow="tick", name="daily", catchup_window_s="10 minutes")
    async with hutch.connect({"tick": Tick}) as client:
        async with CronTrigger(client, [spec], clock=clock):
            await clock.idle()
            clock.set(at(2, 9))
            # The start-up decision precedes this fire: had 01-01 been caught up, it would exist now.
            await eventually(lambda: has(client, ["cron-daily-20240102T090000Z"]))


async def test_after_a_long_pause_only_the_latest_missed_fire_runs() -> None:
    clock = ManualClock(at(1, 9, 30))
    spec = CronSpec(schedule="0 9 * * *", workflow="tick", name="daily")
    async with hutch.connect({"tick": Tick}) as client:
        async with CronTrigger(client, [spec], clock=clock):
            await eventually(lambda: has(client, ["cron-daily-20240101T090000Z"]))
            await clock.idle()
            clock.set(at(4, 10))  # the process was suspended for three days
            await eventually(lambda: has(client, ["cron-daily-20240101T090000Z", "cron-daily-20240104T090000Z"]))


async def test_a_schedule_runs_in_its_time_zone() -> None:
    clock = ManualClock(at(1, 7, 30))
    spec = CronSpec(schedule="0 9 * * *", workflow="tick", timezone="Europe/Paris", catchup_window_s=0)
    async with hutch.connect({"tick": Tick}) as client:
        async with CronTrigger(client, [spec], clock=clock):
            await clock.idle()
            clock.set(at(1, 8))  # 09:00 in Paris (UTC+1 in January)
            await eventually(lambda: has(client, ["cron-tick-20240101T080000Z"]))


async def test_a_failed_creation_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = 2
    original = hutch.WorkflowClient.create

    async def flaky(self: hutch.WorkflowClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("Redis is restarting")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(hutch.WorkflowClient, "create", flaky)
    clock = ManualClock(at(1, 9, 30))
    spec = CronSpec(schedule="0 9 * * *", workflow="tick", name="daily")
    async with hutch.connect({"tick": Tick}) as client:
        trigger = CronTrigger(client, [spec], clock=clock)
        async with trigger:
            await eventually(lambda: _retrying(lambda: failures == 1))
            await clock.idle()
            clock.set(at(1, 9, 31))  # the retry waits on the trigger's clock
            await eventually(lambda: _retrying(lambda: failures == 0))
            await clock.idle()
            clock.set(at(1, 9, 32))
            await eventually(lambda: has(client, ["cron-daily-20240101T090000Z"]))
        assert trigger.created == 1


async def _retrying(check: Any) -> bool:
    assert check()
    return True


# --------------------------------------------------------------------------- schedules and configuration


def test_six_field_schedules_put_seconds_first() -> None:
    spec = CronSpec(schedule="*/10 * * * * *", workflow="tick")
    start = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert next_fire_time(spec, start) == datetime(2024, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert latest_fire_time(spec, datetime(2024, 1, 1, 0, 0, 10, tzinfo=UTC)) == start.replace(second=10)
    assert latest_fire_time(spec, datetime(2024, 1, 1, 0, 0, 9, 999_999, tzinfo=UTC)) == start.replace(second=0)


def test_instance_ids_are_deterministic_utc_per_fire_time() -> None:
    spec = CronSpec(schedule="0 9 * * MON", workflow="weekly.report", timezone="America/New_York")
    fire = next_fire_time(spec, datetime(2024, 7, 3, tzinfo=UTC))
    assert fire == datetime(2024, 7, 8, 13, tzinfo=UTC)  # Monday 09:00 EDT
    assert spec.instance_id(fire) == "cron-weekly_report-20240708T130000Z"
    assert spec.instance_id(fire + timedelta(microseconds=500)) == spec.instance_id(fire)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"schedule": "61 * * * *", "workflow": "report"},
            r"\[\[triggers.crons\]\] workflow 'report': schedule '61 \* \* \* \*' is not a valid cron expression",
        ),
        ({"schedule": "0 0 31 2 *", "workflow": "report"}, "schedule '0 0 31 2 \\*' is not a valid cron expression"),
        ({"schedule": "every day", "workflow": "report"}, "schedule 'every day' has 2 fields"),
        ({"schedule": "* * * * *", "workflow": "report", "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not a known"),
        ({"schedule": "* * * * *", "workflow": "report", "catchup_window_s": "soon"}, "duration 'soon'"),
    ],
)
def test_bad_cron_entries_name_the_entry_and_the_value(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        Settings(triggers={"crons": [entry]})  # type: ignore[arg-type]
    assert info.value.errors()[0]["loc"][:3] == ("triggers", "crons", 0)


def test_two_crons_of_one_workflow_need_distinct_names() -> None:
    crons = [{"schedule": "0 9 * * *", "workflow": "r"}, {"schedule": "0 17 * * *", "workflow": "r"}]
    with pytest.raises(ValidationError, match="entries 0 and 1 both create instances of workflow 'r'"):
        Settings(triggers={"crons": crons})  # type: ignore[arg-type]
    named = [{**crons[0], "name": "morning"}, {**crons[1], "name": "evening"}]
    settings = Settings(triggers={"crons": named})  # type: ignore[arg-type]
    assert [c.id_prefix for c in settings.triggers.crons] == ["cron-morning-", "cron-evening-"]


def test_hutch_toml_tables_load(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hutch.toml").write_text(
        """
[[queues.consumers]]
queue = "orders"
workflow = "order"
id = "{body.orderId}"

[[triggers.crons]]
schedule = "0 9 * * MON"
workflow = "weekly-report"

[[webhooks]]
path = "stripe"
secret_env = "STRIPE_WEBHOOK_SECRET"
signature = "stripe"
workflow = "order"
event_type = "stripe-webhook"
instance_id = "{body.data.object.metadata.orderId}"
"""
    )
    monkeypatch.setenv("HUTCH_CONFIG", str(tmp_path / "hutch.toml"))
    settings = Settings()
    assert settings.queues.consumers[0].id == "{body.orderId}"
    assert settings.triggers.crons[0].schedule == "0 9 * * MON"
    assert settings.webhooks[0].action == "send_event" and settings.webhooks[0].signature == "stripe"


async def test_construction_errors_name_the_entry() -> None:
    async with hutch.connect({"tick": Tick}) as client:
        with pytest.raises(InvalidInputError, match=r"workflow 'nope' schedule '\* \* \* \* \*'.*not registered"):
            CronTrigger(client, [CronSpec(schedule="* * * * *", workflow="nope")])
        with pytest.raises(InvalidInputError, match="params is not serializable"):
            CronTrigger(client, [CronSpec(schedule="* * * * *", workflow="tick", params={"when": object()})])
        trigger = CronTrigger(client, [])
        await trigger.run()  # no entries: returns at once
        with pytest.raises(RuntimeError, match="cannot be run twice"):
            await trigger.run()
        await trigger.shutdown()
        await trigger.shutdown()
