"""Static analysis of a workflow class into a :class:`~engine.diagram.model.Diagram`.

The analyser reads ``run()``'s syntax tree (never runs it), statement by statement, and follows
calls into the helpers that receive the step object: methods of the class (``self.charge(step,
order)``), local functions (which see the step object through their closure) and module-level
functions. Each helper is analysed once, becomes a :class:`~engine.diagram.model.Function` of
the diagram when it runs steps directly or through its own calls, and is trimmed otherwise, as
is every branch, loop and ``try`` without steps. See :mod:`hutch.diagram.model` for the nodes.

This module handles statements; :mod:`hutch.diagram.expressions` handles expressions (steps,
``asyncio.gather``, tasks, calls) and :mod:`hutch.diagram.names` what calls and decorators
refer to.
"""

from __future__ import annotations

import ast
import itertools
from typing import TypeAlias, TypeVar

from hutch.diagram import names
from hutch.diagram.expressions import VALUE, Expressions, started_ids
from hutch.diagram.model import (
    Break,
    Call,
    Continue,
    Diagram,
    Function,
    Handler,
    If,
    IfBranch,
    Loop,
    Match,
    MatchCase,
    Node,
    Parallel,
    Raise,
    Resolve,
    Return,
    Try,
    blocks,
    has_steps,
    walk,
)
from hutch.diagram.scope import Scope, local_defs
from hutch.diagram.source import Source, method_source
from hutch.diagram.values import source, target_text
from hutch.errors import InvalidInputError

SHORT_TEXT = 60
_Arm = TypeVar("_Arm", IfBranch, MatchCase)
# Statements with blocks in them (:meth:`_Analyzer.compound_stmt`).
_Compound: TypeAlias = (
    ast.If | ast.For | ast.AsyncFor | ast.While | ast.Try | ast.TryStar | ast.With | ast.AsyncWith | ast.Match
)


def analyze(cls: type) -> Diagram:
    """The diagram of a workflow class, from the source of its ``run()`` and the helpers it calls.

    Args:
        cls: a :class:`~engine.WorkflowEntrypoint` subclass (any class with an ``async def run``).

    Raises:
        InvalidInputError: the class has no ``run`` method with Python source to read.
    """
    return _Analyzer(cls).diagram()


