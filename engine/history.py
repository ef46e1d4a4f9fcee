"""The records an instance's history is made of.

History is an append-only list in Redis; every record is a msgpack map with short keys.
Records fall in four families:

* **commands** the workflow issued, in issue order — replay re-issues them and checks each
  against the record at the same position (``k`` = ``step`` | ``sleep`` | ``wait`` | ``invoke`` |
  ``cancel``);
* **resolutions** (``k`` = ``res``) that settled a command, grouped by ``g``: replay delivers
  each group at once and lets the workflow run until it blocks, exactly as the live run did;
* **bookkeeping** (``att``, ``attend``, ``life``, ``retime``) for ``describe()``, ignored by replay;
* **markers** (``k`` = ``patch``): ``step.patched(id)`` / ``step.deprecate_patch(id)`` was first
  reached here. A marker sits among the commands, in issue order: replay answers ``patched`` True
  only where history has its marker (see :meth:`hutch.executor.WorkflowRun.patched`).

Keys: ``n`` name, ``c`` count, ``g`` group, ``t`` time (epoch ms), ``ref`` the kind a
resolution or cancel refers to, ``ok``/``vb``/``err`` the outcome (``vb`` holds msgpack bytes of
the value), ``due`` a timer's due time (epoch ms), ``a`` attempt number, ``cfg`` a step's resolved
config, ``deps`` the names of the steps a DAG step depends on (only on DAG step commands); an
invoke's ``wf``/``id`` name its child, ``pb`` holds the child's params (msgpack; over the inline threshold, the
bytes of their reference, hutch.blobs, stored under this instance) and ``close`` its ``parent_close`` policy.

Each kind is a :class:`~typing.TypedDict` whose field names *are* those keys: a record is a plain
dict. Two stored forms exist, and a history may mix them (records of either decode alike):

* **format 1**, every record a msgpack map of exactly those keys (:func:`encode_record`,
  :func:`decode_record`), absolute epoch-ms times;
* **format 2** (:func:`encode_history`, :func:`decode_history`), written by deployments recorded
  with it (see :mod:`hutch.store.redis`): the common shapes (:data:`_SHAPES`) as a msgpack array
  ``[code, values...]`` holding only the values, times relative to the instance's creation,
  constants and the default step config (:data:`DEFAULT_STEP_CONFIG`) left out, a step command
  and its first attempt's start folded into one record, and a step's successful attempt end
  folded into its resolution. Every other record (rarer shapes) is stored as in format 1. The
  decoder gives back the very records, key order included, so nothing reading history (replay,
  ``describe()``, export, verify) can tell the forms apart.
"""

# No ``from __future__ import annotations``: with string annotations the TypedDicts could not
# tell their NotRequired keys apart at runtime (``__optional_keys__``), which the tests check
# stored histories against.
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, TypeGuard, cast

from hutch.serialization import pack, unpack

Kind = Literal["step", "sleep", "wait", "invoke"]
TimerCommandKind = Literal["sleep", "wait"]  # the commands a timer settles
Key = tuple[Kind, str, int]  # (kind, name, count)
ErrorRecord = dict[str, str]  # ``{"name", "message"}``: see hutch.errors.error_record
LifeEvent = Literal["started", "paused", "resumed", "terminated", "restarted", "rollback"]
TimerKind = Literal["sleep", "wait", "retry"]  # what a timer is for (a retry's timer belongs to a step)
RetryWait = Literal["backoff", "error"]  # where a retry's wait came from: the config's backoff, or the error


# ----------------------------------------------------------------------------- commands
class StepCommand(TypedDict):
    """``step.do`` was issued."""

    k: Literal["step"]
    n: str
    c: int
    g: int  # the group whose delivery led to the command (informational)
    t: int
    cfg: dict[str, Any]  # the resolved StepConfig
    deps: NotRequired[list[str]]  # DAG steps only


class SleepCommand(TypedDict):
    """``step.sleep`` / ``step.sleep_until`` was issued."""

    k: Literal["sleep"]
    n: str
    c: int
    g: int
    t: int
    due: int


