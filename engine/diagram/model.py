"""The typed nodes of a workflow diagram, as :func:`~engine.diagram.analyze` returns them.

A :class:`Diagram` is a list of :class:`Function` graphs: ``run()`` first, then every helper
method or local function that contains steps, in the order they are first called. Each body is
a list of nodes in execution order; containers (loops, branches, parallel groups, ``try``)
nest their own lists. Every node has an ``id`` (``n1``, ``n2``, ... in document order) and the
source ``line`` it comes from; for a step, the line where its name is written (the ``step.do``
call, or the decorator of a step function).

Values that are literals in the code (step configs, durations, event types) are kept as JSON;
anything else is kept as source text in the matching ``*_expr`` field. Step names keep their
placeholders: ``f"charge {order_id}"`` becomes ``"charge {order_id}"``.

Concurrency without ``asyncio.gather``: a step started and not awaited on the spot
(``t = step.do(...)``, ``asyncio.create_task(...)``) appears where it starts with
``awaited: false``; the :class:`Resolve` node where it is awaited lists its id in ``resolves``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

DIAGRAM_VERSION = 1


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    id: str = ""
    line: int


class Undo(BaseModel):
    """The compensation registered with ``@fn.undo`` on a ``@step.with_rollback`` step.

    Attributes:
        function: the undo function's name.
        config: its own config when given as a literal (else it runs with the step's config).
        config_expr: the config's source text when it is not a literal.
    """

    model_config = ConfigDict(extra="forbid")

    function: str
    config: dict[str, JsonValue] | None = None
    config_expr: str | None = None


class StepDo(_Node):
    """A ``step.do`` (call or decorator form) or ``@step.with_rollback`` step being run.

    Attributes:
        name: the step name as written; f-string placeholders kept (``"count {i + 1}"``), a
            non-literal name shown as ``"{expr}"``.
        function: the decorated function, for the decorator forms.
        config: the config when it is a literal dict or ``StepConfig(...)`` with literal arguments.
        config_expr: the config's source text when it is not a literal.
        depends: names of the steps a DAG step depends on (``depends=[a, b]``).
        concurrent: for DAG steps, whether the dependencies resolve concurrently.
        undo: the compensation of a ``with_rollback`` step.
        awaited: false when the step is started here and awaited later (see :class:`Resolve`).
    """

    kind: Literal["step_do"] = "step_do"
    name: str
    function: str | None = None
    config: dict[str, JsonValue] | None = None
    config_expr: str | None = None
    depends: list[str] | None = None
    concurrent: bool | None = None
    rollback: bool | None = None
    undo: Undo | None = None
    awaited: bool = True


class Sleep(_Node):
    """``step.sleep(name, duration)``; ``duration`` is the literal, else ``duration_expr`` the source."""

    kind: Literal["sleep"] = "sleep"
    name: str
    duration: str | int | float | None = None
    duration_expr: str | None = None
    awaited: bool = True


class SleepUntil(_Node):
    """``step.sleep_until(name, when)``; ``until`` is the source text of ``when``."""

    kind: Literal["sleep_until"] = "sleep_until"
    name: str
    until: str
    awaited: bool = True


class WaitForEvent(_Node):
    """``step.wait_for_event(name, event_type, timeout=...)``; ``timeout`` None means the default."""

    kind: Literal["wait_for_event"] = "wait_for_event"
    name: str
    event_type: str | None = None
    event_type_expr: str | None = None
    timeout: str | int | float | None = None
    timeout_expr: str | None = None
    awaited: bool = True


class Invoke(_Node):
    """``step.invoke(name, workflow, params, id=..., config=...)``: a child workflow run for its output.

    Attributes:
        name: the invoke's name as written (placeholders kept, as for steps).
        workflow: the child's workflow name when it is a literal.
        workflow_expr: its source text otherwise (``self.env.BILLING``, a binding).
        child_id: the child's instance id when given as a literal (else derived, or see ``child_id_expr``).
        child_id_expr: its source text when given and not a literal.
        config: the invoke's config (``parent_close``) when it is a literal.
        config_expr: the config's source text when it is not a literal.
        awaited: false when the invoke is started here and awaited later (see :class:`Resolve`).
    """

    kind: Literal["invoke"] = "invoke"
    name: str
    workflow: str | None = None
    workflow_expr: str | None = None
    child_id: str | None = None
    child_id_expr: str | None = None
    config: dict[str, JsonValue] | None = None
    config_expr: str | None = None
    awaited: bool = True


class RollbackAll(_Node):
    """``step.rollback_all(error, continue_on_error=...)``.

    Attributes:
        error: source text of the error passed to the undos.
        continue_on_error: the literal flag (None when not literal; see ``continue_on_error_expr``).
        undos: the undo steps that may run, last first: ``rollback <name>`` for each
            ``with_rollback`` step with an undo that ran earlier in this function. Which of them
            actually run depends on which steps completed.
    """

    kind: Literal["rollback_all"] = "rollback_all"
    error: str
    continue_on_error: bool | None = None
    continue_on_error_expr: str | None = None
    undos: list[str] = []
    awaited: bool = True


class Dag(_Node):
    """Awaiting a DAG step: its dependencies not yet resolved on this path, then the step itself.

    ``steps`` is in a valid run order, the awaited step last; each step's ``depends`` gives the edges.
    """

    kind: Literal["dag"] = "dag"
    steps: list[StepDo]
    awaited: bool = True


class Loop(_Node):
    """A ``for``, ``async for`` or ``while`` loop, or a comprehension, whose body runs steps.

    Attributes:
        loop: which construct.
        header: ``"for doc in documents"``, ``"while not done"``, with comprehension filters.
        concurrent: true when every iteration starts concurrent work (a generator inside
            ``asyncio.gather(*...)``, ``tg.create_task`` in a loop).
        body: what one iteration runs.
        orelse: the ``else:`` block of the loop, when it runs steps.
    """

    kind: Literal["loop"] = "loop"
    loop: Literal["for", "async for", "while", "comprehension", "async comprehension"]
    header: str
    concurrent: bool | None = None
    body: list[Node]
    orelse: list[Node] | None = None


class Parallel(_Node):
    """Concurrent branches: ``asyncio.gather``/``wait``/``as_completed`` arguments or a ``TaskGroup`` body.

    Each branch is one argument (or one statement of the task group's body); a branch holding a
    concurrent :class:`Loop` fans out one branch per iteration.
    """

    kind: Literal["parallel"] = "parallel"
    mode: Literal["gather", "wait", "as_completed", "task_group"]
    branches: list[list[Node]]
    awaited: bool = True


class Handler(BaseModel):
    """One ``except`` clause: the exception types as written (empty for a bare ``except:``)."""

    model_config = ConfigDict(extra="forbid")

    types: list[str]
    name: str | None = None
    line: int
    body: list[Node]


class Try(_Node):
    """``try``/``except``/``else``/``finally`` (``star`` for ``except*``).

    Handlers are always listed, so the diagram shows which errors are caught, with their
    bodies trimmed to what runs steps.
    """

    kind: Literal["try"] = "try"
    star: bool | None = None
    body: list[Node]
    handlers: list[Handler]
    orelse: list[Node] | None = None
    finalbody: list[Node] | None = None


class IfBranch(BaseModel):
    """One arm of an ``if``/``elif``/``else`` chain; ``condition`` None is the ``else``."""

    model_config = ConfigDict(extra="forbid")

    condition: str | None = None
    line: int
    body: list[Node]


class If(_Node):
    """An ``if``/``elif``/``else`` chain (or a conditional expression) where some arm runs steps.

    Arms after the last one that runs steps are dropped (taking them or no arm is the same
    path); an empty arm before it is kept, so the conditions stay truthful.
    """

    kind: Literal["if"] = "if"
    branches: list[IfBranch]


class MatchCase(BaseModel):
    """One ``case`` of a ``match``: the pattern and guard as written."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    guard: str | None = None
    line: int
    body: list[Node]


class Match(_Node):
    """A ``match`` statement where some case runs steps (cases trimmed like :class:`If` arms)."""

    kind: Literal["match"] = "match"
    subject: str
    cases: list[MatchCase]


class Call(_Node):
    """A call into a helper method or function that runs steps; ``function`` names its :class:`Function`."""

    kind: Literal["call"] = "call"
    function: str
    expr: str
    awaited: bool = True


class Resolve(_Node):
    """Where steps started earlier without ``await`` are awaited: ``resolves`` lists their ids."""

    kind: Literal["resolve"] = "resolve"
    expr: str
    resolves: list[str]


class Return(_Node):
    """A ``return`` (the source of its value, shortened)."""

    kind: Literal["return"] = "return"
    value: str | None = None


class Raise(_Node):
    """A ``raise`` (the source of the exception, shortened)."""

    kind: Literal["raise"] = "raise"
    exception: str | None = None


class Break(_Node):
    """A ``break`` out of the enclosing loop."""

    kind: Literal["break"] = "break"


class Continue(_Node):
    """A ``continue`` of the enclosing loop."""

    kind: Literal["continue"] = "continue"


Node = Annotated[
    StepDo
    | Sleep
    | SleepUntil
    | WaitForEvent
    | Invoke
    | RollbackAll
    | Dag
    | Loop
    | Parallel
    | Try
    | If
    | Match
    | Call
    | Resolve
    | Return
    | Raise
    | Break
    | Continue,
    Field(discriminator="kind"),
]
"""Any diagram node; ``kind`` tells which."""

STEP_KINDS = frozenset({"step_do", "sleep", "sleep_until", "wait_for_event", "invoke", "rollback_all", "dag"})
"""Kinds that are durable steps themselves."""

TERMINAL_KINDS = frozenset({"return", "raise", "break", "continue"})
"""Kinds that leave the current block."""


class Function(BaseModel):
    """A function definition in the diagram: ``run()`` or a helper that runs steps.

    Attributes:
        name: the qualified name (``OrderWorkflow.run``, ``OrderWorkflow.run.process`` for a
            local function); :class:`Call` nodes refer to it.
        module: the module that defines it.
        params: its parameter names.
        line: the line of its ``def``.
        is_async: whether it is an ``async def``.
        body: its nodes in execution order.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["function"] = "function"
    id: str = ""
    name: str
    module: str
    params: list[str]
    line: int
    is_async: bool
    body: list[Node]


class Diagram(BaseModel):
    """The diagram of one workflow class.

    Attributes:
        version: the format version of this JSON.
        workflow: ``module:Class`` of the analysed class.
        functions: ``run()`` first, then each helper that runs steps, in order of first call.
    """

    model_config = ConfigDict(extra="forbid")

    version: int = DIAGRAM_VERSION
    workflow: str
    functions: list[Function]

    def to_json(self, indent: int | None = 2) -> str:
        """The diagram as JSON, leaving out fields that are not set."""
        return self.model_dump_json(indent=indent, exclude_none=True)


def blocks(node: Node) -> Iterator[list[Node]]:
    """The node lists nested directly in ``node`` (bodies, arms, branches), in document order."""
    nested: list[list[Node] | None]
    if isinstance(node, Loop):
        nested = [node.body, node.orelse]
    elif isinstance(node, Parallel):
        nested = list(node.branches)
    elif isinstance(node, Try):
        nested = [node.body, *(handler.body for handler in node.handlers), node.orelse, node.finalbody]
    elif isinstance(node, If):
        nested = [branch.body for branch in node.branches]
    elif isinstance(node, Match):
        nested = [case.body for case in node.cases]
    elif isinstance(node, Dag):
        nested = [list(node.steps)]
    else:
        return
    yield from (block for block in nested if block is not None)


def walk(nodes: list[Node]) -> Iterator[Node]:
    """Every node in ``nodes`` and below it, depth first in document order."""
    for node in nodes:
        yield node
        for block in blocks(node):
            yield from walk(block)


def has_steps(nodes: list[Node]) -> bool:
    """Whether any node in ``nodes`` (at any depth) runs a step or calls a helper that does."""
    return any(node.kind in STEP_KINDS or node.kind in ("call", "resolve") for node in walk(nodes))


for _model in (Loop, Parallel, Handler, Try, IfBranch, If, MatchCase, Match, Function):
    _model.model_rebuild()
