"""The expression half of the analyser: steps, step functions, ``asyncio`` concurrency, helper calls.

Every expression is analysed in one of two modes: :data:`AWAIT` when its value is awaited on
the spot (the operand of ``await``, a branch of ``asyncio.gather``, a task's coroutine) and
:data:`VALUE` otherwise. A step in ``VALUE`` mode has started without being awaited
(``awaited: false``); a coroutine call in ``VALUE`` mode has not started at all and is held back
("lazy") until it is awaited or gathered.
"""

from __future__ import annotations

import ast
from abc import ABC, abstractmethod
from typing import Literal, TypeVar

from hutch.diagram import names, values
from hutch.diagram.model import (
    Call,
    Dag,
    If,
    IfBranch,
    Invoke,
    Loop,
    Node,
    Parallel,
    Resolve,
    RollbackAll,
    Sleep,
    SleepUntil,
    StepDo,
    WaitForEvent,
)
from hutch.diagram.scope import Scope, StepDef
from hutch.diagram.source import Source
from hutch.diagram.values import render_name, source

Mode = Literal["await", "value"]
AWAIT: Mode = "await"
VALUE: Mode = "value"

EXPR_TEXT = 100
_STEP_METHODS = frozenset({"do", "sleep", "sleep_until", "wait_for_event", "invoke", "rollback_all"})
ParallelKind = Literal["gather", "wait", "as_completed"]
_PARALLEL: dict[str, ParallelKind] = {"gather": "gather", "wait": "wait", "as_completed": "as_completed"}
_STARTERS = frozenset({"create_task", "ensure_future"})
_N = TypeVar("_N", bound=Node)


def started_ids(nodes: list[Node]) -> list[str]:
    """Ids of the unawaited (started) nodes among ``nodes``, looking into comprehension loops."""
    ids: list[str] = []
    for node in nodes:
        if getattr(node, "awaited", True) is False:
            ids.append(node.id)
        elif isinstance(node, Loop) and node.loop in ("comprehension", "async comprehension"):
            ids.extend(started_ids(node.body))
    return ids


def _set_awaited(nodes: list[Node], awaited: bool) -> None:
    for node in nodes:
        if hasattr(node, "awaited"):
            node.awaited = awaited
        elif isinstance(node, Loop) and node.loop in ("comprehension", "async comprehension"):
            _set_awaited(node.body, awaited)


def _invoke(line: int, name: str, args: dict[str, ast.expr], awaited: bool) -> Invoke:
    """The node of ``step.invoke(name, workflow, params, id=..., config=...)``."""
    workflow, workflow_expr = values.scalar_or_expr(args.get("workflow"))
    if "workflow" not in args:
        workflow_expr = "?"  # passed through *args or **kwargs
    child_id = args.get("id")
    if isinstance(child_id, ast.Constant) and child_id.value is None:
        child_id = None  # id=None: the derived id, as when it is left out
    given_id, child_id_expr = values.scalar_or_expr(child_id)
    config, config_expr = values.config_or_expr(args.get("config"))
    return Invoke(
        line=line,
        name=name,
        workflow=str(workflow) if workflow is not None else None,
        workflow_expr=workflow_expr,
        child_id=str(given_id) if given_id is not None else None,
        child_id_expr=child_id_expr,
        config=config,
        config_expr=config_expr,
        awaited=awaited,
    )


