"""Rendering a :class:`~engine.diagram.model.Diagram` as a Mermaid flowchart.

``run()`` goes from a ``start`` node to an ``end`` node; each helper that runs steps is a
subgraph with its own entry and exit, and a call node points at it with a dotted edge. Loops and
``try`` blocks are subgraphs; ``if``/``match`` are decision nodes with one labelled edge per arm;
parallel work forks from a hexagon and joins at another. A step started without ``await``
branches off the flow, and a dotted edge joins it to the node that awaits it.

Every node is declared (inside its subgraph) before any edge is written, so Mermaid never pulls
a node into the wrong subgraph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hutch.diagram.model import (
    Break,
    Call,
    Continue,
    Dag,
    Diagram,
    Function,
    If,
    Invoke,
    Loop,
    Match,
    Node,
    Parallel,
    Raise,
    Resolve,
    Return,
    RollbackAll,
    Sleep,
    SleepUntil,
    StepDo,
    Try,
    WaitForEvent,
)

LABEL_LIMIT = 60
SHORT_VALUE = 30
Port = tuple[str, str | None]
"""A loose end of the flow: the node it leaves from and the label of the edge to come."""

_PARALLEL_LABEL = {
    "gather": "asyncio.gather",
    "wait": "asyncio.wait",
    "as_completed": "asyncio.as_completed",
    "task_group": "TaskGroup",
}


def to_mermaid(diagram: Diagram) -> str:
    """The diagram as Mermaid flowchart text (``flowchart TD``)."""
    return _Renderer(diagram).render()


_PATCHED = re.compile(r"""\w+\.patched\((?P<q>["'])(?P<id>[^"']+)(?P=q)\)""")
"""An ``if`` condition that is ``step.patched("id")``: drawn as the patch's two code paths."""


def label(text: str, limit: int = LABEL_LIMIT) -> str:
    """Text made safe inside a quoted Mermaid label (entity codes for quotes, ``#``, ``<``, ``>``, ``|``)."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(char, code)
    return text


@dataclass
class _Loop:
    head: str
    exits: list[Port] = field(default_factory=list)


@dataclass
class _Renderer:
    diagram: Diagram
    lines: list[str] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)
    depth: int = 1
    function_ids: dict[str, str] = field(default_factory=dict)
    end: str = ""
    loops: list[_Loop] = field(default_factory=list)
    exits: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        self.function_ids = {f.name: f.id for f in self.diagram.functions}
        self.lines.append("flowchart TD")
        for index, function in enumerate(self.diagram.functions):
            self.function(function, entry=index == 0)
        return "\n".join([*self.lines, *("    " + e for e in self.edges)]) + "\n"

    # ------------------------------------------------------------------ output
    def declare(self, node_id: str, shape: str, text: str) -> None:
        opening, closing = shape.split("_")
        self.lines.append(f'{"    " * self.depth}{node_id}{opening}"{label(text)}"{closing}')

    def open(self, subgraph_id: str, title: str) -> None:
        self.lines.append(f'{"    " * self.depth}subgraph {subgraph_id} ["{label(title)}"]')
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.lines.append(f"{'    ' * self.depth}end")

    def edge(self, src: str, dst: str, text: str | None = None, dotted: bool = False) -> None:
        arrow = "-.->" if dotted else "-->"
        self.edges.append(f'{src} {arrow}|"{label(text, 40)}"| {dst}' if text else f"{src} {arrow} {dst}")

    def connect(self, ports: list[Port], dst: str) -> None:
        for src, text in ports:
            self.edge(src, dst, text)

    # ------------------------------------------------------------------ functions
    def function(self, function: Function, entry: bool) -> None:
        start, end = f"{function.id}_start", f"{function.id}_end"
        signature = f"{function.name.rsplit('.', 1)[-1]}({', '.join(function.params)})"
        if not entry:
            self.open(function.id, f"{function.name}()")
        self.declare(start, "([_])", "start: " + signature if entry else signature)
        self.end = end
        self.steps = {}
        outs = self.block(function.body, [(start, None)])
        self.declare(end, "([_])", "end" if entry else "return")
        self.connect(outs, end)
        if not entry:
            self.close()

    # ------------------------------------------------------------------ blocks
    def block(self, nodes: list[Node], ports: list[Port]) -> list[Port]:
        for node in nodes:
            ports = self.node(node, ports)
        return ports

    def node(self, node: Node, ports: list[Port]) -> list[Port]:
        if isinstance(node, StepDo | Sleep | SleepUntil | WaitForEvent | Invoke | RollbackAll | Call):
            return self.simple(node, ports)
        if isinstance(node, Dag):
            return self.dag(node, ports)
        if isinstance(node, Loop):
            return self.loop(node, ports)
        if isinstance(node, Parallel):
            return self.parallel(node, ports)
        if isinstance(node, Try):
            return self.try_(node, ports)
        if isinstance(node, If | Match):
            return self.decision(node, ports)
        if isinstance(node, Resolve):
            self.declare(node.id, "([_])", f"await {node.expr}")
            self.connect(ports, node.id)
            for started in node.resolves:
                self.edge(self.exits.get(started, started), node.id, dotted=True)
            return [(node.id, None)]
        return self.terminal(node, ports)

    def simple(
        self, node: StepDo | Sleep | SleepUntil | WaitForEvent | Invoke | RollbackAll | Call, ports: list[Port]
    ) -> list[Port]:
        if isinstance(node, StepDo):
            self.step(node, frozenset(src for src, _ in ports))
        elif isinstance(node, Sleep):
            duration = node.duration if node.duration is not None else node.duration_expr
            if isinstance(duration, int | float):
                duration = f"{duration:g} s"
            self.declare(node.id, "([_])", f"sleep: {node.name} · {duration}")
        elif isinstance(node, SleepUntil):
            self.declare(node.id, "([_])", f"sleep until: {node.name} · {node.until}")
        elif isinstance(node, WaitForEvent):
            event_type = node.event_type if node.event_type is not None else node.event_type_expr
            self.declare(node.id, "([_])", f"wait for event: {node.name} · {event_type}")
        elif isinstance(node, Invoke):
            # A step whose work is another workflow: the subroutine shape, named for the child's workflow.
            workflow = node.workflow if node.workflow is not None else node.workflow_expr
            self.declare(node.id, "[[_]]", f"invoke: {node.name} → {workflow}")
        elif isinstance(node, RollbackAll):
            self.declare(node.id, "[[_]]", "rollback all" + (f": {', '.join(node.undos)}" if node.undos else ""))
        else:
            self.declare(node.id, "[[_]]", f"call {node.expr}")
            self.edge(node.id, f"{self.function_ids[node.function]}_start", dotted=True)
        self.connect(ports, node.id)
        if not node.awaited:
            return ports  # started in the background: the flow goes on from where it was
        return [(node.id, None)]

    def terminal(self, node: Node, ports: list[Port]) -> list[Port]:
        if isinstance(node, Return):
            short = node.value is not None and len(node.value) <= SHORT_VALUE
            self.declare(node.id, "[/_/]", f"return {node.value}" if short else "return")
            self.connect(ports, node.id)
            self.edge(node.id, self.end)
        elif isinstance(node, Raise):
            self.declare(node.id, ">_]", f"raise {node.exception}" if node.exception else "raise")
            self.connect(ports, node.id)
        elif isinstance(node, Break | Continue) and self.loops:
            self.declare(node.id, "[/_/]", node.kind)
            self.connect(ports, node.id)
            if isinstance(node, Break):
                self.loops[-1].exits.append((node.id, None))
            else:
                self.edge(node.id, self.loops[-1].head)
        return []

    # ------------------------------------------------------------------ containers
    def step(self, node: StepDo, linked: frozenset[str]) -> None:
        """Declare a step; a dependency that ran earlier gets a dotted ``depends`` edge unless already linked."""
        self.declare(node.id, "[_]", f"step: {node.name}" + (f" ↩ {node.undo.function}" if node.undo else ""))
        for dependency in node.depends or ():
            earlier = self.steps.get(dependency)
            if earlier is not None and earlier not in linked:
                self.edge(earlier, node.id, "depends", dotted=True)
        self.steps[node.name] = node.id

    def dag(self, node: Dag, ports: list[Port]) -> list[Port]:
        self.open(node.id, "DAG")
        ids = {step.name: step.id for step in node.steps}
        for step in node.steps:
            self.step(step, frozenset(ids.values()))
        self.close()
        for step in node.steps:
            inside = [ids[d] for d in step.depends or () if d in ids]
            for dep in inside:
                self.edge(dep, step.id)
            if not inside:
                self.connect(ports, step.id)
        last = node.steps[-1].id
        self.exits[node.id] = last
        return [(last, None)] if node.awaited else ports

    def loop(self, node: Loop, ports: list[Port]) -> list[Port]:
        concurrent = bool(node.concurrent)
        self.open(f"{node.id}_loop", "for each, concurrently" if concurrent else "loop")
        self.declare(node.id, "{{_}}", node.header)
        self.loops.append(_Loop(head=node.id))
        outs = self.block(node.body, [(node.id, None)])
        context = self.loops.pop()
        self.close()
        self.connect(ports, node.id)
        if concurrent:
            return outs
        for src, text in outs:
            if src != node.id or text is not None:
                self.edge(src, node.id, text or "next")
        # `while True` only ends through a break (or a return or raise).
        after: list[Port] = [] if node.header == "while True" else [(node.id, "done")]
        if node.orelse:
            after = self.block(node.orelse, after)
        return after + context.exits

    def parallel(self, node: Parallel, ports: list[Port]) -> list[Port]:
        fork, join = node.id, f"{node.id}_join"
        self.declare(fork, "{{_}}", f"parallel: {_PARALLEL_LABEL[node.mode]}")
        self.connect(ports, fork)
        outs: list[Port] = []
        for branch in node.branches:
            outs += self.block(branch, [(fork, None)])
        self.declare(join, "{{_}}", "all done")
        self.connect(outs, join)
        self.exits[node.id] = join
        return [(join, None)] if node.awaited else ports

    def try_(self, node: Try, ports: list[Port]) -> list[Port]:
        region = f"{node.id}_try"
        self.open(region, "try*" if node.star else "try")
        self.declare(node.id, "[/_\\]", "try")
        outs = self.block(node.body, [(node.id, None)])
        self.close()
        self.connect(ports, node.id)
        if node.orelse:
            outs = self.block(node.orelse, outs)
        for index, handler in enumerate(node.handlers, start=1):
            handler_id = f"{node.id}_h{index}"
            types = ", ".join(handler.types) or "any exception"
            self.declare(handler_id, "{{_}}", f"except {types}")
            self.edge(region, handler_id, "raises", dotted=True)
            outs += self.block(handler.body, [(handler_id, None)])
        if node.finalbody:
            final = f"{node.id}_finally"
            self.declare(final, "[/_\\]", "finally")
            self.connect(outs, final)
            outs = self.block(node.finalbody, [(final, None)])
        return outs

    def decision(self, node: If | Match, ports: list[Port]) -> list[Port]:
        arms: list[tuple[str | None, list[Node]]]
        if isinstance(node, If):
            arms = [(branch.condition, branch.body) for branch in node.branches]
            question = "if"
            patch = _PATCHED.fullmatch(arms[0][0] or "")
            if patch is not None and len(arms) <= 2 and (len(arms) == 1 or arms[1][0] is None):
                # step.patched(id): new instances take the first arm, those recorded before the patch the other.
                question = f"patch {patch['id']!r}"
                arms = [("new code", arms[0][1]), ("old code", arms[1][1] if len(arms) > 1 else [])]
            elif len(arms) <= 2 and arms[0][0] is not None and (len(arms) == 1 or arms[1][0] is None):
                question, arms = f"{arms[0][0]}?", [("yes", arms[0][1]), ("no", arms[1][1] if len(arms) > 1 else [])]
            elif arms[-1][0] is not None:
                arms.append(("else", []))
            arms = [(text if text is not None else "else", body) for text, body in arms]
        else:
            arms = [
                (f"case {case.pattern}" + (f" if {case.guard}" if case.guard else ""), case.body) for case in node.cases
            ]
            question = f"match {node.subject}"
            if not any(case.pattern == "_" and case.guard is None for case in node.cases):
                arms.append(("no match", []))
        self.declare(node.id, "{_}", question)
        self.connect(ports, node.id)
        outs: list[Port] = []
        for text, body in arms:
            outs += self.block(body, [(node.id, text)])
        return outs