class _Analyzer(Expressions):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls
        self.order: list[str] = []
        self.done: dict[str, Function] = {}
        self.in_progress: set[str] = set()
        self.counter = itertools.count(1)

    # ------------------------------------------------------------------ driver
    def diagram(self) -> Diagram:
        run = method_source(self.cls, "run")
        where = f"{self.cls.__module__}:{self.cls.__qualname__}"
        if run is None:
            raise InvalidInputError(
                f"{where} has no run() method with Python source to analyse; "
                "define `async def run(self, event, step)` in a .py file"
            )
        params = [a.arg for a in [*run.node.args.posonlyargs, *run.node.args.args]]
        if run.self_name is not None:
            params = params[1:]
        step_name = params[1] if len(params) >= 2 else "step"
        self.function(run, {step_name}, None)
        entry = self.order[0]
        kept = [self.done[key] for key in self.order if key == entry or has_steps(self.done[key].body)]
        diagram = Diagram(workflow=where, functions=kept)
        _renumber(diagram)
        return diagram

    def function(self, src: Source, step_names: set[str], parent: Scope | None) -> str | None:
        """Analyse a function once; its key when it runs steps (or is still being analysed), else None."""
        key = src.qualname if src.module == self.cls.__module__ else f"{src.module}.{src.qualname}"
        if key in self.in_progress:
            return key  # recursion: the outer analysis decides whether it runs steps
        if key in self.done:
            return key if has_steps(self.done[key].body) else None
        self.in_progress.add(key)
        self.order.append(key)
        args = src.node.args
        params = [a.arg for a in [*args.posonlyargs, *args.args]]
        if src.self_name is not None and params[:1] == [src.self_name]:
            params = params[1:]
        params += [f"*{args.vararg.arg}"] if args.vararg else []
        params += [a.arg for a in args.kwonlyargs]
        params += [f"**{args.kwarg.arg}"] if args.kwarg else []
        scope = Scope(source=src, parent=parent, step_names=step_names, local_defs=local_defs(src.node))
        body = self.block(src.node.body, scope)
        self.in_progress.discard(key)
        self.done[key] = Function(
            name=key,
            module=src.module,
            params=params,
            line=src.node.lineno,
            is_async=isinstance(src.node, ast.AsyncFunctionDef),
            body=body,
        )
        return key if has_steps(body) else None

    def new_id(self) -> str:
        """A temporary id; :func:`_renumber` gives the final ones in document order."""
        return f"t{next(self.counter)}"

    # ------------------------------------------------------------------ blocks
    def block(self, stmts: list[ast.stmt], scope: Scope) -> list[Node]:
        """The nodes of a sequence of statements."""
        nodes: list[Node] = []
        for stmt in stmts:
            nodes.extend(self.stmt(stmt, scope))
        return nodes

    def branch(self, stmts: list[ast.stmt], scope: Scope) -> list[Node]:
        """A block that may or may not run: the steps it runs do not count as done after it."""
        resolved = set(scope.resolved)
        try:
            return self.block(stmts, scope)
        finally:
            scope.resolved = resolved

    def stmt(self, stmt: ast.stmt, scope: Scope) -> list[Node]:
        """The nodes of one statement."""
        if isinstance(stmt, ast.Expr):
            return self.expr_stmt(stmt.value, scope)
        if isinstance(stmt, ast.Assign):
            return self.assign(stmt.targets, stmt.value, scope)
        if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            return self.assign([stmt.target], stmt.value, scope) if stmt.value is not None else []
        if isinstance(stmt, ast.Return | ast.Raise | ast.Break | ast.Continue):
            return self.exit_stmt(stmt, scope)
        if isinstance(stmt, _Compound):
            return self.compound_stmt(stmt, scope)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            names.declare(stmt, scope)
            return []
        if isinstance(stmt, ast.Assert):
            return self.expr(stmt.test, scope, VALUE)
        return []

    def compound_stmt(self, stmt: _Compound, scope: Scope) -> list[Node]:
        """The nodes of a statement with blocks in it: ``if``, a loop, ``try``, ``with`` or ``match``."""
        if isinstance(stmt, ast.If):
            return self.if_stmt(stmt, scope)
        if isinstance(stmt, ast.For | ast.AsyncFor):
            return self.for_stmt(stmt, scope)
        if isinstance(stmt, ast.While):
            return self.while_stmt(stmt, scope)
        if isinstance(stmt, ast.Try | ast.TryStar):
            return self.try_stmt(stmt, scope)
        if isinstance(stmt, ast.With | ast.AsyncWith):
            return self.with_stmt(stmt, scope)
        return self.match_stmt(stmt, scope)

    def exit_stmt(self, stmt: ast.Return | ast.Raise | ast.Break | ast.Continue, scope: Scope) -> list[Node]:
        """The nodes of a statement that leaves its block: ``return``, ``raise``, ``break``, ``continue``."""
        if isinstance(stmt, ast.Return):
            value = self.expr(stmt.value, scope, VALUE) if stmt.value is not None else []
            return [*value, self.mark(Return(line=stmt.lineno, value=_exit_text(stmt.value, value)))]
        if isinstance(stmt, ast.Raise):
            value = self.expr(stmt.exc, scope, VALUE) if stmt.exc is not None else []
            return [*value, self.mark(Raise(line=stmt.lineno, exception=_exit_text(stmt.exc, value)))]
        if isinstance(stmt, ast.Break):
            return [self.mark(Break(line=stmt.lineno))]
        return [self.mark(Continue(line=stmt.lineno))]

    # ------------------------------------------------------------------ simple statements
    def expr_stmt(self, value: ast.expr, scope: Scope) -> list[Node]:
        """An expression statement; ``tasks.append(step.do(...))`` records the started steps in ``tasks``."""
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in ("append", "extend", "add", "insert", "appendleft")
            and isinstance(value.func.value, ast.Name)
        ):
            nodes = [n for arg in value.args for n in self.expr(arg, scope, VALUE)]
            self.unlazy(nodes)
            ids = started_ids(nodes)
            if ids:
                scope.started.setdefault(value.func.value.id, []).extend(ids)
            return nodes
        # A coroutine created and dropped never runs (Python warns that it was never awaited).
        return [n for n in self.expr(value, scope, VALUE) if not self.is_lazy(n)]

    def assign(self, targets: list[ast.expr], value: ast.expr, scope: Scope) -> list[Node]:
        """An assignment; unawaited steps and coroutines are remembered under the target names."""
        nodes = self.expr(value, scope, VALUE)
        names = [name for target in targets for name in _target_names(target)]
        if not names:
            self.unlazy(nodes)
            return nodes
        emitted: list[Node] = []
        for node in nodes:
            if self.is_lazy(node):
                for name, _ in names:
                    scope.deferred.setdefault(name, []).append(node)
            else:
                emitted.append(node)
        ids = started_ids(emitted)
        for name, extend in names:
            if extend:
                scope.started.setdefault(name, []).extend(ids)
            elif ids:
                scope.started[name] = list(ids)
        return emitted

    # ------------------------------------------------------------------ compound statements
    def if_stmt(self, stmt: ast.If, scope: Scope) -> list[Node]:
        """An ``if``/``elif``/``else`` chain, flattened into arms."""
        prefix = self.expr(stmt.test, scope, VALUE)
        arms: list[tuple[str | None, int, list[ast.stmt]]] = [(source(stmt.test), stmt.lineno, stmt.body)]
        orelse = stmt.orelse
        while len(orelse) == 1 and isinstance(orelse[0], ast.If):
            elif_ = orelse[0]
            # Steps in an elif's condition run only when the earlier ones were false; shown before the chain.
            prefix += self.expr(elif_.test, scope, VALUE)
            arms.append((source(elif_.test), elif_.lineno, elif_.body))
            orelse = elif_.orelse
        if orelse:
            arms.append((None, orelse[0].lineno, orelse))
        branches = _trim([IfBranch(condition=c, line=line, body=self.branch(body, scope)) for c, line, body in arms])
        return [*prefix, self.mark(If(line=stmt.lineno, branches=branches))] if branches else prefix

    def for_stmt(self, stmt: ast.For | ast.AsyncFor, scope: Scope) -> list[Node]:
        """A ``for``/``async for`` loop; iterating over started steps binds the loop variable to them."""
        ids = self.iterated_ids(stmt.iter, scope)
        prefix = [] if ids else self.expr(stmt.iter, scope, VALUE)
        if ids:
            for name, _ in _target_names(stmt.target):
                scope.started[name] = ids
        body = self.branch(stmt.body, scope)
        orelse = self.branch(stmt.orelse, scope)
        if not has_steps(body + orelse):
            return prefix
        is_async = isinstance(stmt, ast.AsyncFor)
        header = f"{'async for' if is_async else 'for'} {target_text(stmt.target)} in {source(stmt.iter)}"
        fan_out = bool(stmt.body) and all(self.is_group_task(s, scope) for s in stmt.body)
        loop = Loop(
            line=stmt.lineno,
            loop="async for" if is_async else "for",
            header=header,
            concurrent=True if fan_out else None,
            body=body,
            orelse=orelse or None,
        )
        return [*prefix, self.mark(loop)]

    def while_stmt(self, stmt: ast.While, scope: Scope) -> list[Node]:
        """A ``while`` loop; steps in its condition run at the start of every iteration."""
        body = self.branch([ast.Expr(value=stmt.test), *stmt.body], scope)
        orelse = self.branch(stmt.orelse, scope)
        if not has_steps(body + orelse):
            return []
        loop = Loop(line=stmt.lineno, loop="while", header=f"while {source(stmt.test)}", body=body)
        loop.orelse = orelse or None
        return [self.mark(loop)]

    def try_stmt(self, stmt: ast.Try | ast.TryStar, scope: Scope) -> list[Node]:
        """``try``/``except``/``else``/``finally``, kept when any part runs steps."""
        body = self.branch(stmt.body, scope)
        handlers = [
            Handler(types=_exception_types(h.type), name=h.name, line=h.lineno, body=self.branch(h.body, scope))
            for h in stmt.handlers
        ]
        orelse = self.branch(stmt.orelse, scope)
        finalbody = self.branch(stmt.finalbody, scope)
        if not has_steps(body + [n for h in handlers for n in h.body] + orelse + finalbody):
            return []
        node = Try(
            line=stmt.lineno,
            star=True if isinstance(stmt, ast.TryStar) else None,
            body=body,
            handlers=handlers,
            orelse=orelse or None,
            finalbody=finalbody or None,
        )
        return [self.mark(node)]

    def with_stmt(self, stmt: ast.With | ast.AsyncWith, scope: Scope) -> list[Node]:
        """A ``with`` block; ``async with asyncio.TaskGroup() as tg`` becomes a parallel group."""
        prefix: list[Node] = []
        group: str | None = None
        for item in stmt.items:
            if _is_task_group(item.context_expr) and isinstance(item.optional_vars, ast.Name):
                group = item.optional_vars.id
            else:
                prefix += self.expr(item.context_expr, scope, VALUE)
        if group is None:
            return prefix + self.block(stmt.body, scope)
        scope.task_groups.add(group)
        try:
            # Each statement of the body runs alongside the tasks it and the others create.
            branches = [nodes for nodes in (self.stmt(s, scope) for s in stmt.body) if nodes]
        finally:
            scope.task_groups.discard(group)
        if not branches:
            return prefix
        return [*prefix, self.mark(Parallel(line=stmt.lineno, mode="task_group", branches=branches))]

    def match_stmt(self, stmt: ast.Match, scope: Scope) -> list[Node]:
        """A ``match`` statement, kept when a case runs steps or leaves the block."""
        prefix = self.expr(stmt.subject, scope, VALUE)
        cases = _trim(
            [
                MatchCase(
                    pattern=source(case.pattern),
                    guard=source(case.guard) if case.guard is not None else None,
                    line=case.pattern.lineno,
                    body=self.branch(case.body, scope),
                )
                for case in stmt.cases
            ]
        )
        if not cases:
            return prefix
        return [*prefix, self.mark(Match(line=stmt.lineno, subject=source(stmt.subject), cases=cases))]


