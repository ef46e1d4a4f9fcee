"""Child workflows that return (``step.invoke``): the invoke's config, ids and parent link.

The link is what a child's meta keeps of its parent; the child's id is derived from the invoke.

The parent records the invoke as a command in its history (the child's workflow, id, params and
close policy), so a replay re-issues the same child and never creates a second one. Creating the
child, telling the parent that it finished, and terminating children when the parent closes are
carried out by the partition owners after the commit that decided them (consumers/children.py).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict

ParentClose = Literal["terminate", "abandon"]
"""What happens to a running child when its parent ends (completes, errors, is terminated or restarted)."""

_CLEAN = re.compile(r"[^A-Za-z0-9_-]+")
_DIGEST_CHARS = 12


class InvokeConfig(BaseModel):
    """How ``step.invoke`` treats its child.

    Attributes:
        parent_close: ``"terminate"`` (default): the child is terminated when the parent ends before
            it (terminated, restarted, or returning without awaiting it); ``"abandon"``: it runs on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    parent_close: ParentClose = "terminate"

    @classmethod
    def resolve(cls, config: InvokeConfig | dict[str, Any] | None) -> InvokeConfig:
        """A config from a model, a dict of its fields or None (the defaults)."""
        if config is None:
            return cls()
        if isinstance(config, InvokeConfig):
            return config
        return cls.model_validate(config)


class ParentLink(TypedDict):
    """The child's ``parent`` meta field: who invoked it, with which command and in which run."""

    wf: str
    id: str
    n: str  # the invoke's name
    c: int  # the invoke's count
    run: int  # the parent's run number (a restarted parent ignores children of its earlier runs)


def derived_child_id(parent_id: str, name: str, count: int, run_no: int, max_length: int) -> str:
    """The id a child gets when ``step.invoke`` is given none: the same for every replay of the invoke.

    Readable (the parent id and the invoke's name, cleaned to the id alphabet) and unique (a digest of
    parent id, name, count and run number), so two invokes never share a child and a restarted
    parent's invokes create new children.
    """
    digest = hashlib.sha256(f"{parent_id}\0{name}\0{count}\0{run_no}".encode()).hexdigest()[:_DIGEST_CHARS]
    readable = f"{parent_id}-{_CLEAN.sub('_', name)}"[: max(1, max_length - _DIGEST_CHARS - 1)]
    return f"{readable}-{digest}"
