"""``hutch admin``: operations on a distributed deployment's data.

``hutch admin repartition --to N`` changes the partition count of a stopped deployment. Every
process must be stopped: it refuses while a worker heartbeats or consumes a partition queue
(``--force`` skips that check), records its progress in the deployment record first — from then
on no worker, gateway or client starts, on either count — then

1. moves the Redis data partition by partition (engine/store/repartition.py),
2. drains the old partition queues into a staging queue, deletes the queues no new partition
   has and declares the new ones (broker/repartition.py),
3. re-routes the staged messages to their instances' new partitions,
4. records the new partition count, which ends the repartition.

Each step is idempotent and the record says which step is under way, so running the command
again after an interruption (a crash, Ctrl-C, a lost server) finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import click
from aiormq.exceptions import AMQPError
from hutch.broker.partitioning import partition_of
from hutch.broker.repartition import QueueMover
from hutch.consumers.runtime import connect_store, open_transport
from hutch.errors import RepartitionRefused, ServiceUnavailable
from hutch.settings import Settings
from hutch.store.repartition import Plan, RedisCounts, RedisRepartition
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

EXIT_INTERRUPTED = 130


class Reporter(Protocol):
    """Where :func:`repartition` reports its progress."""

    def phase(self, key: str, description: str, total: int, completed: int = 0) -> None:
        """A phase starts (``key``: ``redis``, ``drain`` or ``distribute``) with ``total`` units of work."""

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current phase are done."""


