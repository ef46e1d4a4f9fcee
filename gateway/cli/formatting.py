"""How the ``hutch`` commands write values for people: durations, times, JSON, errors, symbols and tables.

Every command prints through these, so a duration reads the same in ``hutch run``'s live view,
``hutch instances describe``'s timeline and a list. Long values are cut with ``...`` at a limit
(80 characters on a progress line, a standard terminal's width; 400 in a timeline cell).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from hutch import ErrorInfo
from hutch.gateway.progress.model import iso_time
from rich.console import Console
from rich.table import Table

LINE_CHARS = 80
"""How many characters a value may take on one progress line before it is cut."""

_UNICODE = {
    "ok": "✓", "fail": "✗", "retry": "↻", "sleep": "☾", "wake": "☀", "wait": "⧗", "send": "→",
    "run": "▶", "off": "·", "sub": "↳",
}  # fmt: skip
_ASCII = {
    "ok": "+", "fail": "x", "retry": "~", "sleep": "z", "wake": "^", "wait": "?", "send": ">",
    "run": ">", "off": "-", "sub": "-",
}  # fmt: skip


def glyphs(console: Console) -> dict[str, str]:
    """The symbols to use on ``console``: Unicode when it can encode them, ASCII otherwise."""
    return _UNICODE if (console.encoding or "").lower().startswith("utf") else _ASCII


# --------------------------------------------------------------------------- durations and times
def duration_text(seconds: float) -> str:
    """``5 ms``, ``1.25 s``, ``2 min 5 s``, ``3 h 10 min``, ``2 d 4 h``."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, sec = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ms_text(ms: int | None) -> str:
    """A duration in whole milliseconds as :func:`duration_text` writes it; ``?`` when unknown."""
    return "?" if ms is None else duration_text(ms / 1000)


def until_text(due: datetime | None, now: datetime) -> str:
    """How long from ``now`` until ``due`` (zero once it passed); ``?`` when there is no due time."""
    return "?" if due is None else duration_text(max(0.0, (due - now).total_seconds()))


def offset_text(when: datetime | None, base: datetime) -> str:
    """``+1.50 s``: when something happened relative to ``base`` (the instance's start)."""
    if when is None:
        return ""
    seconds = (when - base).total_seconds()
    return ("+" if seconds >= 0 else "-") + duration_text(abs(seconds))


def utc_clock(when: datetime | None) -> str:
    """``2026-01-01 00:00:00``: the UTC date and time, as lists and timelines show them."""
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def local_clock(when: datetime | None) -> str:
    """``14:03:07.250``: local wall time to the millisecond, with the date when it is not today (live progress)."""
    if when is None:
        return "?"
    local = when.astimezone()
    if local.date() != datetime.now().astimezone().date():
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from the REST API as an aware datetime (UTC when it names no zone); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- values
def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for what instance data can hold: datetimes, bytes, tuples-as-lists."""
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    """``value`` as indented JSON for ``--json`` output (non-ASCII kept as it is)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def compact(value: Any, limit: int = LINE_CHARS) -> str:
    """``value`` as one line of JSON, cut with ``...`` to at most ``limit`` characters."""
    return truncate(json.dumps(value, default=jsonable, ensure_ascii=False), limit)


def truncate(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and ``...`` in exactly ``limit``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(error: ErrorInfo | None) -> str:
    """``Name: message`` of a recorded error."""
    return f"{error.name}: {error.message}" if error is not None else "unknown error"


# --------------------------------------------------------------------------- tables
def list_table(title: str | None = None, **options: Any) -> Table:
    """A table of rows under bold headers, without an outer frame (the lists and the timeline)."""
    return Table(show_edge=False, header_style="bold", title=title, title_justify="left", **options)
