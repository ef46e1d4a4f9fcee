"""The instance page's diagram: the workflow's static analysis, each step node with its state here.

The diagram is :func:`hutch.diagram.analyze` of the class the instance runs on (the one its
recorded version names, in this process's worker; else the newest of hutch.toml's
``[[workflows]]`` entry). A node's state comes from the instance's steps whose name the node's
name matches (placeholders such as ``{order_id}`` match anything) and whose kind is the node's.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Literal

from hutch import Client, InstanceDetail, WorkflowEntrypoint
from hutch.diagram import Diagram, analyze, walk
from hutch.errors import HutchError
from hutch.status import StepDetail

log = logging.getLogger("hutch.dashboard")

NodeState = Literal["pending", "running", "waiting", "errored", "complete"]

_STEP_TYPES = {
    "step_do": "step",
    "sleep": "sleep",
    "sleep_until": "sleep",
    "wait_for_event": "waitForEvent",
    "invoke": "invoke",
}
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def workflow_class(client: Client, workflow: str, version: str | None) -> type[WorkflowEntrypoint] | None:
    """The class an instance of ``workflow`` on ``version`` runs (None: this process does not know it)."""
    worker = client.runtime_worker
    registry = getattr(getattr(worker, "orchestrator", None), "workflows", None)
    if isinstance(registry, dict) and workflow in registry:
        resolved: tuple[str | None, type[WorkflowEntrypoint] | None] = registry[workflow].resolve(
            version, started=version is not None
        )
        return resolved[1]
    return _configured(workflow)


@functools.cache
def _configured(workflow: str) -> type[WorkflowEntrypoint] | None:
    from hutch.settings import Settings  # hutch gateway only: it serves a remote client with no classes

    try:
        for spec in Settings().workflows:
            if spec.name == workflow:
                return spec.load()
    except Exception as exc:  # a diagram is a nicety: a hutch.toml that does not load only loses it
        log.warning("no diagram for workflow %r: its class from hutch.toml did not load: %s", workflow, exc)
    return None


_diagrams: dict[type[WorkflowEntrypoint], Diagram | None] = {}  # classes are few and live as long as the process


def diagram_of(cls: type[WorkflowEntrypoint]) -> Diagram | None:
    """The class's diagram, analysed once per process (None when the analysis cannot read it)."""
    if cls not in _diagrams:
        try:
            _diagrams[cls] = analyze(cls)
        except HutchError as exc:
            log.warning("no diagram for %s: %s", cls.__qualname__, exc)
            _diagrams[cls] = None
    return _diagrams[cls]


def node_states(diagram: Diagram, detail: InstanceDetail) -> dict[str, NodeState]:
    """The state of each step node of ``diagram`` in the instance ``detail`` describes, by node id."""
    states: dict[str, NodeState] = {}
    for function in diagram.functions:
        for node in walk(function.body):
            step_type = _STEP_TYPES.get(node.kind)
            name = getattr(node, "name", None)
            if step_type is None or not isinstance(name, str):
                continue
            pattern = _name_pattern(name)
            matched = [s for s in detail.steps if s.type == step_type and pattern.fullmatch(s.name)]
            states[node.id] = _state(matched)
    return states


@functools.lru_cache(maxsize=1024)
def _name_pattern(name: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(name)
    return re.compile(".+?".join(re.escape(part) for part in parts), re.DOTALL)


def _state(steps: list[StepDetail]) -> NodeState:
    if not steps:
        return "pending"
    unfinished = [s for s in steps if s.end is None]
    if any(s.type in ("step", "invoke") for s in unfinished):
        return "running"
    if unfinished:
        return "waiting"
    if any(s.success is False for s in steps):
        return "errored"
    return "complete"
