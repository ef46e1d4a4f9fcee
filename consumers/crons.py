"""Cron triggers (``[[triggers.crons]]``): an instance per scheduled time, exactly once across workers.

Every worker runs a :class:`CronTrigger` over the same entries. At each scheduled time every one of
them creates the instance ``cron-<name>-<YYYYMMDDTHHMMSSZ>`` (the fire time in UTC): the id is the
same on every worker, and creating an id that exists fails atomically in Redis, so exactly one
creation succeeds and the others see ``InstanceAlreadyExists`` and move on. Nothing needs to be
elected or locked, and a worker that dies costs nothing as long as another one runs.

Schedules are read in the entry's ``timezone`` (UTC by default), so ``0 9 * * *`` in
``Europe/Paris`` fires at 09:00 local time on both sides of a DST change. Six-field schedules put
seconds first (``*/5 * * * * *``: every five seconds).

Missed fire times (no worker was running, or the process was suspended): only the *latest* missed
time is fired, and only if it is at most ``catchup_window_s`` old (default one hour; 0 disables
catching up); earlier ones are skipped. On start-up this means the fire time just before "now" is
attempted: if a worker created it before, that is a no-op. A brand-new schedule can therefore
fire once at start-up, for its latest scheduled time within the window.

A creation that fails because Redis or the broker is unavailable is retried with backoff until it
succeeds or the entry's next fire time arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hutch.client import Client, WorkflowClient
from hutch.clock import Clock
from hutch.errors import InstanceAlreadyExists, InvalidInputError, WorkflowNotFound
from hutch.serialization import encode_value
from hutch.triggers import CronSpec

log = logging.getLogger("hutch.crons")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def latest_fire_time(spec: CronSpec, now: datetime) -> datetime:
    """The schedule's latest fire time at or before ``now`` (aware, in the schedule's zone)."""
    # croniter's get_prev is strictly before its start (at one-second resolution), hence the nudge.
    fire: datetime = spec.iterator(now + timedelta(microseconds=1)).get_prev(datetime)
    return fire


def next_fire_time(spec: CronSpec, after: datetime) -> datetime:
    """The schedule's first fire time strictly after ``after``."""
    fire: datetime = spec.iterator(after).get_next(datetime)
    return fire


class CronTrigger:
    """Creates an instance of each ``[[triggers.crons]]`` entry at every scheduled time.

    Run one in every worker; they need no coordination (see the module docstring). Use as
    ``async with CronTrigger(...):`` or ``await trigger.run()`` with ``shutdown()`` from elsewhere.

    Args:
        client: creates the instances.
        crons: the entries (``Settings.triggers.crons``).
        clock: the time source (default: the client's clock).
        max_retry_delay_s: the longest pause between attempts of a creation that failed.

    Raises:
        InvalidInputError: an entry's workflow is unknown to the client or its params are not
            serializable; the message names the entry.
    """

    def __init__(
        self,
        client: Client,
        crons: Sequence[CronSpec],
        *,
        clock: Clock | None = None,
        max_retry_delay_s: float = 5.0,
    ) -> None:
        self._clock = clock or client.clock
        self._max_retry_delay_s = max_retry_delay_s
        self._entries: list[tuple[CronSpec, WorkflowClient]] = []
        for spec in crons:
            where = f"[[triggers.crons]] workflow {spec.workflow!r} schedule {spec.schedule!r}"
            try:
                workflow = client.workflow(spec.workflow)
                encode_value(spec.params, what=f"{where}: params", limit=client.limits.max_payload_bytes)
            except (WorkflowNotFound, InvalidInputError) as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
            self._entries.append((spec, workflow))
        self._state = _State.NEW
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        #: How many instances this trigger created (not counting those another worker created first).
        self.created = 0

    async def __aenter__(self) -> CronTrigger:
        self._runner = asyncio.get_running_loop().create_task(self.run(), name="hutch-crons")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def run(self) -> None:
        """Fire every entry on schedule until :meth:`shutdown`."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a CronTrigger cannot be run twice (it is {self._state.value})")
        self._state = _State.RUNNING
        try:
            async with asyncio.TaskGroup() as group:
                for spec, workflow in self._entries:
                    group.create_task(self._run_entry(spec, workflow), name=f"hutch-cron-{spec.id_prefix}")
        finally:
            self._finished.set()

    async def shutdown(self) -> None:
        """Stop firing (a creation in flight is abandoned; another worker or a restart covers it); idempotent."""
        previous, self._state = self._state, _State.STOPPED
        self._stop.set()
        if previous is not _State.RUNNING:
            if self._runner is not None:  # created by __aenter__ but not yet started
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
            return
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        else:
            await self._finished.wait()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now_ms() / 1000, UTC)

    async def _sleep_until(self, moment: datetime) -> bool:
        """Wait until ``moment``; False if stopped first."""
        due_ms = int(moment.timestamp() * 1000)
        while not self._stop.is_set() and self._clock.now_ms() < due_ms:
            await self._clock.sleep_until(due_ms, self._stop)
        return not self._stop.is_set()

    async def _run_entry(self, spec: CronSpec, workflow: WorkflowClient) -> None:
        now = self._now()
        last = latest_fire_time(spec, now)
        if spec.catchup_window_s > 0 and (now - last).total_seconds() <= spec.catchup_window_s:
            await self._fire(spec, workflow, last)
        while not self._stop.is_set():
            upcoming = next_fire_time(spec, last)
            if not await self._sleep_until(upcoming):
                return
            # Normally upcoming itself; after a suspension, the latest of the missed times.
            last = max(upcoming, latest_fire_time(spec, self._now()))
            await self._fire(spec, workflow, last)

    async def _fire(self, spec: CronSpec, workflow: WorkflowClient, fire_time: datetime) -> None:
        instance_id = spec.instance_id(fire_time)
        trigger = {"source": "cron", "schedule": spec.schedule, "scheduled_time": fire_time.astimezone(UTC).isoformat()}
        give_up = next_fire_time(spec, fire_time)
        delay_s = 0.05
        while not self._stop.is_set():
            try:
                await workflow.create(id=instance_id, params=spec.params, trigger=trigger)
            except InstanceAlreadyExists:
                log.debug("cron %s: %s already created (by another worker)", spec.schedule, instance_id)
                return
            except InvalidInputError as exc:
                log.error("cron %s: cannot create %s: %s", spec.schedule, instance_id, exc)
                return
            except Exception as exc:
                if self._now() >= give_up:
                    log.error("cron %s: gave up on %s at its next fire time: %s", spec.schedule, instance_id, exc)
                    return
                log.warning("cron %s: creating %s failed (%s); retrying", spec.schedule, instance_id, exc)
                retry_at = min(self._now() + timedelta(seconds=delay_s), give_up)
                await self._sleep_until(retry_at)
                delay_s = min(delay_s * 2, self._max_retry_delay_s)
                continue
            self.created += 1
            log.info("cron %s: created %s of workflow %s", spec.schedule, instance_id, spec.workflow)
            return
