"""Search across workflows and within one (SPEC §12, issue 13 item 1), on both runtimes.

A fleet of about 2 000 instances in every stable status; every search is paged to its end and
compared with the ground truth read instance by instance from Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hutch import Client, InvalidInputError, Status
from hutch.search import Position, SearchHit
from hutch.store import search as store_search

from tests.conftest import MakeClient
from tests.fleet import WORKFLOWS, FleetTruth, Release, build_fleet, read_truth

Row = tuple[int, str, str | None]


async def search_all(client: Client, *, limit: int = 137, **filters: Any) -> list[SearchHit]:
    """Every page of a search, checking each page's size and that the order never goes back."""
    hits: list[SearchHit] = []
    cursor = None
    pages = 0
    while True:
        page = await client.search(limit=limit, cursor=cursor, **filters)
        assert len(page.instances) <= limit
        hits += page.instances
        pages += 1
        assert pages < 10_000
        if page.cursor is None:
            break
        cursor = page.cursor
    keys = [(h.created_ms, f"{h.workflow}:{h.id}") for h in hits]
    descending = filters.get("order", "desc") == "desc"
    assert keys == sorted(keys, reverse=descending), "a search's rows go in its order, across pages"
    assert len(set(keys)) == len(keys), "no instance twice"
    return hits


def expected(truth: FleetTruth, keep: Callable[[tuple[str, str], Row], bool]) -> set[tuple[str, str]]:
    return {member for member, row in truth.rows.items() if keep(member, row)}


def found(hits: list[SearchHit]) -> set[tuple[str, str]]:
    return {(h.workflow, h.id) for h in hits}


@pytest.fixture
async def fleet(make_client: MakeClient) -> Any:
    client = await make_client(WORKFLOWS)
    members = await build_fleet(client)
    yield client, await read_truth(client, members)
    Release.event.set()


@pytest.mark.also_on_cluster
async def test_search_by_every_filter_matches_the_ground_truth(fleet: tuple[Client, FleetTruth]) -> None:
    client, truth = fleet
    assert len(truth.rows) == 2250
    everything = await search_all(client)
    assert found(everything) == set(truth.rows)
    assert all(h.status == truth.rows[(h.workflow, h.id)][1] for h in everything)
    oldest_first = await search_all(client, order="asc", limit=500)
    assert [(h.workflow, h.id) for h in oldest_first] == [(h.workflow, h.id) for h in reversed(everything)]

    assert set(truth.counts()) == {s.value for s in Status} - {"unknown"}, "the fleet has every status"
    for status in truth.counts():
        for workflow in (None, "fleet", "limited"):
            hits = await search_all(client, workflow=workflow, status=status)
            want = expected(truth, lambda m, r, s=status, w=workflow: r[1] == s and (w is None or m[0] == w))
            assert found(hits) == want, (status, workflow)
            assert want or workflow is not None
        newest = await client.search(status=status, limit=3)
        assert [h.id for h in newest.instances] == [h.id for h in (await search_all(client, status=status))[:3]]
    for workflow in ("other", "limited"):
        assert found(await search_all(client, workflow=workflow)) == expected(truth, lambda m, r, w=workflow: m[0] == w)
    assert found(await search_all(client, workflow="limited", order="asc", limit=7)) == expected(
        truth, lambda m, r: m[0] == "limited"
    )

    assert found(await search_all(client, version="v7")) == expected(truth, lambda m, r: m[0] == "fleet")
    assert found(await search_all(client, version="l1")) == expected(
        truth, lambda m, r: m[0] == "limited" and r[1] == "running"
    )
    assert await search_all(client, version="nope") == []
    assert found(await search_all(client, id_prefix="complete-0001")) == {
        ("fleet", f"complete-{n:05d}") for n in range(10, 20)
    }
    both = await search_all(client, id_prefix="o")
    assert found(both) == expected(truth, lambda m, r: m[1].startswith("o"))
    waiting_paused = await search_all(client, status="paused", id_prefix="wait-004")
    assert found(waiting_paused) == {("fleet", f"wait-{n:05d}") for n in range(400, 500)}

    created = sorted(row[0] for row in truth.rows.values())
    low, high = created[len(created) // 4], created[3 * len(created) // 4]
    after, before = datetime.fromtimestamp(low / 1000, UTC), datetime.fromtimestamp(high / 1000, UTC)
    ranged = await search_all(client, created_after=after, created_before=before)
    assert found(ranged) == expected(truth, lambda m, r: low <= r[0] < high)
    assert found(await search_all(client, created_after=after.isoformat(), status="errored")) == expected(
        truth, lambda m, r: r[0] >= low and r[1] == "errored"
    )
    # Every filter at once: completes created from the fourth batch of 100 on, before the errors, with ids 004x.
    since, until = truth.rows[("fleet", "complete-00300")][0], truth.rows[("fleet", "error-00000")][0]
    every_filter = await search_all(
        client,
        workflow="fleet",
        status="complete",
        created_after=datetime.fromtimestamp(since / 1000, UTC),
        created_before=datetime.fromtimestamp(until / 1000, UTC),
        id_prefix="complete-004",
        version="v7",
        order="asc",
        limit=7,
    )
    want = expected(
        truth,
        lambda m, r: (
            m[0] == "fleet" and r[1] == "complete" and since <= r[0] < until and m[1].startswith("complete-004")
        ),
    )
    assert found(every_filter) == want and len(want) == 100


async def test_a_sparse_filter_is_paged_in_bounded_calls(
    fleet: tuple[Client, FleetTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny budget of rows examined per call, every index stops early: pages come short but complete."""
    client, truth = fleet
    monkeypatch.setattr(store_search, "EXAMINED_PER_PAGE", 1)
    short_pages = 0
    cursor, hits = None, []
    while True:
        page = await client.search(id_prefix="error-002", limit=5, cursor=cursor)
        hits += page.instances
        short_pages += len(page.instances) < 5 and page.cursor is not None
        if page.cursor is None:
            break
        cursor = page.cursor
    assert found(hits) == {("fleet", f"error-{n:05d}") for n in range(200, 300)}
    assert short_pages > 0, "the budget stopped some calls"
    everything = await search_all(client, limit=50, order="asc")
    assert found(everything) == set(truth.rows)


async def test_bad_searches_say_what_is_wrong(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    with pytest.raises(InvalidInputError, match="limit 0"):
        await client.search(limit=0)
    with pytest.raises(InvalidInputError, match="cursor 'x' is not one a search returned"):
        await client.search(cursor="x")
    with pytest.raises(InvalidInputError, match="status"):
        await client.search(status="sleeping")
    with pytest.raises(InvalidInputError, match="order"):
        await client.search(order="newest")  # type: ignore[arg-type]
    assert (await client.search(workflow="fleet")).instances == []
    assert Position.decode(Position(5, "fleet:a").encode()) == Position(5, "fleet:a")
    assert Status.UNKNOWN  # statuses are the instance statuses
