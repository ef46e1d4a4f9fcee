"""What ``run()`` receives: the triggering event and the events delivered to waits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def ms_to_datetime(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class WorkflowEvent(Mapping[str, Any]):
    """The event an instance was created with.

    Attributes:
        payload: the params (read-only; ``{}`` when none were given).
        timestamp: creation time.
        instance_id: the instance's id.
        workflow_name: the workflow's name.

    Mapping access with Cloudflare's keys (``event["payload"]``, ``event["instanceId"]``,
    ``event["timestamp"]``) also works so code ported from Cloudflare runs unchanged.
    """

    payload: Any
    timestamp: datetime
    instance_id: str
    workflow_name: str
    _keys: tuple[str, ...] = field(default=("payload", "timestamp", "instanceId", "workflowName"), repr=False)

    @classmethod
    def build(cls, payload: Any, created_ms: int, instance_id: str, workflow_name: str) -> WorkflowEvent:
        """Make the event from stored fields; the payload is frozen so run() cannot mutate it."""
        return cls(_freeze({} if payload is None else payload), ms_to_datetime(created_ms), instance_id, workflow_name)

    def __getitem__(self, key: str) -> Any:
        mapping = {
            "payload": self.payload,
            "timestamp": self.timestamp,
            "instanceId": self.instance_id,
            "workflowName": self.workflow_name,
        }
        return mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event delivered to ``wait_for_event``: ``type``, ``payload`` and send ``timestamp``."""

    type: str
    payload: Any
    timestamp: datetime

    def __getitem__(self, key: str) -> Any:
        return {"type": self.type, "payload": self.payload, "timestamp": self.timestamp}[key]