class _Quiet:
    def phase(self, key: str, description: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass(slots=True)
class RepartitionSummary:
    """What a repartition did (in this run; a resumed run counts only its own work).

    Attributes:
        source: the partition count before.
        target: the partition count after.
        changed: False when the deployment already had ``target`` partitions (nothing was done).
        resumed: this run finished an interrupted one.
        redis: the instances, keys and set entries moved.
        staged: messages drained from the old partition queues.
        dropped: partition markers (workers' leases) found in the old queues, dropped.
        rerouted: messages published to their new partition queues.
        dead_lettered: staged messages that did not decode (sent to the dead-letter queue).
        queues_deleted: old partition queues deleted (those no new partition has).
        seconds: how long it took.
    """

    source: int
    target: int
    changed: bool = True
    resumed: bool = False
    redis: RedisCounts = field(default_factory=RedisCounts)
    staged: int = 0
    dropped: int = 0
    rerouted: int = 0
    dead_lettered: int = 0
    queues_deleted: int = 0
    seconds: float = 0.0


async def repartition(
    settings: Settings,
    target: int,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    message_batch: int = 256,
    chunk: int = 500,
) -> RepartitionSummary:
    """Change the partition count of the (stopped) deployment ``settings`` describes to ``target``.

    Runs the whole procedure, or the rest of an interrupted one (see the module's docstring).

    Args:
        settings: the deployment's ``redis_url``, ``amqp_url``, ``namespace`` and ``worker_ttl_s``
            (its ``partitions`` is not used: the recorded count is the truth).
        target: the new partition count.
        force: skip the check that no worker is running.
        reporter: told the progress.
        message_batch: messages moved per broker round trip.
        chunk: Redis set entries moved per round trip.

    Raises:
        RepartitionRefused: the deployment runs, is not recorded, or another repartition is under way.
        ServiceUnavailable: Redis or RabbitMQ cannot be reached.
    """
    started = time.monotonic()
    reporter = reporter or _Quiet()
    store = await connect_store(settings)
    try:
        redis_side = RedisRepartition(store.redis, settings.namespace, partition_of, chunk=chunk)
        recorded, running = await redis_side.recorded()
        if running is None and recorded == target:
            return RepartitionSummary(target, target, changed=False)
        async with QueueMover(settings.amqp_url, settings.namespace, batch=message_batch) as queues:
            plan, fresh = await redis_side.begin(target)
            try:
                if fresh and not force:
                    # A worker that passed its deployment check just before the plan was recorded
                    # heartbeats moments later (before it consumes anything): give it the time to.
                    await asyncio.sleep(settings.heartbeat_s)
                await _check_stopped(settings, redis_side, queues, plan, force=force)
            except BaseException:
                if fresh:
                    # Nothing moved yet: the deployment may run on unchanged (Ctrl-C here included).
                    with contextlib.suppress(Exception):
                        await redis_side.abandon(plan)
                raise
            summary = RepartitionSummary(plan.source, plan.target, resumed=not fresh)
            await _carry_out(settings, plan, redis_side, queues, reporter, summary)
    finally:
        await store.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _check_stopped(
    settings: Settings, redis_side: RedisRepartition, queues: QueueMover, plan: Plan, *, force: bool
) -> None:
    """Refuse while a worker is alive: it would go on reading and writing the old layout."""
    ttl = settings.worker_ttl_s
    workers = await redis_side.live_workers(ttl)
    states = await queues.partition_states(range(max(plan.source, plan.target)))
    consumed = sorted(p for p, state in states.items() if state.consumers)
    if force or not (workers or consumed):
        return
    found = []
    if workers:
        found.append(f"worker(s) {', '.join(workers)} heartbeated within the last {ttl:g} s")
    if consumed:
        found.append(f"the queues of partition(s) {', '.join(map(str, consumed))} have consumers")
    raise RepartitionRefused(
        f"the deployment in namespace {settings.namespace!r} is running: {'; '.join(found)}. Stop every worker "
        f"(and every gateway, hutch dev and client) first; a killed worker's heartbeat expires {ttl:g} s after it "
        "died. --force skips this check: only for workers you know are gone"
    )


async def _carry_out(
    settings: Settings,
    plan: Plan,
    redis_side: RedisRepartition,
    queues: QueueMover,
    reporter: Reporter,
    summary: RepartitionSummary,
) -> None:
    """The phases from where the plan stands; the plan is saved after each step that must not be redone."""
    if plan.phase == "redis":
        description = f"Redis: moving partitions ({plan.source} → {plan.target})"
        reporter.phase("redis", description, plan.source, plan.moved)
        summary.redis = await redis_side.move(plan, reporter.advance)
    if plan.phase == "drain":
        states = await queues.partition_states(range(plan.source))
        reporter.phase("drain", "RabbitMQ: staging queued messages", sum(s.messages for s in states.values()))
        summary.staged, summary.dropped = await queues.drain(range(plan.source), reporter.advance)
        summary.queues_deleted = await queues.delete_partition_queues(range(plan.target, plan.source))
        # Declared as the workers declare them (arguments, dead-lettering), by the transport itself.
        transport = open_transport(settings.model_copy(update={"partitions": plan.target}))
        await transport.start()
        await transport.close()
        # From here on the new queues receive messages: draining again would put them behind
        # older ones still staged, so a resumed run must go straight to distributing.
        plan.phase = "distribute"
        await redis_side.save(plan)
    if plan.phase == "distribute":
        reporter.phase("distribute", f"RabbitMQ: re-routing to {plan.target} partitions", await queues.staged())
        target = plan.target
        summary.rerouted, summary.dead_lettered = await queues.distribute(
            lambda workflow, instance_id: partition_of(workflow, instance_id, target), reporter.advance
        )
        await queues.delete_staging()
    await redis_side.finish(plan)


# --------------------------------------------------------------------------- the commands
class _RichReporter:
    """Progress bars on the console, one per phase."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> _RichReporter:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def phase(self, key: str, description: str, total: int, completed: int = 0) -> None:
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


def _summary_table(summary: RepartitionSummary) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    counts = summary.redis
    table.add_row("instances moved", f"{counts.instances} ({counts.stayed} kept their partition)")
    table.add_row("keys moved", str(counts.keys))
    table.add_row("index and timer entries moved", str(counts.entries))
    if counts.unreadable:
        table.add_row("entries naming no instance (left)", str(counts.unreadable))
    table.add_row("queued messages re-routed", str(summary.rerouted))
    if summary.dropped:
        table.add_row("partition markers (leases) dropped", str(summary.dropped))
    if summary.dead_lettered:
        table.add_row("undecodable messages dead-lettered", str(summary.dead_lettered))
    table.add_row("old partition queues deleted", str(summary.queues_deleted))
    return table


@click.group("admin")
def admin() -> None:
    """Operate a distributed deployment (HUTCH_REDIS_URL, HUTCH_AMQP_URL, HUTCH_NAMESPACE or hutch.toml)."""


@admin.command("repartition")
@click.option(
    "--to", "target", type=click.IntRange(1, 1024), required=True, metavar="N", help="The new partition count."
)
@click.option(
    "--force",
    is_flag=True,
    help="Run although workers heartbeat or consume (only for workers you know are gone).",
)
@click.option("--redis-url", envvar="HUTCH_REDIS_URL", help="Redis URL [env HUTCH_REDIS_URL].")
@click.option("--amqp-url", envvar="HUTCH_AMQP_URL", help="RabbitMQ URL [env HUTCH_AMQP_URL].")
def repartition_command(target: int, force: bool, redis_url: str | None, amqp_url: str | None) -> None:
    """Change the deployment's partition count to N: its Redis data and queued messages move.

    Stop every worker, gateway, hutch dev and client of the deployment first: the command refuses
    while a worker heartbeats or consumes a partition queue, and no process starts until it is
    done. Interrupted, it resumes when run again with the same N. Afterwards start every process
    with partitions = N (HUTCH_PARTITIONS or hutch.toml).

    Exit status: 0 done (or nothing to do), 1 refused or a server unreachable, 2 bad usage.
    """
    overrides = {k: v for k, v in {"redis_url": redis_url, "amqp_url": amqp_url}.items() if v}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None
    if not settings.redis_url or not settings.amqp_url:
        raise click.UsageError(
            "hutch admin repartition needs HUTCH_REDIS_URL and HUTCH_AMQP_URL (or --redis-url/--amqp-url)"
        )
    console = Console(highlight=False)
    resume = f"run hutch admin repartition --to {target} again to finish it"
    try:
        with _RichReporter(console) as reporter:
            summary = asyncio.run(repartition(settings, target, force=force, reporter=reporter))
    except (RepartitionRefused, ServiceUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"interrupted; nothing runs until the repartition is done: {resume}")
        click.get_current_context().exit(EXIT_INTERRUPTED)
    except (RedisError, AMQPError, OSError, TimeoutError) as exc:
        # A server lost halfway: the recorded progress is intact, and every step can be redone.
        raise click.ClickException(f"{type(exc).__name__}: {exc}; {resume}") from None
    namespace = settings.namespace
    if not summary.changed:
        console.print(f"namespace {namespace!r} already has {target} partitions: nothing to do")
        return
    resumed = " (finishing an interrupted run)" if summary.resumed else ""
    console.print(
        f"repartitioned namespace {namespace!r} from {summary.source} to {summary.target} partitions "
        f"in {summary.seconds:.1f} s{resumed}"
    )
    console.print(_summary_table(summary))
    console.print(f"start every process with partitions = {target} (HUTCH_PARTITIONS={target} or hutch.toml)")
