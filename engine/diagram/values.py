"""Turning argument expressions into what a diagram shows: names, literals, source text."""

from __future__ import annotations

import ast
from typing import Any

from pydantic import JsonValue

MAX_TEXT = 120
_CONFIG_MODELS = frozenset({"StepConfig", "RetryConfig"})
_NOT_LITERAL = object()


def source(node: ast.AST, limit: int | None = None) -> str:
    """The expression as (normalised) source text, shortened to ``limit`` characters with an ellipsis."""
    text = ast.unparse(node)
    if limit is not None and len(text) > limit:
        return text[: limit - 1].rstrip() + "…"
    return text


def target_text(node: ast.expr) -> str:
    """A loop target as written: ``i, doc`` rather than the normalised ``(i, doc)``."""
    if isinstance(node, ast.Tuple) and node.elts:
        return ", ".join(source(e) for e in node.elts)
    return source(node)


def render_name(node: ast.expr) -> str:
    """A step name as written: literals as is, f-string placeholders kept, anything else as ``{expr}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(_placeholder(value))
        return "".join(parts)
    return "{" + source(node) + "}"


def _placeholder(value: ast.FormattedValue) -> str:
    text = source(value.value)
    if value.conversion != -1:
        text += "!" + chr(value.conversion)
    if value.format_spec is not None:
        spec = render_name(value.format_spec)
        text += ":" + spec
    return "{" + text + "}"


def literal(node: ast.expr) -> Any:
    """The JSON value of a literal expression, or :data:`NOT_LITERAL`.

    Literals are what :func:`ast.literal_eval` accepts and JSON can hold (so no sets or bytes,
    and only string keys), plus ``StepConfig(...)`` / ``RetryConfig(...)`` calls whose
    arguments are all keywords with literal values (shown as the equivalent dict).
    """
    if isinstance(node, ast.Call) and _callee_name(node.func) in _CONFIG_MODELS:
        if node.args or any(kw.arg is None for kw in node.keywords):
            return _NOT_LITERAL
        fields = {kw.arg: literal(kw.value) for kw in node.keywords if kw.arg is not None}
        return _NOT_LITERAL if any(v is _NOT_LITERAL for v in fields.values()) else fields
    if isinstance(node, ast.Dict):
        result: dict[str, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return _NOT_LITERAL
            item = literal(value)
            if item is _NOT_LITERAL:
                return _NOT_LITERAL
            result[key.value] = item
        return result
    if isinstance(node, ast.List | ast.Tuple):
        items = [literal(e) for e in node.elts]
        return _NOT_LITERAL if any(i is _NOT_LITERAL for i in items) else items
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _NOT_LITERAL


def is_literal(value: Any) -> bool:
    """Whether ``value`` came back from :func:`literal` as a literal."""
    return value is not _NOT_LITERAL


def scalar_or_expr(node: ast.expr | None) -> tuple[str | int | float | None, str | None]:
    """A duration-like argument: ``(literal, None)`` for a string or number, else ``(None, source)``."""
    if node is None:
        return None, None
    value = literal(node)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value, None
    return None, source(node)


def config_or_expr(node: ast.expr | None) -> tuple[dict[str, JsonValue] | None, str | None]:
    """A step config argument: ``(dict, None)`` when literal, ``(None, None)`` for ``None``, else ``(None, source)``."""
    if node is None:
        return None, None
    value = literal(node)
    if value is None:
        return None, None
    if isinstance(value, dict):
        return value, None
    return None, source(node)


def bool_or_expr(node: ast.expr | None) -> tuple[bool | None, str | None]:
    """A flag argument: ``(bool, None)`` when a literal bool, else ``(None, source)`` (``(None, None)`` if absent)."""
    if node is None:
        return None, None
    value = literal(node)
    if isinstance(value, bool):
        return value, None
    return None, source(node)


def _callee_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None
