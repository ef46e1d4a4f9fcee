"""``hutch workflows verify`` and ``hutch instances export``: check new code against live instances.

``hutch workflows verify NAME --code FILE:Class [--sample N]`` reads the recorded history of every
unfinished instance of NAME (or N of them, at random) from the deployment's Redis and replays it
against the new class without running any step (:func:`hutch.testing.verify_histories`). It lists
each instance the new code would fail with NondeterminismError, with the first divergent command.
Exit status: 0 every instance replays, 1 some would diverge (or fail), 2 bad usage or no store.

``hutch instances export NAME ID [--out FILE]`` writes one instance's history as a file that
``hutch.testing.load_history`` reads, to replay in a test.

Both read Redis directly (HUTCH_REDIS_URL / hutch.toml, HUTCH_NAMESPACE), never write it, and
need no gateway or broker.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import click
from hutch.consumers.runtime import connect_store
from hutch.entrypoint import WorkflowEntrypoint
from hutch.errors import HutchError
from hutch.gateway.cli import render
from hutch.gateway.live_histories import (
    instance_history,
    on_deployment,
    read_deployment,
    unfinished_histories,
)
from hutch.gateway.loader import TargetError, load_workflow
from hutch.settings import Settings
from hutch.testing.history_file import InstanceHistory, dumps_history
from hutch.testing.replayer import VerifyReport, verify_histories
from pydantic import BaseModel, ValidationError
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

EXIT_DIVERGED = 1
EXIT_USAGE = 2


class LiveVerification(BaseModel):
    """What ``hutch workflows verify`` found (its ``--json`` output).

    Attributes:
        workflow: the workflow's name.
        namespace: the deployment's namespace.
        unfinished: how many of its instances were unfinished when listed.
        report: the verdict on each instance checked (all unfinished ones, or the sample).
    """

    workflow: str
    namespace: str
    unfinished: int
    report: VerifyReport

    @property
    def ok(self) -> bool:
        """Whether every checked instance replays on the new code."""
        return self.report.ok


async def verify_deployment(
    settings: Settings,
    workflow: str,
    workflow_cls: type[WorkflowEntrypoint],
    *,
    sample: int | None = None,
    rng: random.Random | None = None,
) -> LiveVerification:
    """Replay the unfinished instances of ``workflow`` in the deployment ``settings`` names against ``workflow_cls``.

    Raises:
        StoreUnavailable: Redis cannot be reached.
        DeploymentMismatch: the namespace has no deployment, or is being repartitioned.
    """
    store = await connect_store(settings)
    try:
        deployment = await read_deployment(store)
        unfinished, histories = await unfinished_histories(
            on_deployment(store, deployment), workflow, sample=sample, rng=rng
        )
    finally:
        await store.close()
    report = verify_histories(workflow_cls, histories, limits=deployment.limits)
    return LiveVerification(workflow=workflow, namespace=settings.namespace, unfinished=unfinished, report=report)


async def export_instance(settings: Settings, workflow: str, instance_id: str) -> InstanceHistory | None:
    """One instance's history from the deployment ``settings`` names (None: no such instance)."""
    store = await connect_store(settings)
    try:
        deployment = await read_deployment(store)
        return await instance_history(on_deployment(store, deployment), workflow, instance_id)
    finally:
        await store.close()


# --------------------------------------------------------------------------- commands
class _Failed(click.ClickException):
    """No store, no deployment there, or a bad Redis URL (exit status 2)."""

    exit_code = EXIT_USAGE


class _NotFound(click.ClickException):
    """No such instance (exit status 1)."""

    exit_code = 1


def _settings(redis_url: str | None) -> Settings:
    try:
        settings = Settings(**({"redis_url": redis_url} if redis_url else {}))  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None
    if not settings.redis_url:
        raise click.UsageError(
            "this command reads a deployment's Redis: give --redis-url or HUTCH_REDIS_URL (or redis_url in hutch.toml)"
        )
    return settings


redis_url_option = click.option("--redis-url", envvar="HUTCH_REDIS_URL", help="Redis URL [env HUTCH_REDIS_URL].")


