"""``hutch instances list|describe|step|pause|resume|terminate|restart`` (through a gateway's REST API).

A lifecycle change the API accepted but no worker applied within its wait (HTTP 202) exits 3.
``restart --from-step-name/--from-step-count/--from-step-type`` and ``terminate --rollback`` are
wrangler's flags (the API's ``from`` and ``rollback`` fields).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import click
from hutch import Status
from hutch.gateway.cli import render
from hutch.gateway.cli.formatting import json_text
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.options import remote_options
from hutch.gateway.cli.remote import ApiFailed, Remote, resolve_instance
from hutch.gateway.http_client import GatewayClient
from hutch.status import Action
from rich.text import Text

EXIT_NOT_APPLIED = 3
"""A lifecycle change the API accepted but no worker applied within its wait (HTTP 202): not an error,
yet a script must not assume the change happened."""


@click.group(cls=LazyGroup, lazy_subcommands={"export": "hutch.gateway.cli.verify:export"})
def instances() -> None:
    """List, inspect and control instances (through a gateway's REST API)."""


def search_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The search filters, named as wrangler names them where it has them."""
    options = [
        click.option("--status", type=click.Choice([s.value for s in Status]), default=None, help="Only this status."),
        click.option("--date-start", default=None, help="Created at or after (ISO 8601, e.g. 2026-12-01T00:00:00Z)."),
        click.option("--date-end", default=None, help="Created before (ISO 8601)."),
        click.option("--id-prefix", default=None, help="Only ids starting with this."),
        click.option("--version", "code_version", default=None, help="Only instances started on this code version."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filters(status: str | None, date_start: str | None, date_end: str | None, id_prefix: str | None,
             code_version: str | None) -> dict[str, Any]:  # fmt: skip
    return {
        "status": status, "date_start": date_start, "date_end": date_end, "id_prefix": id_prefix,
        "version": code_version,
    }  # fmt: skip


@instances.command("list")
@click.argument("name", required=False)
@search_options
@click.option("--reverse", is_flag=True, help="Oldest first.")
@click.option("--page", type=click.IntRange(1, 100), default=None, help="Page number (with --per-page).")
@click.option("--per-page", type=click.IntRange(1, 100), default=None, help="Instances per page.")
@click.option("--cursor", default=None, help="Start after this cursor (printed with --json as result_info.cursor).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=25, show_default=True, help="At most this many.")
@remote_options
def instances_list(
    name: str | None,
    status: str | None,
    date_start: str | None,
    date_end: str | None,
    id_prefix: str | None,
    code_version: str | None,
    reverse: bool,
    page: int | None,
    per_page: int | None,
    cursor: str | None,
    limit: int,
    remote: Remote,
) -> None:
    """List the instances of workflow NAME (or of every workflow), newest first, filtered by the options.

    Without --page, follows the cursor until --limit instances; with --page, prints that page only.
    """
    query = _filters(status, date_start, date_end, id_prefix, code_version)
    query["order"] = "asc" if reverse else "desc"

    async def request(api: GatewayClient) -> list[dict[str, Any]]:
        if page is not None:
            one = await api.search_instances(
                name, {**query, "page": page, "per_page": per_page or 25, "cursor": cursor}
            )
            return one.instances
        rows: list[dict[str, Any]] = []
        after = cursor
        while len(rows) < limit:
            size = min(per_page or 100, limit - len(rows))
            found = await api.search_instances(name, {**query, "per_page": size, "cursor": after})
            rows += found.instances
            after = found.cursor
            if after is None:
                break
        return rows[:limit]

    result = remote.call(request)
    title = name or "all workflows"
    shown = result if name else [{**row, "id": f"{row['workflow']}:{row['id']}"} for row in result]
    remote.show(result, lambda console: render.instances_table(title, shown))


@instances.group("bulk")
def instances_bulk() -> None:
    """Act on every instance a filter matches, as a durable job on the gateway (with a progress bar)."""


def _bulk_command(action: str, summary: str) -> click.Command:
    @click.argument("name", required=False)
    @search_options
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    @remote_options
    def command(
        name: str | None,
        status: str | None,
        date_start: str | None,
        date_end: str | None,
        id_prefix: str | None,
        code_version: str | None,
        yes: bool,
        remote: Remote,
    ) -> None:
        where = {**_filters(status, date_start, date_end, id_prefix, code_version), "workflow": name}
        where["created_after"] = where.pop("date_start")
        where["created_before"] = where.pop("date_end")
        chosen = ", ".join(f"{k}={v}" for k, v in where.items() if v is not None) or "no filter: every instance"
        if not yes and not remote.as_json:
            click.confirm(f"{action} every instance matching ({chosen})?", abort=True)
        job = remote.call(lambda api: api.start_bulk(action, where))
        final = remote.call(lambda api: follow_bulk(api, job["id"], show=not remote.as_json))
        remote.show(final, lambda console: render_bulk(final))
        if final["failed"]:
            click.get_current_context().exit(EXIT_BULK_FAILURES)

    command.__doc__ = f"{summary}. NAME: only this workflow's; the options narrow the selection."
    return click.command(action)(command)


EXIT_BULK_FAILURES = 4
"""A bulk job finished but could not act on some instances (listed with the progress)."""


async def follow_bulk(api: GatewayClient, job_id: str, *, show: bool) -> dict[str, Any]:
    """Poll a bulk job until it finishes, drawing a progress bar (done / total, failed) when ``show``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task(f"bulk {job_id[:8]}", total=None, extra="")
        while True:
            progress = await api.bulk_progress(job_id)
            handled = progress["done"] + progress["failed"]
            extra = f"{progress['state']}, failed {progress['failed']}"
            bar.update(task, total=progress["total"] or None, completed=handled, extra=extra)
            if progress["state"] in ("done", "cancelled"):
                return progress
            await asyncio.sleep(0.2)


def render_bulk(progress: dict[str, Any]) -> Text:
    """One line per outcome of a finished bulk job, and its first failures."""
    text = Text(
        f"{progress['action']}: {progress['state']}, {progress['done']} of {progress['total']} done "
        f"({progress['skipped']} with nothing to do), {progress['failed']} failed"
    )
    for failure in progress.get("failures") or []:
        text.append(f"\n  {failure['workflow']}:{failure['id']}: {failure['reason']}", style="red")
    return text


for _action, _summary in (
    ("terminate", "Terminate every matching instance"),
    ("restart", "Restart every matching instance from the beginning (once each, even if the job resumes)"),
    ("pause", "Pause every matching instance"),
    ("resume", "Resume every matching paused instance"),
    ("delete", "Delete every matching instance for good (unfinished ones are terminated first)"),
):
    instances_bulk.add_command(_bulk_command(_action, _summary))


@instances.command("describe")
@click.argument("name")
@click.argument("instance_id", metavar="[ID|latest]", default="latest")
@remote_options
def instances_describe(name: str, instance_id: str, remote: Remote) -> None:
    """Show an instance of NAME (default: the latest) and the timeline of its steps, sleeps and waits."""

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.describe_instance(name, await resolve_instance(api, name, instance_id))

    result = remote.call(request)
    remote.show(result, lambda console: render.instance_view(result, console))


@instances.command("step")
@click.argument("name")
@click.argument("instance_id", metavar="ID|latest")
@click.argument("step_name", metavar="STEP")
@click.option("--count", type=click.IntRange(1), default=1, show_default=True, help="Which run of a repeated name.")
@remote_options
def instances_step(name: str, instance_id: str, step_name: str, count: int, remote: Remote) -> None:
    """Print the full output of step STEP of instance ID of workflow NAME, as JSON (uncut).

    With --json, the step's whole record: type, times, attempts, output or error.
    """

    async def request(api: GatewayClient) -> dict[str, Any]:
        return await api.describe_instance(name, await resolve_instance(api, name, instance_id))

    detail = remote.call(request)
    steps = detail.get("steps") or []
    found = next((s for s in steps if s.get("name") == step_name and s.get("count", 1) == count), None)
    if found is None:
        known = ", ".join(sorted({f"{s.get('name')!r}" for s in steps})) or "none"
        raise ApiFailed(
            f"instance {detail.get('id', instance_id)!r} has no step {step_name!r} #{count}; its steps: {known}"
        )
    if remote.as_json:
        click.echo(json_text(found))
    elif found.get("error") is not None and found.get("success") is False:
        click.echo(json_text({"error": found["error"]}))
    else:
        click.echo(json_text(found.get("output")))


def _apply(remote: Remote, name: str, instance_id: str, action: Action, **body: Any) -> None:
    """Send one lifecycle change and print what the API answered (exit 3 when no worker applied it yet)."""

    async def request(api: GatewayClient) -> tuple[str, dict[str, Any]]:
        iid = await resolve_instance(api, name, instance_id)
        return iid, await api.change_status(name, iid, action, **body)

    iid, result = remote.call(request)
    remote.show(result, lambda console: render.status_changed_text(name, iid, action, result))
    if result.get("applied") is False:
        click.get_current_context().exit(EXIT_NOT_APPLIED)


_LATER = "(ID may be 'latest'). Exit status 3: no worker applied it within the gateway's wait (it stays queued)."


def _control_command(action: Action, summary: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @remote_options
    def command(name: str, instance_id: str, remote: Remote) -> None:
        _apply(remote, name, instance_id, action)

    command.__doc__ = f"{summary} {_LATER}"
    return click.command(action)(command)


CONTROL_COMMANDS: tuple[tuple[Action, str], ...] = (
    ("pause", "Pause instance ID of workflow NAME; a running step finishes first"),
    ("resume", "Resume a paused instance ID of workflow NAME"),
)
for _action, _summary in CONTROL_COMMANDS:
    instances.add_command(_control_command(_action, _summary))


@instances.command("terminate", help=f"Terminate instance ID of workflow NAME for good {_LATER}")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option(
    "--rollback",
    is_flag=True,
    help="First run the undos of its completed rollback steps (last first), then end terminated.",
)
@remote_options
def instances_terminate(name: str, instance_id: str, rollback: bool, remote: Remote) -> None:
    """Terminate the instance (after its rollback, with ``--rollback``)."""
    _apply(remote, name, instance_id, "terminate", rollback=rollback)


@instances.command(
    "restart",
    help="Restart instance ID of workflow NAME with the same params: from the beginning, or from a step "
    f"(--from-step-name), keeping the results of the steps before it {_LATER}",
)
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--from-step-name", default=None, help="Run again from the step of this name.")
@click.option(
    "--from-step-count", type=click.IntRange(1), default=None, help="Which step of that name, from 1 [default: 1]."
)
@click.option(
    "--from-step-type",
    type=click.Choice(["do", "sleep", "waitForEvent"]),
    default=None,
    help="Only a step of this type (step.do, step.sleep, step.wait_for_event).",
)
@remote_options
def instances_restart(
    name: str,
    instance_id: str,
    from_step_name: str | None,
    from_step_count: int | None,
    from_step_type: str | None,
    remote: Remote,
) -> None:
    """Restart the instance from the beginning, or from the step that ``--from-step-*`` names."""
    if from_step_name is None:
        if from_step_count is not None or from_step_type is not None:
            raise click.UsageError("--from-step-count and --from-step-type need --from-step-name")
        _apply(remote, name, instance_id, "restart")
        return
    from_step: dict[str, Any] = {"name": from_step_name, "count": from_step_count or 1}
    if from_step_type is not None:
        from_step["type"] = from_step_type
    _apply(remote, name, instance_id, "restart", from_step=from_step)
