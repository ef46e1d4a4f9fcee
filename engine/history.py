"""The records an instance's history is made of.

History is an append-only list in Redis; every record is a msgpack map with short keys.
Records fall in three families:

* **commands** the workflow issued, in issue order — replay re-issues them and checks each
  against the record at the same position (``k`` = ``step`` | ``sleep`` | ``wait`` | ``cancel``);
* **resolutions** (``k`` = ``res``) that settled a command, grouped by ``g``: replay delivers
  each group at once and lets the workflow run until it blocks, exactly as the live run did;
* **bookkeeping** (``att``, ``attend``, ``life``, ``retime``) for ``describe()``, ignored by replay.

Keys: ``n`` name, ``c`` count, ``g`` group, ``t`` time (epoch ms), ``ref`` the kind a
resolution or cancel refers to, ``ok``/``vb``/``err`` the outcome (``vb`` holds msgpack bytes of
the value), ``due`` a timer's due time (epoch ms), ``a`` attempt number, ``cfg`` a step's resolved
config, ``deps`` the names of the steps a DAG step depends on (only on DAG step commands).
"""

from __future__ import annotations

from typing import Any, Literal

Kind = Literal["step", "sleep", "wait"]
Key = tuple[str, str, int]  # (kind, name, count)

COMMAND_KINDS = frozenset({"step", "sleep", "wait", "cancel"})

Record = dict[str, Any]


def key_of(record: Record) -> Key:
    """The (kind, name, count) a command, resolution or cancel record is about."""
    kind = record["k"]
    if kind in ("res", "cancel"):
        return (record["ref"], record["n"], record["c"])
    if kind in ("att", "attend"):
        return ("step", record["n"], record["c"])
    return (kind, record["n"], record["c"])


def describe_command(record: Record) -> str:
    """How a command reads in a nondeterminism message: ``step 'charge card'#1``."""
    kind = record["k"]
    if kind == "cancel":
        return f"cancel of {record['ref']} {record['n']!r}#{record['c']}"
    return f"{kind} {record['n']!r}#{record['c']}"