@click.command("verify")
@click.argument("name")
@click.option("--code", "target", required=True, metavar="FILE:Class", help="The new workflow code to check.")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Check N unfinished instances picked at random instead of all of them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@redis_url_option
def verify(name: str, target: str, sample: int | None, as_json: bool, redis_url: str | None) -> None:
    """Replay the unfinished instances of workflow NAME against new code, before deploying it.

    Reads each instance's recorded history from the deployment's Redis (HUTCH_REDIS_URL,
    HUTCH_NAMESPACE) and replays run() of the --code class against it, running no step. Lists
    every instance the new code would fail with NondeterminismError (a renamed, reordered, added
    or removed step before the point it reached) and the first command that differs.

    Exit status: 0 every instance replays, 1 some would diverge or fail, 2 bad usage or no store.

    \b
    Example:
      hutch workflows verify order --code examples/order.py:OrderWorkflow --sample 500
    """
    try:
        cls = load_workflow(target)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--code") from None
    settings = _settings(redis_url)
    try:
        found = asyncio.run(verify_deployment(settings, name, cls, sample=sample))
    except HutchError as exc:  # no store (StoreUnavailable), no deployment (DeploymentMismatch), bad URL
        raise _Failed(str(exc)) from None
    if as_json:
        click.echo(found.model_dump_json(indent=2))
    else:
        Console(highlight=False).print(verification_view(found))
    if not found.ok:
        click.get_current_context().exit(EXIT_DIVERGED)


@click.command("export")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the history to this file (default: standard output).",
)
@redis_url_option
def export(name: str, instance_id: str, out: Path | None, redis_url: str | None) -> None:
    """Write the recorded history of instance ID of workflow NAME as a file for replay tests.

    Read it back in a test with hutch.testing.load_history, and check your code still replays
    it with hutch.testing.replay_history (no step runs). Reads the deployment's Redis
    (HUTCH_REDIS_URL, HUTCH_NAMESPACE).

    \b
    Example:
      hutch instances export order order-42 --out tests/histories/order-42.json
    """
    settings = _settings(redis_url)
    try:
        history = asyncio.run(export_instance(settings, name, instance_id))
    except HutchError as exc:
        raise _Failed(str(exc)) from None
    if history is None:
        raise _NotFound(f"workflow {name!r} has no instance {instance_id!r} in namespace {settings.namespace!r}")
    text = dumps_history(history)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {len(history.history)} history records of {name} {instance_id} to {out}", err=True)


# --------------------------------------------------------------------------- output
def verification_view(found: LiveVerification) -> RenderableType:
    """The human report: a line saying what was checked, then a table of the instances that would break."""
    report = found.report
    if not found.unfinished:
        return Text(f"{found.workflow} has no unfinished instances in namespace {found.namespace!r}: nothing to check")
    checked = len(report.results)
    scope = f"all {checked}" if checked == found.unfinished else f"{checked} of {found.unfinished}"
    head = f"{found.workflow}: {scope} unfinished instances replayed against {report.workflow_class}"
    problems = report.problems
    if not problems:
        return Text.assemble(Text("ok ", style="bold green"), head, ": every one replays")
    summary = Text.assemble(Text("diverged ", style="bold red"), head, f": {len(problems)} would fail on the new code")
    table = Table(show_edge=False, header_style="bold")
    table.add_column("Instance", style="bold", overflow="fold")
    table.add_column("Status")
    table.add_column("Outcome")
    table.add_column("Position", justify="right")
    table.add_column("History has", overflow="fold")
    table.add_column("New code asks for", overflow="fold")
    for r in problems:
        if r.outcome == "diverged":
            asks = r.actual if r.actual is not None else "nothing more"
            table.add_row(
                r.instance_id,
                render.status_text(r.status),
                Text("diverged", style="red"),
                str(r.position),
                r.expected or "",
                asks,
            )
        else:
            table.add_row(
                r.instance_id, render.status_text(r.status), Text("failed", style="red"), "", "", r.message or ""
            )
    return Group(summary, table)