class WaitCommand(TypedDict):
    """``step.wait_for_event`` was issued."""

    k: Literal["wait"]
    n: str
    c: int
    g: int
    t: int
    due: int  # when it times out
    type: str  # the event type it waits for


class InvokeCommand(TypedDict):
    """``step.invoke`` was issued: the child ``wf``/``id`` is created after the commit and its end resolves it."""

    k: Literal["invoke"]
    n: str
    c: int
    g: int
    t: int
    wf: str  # the child's workflow
    id: str  # the child's instance id
    pb: bytes  # the child's params, msgpack, or a reference's (hutch.blobs.stored_ref) when large
    close: Literal["terminate", "abandon"]  # what the parent's end does to the child while it runs


class CancelCommand(TypedDict):
    """Workflow code cancelled the pending command ``(ref, n, c)``."""

    k: Literal["cancel"]
    ref: Kind
    n: str
    c: int
    g: int
    t: int


Command = StepCommand | SleepCommand | WaitCommand | InvokeCommand | CancelCommand
TimerCommand = SleepCommand | WaitCommand


# ----------------------------------------------------------------------------- resolutions
class EventRecord(TypedDict):
    """An event as buffered and as a wait's resolution holds it."""

    type: str
    payload: Any
    ts: int  # sent, epoch ms
    id: str


class Resolution(TypedDict):
    """The command ``(ref, n, c)`` settled.

    ``ok`` with ``vb`` (a step's value or a child's output; absent for ``None``) or ``ev`` (a wait's event); not ok
    with ``err``. ``v`` is the decoded value the live path hands to the run alongside ``vb``; it is
    never stored.
    """

    k: Literal["res"]
    ref: Kind
    n: str
    c: int
    ok: bool
    g: int
    t: int
    vb: NotRequired[bytes]
    ev: NotRequired[EventRecord]
    err: NotRequired[ErrorRecord]
    v: NotRequired[Any]


# ----------------------------------------------------------------------------- bookkeeping
class AttemptStarted(TypedDict):
    """Attempt ``a`` of step ``(n, c)`` started."""

    k: Literal["att"]
    n: str
    c: int
    a: int
    t: int


class AttemptEnded(TypedDict):
    """Attempt ``a`` of step ``(n, c)`` ended; a failed one has ``err`` and, if retried, ``retry_at``.

    ``wait`` says where a retry's wait came from (histories before it: the backoff); ``stop``
    marks the failed attempt after which the step's ``retry_if`` refused to retry.
    """

    k: Literal["attend"]
    n: str
    c: int
    a: int
    ok: bool
    t: int
    err: NotRequired[ErrorRecord]
    retry_at: NotRequired[int]
    wait: NotRequired[RetryWait]
    stop: NotRequired[Literal["retry_if"]]


class Lifecycle(TypedDict):
    """The instance started, was paused, resumed, terminated or restarted, or a terminate's rollback began.

    ``g``: of a pause, the group results arriving during the pause join; of a rollback, the first
    group replay delivers after starting the undos (the workflow's own code gets none of them).
    ``frm`` (a restart from a step): the step, as ``[name, count, type or None]``.
    """

    k: Literal["life"]
    what: LifeEvent
    t: int
    g: NotRequired[int]
    # "from" is a Python keyword: the TypedDict's functional form would be needed to declare it, so a
    # restart from a step records it under this key, read with .get().
    frm: NotRequired[list[Any]]


class Retimed(TypedDict):
    """A resume re-armed the timer of ``(ref, n, c)`` at ``due``."""

    k: Literal["retime"]
    ref: TimerKind
    n: str
    c: int
    due: int
    t: int


Bookkeeping = AttemptStarted | AttemptEnded | Lifecycle | Retimed


# ----------------------------------------------------------------------------- markers
class PatchMarker(TypedDict):
    """Workflow code reached ``step.patched(n)`` (or ``step.deprecate_patch(n)``: ``dep``) on code with the patch."""

    k: Literal["patch"]
    n: str  # the patch id
    g: int
    t: int
    dep: NotRequired[bool]  # recorded by deprecate_patch


Record = Command | Resolution | Bookkeeping | PatchMarker
Issued = Command | PatchMarker  # what workflow code issued, in order: replay checks it position by position