class Expressions(ABC):
    """Expression analysis; the statement half (:class:`~engine.diagram.analyze._Analyzer`) extends it."""

    def __init__(self) -> None:
        self.lazy: set[int] = set()
        self.compensable: list[str] = []

    @abstractmethod
    def function(self, src: Source, step_names: set[str], parent: Scope | None) -> str | None:
        """Analyse a helper; its key when it runs steps."""

    @abstractmethod
    def block(self, stmts: list[ast.stmt], scope: Scope) -> list[Node]:
        """The nodes of a block of statements."""

    @abstractmethod
    def new_id(self) -> str:
        """A fresh temporary node id."""

    # ------------------------------------------------------------------ bookkeeping
    def mark(self, node: _N) -> _N:
        """Give a new node its id."""
        node.id = self.new_id()
        return node

    def is_lazy(self, node: Node) -> bool:
        """Whether ``node`` is a coroutine that has not started."""
        return id(node) in self.lazy

    def unlazy(self, nodes: list[Node]) -> None:
        """Treat held-back coroutines as started here (they were handed to something that runs them)."""
        for node in nodes:
            self.lazy.discard(id(node))
            if isinstance(node, Loop):
                self.unlazy(node.body)

    def is_group_task(self, stmt: ast.stmt, scope: Scope) -> bool:
        """Whether ``stmt`` only creates a task in an enclosing task group (``tg.create_task(...)``)."""
        value = stmt.value if isinstance(stmt, ast.Expr | ast.Assign) else None
        return isinstance(value, ast.Call) and names.group_of(value.func, scope) is not None

    def iterated_ids(self, node: ast.expr, scope: Scope) -> list[str]:
        """Started steps a loop iterates over (``for t in tasks``, ``asyncio.as_completed(tasks)``)."""
        if isinstance(node, ast.Call) and names.asyncio_name(node.func, scope) in ("as_completed", "wait"):
            return [i for arg in node.args for i in self.iterated_ids(arg, scope)]
        if isinstance(node, ast.Starred):
            return self.iterated_ids(node.value, scope)
        if isinstance(node, ast.Subscript):
            return self.iterated_ids(node.value, scope)
        if isinstance(node, ast.Name):
            return list(scope.started_ids(node.id))
        return []

    # ------------------------------------------------------------------ expressions
    def expr(self, node: ast.expr, scope: Scope, mode: Mode) -> list[Node]:
        """The nodes an expression runs, in evaluation order."""
        if isinstance(node, ast.Await):
            return self.expr(node.value, scope, AWAIT)
        if isinstance(node, ast.Call):
            return self.call(node, scope, mode)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            return self.comprehension(node, scope, None)
        if isinstance(node, ast.Lambda):
            return []  # its body runs later, inside whatever receives it (a step, usually)
        if isinstance(node, ast.IfExp):
            return self.if_expr(node, scope, mode)
        if mode == AWAIT and isinstance(node, ast.Name | ast.Subscript | ast.Starred):
            return self.await_stored(node, scope)
        if isinstance(node, ast.NamedExpr):
            nodes = self.expr(node.value, scope, mode)
            ids = started_ids(nodes)
            if ids:
                scope.started[node.target.id] = ids
            return nodes
        return self.children(node, scope)

    def children(self, node: ast.AST, scope: Scope, skip: tuple[ast.AST, ...] = ()) -> list[Node]:
        """The nodes of the sub-expressions of ``node``, none of them awaited by ``node`` itself."""
        nodes: list[Node] = []
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr) and not any(child is s for s in skip):
                nodes.extend(self.expr(child, scope, VALUE))
            elif isinstance(child, ast.keyword) and not any(child.value is s for s in skip):
                nodes.extend(self.expr(child.value, scope, VALUE))
        return nodes

    def await_stored(self, node: ast.Name | ast.Subscript | ast.Starred, scope: Scope) -> list[Node]:
        """``await t``: resolves steps started into ``t``, or runs the coroutines held in it."""
        base: ast.expr = node
        while isinstance(base, ast.Subscript | ast.Starred):
            base = base.value
        if not isinstance(base, ast.Name):
            return self.children(node, scope)
        held = scope.take_deferred(base.id)
        if held:
            self.unlazy(held)
            _set_awaited(held, True)
            return held
        ids = scope.started_ids(base.id)
        if ids:
            return [self.mark(Resolve(line=node.lineno, expr=source(node, EXPR_TEXT), resolves=list(ids)))]
        return []

    def comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp, scope: Scope, elt_mode: Mode | None
    ) -> list[Node]:
        """A comprehension whose element runs steps becomes a loop (concurrent when gathered)."""
        first, *rest = node.generators
        prefix = self.expr(first.iter, scope, VALUE)
        for generator in node.generators:
            ids = self.iterated_ids(generator.iter, scope)
            if ids and isinstance(generator.target, ast.Name):
                scope.started[generator.target.id] = ids
        body = [n for g in rest for n in self.expr(g.iter, scope, VALUE)]
        body += [n for g in node.generators for cond in g.ifs for n in self.expr(cond, scope, VALUE)]
        elements = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        body += [n for elt in elements for n in self.expr(elt, scope, elt_mode or VALUE)]
        if not body:
            return prefix
        header = " ".join(
            f"{'async for' if g.is_async else 'for'} {values.target_text(g.target)} in {source(g.iter)}"
            + "".join(f" if {source(c)}" for c in g.ifs)
            for g in node.generators
        )
        is_async = any(g.is_async for g in node.generators)
        loop = self.mark(
            Loop(
                line=node.lineno,
                loop="async comprehension" if is_async else "comprehension",
                header=header,
                concurrent=True if elt_mode == AWAIT else None,
                body=body,
            )
        )
        if all(self.is_lazy(n) for n in body):
            self.lazy.add(id(loop))
        return [*prefix, loop]

    def if_expr(self, node: ast.IfExp, scope: Scope, mode: Mode) -> list[Node]:
        """``a if cond else b`` where an arm runs steps."""
        prefix = self.expr(node.test, scope, VALUE)
        arms = [
            IfBranch(condition=source(node.test), line=node.body.lineno, body=self.expr(node.body, scope, mode)),
            IfBranch(condition=None, line=node.orelse.lineno, body=self.expr(node.orelse, scope, mode)),
        ]
        while arms and not arms[-1].body:
            arms.pop()
        return [*prefix, self.mark(If(line=node.lineno, branches=arms))] if arms else prefix

    # ------------------------------------------------------------------ calls
    def call(self, node: ast.Call, scope: Scope, mode: Mode) -> list[Node]:
        """A call: a step, a step function, ``gather``/tasks, a helper that runs steps, or anything else."""
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and scope.is_step(func.value.id):
            if func.attr in _STEP_METHODS:
                return self.step_call(node, func.attr, scope, mode)
            return self.children(node, scope)
        name = names.asyncio_name(func, scope)
        if name in _PARALLEL:
            return self.parallel(node, _PARALLEL[name], scope, mode)
        group = names.group_of(func, scope)
        if name in _STARTERS or group is not None or (isinstance(func, ast.Attribute) and func.attr in _STARTERS):
            return self.task(node, scope, mode, in_group=group is not None)
        if isinstance(func, ast.Name) and (definition := scope.step_def(func.id)) is not None:
            return [*self.children(node, scope), *self.run_step(definition, node.lineno, scope, mode)]
        return self.helper_call(node, scope, mode)

    def step_call(self, node: ast.Call, method: str, scope: Scope, mode: Mode) -> list[Node]:
        """``step.do``, ``step.sleep``, ``step.sleep_until``, ``step.wait_for_event``, ``step.invoke``, rollback."""
        params = {
            "do": ("name", "fn"),
            "sleep": ("name", "duration"),
            "sleep_until": ("name", "when"),
            "wait_for_event": ("name", "event_type", "timeout"),
            "invoke": ("name", "workflow", "params", "id", "config"),
            "rollback_all": ("error", "continue_on_error"),
        }[method]
        args = names.arguments(node, params)
        prefix = self.children(node, scope)
        awaited = mode == AWAIT
        line = node.lineno
        if method == "do":
            fn = args.get("fn")
            if fn is None:
                return prefix  # the decorator form, used as a decorator elsewhere
            config, config_expr = values.config_or_expr(args.get("config"))
            depends = names.dependency_names(args.get("depends"))
            definition = StepDef(
                var="",
                name=names.step_name(args.get("name"), fn),
                line=line,
                config=config,
                config_expr=config_expr,
                depends=depends,
                concurrent=values.bool_or_expr(args.get("concurrent"))[0] if depends else None,
            )
            return prefix + self.run_step(definition, line, scope, mode)
        name = render_name(args["name"]) if "name" in args else "{?}"
        if method == "sleep":
            duration, duration_expr = values.scalar_or_expr(args.get("duration"))
            step: Node = Sleep(line=line, name=name, duration=duration, duration_expr=duration_expr, awaited=awaited)
        elif method == "sleep_until":
            when = args.get("when")
            step = SleepUntil(line=line, name=name, until=source(when) if when else "?", awaited=awaited)
        elif method == "wait_for_event":
            event_type, event_type_expr = values.scalar_or_expr(args.get("event_type"))
            timeout, timeout_expr = values.scalar_or_expr(args.get("timeout"))
            step = WaitForEvent(
                line=line,
                name=name,
                event_type=str(event_type) if event_type is not None else None,
                event_type_expr=event_type_expr,
                timeout=timeout,
                timeout_expr=timeout_expr,
                awaited=awaited,
            )
        elif method == "invoke":
            step = _invoke(line, name, args, awaited)
        else:
            flag, flag_expr = values.bool_or_expr(args.get("continue_on_error"))
            error = args.get("error")
            step = RollbackAll(
                line=line,
                error=source(error) if error else "?",
                continue_on_error=flag,
                continue_on_error_expr=flag_expr,
                undos=list(reversed(self.compensable)),
                awaited=awaited,
            )
        return [*prefix, self.mark(step)]

    def run_step(self, definition: StepDef, line: int, scope: Scope, mode: Mode) -> list[Node]:
        """Running a step function: its dependencies not yet resolved on this path first (a DAG), then it."""
        order: list[StepDef] = []
        seen: set[int] = set()

        def visit(d: StepDef) -> None:
            if id(d) in seen:
                return
            seen.add(id(d))
            for dep in d.depends:
                found = scope.step_def(dep)
                if found is not None and found.var not in scope.resolved:
                    visit(found)
            order.append(d)

        visit(definition)
        awaited = mode == AWAIT
        steps: list[StepDo] = []
        for d in order:
            if d.var:
                scope.resolved.add(d.var)
            if d.rollback and d.undo is not None and f"rollback {d.name}" not in self.compensable:
                self.compensable.append(f"rollback {d.name}")
            depends = [found.name if (found := scope.step_def(v)) else v for v in d.depends]
            steps.append(
                self.mark(
                    StepDo(
                        line=d.line,
                        name=d.name,
                        function=d.var or None,
                        config=d.config,
                        config_expr=d.config_expr,
                        depends=depends or None,
                        concurrent=d.concurrent if depends else None,
                        rollback=True if d.rollback else None,
                        undo=d.undo,
                        awaited=awaited,
                    )
                )
            )
        if len(steps) == 1:
            return [steps[0]]
        for step in steps:
            step.awaited = True  # within the DAG; the DAG as a whole may be unawaited
        return [self.mark(Dag(line=line, steps=steps, awaited=awaited))]

    def parallel(self, node: ast.Call, kind: ParallelKind, scope: Scope, mode: Mode) -> list[Node]:
        """``asyncio.gather(...)``, ``asyncio.wait(...)``, ``asyncio.as_completed(...)``: one branch per awaitable."""
        args: list[ast.expr] = list(node.args)
        if kind != "gather" and args:
            first = args[0]
            args = list(first.elts) if isinstance(first, ast.List | ast.Tuple | ast.Set) else [ast.Starred(first)]
        branches: list[list[Node]] = []
        resolves: list[str] = []
        for arg in args:
            ids = self.iterated_ids(arg.value if isinstance(arg, ast.Starred) else arg, scope)
            if ids:
                resolves.extend(ids)
            else:
                branches.append(self.parallel_branch(arg, scope))
        prefix = self.children(node, scope, skip=tuple(node.args))
        if resolves:
            resolve = self.mark(Resolve(line=node.lineno, expr=source(node, EXPR_TEXT), resolves=resolves))
            if not any(branches):
                return [*prefix, resolve]
            branches.append([resolve])
        branches = [b for b in branches if b]
        if not branches:
            return prefix
        awaited = mode == AWAIT or kind == "as_completed"
        return [*prefix, self.mark(Parallel(line=node.lineno, mode=kind, branches=branches, awaited=awaited))]

    def parallel_branch(self, arg: ast.expr, scope: Scope) -> list[Node]:
        """The branch of one awaitable handed to :meth:`parallel` (``*`` spreads a comprehension's)."""
        inner = arg.value if isinstance(arg, ast.Starred) else arg
        if isinstance(inner, ast.Name) and (held := scope.take_deferred(inner.id)):
            # A coroutine or loop of steps created earlier and held in a name runs here, concurrently.
            self.unlazy(held)
            _set_awaited(held, True)
            for loop in held:
                if isinstance(loop, Loop):
                    loop.concurrent = True
            return held
        if isinstance(arg, ast.Starred) and isinstance(inner, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            return self.comprehension(inner, scope, AWAIT)
        return self.expr(inner, scope, AWAIT)

    def task(self, node: ast.Call, scope: Scope, mode: Mode, in_group: bool) -> list[Node]:
        """``asyncio.create_task(coro)`` starts ``coro`` now; ``tg.create_task`` does, and the group awaits it."""
        if not node.args:
            return self.children(node, scope)
        nodes = self.expr(node.args[0], scope, AWAIT)
        self.unlazy(nodes)
        if not in_group:
            _set_awaited(nodes, mode == AWAIT)
        return nodes

    def helper_call(self, node: ast.Call, scope: Scope, mode: Mode) -> list[Node]:
        """A call into a method or function that receives the step object (or a local function)."""
        prefix = self.children(node, scope)
        target = names.helper(node, scope)
        if target is None:
            return prefix
        src, step_names, parent = target
        key = self.function(src, step_names, parent)
        if key is None:
            return prefix
        is_async = isinstance(src.node, ast.AsyncFunctionDef)
        call = self.mark(Call(line=node.lineno, function=key, expr=source(node, EXPR_TEXT), awaited=True))
        if is_async and mode != AWAIT:
            call.awaited = False
            self.lazy.add(id(call))
        return [*prefix, call]
