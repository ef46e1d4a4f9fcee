"""A search page over the per-partition status indexes (search.lua), merged across partitions and workflows.

Each (workflow, partition) index is one call of search.lua; the calls go in one pipelined round
trip (on a Redis Cluster redis-py splits the pipeline by node; each call stays in its partition's
slot). Each call returns up to ``limit`` matching rows in the search's order, and, when it ran out
of its budget of rows examined first, where it stopped. Rows past a stop cannot be returned yet:
the stopped index may hold matches before them. So the page is the first ``limit`` rows up to the
furthest stop, and the next cursor is the page's last row, or that stop when the page is short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hutch import keys
from hutch.search import Order, Position, SearchFilter, SearchHit
from hutch.serialization import pack
from hutch.status import Status

if TYPE_CHECKING:
    from hutch.store.redis import RedisStore

EXAMINED_PER_PAGE = 40_000
"""About how many index rows one page may examine in all, shared by its calls (at least 2 x limit each)."""

MAX_EXAMINED_PER_CALL = 5_000
"""The most index rows one call examines (one script's time blocks Redis: about a millisecond per 1000)."""


async def search_page(
    store: RedisStore,
    workflows: Sequence[str],
    where: SearchFilter,
    *,
    order: Order,
    after: Position | None,
    limit: int,
) -> tuple[list[SearchHit], Position | None]:
    """One page of instances of ``workflows`` matching ``where``, and where the next page starts (None: done)."""
    status_key = where.status.value if where.status is not None else keys.ALL
    low, high = where.ms_range()
    if after is not None:
        if order == "desc":
            high = after.created_ms if high is None else min(high, after.created_ms)
        else:
            low = after.created_ms if low is None else max(low, after.created_ms)
    near, far = (high, low) if order == "desc" else (low, high)
    near_arg = _bound(near, "+inf" if order == "desc" else "-inf")
    far_arg = _bound(far, "-inf" if order == "desc" else "+inf")
    cursor_member = after.member if after is not None and near == after.created_ms else ""
    version = pack(where.version) if where.version is not None else b""
    status = where.status.value if where.status is not None else ""
    calls: list[tuple[list[str], list[Any]]] = []
    budget = max(2 * limit, min(MAX_EXAMINED_PER_CALL, EXAMINED_PER_PAGE // max(1, len(workflows) * store.partitions)))
    for workflow in workflows:
        member_prefix = keys.instance_member(workflow, where.id_prefix or "")
        for p in range(store.partitions):
            pre, _, post = store.keys.meta(p, workflow, "x").rpartition(keys.instance_member(workflow, "x"))
            args = [order, near_arg, far_arg, cursor_member, limit, budget, status, version, member_prefix, pre, post]
            calls.append(([store.keys.status_index(p, workflow, status_key)], args))
    if not calls:
        return [], None
    rows: list[tuple[int, str, str]] = []
    stops: list[tuple[int, str]] = []
    for found, stop in await store.search_calls(calls):
        for line in bytes(found).decode().splitlines():
            score, member, status = line.split(" ")
            rows.append((int(float(score)), member, status))
        if stop:
            stops.append((int(float(stop[0])), bytes(stop[1]).decode()))
    return _merge(rows, stops, order, limit)


def _bound(ms: int | None, unbounded: str) -> str:
    return unbounded if ms is None else str(ms)


def _status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        return Status.UNKNOWN


def _merge(
    rows: list[tuple[int, str, str]], stops: list[tuple[int, str]], order: Order, limit: int
) -> tuple[list[SearchHit], Position | None]:
    desc = order == "desc"
    statuses = {member: status for _, member, status in rows}
    keyed = [(created, member) for created, member, _ in rows]
    ordered = sorted(keyed, reverse=desc)
    if stops:
        # The stop nearest the start bounds the page: an index that stopped there may hold matches after it.
        edge = max(stops) if desc else min(stops)
        ordered = [r for r in ordered if (r >= edge if desc else r <= edge)]
    page = ordered[:limit]
    if len(page) == limit:
        nxt: Position | None = Position(*page[-1])
    elif stops:
        nxt = Position(*edge)
    else:
        nxt = None
    hits = []
    for created, member in page:
        workflow, _, iid = member.partition(":")
        hits.append(SearchHit(workflow, iid, created, _status(statuses[member])))
    return hits, nxt