COMMAND_KINDS = frozenset({"step", "sleep", "wait", "invoke", "cancel"})


# ----------------------------------------------------------------------------- the codec
# Records are the plain dicts msgpack reads and writes, so the codec is msgpack itself, typed
# (aliases, not wrappers: decoding a long history pays no extra call per record).
encode_record: Callable[[Record], bytes] = pack
"""A record as the history list stores it."""

decode_record: Callable[[bytes], Record] = unpack
"""A stored history record (trusted: the engine wrote it; histories of every version decode)."""


def is_command(record: Record) -> TypeGuard[Command]:
    """Whether replay re-issues this record (a command) rather than delivering or ignoring it."""
    return record["k"] in COMMAND_KINDS


def is_issued(record: Record) -> TypeGuard[Issued]:
    """Whether the record holds a position in the order workflow code issued things (a command or a marker)."""
    return record["k"] in COMMAND_KINDS or record["k"] == "patch"


def key_of(record: Command | Resolution | AttemptStarted | AttemptEnded) -> Key:
    """The (kind, name, count) a command, resolution, cancel or attempt record is about."""
    if record["k"] == "res" or record["k"] == "cancel":
        return (record["ref"], record["n"], record["c"])
    if record["k"] == "att" or record["k"] == "attend":
        return ("step", record["n"], record["c"])
    return (record["k"], record["n"], record["c"])


def describe_command(record: Issued) -> str:
    """How a command reads in a nondeterminism message: ``step 'charge card'#1``."""
    if record["k"] == "patch":
        return f"patch marker {record['n']!r}"
    if record["k"] == "cancel":
        return f"cancel of {record['ref']} {record['n']!r}#{record['c']}"
    return f"{record['k']} {record['n']!r}#{record['c']}"


# ----------------------------------------------------------------------------- format 2
HISTORY_FORMAT = 2
"""The newest stored form this code writes (when its deployment was recorded with it) and reads."""

DEFAULT_STEP_CONFIG: dict[str, Any] = {
    "retries": {"limit": 5, "delay": 10.0, "backoff": "exponential", "max_delay": None},
    "timeout": 600.0,
}
"""The step config a format 2 step command leaves out: a literal, part of the stored format.

It equals today's ``StepConfig().model_dump()``; if the defaults ever change, this stays (a step
with the new defaults is then stored with its config, and stored commands keep reading as written).
"""


