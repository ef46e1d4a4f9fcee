"""DAG steps: how a step declared with ``depends=[...]`` receives its dependencies' results.

A dependent step's function takes the results of the steps it depends on. Each result goes to
the parameter named like the dependency's function (``def total(price, qty)`` gets the results
of the steps declared on ``price`` and ``qty``); the results no name claims fill the remaining
positional parameters in ``depends`` order, then a ``*args`` parameter if there is one; any still
left over are not injected (the dependency only orders the steps). A parameter named ``ctx``
receives the :class:`~engine.context.StepContext`.

The plan is computed once, when the step is declared, so a parameter that nothing can fill is a
``TypeError`` raised into ``run()`` at declaration instead of a failure of every attempt. At each
call the plan turns the results into a step callable that takes only ``ctx`` — the form the step
runner calls — so the dependent step runs like any other step (thread pool for sync functions,
per-attempt timeout, retries), on the live path and after replay alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hutch.context import StepContext

_CTX = "ctx"
_FILLABLE = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True, slots=True)
class DependencyBinding:
    """Where each dependency result goes in a dependent step's call.

    Attributes:
        signature: the dependent function's signature (None when it has none Python can read;
            then every result is passed positionally and ``ctx`` is not passed).
        targets: per dependency, in ``depends`` order, the parameter its result fills (None: it
            goes to ``*args`` when :attr:`var_positional` is set, otherwise it is not injected).
        var_positional: the name of the ``*args`` parameter receiving left-over results.
        takes_ctx: whether the function has a parameter named ``ctx``.
    """

    signature: inspect.Signature | None
    targets: tuple[str | None, ...]
    var_positional: str | None
    takes_ctx: bool

    def arguments(self, results: Sequence[Any], ctx: StepContext) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments of one call, given the results in ``depends`` order."""
        if self.signature is None:
            return tuple(results), {}
        values = {target: results[i] for i, target in enumerate(self.targets) if target is not None}
        extras = tuple(results[i] for i, target in enumerate(self.targets) if target is None)
        arguments: dict[str, Any] = {}
        for name in self.signature.parameters:
            if name in values:
                arguments[name] = values[name]
            elif name == _CTX and self.takes_ctx:
                arguments[name] = ctx
            elif name == self.var_positional and extras:
                arguments[name] = extras
        # BoundArguments splits by parameter kind: positional-only and *args go positionally.
        bound = inspect.BoundArguments(self.signature, arguments)
        return bound.args, bound.kwargs

    def bind(self, fn: Callable[..., Any], results: Sequence[Any]) -> Callable[[StepContext], Any]:
        """A step callable that calls ``fn`` with ``results`` injected (and ``ctx`` when it asks for it).

        Async functions give an async callable and sync ones a sync callable, so the step runner
        still runs sync work in its thread pool.
        """
        values = tuple(results)
        if inspect.iscoroutinefunction(fn):

            async def dependent_async(ctx: StepContext) -> Any:
                args, kwargs = self.arguments(values, ctx)
                return await fn(*args, **kwargs)

            body: Callable[[StepContext], Any] = dependent_async
        else:

            def dependent_sync(ctx: StepContext) -> Any:
                args, kwargs = self.arguments(values, ctx)
                return fn(*args, **kwargs)

            body = dependent_sync
        body.__name__ = getattr(fn, "__name__", body.__name__)
        body.__qualname__ = getattr(fn, "__qualname__", body.__qualname__)
        body.__doc__ = getattr(fn, "__doc__", None)
        return body


def plan_dependencies(step_name: str, fn: Callable[..., Any], dependency_names: Sequence[str]) -> DependencyBinding:
    """Decide, once, which parameter of ``fn`` each dependency's result fills.

    Args:
        step_name: the dependent step's name (for error messages).
        fn: the dependent step's function.
        dependency_names: the dependencies' function names, in ``depends`` order.

    Raises:
        TypeError: ``fn`` has a required parameter (other than ``ctx``) that no dependency fills.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return DependencyBinding(None, (None,) * len(dependency_names), None, False)
    params = signature.parameters
    nameable = {
        name
        for name, p in params.items()
        if name != _CTX and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    targets: list[str | None] = [None] * len(dependency_names)
    used: set[str] = set()
    for i, dependency in enumerate(dependency_names):
        if dependency in nameable and dependency not in used:
            targets[i] = dependency
            used.add(dependency)
    free = [name for name, p in params.items() if p.kind in _FILLABLE and name != _CTX and name not in used]
    unclaimed = [i for i, target in enumerate(targets) if target is None]
    for i, name in zip(unclaimed, free, strict=False):
        targets[i] = name
        used.add(name)
    var_positional = next((n for n, p in params.items() if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    takes_ctx = _CTX in params and params[_CTX].kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )
    for name, p in params.items():
        required = p.default is p.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if required and name not in used and name != _CTX:
            listed = ", ".join(repr(n) for n in dependency_names)
            raise TypeError(
                f"step {step_name!r}: parameter {name!r} receives no dependency result (depends on {listed}); "
                "name the parameter after a dependency's function, give it a default, or add a dependency"
            )
    return DependencyBinding(signature, tuple(targets), var_positional, takes_ctx)
