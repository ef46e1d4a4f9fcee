"""What calls and decorators refer to: helpers a call enters, step functions a ``def`` declares.

A call is followed into a helper only when the helper can reach the step object: a local
function sees it through its closure; a method or a module-level function must receive it as an
argument (any parameter name). Decorators ``@step.do(...)`` and ``@step.with_rollback(...)`` declare
step functions, ``@fn.undo`` registers a compensation on one.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from typing import Any

from hutch.diagram import values
from hutch.diagram.model import Undo
from hutch.diagram.scope import Scope, StepDef
from hutch.diagram.source import FunctionNode, Source, function_source, method_source
from hutch.diagram.values import render_name, source


def helper(node: ast.Call, scope: Scope) -> tuple[Source, set[str], Scope | None] | None:
    """The function a call enters, if the analyser should follow it.

    Returns:
        The callee, the names the step object has inside it, and the scope it closes over (for a
        local function); None when the callee is unknown, has no source, or cannot reach the step.
    """
    func = node.func
    if isinstance(func, ast.Name):
        local = scope.local_def(func.id)
        if local is not None:
            owner, definition = local
            closure = {n for s in owner.chain() for n in s.step_names} - param_names(definition)
            return owner.source.local(definition), closure | bind(node, definition, False, scope), owner
        obj: Any = scope.source.globals.get(func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id == scope.self_name() and scope.source.owner is not None:
            method = method_source(scope.source.owner, func.attr)
            if method is None:
                return None
            bound = bind(node, method.node, method.self_name is not None, scope)
            return (method, bound, None) if bound else None
        module = scope.source.globals.get(func.value.id)
        obj = getattr(module, func.attr, None) if inspect.ismodule(module) else None
    else:
        return None
    if not inspect.isfunction(obj):
        return None
    src = function_source(obj)
    if src is None:
        return None
    bound = bind(node, src.node, False, scope)
    # A module-level function can only reach the step object through its arguments.
    return (src, bound, None) if bound else None


def bind(node: ast.Call, definition: FunctionNode, skip_first: bool, scope: Scope) -> set[str]:
    """The callee's parameters that receive the step object at this call."""
    params = [a.arg for a in [*definition.args.posonlyargs, *definition.args.args]][1 if skip_first else 0 :]
    bound: set[str] = set()
    for index, arg in enumerate(node.args):
        if isinstance(arg, ast.Starred):
            break
        if index < len(params) and isinstance(arg, ast.Name) and scope.is_step(arg.id):
            bound.add(params[index])
    for keyword in node.keywords:
        if keyword.arg is not None and isinstance(keyword.value, ast.Name) and scope.is_step(keyword.value.id):
            bound.add(keyword.arg)
    return bound


def asyncio_name(func: ast.expr, scope: Scope) -> str | None:
    """``gather`` for ``asyncio.gather`` (or a ``gather`` imported from asyncio), etc."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        module = scope.source.globals.get(func.value.id)
        if module is asyncio or (module is None and func.value.id == "asyncio"):
            return func.attr
    if isinstance(func, ast.Name):
        obj = scope.source.globals.get(func.id)
        if obj is not None and obj is getattr(asyncio, func.id, None):
            return func.id
    return None


def group_of(func: ast.expr, scope: Scope) -> str | None:
    """The task group ``tg`` when ``func`` is ``tg.create_task`` inside ``async with TaskGroup() as tg``."""
    if (
        isinstance(func, ast.Attribute)
        and func.attr == "create_task"
        and isinstance(func.value, ast.Name)
        and scope.is_task_group(func.value.id)
    ):
        return func.value.id
    return None


def declare(node: FunctionNode, scope: Scope) -> None:
    """A ``def`` in a function body: a step function (``@step.do``, ``@step.with_rollback``) or its undo."""
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        func = call.func if call is not None else decorator
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
            continue
        owner = func.value.id
        if scope.is_step(owner) and func.attr in ("do", "with_rollback"):
            args = arguments(call, ("name",)) if call is not None else {}
            config, config_expr = values.config_or_expr(args.get("config"))
            depends = dependency_names(args.get("depends"))
            scope.step_defs[node.name] = StepDef(
                var=node.name,
                name=step_name(args.get("name"), ast.Name(id=node.name)),
                line=decorator.lineno,
                config=config,
                config_expr=config_expr,
                depends=depends,
                concurrent=values.bool_or_expr(args.get("concurrent"))[0] if depends else None,
                rollback=func.attr == "with_rollback",
            )
            return
        if func.attr == "undo" and (target := scope.step_def(owner)) is not None:
            args = arguments(call, ()) if call is not None else {}
            config, config_expr = values.config_or_expr(args.get("config"))
            target.undo = Undo(function=node.name, config=config, config_expr=config_expr)
            return


def arguments(node: ast.Call, positional: tuple[str, ...]) -> dict[str, ast.expr]:
    """A call's arguments by parameter name (positional ones named by ``positional``)."""
    args: dict[str, ast.expr] = {}
    for name, arg in zip(positional, node.args, strict=False):
        if isinstance(arg, ast.Starred):
            break
        args[name] = arg
    for keyword in node.keywords:
        if keyword.arg is not None:
            args[keyword.arg] = keyword.value
    return args


def step_name(name: ast.expr | None, fn: ast.expr) -> str:
    """The step name as written, else the function's ``__name__`` as Python would give it."""
    if name is not None and not (isinstance(name, ast.Constant) and name.value is None):
        return render_name(name)
    if isinstance(fn, ast.Name):
        return fn.id
    if isinstance(fn, ast.Attribute):
        return fn.attr
    if isinstance(fn, ast.Lambda):
        return "<lambda>"
    return "{" + source(fn) + ".__name__}"


def dependency_names(node: ast.expr | None) -> list[str]:
    """The variable names in ``depends=[a, b]`` (other entries shown as source)."""
    if not isinstance(node, ast.List | ast.Tuple):
        return [] if node is None else [source(node)]
    return [e.id if isinstance(e, ast.Name) else source(e) for e in node.elts]


def param_names(node: FunctionNode) -> set[str]:
    """Every parameter name of a function (they shadow the enclosing scope's names)."""
    args = node.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    return names