def _default_config() -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULT_STEP_CONFIG` (a record's dicts are its own)."""
    return {"retries": dict(DEFAULT_STEP_CONFIG["retries"]), "timeout": DEFAULT_STEP_CONFIG["timeout"]}


def _is_default_config(cfg: Any) -> bool:
    """Whether ``cfg`` is :data:`DEFAULT_STEP_CONFIG`, types included (10 for 10.0 must not read back as 10.0)."""
    if cfg != DEFAULT_STEP_CONFIG:
        return False
    retries = cfg["retries"]
    return type(cfg["timeout"]) is float and type(retries["delay"]) is float and type(retries["limit"]) is int


# A shape: its code, its keys in order ("k" first) and the keys whose value is a constant (not
# stored). Codes are stored: never renumber or reuse one; a new shape takes a new code.
_SHAPE_TABLE: tuple[tuple[int, tuple[str, ...], dict[str, Any]], ...] = (
    (1, ("k", "what", "t"), {"k": "life"}),
    (2, ("k", "n", "c", "g", "t", "cfg"), {"k": "step"}),
    (3, ("k", "n", "c", "g", "t", "cfg", "deps"), {"k": "step"}),
    (4, ("k", "n", "c", "a", "t"), {"k": "att"}),
    (5, ("k", "n", "c", "a", "ok", "t"), {"k": "attend", "ok": True}),
    (6, ("k", "ref", "n", "c", "ok", "vb", "t", "g"), {"k": "res", "ref": "step", "ok": True}),
    (7, ("k", "ref", "n", "c", "ok", "t", "g"), {"k": "res", "ok": True}),
    (8, ("k", "ref", "n", "c", "ok", "ev", "t", "g"), {"k": "res", "ref": "wait", "ok": True}),
    (9, ("k", "ref", "n", "c", "ok", "err", "t", "g"), {"k": "res", "ok": False}),
    (10, ("k", "n", "c", "g", "t", "due"), {"k": "sleep"}),
    (11, ("k", "n", "c", "g", "t", "due", "type"), {"k": "wait"}),
)
_TIMES = ("t", "due")


@dataclass(frozen=True, slots=True)
class _Shape:
    code: int
    keys: tuple[str, ...]
    constants: tuple[tuple[str, Any], ...]
    stored: tuple[str, ...]  # the keys whose values are stored, in order
    get: Callable[[Any], tuple[Any, ...]]  # their values out of a record, at once
    times: tuple[int, ...]  # positions (in [code, values...]) of the times, stored relative
    cfg: int  # position of the step config (0: none)
    layout: tuple[tuple[str, Any], ...]  # every key, with its constant or _STORED


_STORED = object()


def _shape(code: int, keys: tuple[str, ...], constants: dict[str, Any]) -> _Shape:
    stored = tuple(k for k in keys if k not in constants)
    times = tuple(1 + stored.index(k) for k in _TIMES if k in stored)
    cfg = 1 + stored.index("cfg") if "cfg" in stored else 0
    layout = tuple((k, constants.get(k, _STORED)) for k in keys)
    return _Shape(code, keys, tuple(constants.items()), stored, operator.itemgetter(*stored), times, cfg, layout)


_SHAPES: dict[tuple[str, ...], list[_Shape]] = {}  # keys in order -> its shapes (constants tell them apart)
_BY_CODE: dict[int, _Shape] = {}
for _code, _keys, _constants in _SHAPE_TABLE:
    _SHAPES.setdefault(_keys, []).append(_shape(_code, _keys, _constants))
    _BY_CODE[_code] = _shape(_code, _keys, _constants)
_STEP_CODES = frozenset({2, 3})
_ATT_KEYS = ("k", "n", "c", "a", "t")
_STEP_KEYS = ("k", "n", "c", "g", "t", "cfg")
_ATTEND_OK_KEYS = ("k", "n", "c", "a", "ok", "t")
_RES_VALUE_KEYS = ("k", "ref", "n", "c", "ok", "vb", "t", "g")
_ATTEND_OK = 5
_RES_VALUE = 6


def _compact(record: Record, created_ms: int) -> list[Any] | None:
    """The record as ``[code, values...]``, or None when its shape has no code (stored as format 1)."""
    shapes = _SHAPES.get(tuple(record))
    if shapes is None:
        return None
    for shape in shapes:
        for key, value in shape.constants:
            found = record[key]  # type: ignore[literal-required]
            if found != value or type(found) is not type(value):
                break
        else:
            out = [shape.code, *shape.get(record)]
            for i in shape.times:
                out[i] -= created_ms
            if shape.cfg and _is_default_config(out[shape.cfg]):
                out[shape.cfg] = None
            return out
    return None


def encode_history(records: Sequence[Record], created_ms: int) -> list[bytes]:
    """Records as format 2 stores them (fewer stored records than logical ones: see the module).

    Folding only joins neighbours within ``records`` (one commit), so each stored record decodes
    on its own. ``created_ms`` is the instance's creation time, the times' origin.
    """
    out: list[bytes] = []
    i, n = 0, len(records)
    while i < n:
        record: Any = records[i]
        nxt: Any = records[i + 1] if i + 1 < n else None
        # The two folds every step makes, spelled out (the per-step path): what the general code
        # below does for them, at half the cost.
        if nxt is not None:
            keys, after = tuple(record), tuple(nxt)
            if (
                keys == _STEP_KEYS
                and after == _ATT_KEYS
                and record["k"] == "step"
                and nxt["k"] == "att"
                and nxt["a"] == 1
                and type(nxt["a"]) is int
                and nxt["n"] == record["n"]
                and nxt["c"] == record["c"]
            ):
                cfg = record["cfg"]
                t = record["t"]
                cfg = None if _is_default_config(cfg) else cfg
                out.append(pack([2, record["n"], record["c"], record["g"], t - created_ms, cfg, nxt["t"] - t]))
                i += 2
                continue
            if (
                keys == _ATTEND_OK_KEYS
                and after == _RES_VALUE_KEYS
                and record["k"] == "attend"
                and record["ok"] is True
                and nxt["k"] == "res"
                and nxt["ref"] == "step"
                and nxt["ok"] is True
                and nxt["n"] == record["n"]
                and nxt["c"] == record["c"]
            ):
                t = nxt["t"]
                out.append(
                    pack([6, nxt["n"], nxt["c"], nxt["vb"], t - created_ms, nxt["g"], record["a"], record["t"] - t])
                )
                i += 2
                continue
        compact = _compact(record, created_ms)
        i += 1
        if compact is None:
            out.append(pack(record))
            continue
        nxt = records[i] if i < n else None
        if compact[0] in _STEP_CODES:
            # The step's first attempt started in the same commit: its start rides on the command.
            if (
                nxt is not None
                and tuple(nxt) == _ATT_KEYS
                and nxt["k"] == "att"
                and nxt["a"] == 1
                and type(nxt["a"]) is int
                and nxt["n"] == compact[1]
                and nxt["c"] == compact[2]
                and type(nxt["t"]) is int
            ):
                compact.append(nxt["t"] - record["t"])
                i += 1
        elif compact[0] == _ATTEND_OK and nxt is not None:
            # A successful attempt's end right before the step's resolution: it rides on the resolution.
            res = _compact(nxt, created_ms)
            if res is not None and res[0] == _RES_VALUE and res[1] == compact[1] and res[2] == compact[2]:
                res += [compact[3], record["t"] - nxt["t"]]
                compact = res
                i += 1
        out.append(pack(compact))
    return out


def _expand(compact: list[Any], created_ms: int, into: list[Record]) -> None:
    shape = _BY_CODE.get(compact[0])
    if shape is None:
        raise ValueError(f"history record of unknown format 2 code {compact[0]!r} (written by a newer version?)")
    n = len(shape.stored)
    values = compact[1 : n + 1]
    for i in shape.times:
        values[i - 1] += created_ms
    if shape.cfg and values[shape.cfg - 1] is None:
        values[shape.cfg - 1] = _default_config()
    stored = iter(values)
    # In the record's own key order, constants in their places.
    record: dict[str, Any] = {key: next(stored) if fixed is _STORED else fixed for key, fixed in shape.layout}
    extra = compact[n + 1 :]
    if not extra:
        into.append(cast("Record", record))
    elif shape.code in _STEP_CODES:  # [att t - command t]
        into.append(cast("Record", record))
        into.append({"k": "att", "n": record["n"], "c": record["c"], "a": 1, "t": record["t"] + extra[0]})
    else:  # a value resolution: [attempt, attempt end t - resolution t]
        into.append(
            {"k": "attend", "n": record["n"], "c": record["c"], "a": extra[0], "ok": True, "t": record["t"] + extra[1]}
        )
        into.append(cast("Record", record))


def decode_history(raw: Iterable[bytes], created_ms: int) -> list[Record]:
    """Stored records of either format (a history may mix them) as the records they hold, in order."""
    out: list[Record] = []
    for data in raw:
        value = unpack(data)
        if type(value) is not list:
            out.append(value)
        elif len(value) == 7 and value[0] == 2:  # a step and its first attempt's start (the common case)
            _, name, count, group, t, cfg, att = value
            t += created_ms
            cfg = _default_config() if cfg is None else cfg
            out.append({"k": "step", "n": name, "c": count, "g": group, "t": t, "cfg": cfg})
            out.append({"k": "att", "n": name, "c": count, "a": 1, "t": t + att})
        elif len(value) == 8 and value[0] == 6:  # a successful attempt's end and the step's value
            _, name, count, vb, t, group, attempt, end = value
            t += created_ms
            out.append({"k": "attend", "n": name, "c": count, "a": attempt, "ok": True, "t": t + end})
            out.append({"k": "res", "ref": "step", "n": name, "c": count, "ok": True, "vb": vb, "t": t, "g": group})
        else:
            _expand(value, created_ms, out)
    return out
