"""Templates that turn an incoming message into an instance id or an event type.

Webhook routes and queue consumers in ``hutch.toml`` name the instance (and the event type) with
a template over the message, so that the same message always maps to the same instance::

    id = "order-{body.orderId}"                 # a field of the JSON/msgpack body
    instance_id = "{body.data.object.metadata.orderId}"
    event_type = "github-{headers.x-github-event}"
    id = "{message_id}"                          # the AMQP message id (queue consumers only)

Grammar: literal text with ``{field}`` placeholders; ``{{`` and ``}}`` are literal braces. A field
is a root followed by dotted segments:

- ``body.a.b.0.c``: walks objects by key and arrays by index (a segment of digits);
- ``headers.name``: a header, matched case-insensitively (everything after ``headers.`` is the
  name, so ``{headers.x.y}`` reads the header ``x.y``);
- ``message_id``: the AMQP ``message_id`` property.

A placeholder renders strings as they are, integers in decimal, booleans as ``true``/``false``.
A missing field, ``null``, an object or an array cannot be rendered: :meth:`Template.render`
raises :class:`TemplateError` naming the template and the field, which webhooks answer with 400
and queue consumers dead-letter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hutch.errors import InvalidInputError

BODY = "body"
HEADERS = "headers"
MESSAGE_ID = "message_id"

#: The roots a webhook template may use.
WEBHOOK_ROOTS = frozenset({BODY, HEADERS})
#: The roots a queue-consumer template may use.
QUEUE_ROOTS = frozenset({BODY, HEADERS, MESSAGE_ID})


class TemplateError(InvalidInputError):
    """A template is malformed, or a message lacks a field the template needs.

    Attributes:
        template: the template's source text.
        field: the placeholder that failed (None for a syntax error of the whole template).
    """

    def __init__(self, message: str, *, template: str | None = None, field: str | None = None) -> None:
        super().__init__(message if template is None else f"template {template!r}: {message}")
        self.template = template
        self.field = field


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a template can read from one message.

    Attributes:
        body: the decoded body (JSON or msgpack): usually a dict, possibly a list or a scalar.
        headers: the message's headers; :meth:`from_headers` lower-cases the names.
        message_id: the AMQP ``message_id`` (None for webhooks, or when the publisher set none).
    """

    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id: str | None = None

    @classmethod
    def from_headers(cls, body: Any, headers: Mapping[str, Any], message_id: str | None = None) -> MessageContext:
        """A context whose header names are lower-cased (header values that are not text are dropped)."""
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str | int) and not isinstance(value, bool):
                lowered[str(name).lower()] = str(value)
        return cls(body=body, headers=lowered, message_id=message_id)


@dataclass(frozen=True, slots=True)
class _Field:
    text: str  # as written between the braces, for error messages
    root: str
    path: tuple[str, ...]


class Template:
    """A parsed template; :meth:`render` fills it from a :class:`MessageContext`.

    Args:
        source: the template text, e.g. ``"order-{body.orderId}"``.
        roots: the roots its fields may use (:data:`WEBHOOK_ROOTS` or :data:`QUEUE_ROOTS`).

    Raises:
        TemplateError: the text is malformed (unclosed brace, empty or unknown field).
    """

    __slots__ = ("_parts", "fields", "source")

    def __init__(self, source: str, *, roots: frozenset[str] = QUEUE_ROOTS) -> None:
        if not isinstance(source, str):
            raise TemplateError(template=repr(source), message="must be a string")
        self.source = source
        self._parts = _parse(source, roots)
        self.fields: tuple[str, ...] = tuple(p.text for p in self._parts if isinstance(p, _Field))

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def render(self, context: MessageContext) -> str:
        """The text with every placeholder replaced.

        Raises:
            TemplateError: a field is missing, null, an object or an array.
        """
        out: list[str] = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else self._value(part, context))
        return "".join(out)

    def _value(self, fld: _Field, context: MessageContext) -> str:
        if fld.root == MESSAGE_ID:
            if context.message_id is None or context.message_id == "":
                raise TemplateError(
                    template=self.source, message="the message has no message_id property", field=fld.text
                )
            return context.message_id
        if fld.root == HEADERS:
            name = ".".join(fld.path).lower()
            value = context.headers.get(name)
            if value is None:
                raise TemplateError(template=self.source, message=f"the message has no header {name!r}", field=fld.text)
            return value
        return self._scalar(fld, _walk(self.source, fld, context.body))

    def _scalar(self, fld: _Field, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float) and math.isfinite(value):
            return str(int(value)) if value.is_integer() else repr(value)
        kind = "null" if value is None else "an object" if isinstance(value, Mapping) else "an array"
        if isinstance(value, bytes):
            kind = "binary data"
        elif not (value is None or isinstance(value, Mapping | list | tuple)):
            kind = f"a {type(value).__name__}"
        raise TemplateError(
            template=self.source, message=f"{fld.text} is {kind}, not a string or a number", field=fld.text
        )


def _walk(source: str, fld: _Field, body: Any) -> Any:
    value = body
    where = BODY
    for segment in fld.path:
        if isinstance(value, Mapping):
            if segment not in value:
                raise TemplateError(template=source, message=f"{where} has no field {segment!r}", field=fld.text)
            value = value[segment]
        elif isinstance(value, list | tuple):
            if not segment.isdecimal() or int(segment) >= len(value):
                raise TemplateError(
                    template=source,
                    message=f"{where} is an array of {len(value)}; {segment!r} is not an index in it",
                    field=fld.text,
                )
            value = value[int(segment)]
        else:
            kind = "null" if value is None else type(value).__name__
            raise TemplateError(
                template=source, message=f"{where} is {kind}, so it has no field {segment!r}", field=fld.text
            )
        where = f"{where}.{segment}"
    return value


def _parse(source: str, roots: frozenset[str]) -> list[str | _Field]:
    parts: list[str | _Field] = []
    literal: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "{" and source.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and source.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise TemplateError(
                template=source, message=f"unmatched '}}' at position {i}; write '}}}}' for a literal brace"
            )
        elif ch == "{":
            end = source.find("}", i + 1)
            if end < 0:
                raise TemplateError(template=source, message=f"'{{' at position {i} is never closed")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_field(source, source[i + 1 : end], roots))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _field(source: str, text: str, roots: frozenset[str]) -> _Field:
    allowed = ", ".join(sorted(roots))
    if "{" in text:
        raise TemplateError(template=source, message=f"'{{' inside the placeholder {{{text}}}")
    root, *path = text.strip().split(".")
    if root not in roots:
        raise TemplateError(template=source, message=f"placeholder {{{text}}} must start with one of: {allowed}")
    if any(not segment for segment in path):
        raise TemplateError(template=source, message=f"placeholder {{{text}}} has an empty segment")
    if root == HEADERS and not path:
        raise TemplateError(
            template=source, message="placeholder {headers} needs a header name, e.g. {headers.x-request-id}"
        )
    if root == MESSAGE_ID and path:
        raise TemplateError(template=source, message=f"placeholder {{{text}}}: message_id has no fields")
    return _Field(text=text.strip(), root=root, path=tuple(path))
