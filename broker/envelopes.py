"""The messages that carry every state change of an instance to its partition's owner.

Bodies are msgpack maps validated by these pydantic models on the way in; anything that does
not validate is a poison message and goes to the dead-letter queue with the reason.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgpack
from hutch.restart import FromStep
from hutch.status import Action
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    workflow: str
    instance_id: str


class InstanceCreated(_Envelope):
    """An instance was created (its record is already in Redis) and should start.

    It also carries the meta fields the client wrote at creation (params, creation time, trigger,
    trace context... as stored), so the owner starts a brand-new instance without reading it back
    (absent in messages of older clients: the owner then loads it).
    """

    kind: Literal["created"] = "created"
    fields: dict[str, bytes | str | int] | None = None


class EventReceived(_Envelope):
    """An event was sent to an instance: delivered to a matching wait or buffered."""

    kind: Literal["event"] = "event"
    event_type: str
    payload: bytes  # msgpack of the user's payload, size-checked by the sender
    sent_ms: int


class TimerFired(_Envelope):
    """A sleep ended, a retry is due, or a wait timed out."""

    kind: Literal["timer"] = "timer"
    timer: bytes  # the timer's member in the partition's sorted set


class Control(_Envelope):
    """A lifecycle request; ``from_step`` (restart) runs again from a step, ``rollback`` (terminate) runs the undos."""

    kind: Literal["control"] = "control"
    action: Action
    from_step: FromStep | None = None
    rollback: bool = False


class ControlTarget(BaseModel):
    """One instance of a :class:`ControlBatch`; ``run``: act only while the instance is still on that run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str
    instance_id: str
    run: int | None = None


class ControlBatch(BaseModel):
    """One lifecycle request for many instances of one partition (bulk jobs), fanned out by its owner.

    Each target is applied exactly as a :class:`Control` of its own would be (terminate, pause and
    resume of an instance already so change nothing); a target with a ``run`` is applied only while
    the instance is still on that run, so a redelivered batch never restarts an instance twice. The
    delivery is settled once every target is: acknowledged when all were applied (an instance that
    no longer exists has nothing to apply), requeued when one must be retried.

    Workers before this kind dead-letter it as an invalid message, so senders publish it only when
    every live worker announced it can take it (``Keys.worker_feature``), else one :class:`Control`
    per instance.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    kind: Literal["controls"] = "controls"
    action: Action
    targets: list[ControlTarget]


class ChildFinished(_Envelope):
    """A child created by ``step.invoke`` finished; sent to its parent (``workflow``/``instance_id``).

    ``name``/``count``/``run`` name the parent's invoke, so the parent settles it once and ignores a
    copy, or a child of an earlier run. ``status`` is the child's final status; ``output`` its
    output (msgpack) when complete, ``error`` its ``{"name", "message"}`` when errored.
    """

    kind: Literal["child"] = "child"
    name: str
    count: int
    run: int
    child_workflow: str
    child_id: str
    status: Literal["complete", "errored", "terminated"]
    output: bytes | None = None
    error: dict[str, str] | None = None


class Redrive(_Envelope):
    """Load the instance and continue it (sent to itself by a partition's new owner)."""

    kind: Literal["redrive"] = "redrive"


Message = Annotated[
    InstanceCreated | EventReceived | TimerFired | Control | ChildFinished | Redrive | ControlBatch,
    Field(discriminator="kind"),
]
InstanceMessage = InstanceCreated | EventReceived | TimerFired | Control | ChildFinished | Redrive
"""A message for one instance (every kind but :class:`ControlBatch`): routed by its workflow and instance id."""

_adapter: TypeAdapter[Message] = TypeAdapter(Message)


class PoisonMessage(ValueError):
    """A message body that cannot be decoded or validated; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(message: Message) -> bytes:
    """The wire form of a message."""
    return msgpack.packb(message.model_dump(), use_bin_type=True)  # type: ignore[no-any-return]


def decode(body: bytes) -> Message:
    """Parse a wire body, raising :class:`PoisonMessage` with the reason when it is not a message."""
    try:
        raw = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise PoisonMessage(f"undecodable body ({type(exc).__name__}: {exc})") from None
    try:
        return _adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PoisonMessage(f"invalid message: {where}: {err['msg']}") from None
