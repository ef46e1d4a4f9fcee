r"""What is announced on pub/sub, parsed: finished instances, created instances, sent events.

commit.lua announces each instance that reaches a final status on its partition's sharded channel
``<namespace>:{pN}:finished`` (its member, ``workflow:id``); create.lua announces the instances
one call created on their partition's ``<namespace>:{pN}:created``, one message per partition and
call (``Keys.finished_channel`` / ``Keys.created_channel`` in engine.keys). A created instance's
record carries its meta fields when they are small (``ANNOUNCED_BLOB_MAX`` in engine.store.redis;
the owner then starts it with no read, as from its start message) and only its member otherwise::

    <slot> <created ms> <length of each part>\n<member><field><value>...   (as create.lua got them)
    - <member>\n

A sent event is announced by its sender on the partition's ``<namespace>:{pN}:events``
(``Keys.events_channel``), next to its broker message: ``E`` then the msgpack of an
:class:`EventNotice`'s fields (:func:`event_notice_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hutch.serialization import pack, unpack
from hutch.store.redis import decode_meta

_EVENT_TAG = b"E"


@dataclass(frozen=True, slots=True)
class Created:
    """An instance a create announced, with its meta hash as stored (None when not carried)."""

    workflow: str
    instance_id: str
    raw: dict[bytes, bytes] | None

    def meta(self) -> dict[str, Any] | None:
        """What a load would return: decoded only when asked (every worker hears every create)."""
        return None if self.raw is None else decode_meta(self.raw)


def finished_member(data: bytes) -> tuple[str, str]:
    """The (workflow, instance id) of a message on the finished channel."""
    workflow, _, instance_id = data.decode().partition(":")
    return workflow, instance_id


def created_instances(data: bytes) -> list[Created]:
    """The instances of a message on the created channel.

    Raises:
        ValueError: the message is not in create.lua's format.
    """
    out: list[Created] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        tokens = data[pos:end].split(b" ")
        pos = end + 1
        if tokens[0] == b"-":
            workflow, _, instance_id = tokens[1].decode().partition(":")
            out.append(Created(workflow, instance_id, None))
            continue
        parts = []
        for length in map(int, tokens[2:]):
            parts.append(data[pos : pos + length])
            pos += length
        if pos > len(data) or not parts:
            raise ValueError("a created-instance announcement is truncated")
        workflow, _, instance_id = parts[0].decode().partition(":")
        out.append(Created(workflow, instance_id, dict(zip(parts[1::2], parts[2::2], strict=True))))
    return out


@dataclass(frozen=True, slots=True)
class EventNotice:
    """An event its sender announced, as its broker message carries it, and what the sender sent before.

    ``prev`` is the id of the event the same sender sent the instance last (None: none it knows
    of): the owner applies this one ahead of its broker message only once it holds that one, so a
    sender's events are never taken out of the order it sent them in. ``traceparent`` is the W3C
    trace context the broker message carries in its headers, so the event's delivery span links to
    its sender whichever path delivers it.
    """

    workflow: str
    instance_id: str
    event_type: str
    payload: bytes
    sent_ms: int
    event_id: str
    prev: str | None
    traceparent: str | None = None


def event_notice_bytes(notice: EventNotice) -> bytes:
    """What a sender publishes on the events channel for ``notice``."""
    return _EVENT_TAG + pack(
        [
            notice.workflow,
            notice.instance_id,
            notice.event_type,
            notice.payload,
            notice.sent_ms,
            notice.event_id,
            notice.prev,
            notice.traceparent,
        ]
    )


def event_notice(data: bytes) -> EventNotice:
    """The event of a message on the events channel.

    Raises:
        ValueError: the message is not an event notice.
    """
    if not data.startswith(_EVENT_TAG):
        raise ValueError("not an event notice")
    fields = unpack(data[len(_EVENT_TAG) :])
    # Seven fields before notices carried the trace context.
    if not isinstance(fields, list) or len(fields) not in (7, 8):
        raise ValueError("a malformed event notice")
    return EventNotice(*fields)


def is_event_notice(data: bytes) -> bool:
    """Whether a message heard on a partition's channels is an event notice (else a creation's)."""
    return data.startswith(_EVENT_TAG)