def _exit_text(value: ast.expr | None, nodes: list[Node]) -> str | None:
    # The source of a returned/raised value, unless it runs steps: those are the nodes just before.
    return source(value, SHORT_TEXT) if value is not None and not nodes else None


def _trim(arms: list[_Arm]) -> list[_Arm]:
    # Taking an empty last arm or no arm at all is the same path; an empty arm before a
    # non-empty one is kept so the conditions of the later arms stay truthful.
    while arms and not arms[-1].body:
        arms.pop()
    return arms


def _target_names(target: ast.expr) -> list[tuple[str, bool]]:
    """Names an assignment target binds: ``(name, extend)``; ``tasks[i] = ...`` extends ``tasks``."""
    if isinstance(target, ast.Name):
        return [(target.id, False)]
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        return [(target.value.id, True)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return [name for elt in target.elts for name in _target_names(elt)]
    return []


def _exception_types(node: ast.expr | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Tuple):
        return [source(e) for e in node.elts]
    return [source(node)]


def _is_task_group(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "TaskGroup") or (
        isinstance(func, ast.Attribute) and func.attr == "TaskGroup"
    )


def _renumber(diagram: Diagram) -> None:
    """Final ids in document order (``n1``, ``n2``, ...; functions ``f1``, ...), and drop dangling references."""
    mapping: dict[str, str] = {}
    counter = itertools.count(1)
    for index, function in enumerate(diagram.functions, start=1):
        function.id = f"f{index}"
        for node in walk(function.body):
            new = f"n{next(counter)}"
            mapping[node.id] = new
            node.id = new
    names = {f.name for f in diagram.functions}
    for function in diagram.functions:
        for node in walk(function.body):
            if isinstance(node, Resolve):
                node.resolves = [mapping[i] for i in node.resolves if i in mapping]
        # A recursive call kept optimistically to a helper that turned out to run no steps.
        _drop_calls(function.body, names)


def _drop_calls(nodes: list[Node], names: set[str]) -> None:
    nodes[:] = [n for n in nodes if not (isinstance(n, Call) and n.function not in names)]
    for node in nodes:
        for block in blocks(node):
            _drop_calls(block, names)
