"""Searching instances across workflows: the filter, the page, the cursor (SPEC §12).

A search walks the per-partition status indexes the commits keep (``idx:<workflow>:<status>``,
score: creation ms; ``idx:<workflow>:all`` when no status is asked for): one script call per
(workflow, partition) index, all pipelined in one round trip, merged here k-way by (created ms,
member). The indexes are written in the same script as the transition that changes the status
(create.lua, commit.lua) and pruned with retention, so a search never scans the keyspace.

Status and creation time select the index and its score range. The id prefix and the code version
are checked row by row inside the script (it reads each row's meta anyway, to skip entries of
instances whose retention ended), within a budget of rows examined per call: a sparse filter takes
several short pages rather than one long call. Why no extra index for them: the version is only
known when an instance starts and an expired instance's meta is gone, so a version index could not
be pruned without its own bookkeeping; a lexicographic id index would cost a write per create on
the hot path for a filter that is usually dense (ids a caller chose share their prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hutch.errors import InvalidInputError
from hutch.status import Status
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Order = Literal["desc", "asc"]
"""``desc``: newest first (the default); ``asc``: oldest first."""

MAX_LIMIT = 1000
"""The most instances one page may hold."""


class SearchFilter(BaseModel):
    """Which instances a search (or a bulk action) selects; every field narrows it, None = any.

    Attributes:
        workflow: one workflow's instances, else every workflow's.
        status: instances in this status.
        created_after: created at or after this time (a naive datetime is UTC).
        created_before: created strictly before this time.
        id_prefix: instances whose id starts with this.
        version: instances that started on this code version (``describe().version``); an
            instance that has not started yet has none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str | None = None
    status: Status | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    id_prefix: str | None = Field(default=None, min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("created_after", "created_before", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        # Not a number: pydantic would read it as epoch seconds, a unit nobody means here by accident.
        if value is not None and not isinstance(value, datetime | str):
            raise ValueError("must be a datetime or an ISO 8601 date-time string")
        return value

    @field_validator("created_after", "created_before")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("id_prefix", "workflow")
    @classmethod
    def _no_colon(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            raise ValueError("may not contain ':' (no workflow name or instance id does)")
        return value

    def ms_range(self) -> tuple[int | None, int | None]:
        """The creation range as (lowest ms included, highest ms included); None = unbounded."""
        low = _ms(self.created_after) if self.created_after is not None else None
        high = _ms(self.created_before) - 1 if self.created_before is not None else None
        return low, high


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One instance a search found.

    Attributes:
        workflow: its workflow.
        id: its id.
        created_ms: when it was created (epoch ms).
        status: its status when the search read it.
    """

    workflow: str
    id: str
    created_ms: int
    status: Status

    @property
    def created(self) -> datetime:
        """When it was created."""
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search; pass ``cursor`` back (same filter and order) for the next, None at the end.

    A page may hold fewer than ``limit`` instances and still have a cursor: the search examines a
    bounded number of index rows per call, so a sparse filter (a rare id prefix) may need more pages.
    """

    instances: list[SearchHit]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended, in the order of the search: (created ms, member ``workflow:id``)."""

    created_ms: int
    member: str

    def encode(self) -> str:
        """The opaque cursor string the API hands out."""
        return f"{self.created_ms}:{self.member}"

    @classmethod
    def decode(cls, cursor: str) -> Position:
        """Parse a cursor this API returned; raises :class:`InvalidInputError` for anything else."""
        created, _, member = cursor.partition(":")
        workflow, _, iid = member.partition(":")
        if not created.isdigit() or not workflow or not iid:
            raise InvalidInputError(f"cursor {cursor!r} is not one a search returned")
        return cls(int(created), member)

    def key(self) -> tuple[int, str]:
        """What rows are ordered by."""
        return (self.created_ms, self.member)


def check_limit(limit: int) -> int:
    """A page size, checked."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit {limit!r} must be between 1 and {MAX_LIMIT}")
    return limit


def check_order(order: str) -> Order:
    """An order, checked."""
    if order not in ("desc", "asc"):
        raise InvalidInputError(f"order {order!r} must be 'desc' (newest first) or 'asc' (oldest first)")
    return "desc" if order == "desc" else "asc"


def search_filter(**fields: object) -> SearchFilter:
    """A :class:`SearchFilter` from keywords (None = any), an invalid one as :class:`InvalidInputError`."""
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        return SearchFilter.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'filter'}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"invalid search filter: {problems}") from None
