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

Each kind is a :class:`~typing.TypedDict` whose field names *are* those keys, so a record is the
plain dict msgpack decodes (no conversion on the hot path) and the stored format is this module's
class definitions: :func:`encode_record` and :func:`decode_record` are the one codec.
"""

# No ``from __future__ import annotations``: with string annotations the TypedDicts could not
# tell their NotRequired keys apart at runtime (``__optional_keys__``), which the tests check
# stored histories against.
from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict, TypeGuard

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
