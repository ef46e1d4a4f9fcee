"""Finding the syntax tree of a workflow's methods and the functions they call.

Functions are located through the live objects (so inherited methods and helpers imported from
other modules resolve as Python resolves them), then their ``def`` is taken from the parsed
source file of their module, so line numbers are the file's own.
"""

from __future__ import annotations

import ast
import inspect
import linecache
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Source:
    """One function to analyse.

    Attributes:
        qualname: the name diagrams show (``OrderWorkflow.run``, ``OrderWorkflow.run.process``).
        module: the defining module's name.
        node: its ``def``.
        globals: the defining module's namespace, to resolve the helpers it calls.
        owner: the class whose methods ``self.<name>(...)`` resolves to (None outside methods).
        self_name: the name of the instance parameter of a method (``self``), else None.
    """

    qualname: str
    module: str
    node: FunctionNode
    globals: Mapping[str, Any]
    owner: type | None
    self_name: str | None

    def local(self, node: FunctionNode) -> Source:
        """A function defined inside this one; it sees the same ``self`` through its closure."""
        return Source(
            qualname=f"{self.qualname}.{node.name}",
            module=self.module,
            node=node,
            globals=self.globals,
            owner=self.owner,
            self_name=self.self_name,
        )


def method_source(cls: type, name: str) -> Source | None:
    """The method ``name`` as ``cls`` resolves it (inherited ones included), or None.

    None also when the method has no Python source (a builtin, or code built at runtime).
    """
    for klass in cls.__mro__:
        if name not in vars(klass):
            continue
        attr = vars(klass)[name]
        is_static = isinstance(attr, staticmethod)
        fn = attr.__func__ if isinstance(attr, staticmethod | classmethod) else attr
        if not inspect.isfunction(fn):
            return None
        node = _find_def(fn)
        if node is None:
            return None
        positional = [*node.args.posonlyargs, *node.args.args]
        self_name = positional[0].arg if positional and not is_static else None
        return Source(
            qualname=inspect.unwrap(fn).__qualname__.replace(".<locals>", ""),
            module=fn.__module__,
            node=node,
            globals=fn.__globals__,
            owner=cls,
            self_name=self_name,
        )
    return None


def function_source(fn: Callable[..., Any]) -> Source | None:
    """A module-level function (or any plain function with a source file), or None."""
    if not inspect.isfunction(fn):
        return None
    node = _find_def(fn)
    if node is None:
        return None
    return Source(
        qualname=inspect.unwrap(fn).__qualname__.replace(".<locals>", ""),
        module=fn.__module__,
        node=node,
        globals=fn.__globals__,
        owner=None,
        self_name=None,
    )


def _find_def(fn: Callable[..., Any]) -> FunctionNode | None:
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    tree = _parse(code.co_filename)
    if tree is None:
        return None
    # co_firstlineno is the first decorator's line for a decorated function, the def's otherwise.
    for node in ast.walk(tree):
        if isinstance(node, FunctionNode) and node.name == code.co_name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if first == code.co_firstlineno:
                return node
    return None


@lru_cache(maxsize=256)
def _parse_cached(filename: str, text: str) -> ast.Module | None:
    try:
        return ast.parse(text, filename=filename)
    except SyntaxError:
        return None


def _parse(filename: str) -> ast.Module | None:
    # linecache also serves sources registered for code that has no file on disk; keying the
    # cache on the text means an edited file is parsed again.
    linecache.checkcache(filename)
    text = "".join(linecache.getlines(filename))
    return _parse_cached(filename, text) if text else None
