"""``hutch admin``: operations on a distributed deployment's data; ``hutch admin repartition --to N``.

The procedure is :func:`hutch.gateway.repartition.repartition`; this module shows its progress
bars and summary.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType

import click
from aiormq.exceptions import AMQPError
from hutch.errors import DeploymentMismatch, RepartitionRefused, ServiceUnavailable
from hutch.gateway.cli.options import EXIT_INTERRUPTED, backend_options, load_settings
from hutch.gateway.repartition import RepartitionSummary, repartition
from hutch.history import HISTORY_FORMAT
from hutch.settings import Settings
from hutch.store.redis import HISTORY_FORMAT_FIELD
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


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
@backend_options()
def repartition_command(target: int, force: bool, redis_url: str | None, amqp_url: str | None) -> None:
    """Change the deployment's partition count to N: its Redis data and queued messages move.

    Stop every worker, gateway, hutch dev and client of the deployment first: the command refuses
    while a worker heartbeats or consumes a partition queue, and no process starts until it is
    done. Interrupted, it resumes when run again with the same N. Afterwards start every process
    with partitions = N (HUTCH_PARTITIONS or hutch.toml).

    Exit status: 0 done (or nothing to do), 1 refused or a server unreachable, 2 bad usage.
    """
    settings = load_settings(redis_url, amqp_url)
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


@admin.command("history-format")
@click.option("--upgrade", is_flag=True, help="Record the newest format (else: show the recorded one).")
@backend_options()
def history_format_command(upgrade: bool, redis_url: str | None, amqp_url: str | None) -> None:
    """Show, or upgrade, the format the deployment's processes write histories in.

    Format 2 stores a finished instance's history in about a quarter of format 1's bytes. A
    deployment first recorded by this version writes it from the start; one recorded before keeps
    format 1 (which every version reads) until this command records format 2, to be run once every
    worker, gateway and client of the deployment runs a version that reads it (this one or
    later): processes started afterwards write format 2, and older ones refuse to start.

    Exit status: 0 done, 1 nothing recorded or Redis unreachable, 2 bad usage.
    """
    settings = load_settings(redis_url, amqp_url)
    if not settings.redis_url:
        raise click.UsageError("hutch admin history-format needs HUTCH_REDIS_URL (or --redis-url)")
    try:
        before, after = asyncio.run(_history_format(settings, upgrade))
    except (DeploymentMismatch, ServiceUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except (RedisError, OSError, TimeoutError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    namespace = settings.namespace
    if not upgrade:
        newest = f"this version writes up to format {HISTORY_FORMAT}"
        click.echo(f"namespace {namespace!r} writes histories in format {before} ({newest})")
    elif before == after:
        click.echo(f"namespace {namespace!r} already writes histories in format {after}: nothing to do")
    else:
        click.echo(
            f"namespace {namespace!r}: history format {before} -> {after}; processes started from now on write "
            f"format {after} (restart the running ones to have them write it too)"
        )


async def _history_format(settings: Settings, upgrade: bool) -> tuple[int, int]:
    from hutch.consumers.runtime import open_store

    store = open_store(settings)
    try:
        if upgrade:
            return await store.upgrade_history_format()
        deployment = await store.redis.hget(store.keys.config(), "limits")
        if deployment is None:
            raise DeploymentMismatch(f"namespace {settings.namespace!r} has no deployment recorded in this Redis")
        recorded = int(json.loads(deployment).get(HISTORY_FORMAT_FIELD, 1))
        return recorded, recorded
    finally:
        await store.close()
