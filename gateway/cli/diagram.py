"""``hutch workflows diagram NAME|FILE:Class [--format json|mermaid]``: a workflow's diagram, from its code.

The workflow is never run: the diagram comes from static analysis of ``run()`` and the helpers it
calls (:mod:`hutch.diagram`). A target is the name of a ``[[workflows]]`` entry of hutch.toml,
or a class as ``hutch run`` takes it (``examples/order.py:OrderWorkflow``,
``examples.order:OrderWorkflow``).
"""

from __future__ import annotations

import click
from hutch import InvalidInputError, Settings
from hutch.diagram import analyze, to_mermaid
from hutch.gateway.loader import TargetError, load_workflow
from pydantic import ValidationError

_TARGET = "NAME|FILE[:CLASS]"


@click.command()
@click.argument("target", metavar=_TARGET)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "mermaid"]),
    default="json",
    show_default=True,
    help="JSON (the typed node graph) or Mermaid flowchart text.",
)
def diagram(target: str, output_format: str) -> None:
    """Print the diagram of a workflow, derived from its code without running it.

    NAME is a workflow configured in hutch.toml; FILE[:CLASS] or MODULE[:CLASS] names a class
    directly (examples/order.py:OrderWorkflow, examples.order:OrderWorkflow).

    Steps, sleeps, waits for events, loops, branches, try blocks, parallel work
    (asyncio.gather, TaskGroup), DAG dependencies and the helpers run() calls are shown;
    code that runs no step is left out.

    Exit status: 0 printed, 1 the class cannot be analysed, 2 bad target.

    \b
    Example:
      hutch workflows diagram examples/order.py:OrderWorkflow --format mermaid
    """
    cls = _resolve(target)
    try:
        result = analyze(cls)
    except InvalidInputError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.to_json() if output_format == "json" else to_mermaid(result), nl=output_format == "json")


def _resolve(target: str) -> type:
    """The class a target names: a hutch.toml workflow name first, else a file or module target."""
    try:
        specs = Settings().workflows
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings (HUTCH_ environment or hutch.toml): {exc}") from None
    for spec in specs:
        if spec.name == target:
            try:
                return spec.load()
            except InvalidInputError as exc:
                raise click.BadParameter(str(exc), param_hint=_TARGET) from None
    try:
        return load_workflow(target)
    except TargetError as exc:
        names = ", ".join(sorted(spec.name for spec in specs))
        known = f"workflows in hutch.toml: {names}" if names else "no workflows are configured in hutch.toml"
        looks_like_name = ":" not in target and "/" not in target and not target.endswith(".py")
        hint = f"{target!r} is not a configured workflow ({known}), nor a loadable target: {exc}"
        raise click.BadParameter(hint if looks_like_name else str(exc), param_hint=_TARGET) from None
