"""An instance's recorded history as a file: what ``hutch instances export`` writes and tests load.

The counterpart of Temporal's exported workflow histories: export an instance from a live
deployment, commit the file next to your tests, and replay it against your workflow code with
:func:`hutch.testing.replay_history` — a change that would break instances like it fails there.

The file is JSON with a format name and a version, so a reader knows what it holds::

    {
      "format": "hutch.history",
      "version": 1,
      "workflow": "order",
      "instance_id": "order-42",
      "created_ms": 1795291409829,
      "status": "waiting",
      "params": {...},
      "history": [
        {"k": "step", "n": "validate order", "c": 1, ...},
        ...
      ]
    }

``history`` holds the store's records exactly (hutch/history.py has their keys), one per line
so a diff is readable. JSON has no bytes: a ``bytes`` value (a step result's msgpack ``vb``) is
written as ``{"$bytes": "<base64>"}``, and a user dict that happens to look like such a marker
is wrapped as ``{"$dict": {...}}`` so it reads back as itself. Values the store keeps by reference
(claim check, :mod:`hutch.blobs`) travel with the history: ``blobs`` maps each reference's key to
the value's msgpack bytes, and a reference inside a record (an event's payload) is written as
``{"$blob": {"key": ..., "size": ...}}``. Version 1 readers ignore keys they do not know; a
change that old readers would misread gets a new version.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Final, Literal

from hutch.blobs import BlobRef
from hutch.errors import InvalidInputError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT: Final = "hutch.history"
VERSION: Final = 1
BYTES_MARKER = "$bytes"
DICT_MARKER = "$dict"
BLOB_MARKER = "$blob"
_MARKERS = frozenset({BYTES_MARKER, DICT_MARKER, BLOB_MARKER})


class InstanceHistory(BaseModel):
    """One instance's recorded history and what replaying it needs.

    Attributes:
        workflow: the workflow's name.
        instance_id: the instance's id.
        created_ms: when the instance was created (epoch ms): ``event.timestamp`` in ``run()``.
        params: the instance's params (``event.payload``).
        status: the instance's status when the history was read.
        history: the history records, as the store holds them (``bytes`` values decoded).
        blobs: the values its records hold by reference (:mod:`hutch.blobs`): key → msgpack
            bytes, what replay hands to ``run()`` in their place.
    """

    model_config = ConfigDict(frozen=True)

    format: Literal["hutch.history"] = FORMAT
    version: Literal[1] = VERSION
    workflow: str
    instance_id: str
    created_ms: int
    status: str
    params: Any = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    blobs: dict[str, bytes] = Field(default_factory=dict)


def to_json(value: Any) -> Any:
    """Make a history value JSON-safe: bytes become ``{"$bytes": base64}`` (see the module docstring)."""
    if isinstance(value, bytes):
        return {BYTES_MARKER: base64.b64encode(value).decode()}
    if isinstance(value, BlobRef):
        return {BLOB_MARKER: {"key": value.key, "size": value.size}}
    if isinstance(value, dict):
        encoded = {k: to_json(v) for k, v in value.items()}
        return {DICT_MARKER: encoded} if len(value) == 1 and set(value) <= _MARKERS else encoded
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """Undo :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {BYTES_MARKER}:
            return base64.b64decode(value[BYTES_MARKER])
        if set(value) == {BLOB_MARKER}:
            return BlobRef(value[BLOB_MARKER]["key"], value[BLOB_MARKER]["size"])
        if set(value) == {DICT_MARKER}:
            return {k: from_json(v) for k, v in value[DICT_MARKER].items()}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def dumps_history(history: InstanceHistory) -> str:
    """The file text of ``history``: readable metadata, then one record per line."""
    head = {k: to_json(v) for k, v in history.model_dump(exclude={"history"}).items()}
    records = ",\n".join("    " + json.dumps(to_json(r)) for r in history.history)
    body = "\n" + records + "\n  " if records else ""
    return json.dumps(head, indent=2)[:-2] + f',\n  "history": [{body}]\n}}\n'


def loads_history(text: str | bytes, *, source: str = "the history") -> InstanceHistory:
    """Read a history file's text.

    Raises:
        InvalidInputError: the text is not JSON, not a Hutch history, or of a version this Hutch
            does not read; the message names ``source`` and what is wrong.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{source} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InvalidInputError(
            f'{source} is not a Hutch instance history (no "format": {FORMAT!r}); '
            "write one with: hutch instances export NAME ID --out FILE"
        )
    if raw.get("version") != VERSION:
        raise InvalidInputError(
            f"{source} is a version {raw.get('version')!r} Hutch history; this Hutch reads version {VERSION}: "
            "upgrade Hutch, or export the instance again with this one"
        )
    try:
        return InstanceHistory.model_validate({k: from_json(v) for k, v in raw.items()})
    except ValidationError as exc:
        raise InvalidInputError(f"{source} is not a valid Hutch history: {exc}") from None


def load_history(path: str | Path) -> InstanceHistory:
    """Read a history file written by ``hutch instances export`` (or :func:`save_history`).

    Raises:
        InvalidInputError: the file is not a Hutch history this version reads.
        OSError: the file cannot be read.
    """
    path = Path(path)
    return loads_history(path.read_bytes(), source=str(path))


def save_history(history: InstanceHistory, path: str | Path) -> None:
    """Write ``history`` to ``path`` in the file format :func:`load_history` reads."""
    Path(path).write_text(dumps_history(history))
