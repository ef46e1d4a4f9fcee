"""What the analyser knows about the names of one function while it walks its body."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from hutch.diagram.model import Node, Undo
from hutch.diagram.source import FunctionNode, Source
from pydantic import JsonValue


@dataclass
class StepDef:
    """A function declared as a step with a decorator (``@step.do``, ``@step.with_rollback``).

    Attributes:
        var: the name the decorated function is bound to.
        name: the step name (the function name when the decorator gives none).
        depends: the variable names listed in ``depends=[...]``.
    """

    var: str
    name: str
    line: int
    config: dict[str, JsonValue] | None = None
    config_expr: str | None = None
    depends: list[str] = field(default_factory=list)
    concurrent: bool | None = None
    rollback: bool = False
    undo: Undo | None = None


@dataclass
class Scope:
    """Names seen in one function: the step object, step functions, local functions, started tasks.

    Lookups walk out to the enclosing function's scope, as closures do.

    Attributes:
        step_names: names bound to the ``WorkflowStep`` object.
        local_defs: functions defined in this function (not decorated as steps).
        step_defs: decorated step functions declared so far.
        started: variable → ids of steps started without ``await`` and stored there.
        deferred: variable → nodes of coroutines created but not started (they run when awaited).
        task_groups: names bound by ``async with asyncio.TaskGroup() as tg``.
        resolved: step functions already run on the current path (a DAG does not run them again).
    """

    source: Source
    parent: Scope | None
    step_names: set[str]
    local_defs: dict[str, FunctionNode]
    step_defs: dict[str, StepDef] = field(default_factory=dict)
    started: dict[str, list[str]] = field(default_factory=dict)
    deferred: dict[str, list[Node]] = field(default_factory=dict)
    task_groups: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)

    def chain(self) -> Iterator[Scope]:
        """This scope, then each enclosing one."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def is_step(self, name: str) -> bool:
        """Whether ``name`` is the step object here."""
        return any(name in s.step_names for s in self.chain())

    def step_def(self, name: str) -> StepDef | None:
        """The step function ``name`` refers to, if any."""
        return next((s.step_defs[name] for s in self.chain() if name in s.step_defs), None)

    def local_def(self, name: str) -> tuple[Scope, FunctionNode] | None:
        """The local function ``name`` refers to and the scope defining it."""
        return next(((s, s.local_defs[name]) for s in self.chain() if name in s.local_defs), None)

    def started_ids(self, name: str) -> list[str]:
        """Ids of the steps started into variable ``name`` (empty when none)."""
        return next((s.started[name] for s in self.chain() if name in s.started), [])

    def take_deferred(self, name: str) -> list[Node]:
        """The coroutines stored in ``name``, removed (a coroutine can be awaited once)."""
        for s in self.chain():
            if name in s.deferred:
                return s.deferred.pop(name)
        return []

    def is_task_group(self, name: str) -> bool:
        """Whether ``name`` is a task group of an enclosing ``async with``."""
        return any(name in s.task_groups for s in self.chain())

    def self_name(self) -> str | None:
        """The instance parameter's name (``self``) when inside a method."""
        return self.source.self_name


def local_defs(node: FunctionNode) -> dict[str, FunctionNode]:
    """The functions defined directly in ``node``'s body (in nested blocks too, not in nested functions)."""
    found: dict[str, FunctionNode] = {}
    stack: list[ast.AST] = list(node.body)
    while stack:
        item = stack.pop()
        if isinstance(item, FunctionNode):
            found.setdefault(item.name, item)
            continue
        if isinstance(item, ast.ClassDef | ast.Lambda):
            continue
        stack.extend(child for child in ast.iter_child_nodes(item) if isinstance(child, ast.stmt | ast.excepthandler))
        if isinstance(item, ast.Match):
            stack.extend(stmt for case in item.cases for stmt in case.body)
    return found
