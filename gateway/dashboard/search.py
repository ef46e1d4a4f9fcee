"""Instance search for the dashboard: status, creation-time range, id prefix and version, either order.

It walks the workflow's status index (one sorted set per partition, scored by creation time)
inside the time range, merging the partitions in order, and reads the metadata of the
candidates a hundred at a time (one pipeline each) to apply the filters the index cannot.
A request scans at most :data:`MAX_SCANNED` index entries; when the filters are that selective
the page comes back short with a cursor to continue from.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Literal, cast

from hutch import Client, Status
from hutch.errors import InvalidInputError
from hutch.gateway.api.models import InstanceSummary
from hutch.gateway.api.views import instance_summaries
from hutch.keys import ALL
from pydantic import BaseModel, ConfigDict, Field

MAX_SCANNED = 5000
"""Index entries one search request reads at most."""
CHUNK = 200
"""Index entries read from one partition per round trip."""
META_BATCH = 100

Order = Literal["newest", "oldest"]


class SearchFilters(BaseModel):
    """What the instances page filters by; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None
    id_prefix: str = Field(default="", max_length=200)
    version: str = Field(default="", max_length=200)
    order: Order = "newest"


class SearchPage(BaseModel):
    """One page of matches, and where the next one starts (None: the scan reached the end)."""

    instances: list[InstanceSummary]
    cursor: str | None
    scanned: int


async def search(
    client: Client, workflow: str, filters: SearchFilters, *, cursor: str | None = None, limit: int = 50
) -> SearchPage:
    """The instances of ``workflow`` that pass ``filters``, in the filters' order, ``limit`` at most."""
    after = _parse_cursor(cursor)
    rows: list[InstanceSummary] = []
    scanned = 0
    last: tuple[int, str] | None = None
    batch: list[tuple[int, str]] = []
    exhausted = True
    async for entry in _entries(client, workflow, filters, after):
        scanned += 1
        last = entry
        if entry[1].startswith(filters.id_prefix):
            batch.append(entry)
        if len(batch) >= META_BATCH or scanned >= MAX_SCANNED:
            rows += await _matching(client, workflow, filters, batch)
            batch = []
        if len(rows) >= limit or scanned >= MAX_SCANNED:
            exhausted = False
            break
    rows += await _matching(client, workflow, filters, batch)
    if len(rows) > limit:  # the last batch overshot: the cursor points at the last row returned
        rows = rows[:limit]
        last = (int(rows[-1].created_on.timestamp() * 1000), rows[-1].id)
        exhausted = False
    next_cursor = None if exhausted or last is None else f"{last[0]}:{last[1]}"
    return SearchPage(instances=rows, cursor=next_cursor, scanned=scanned)


async def _matching(
    client: Client, workflow: str, filters: SearchFilters, batch: list[tuple[int, str]]
) -> list[InstanceSummary]:
    if not batch:
        return []
    found = await instance_summaries(client, workflow, [iid for _, iid in batch])
    return [
        row
        for row in found
        if (filters.status is None or row.status is filters.status)
        and (not filters.version or row.version == filters.version)
    ]


async def _entries(
    client: Client, workflow: str, filters: SearchFilters, after: tuple[int, str] | None
) -> AsyncIterator[tuple[int, str]]:
    """(created ms, id) of the index entries in range, every partition merged, in the filters' order."""
    store = client._store
    low, high = _bounds(filters, after)
    newest = filters.order == "newest"
    status = filters.status.value if filters.status is not None else ALL
    keys = [store.keys.status_index(p, workflow, status) for p in range(store.partitions)]

    async def partition(key: str) -> AsyncIterator[tuple[int, str]]:
        offset = 0
        while True:
            if newest:
                part = await store.redis.zrevrangebyscore(key, high, low, start=offset, num=CHUNK, withscores=True)
            else:
                part = await store.redis.zrangebyscore(key, low, high, start=offset, num=CHUNK, withscores=True)
            for member, score in cast(list[tuple[bytes, float]], part):
                yield int(score), member.decode().split(":", 1)[1]
            if len(part) < CHUNK:
                return
            offset += CHUNK

    def sort_key(entry: tuple[int, str]) -> tuple[int, str] | tuple[int, _Reversed]:
        return (-entry[0], _Reversed(entry[1])) if newest else entry

    async for entry in _merge([partition(k) for k in keys], sort_key):
        if after is not None and (entry >= after if newest else entry <= after):
            continue
        yield entry


def _bounds(filters: SearchFilters, after: tuple[int, str] | None) -> tuple[str | int, str | int]:
    """The range of created ms to read (ZRANGEBYSCORE's min and max): the filters', up to the cursor."""
    low: str | int = "-inf" if filters.since is None else int(filters.since.timestamp() * 1000)
    high: str | int = "+inf" if filters.until is None else int(filters.until.timestamp() * 1000)
    if after is not None:  # the cursor's millisecond again: rows sharing it are told apart by id
        if filters.order == "newest":
            high = after[0] if high == "+inf" else min(int(high), after[0])
        else:
            low = after[0] if low == "-inf" else max(int(low), after[0])
    return low, high


class _Reversed:
    """A string that sorts backwards (newest first: ids descending within one millisecond)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)


async def _merge(
    sources: list[AsyncIterator[tuple[int, str]]], key: Callable[[tuple[int, str]], Any]
) -> AsyncIterator[tuple[int, str]]:
    """Merge sorted async sources into one sorted stream (reading each only as far as needed)."""
    by = key  # the caller's ordering
    heap: list[tuple[Any, int, tuple[int, str]]] = []
    for index, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heap.append((by(first), index, first))
    heapq.heapify(heap)
    while heap:
        _, index, entry = heapq.heappop(heap)
        yield entry
        following = await anext(sources[index], None)
        if following is not None:
            heapq.heappush(heap, (by(following), index, following))


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    created, sep, iid = cursor.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInputError(f"cursor {cursor!r} is not one this search returned")
    return int(created), iid
