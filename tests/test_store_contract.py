"""Contract of the checkpoint store, run against fakeredis, the real Redis AND a Redis Cluster.

Every test takes the ``backend`` fixture, parametrized over ``fake`` (fakeredis with one
``FakeServer`` per test, shared by every client the test opens), ``real`` (redis-py asyncio
against the Redis of ``HUTCH_TEST_REDIS_URL``; skipped locally when absent, failing in CI) and
``cluster`` (a ``RedisCluster`` client of the session's private 3-master cluster, the
``redis_cluster_url`` fixture: the store then makes one script call per partition). Each test works
in its own namespace and the server backends delete ``<namespace>:*`` at teardown, so these tests
can share a Redis with anything else. The fake is thereby proven to behave like the real server for
everything the engine relies on, not just assumed to, and the one store implementation to work on a
cluster, where no command may touch two partitions' keys.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from hutch import DeploymentMismatch, Limits, WorkflowEntrypoint, keys
from hutch.consumers.runtime import open_redis
from hutch.serialization import pack, unpack
from hutch.store.base import CommitResult, Snapshot, Transition
from hutch.store.redis import RedisStore, meta_from_fields
from hutch.watch import ChannelFeed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from tests.conftest import MakeClient
from tests.helpers import eventually, unique

PARTITIONS = 4
WF = "orders"
T0 = 1_700_000_000_000  # a fixed creation time (epoch ms) so scores are predictable
RETENTION_S = 30 * 24 * 3600


# ---------------------------------------------------------------------------- backends
@dataclass
class Backend:
    """One Redis (fake or real) and a namespace private to the running test."""

    kind: str
    namespace: str
    redis: Any  # the raw client tests inspect keys with (redis.asyncio.Redis or FakeRedis)
    _new_client: Any
    _clients: list[Any] = field(default_factory=list)

    def store(self, partitions: int = PARTITIONS, namespace: str | None = None) -> RedisStore:
        """A store on its own client connected to the same server (and, by default, namespace)."""
        client = self._new_client()
        self._clients.append(client)
        return RedisStore(client, partitions, namespace=namespace or self.namespace)

    async def keys(self) -> list[str]:
        """Every key of the test's namespace."""
        return sorted([k.decode() async for k in self.redis.scan_iter(match=f"{self.namespace}:*", count=1000)])

    async def dump(self) -> dict[str, Any]:
        """Type, contents and TTL state of every key of the namespace, to prove that nothing changed."""
        out: dict[str, Any] = {}
        for key in await self.keys():
            kind = (await self.redis.type(key)).decode()
            if kind == "hash":
                value: Any = await self.redis.hgetall(key)
            elif kind == "list":
                value = await self.redis.lrange(key, 0, -1)
            elif kind == "zset":
                value = await self.redis.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                value = sorted(await self.redis.smembers(key))
            else:
                value = await self.redis.get(key)
            out[key] = (kind, value, await self.redis.ttl(key) > 0)
        return out

    async def cleanup(self) -> None:
        if self.kind != "fake":
            doomed = [k async for k in self.redis.scan_iter(match=f"{self.namespace}:*", count=1000)]
            if doomed:
                await self.redis.delete(*doomed)
        for client in reversed(self._clients):
            await client.aclose()


@pytest.fixture(
    params=["fake", pytest.param("real", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A fake or real Redis, or a Redis Cluster, with a namespace of its own; its keys are removed at teardown."""
    namespace = unique("ns")
    if request.param == "fake":
        server = fakeredis.FakeServer()

        def new_client() -> Any:
            return fakeredis.aioredis.FakeRedis(server=server)
    elif request.param == "cluster":
        cluster_url = request.getfixturevalue("redis_cluster_url")

        def new_client() -> Any:
            return open_redis(cluster_url)  # a RedisCluster, as the runtime opens it
    else:
        url = request.getfixturevalue("redis_url")

        def new_client() -> Any:
            return aioredis.Redis.from_url(url, client_name=f"hutch-test-{namespace}")

    raw = new_client()
    b = Backend(request.param, namespace, raw, new_client, [raw])
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def store(backend: Backend) -> RedisStore:
    """The store under test (its client is closed by the backend)."""
    return backend.store()


# ---------------------------------------------------------------------------- builders
def fields_of(iid: str, created_ms: int, params: Any = None, workflow: str = WF) -> dict[str, Any]:
    """The meta fields the client writes at creation."""
    return {
        "wf": workflow,
        "id": iid,
        "status": "queued",
        "seq": 0,
        "run": 0,
        "params": pack(params),
        "created": created_ms,
        "trigger": pack({"source": "api"}),
    }


async def create(
    store: RedisStore, iid: str, *, partition: int = 1, created_ms: int = T0, params: Any = None, workflow: str = WF
) -> bool:
    return await store.create(partition, workflow, iid, created_ms, fields_of(iid, created_ms, params, workflow))


def tx(iid: str, seq: int, *, partition: int = 1, created_ms: int = T0, **changes: Any) -> Transition:
    return Transition(partition, WF, iid, seq, created_ms, **changes)


def rec(kind: str, name: str, count: int = 1, **more: Any) -> bytes:
    return pack({"k": kind, "n": name, "c": count, **more})


def timer(name: str) -> bytes:
    return pack(["sleep", WF, name])


async def commit(store: RedisStore, t: Transition, fences: dict[int, str] | None = None) -> CommitResult:
    (result,) = await store.commit_many([t], fences or {})
    return result


async def index(backend: Backend, store: RedisStore, status: str, partition: int = 1) -> dict[str, int]:
    rows = await backend.redis.zrange(store.keys.status_index(partition, WF, status), 0, -1, withscores=True)
    return {m.decode(): int(s) for m, s in rows}


# ---------------------------------------------------------------------------- creation and reads
async def test_create_then_read_meta_load_and_indexes(backend: Backend, store: RedisStore) -> None:
    assert await create(store, "a", params={"x": 1}) is True

    meta = await store.read_meta(1, WF, "a")
    assert meta == {
        "wf": WF,
        "id": "a",
        "status": "queued",
        "seq": 0,
        "run": 0,
        "params": {"x": 1},
        "created": T0,
        "trigger": {"source": "api"},
    }
    snap = await store.load(1, WF, "a")
    assert snap == Snapshot(meta, [], [])
    assert snap.seq == 0
    assert await store.history(1, WF, "a") == []
    assert await index(backend, store, "queued") == {"orders:a": T0}
    assert await index(backend, store, keys.ALL) == {"orders:a": T0}
    assert await store.active_instances(1) == [(WF, "a")]
    assert await store.workflow_names() == [WF]


async def test_the_meta_of_fields_as_written_is_the_meta_a_read_returns(store: RedisStore) -> None:
    # A partition owner starts a new instance from the fields its start message carries: they must
    # read exactly as the stored instance does.
    fields = {**fields_of("a", T0, params={"x": [1, "two"]}), "trace": pack("00-abc-def-01")}
    assert await store.create(1, WF, "a", T0, fields)

    assert meta_from_fields(fields) == await store.read_meta(1, WF, "a")


async def test_create_on_existing_id_returns_false_and_overwrites_nothing(backend: Backend, store: RedisStore) -> None:
    assert await create(store, "a", params={"v": "first"})
    before = await backend.dump()

    assert await create(store, "a", params={"v": "second"}, created_ms=T0 + 5) is False

    assert await backend.dump() == before
    meta = await store.read_meta(1, WF, "a")
    assert meta is not None and meta["params"] == {"v": "first"}


async def test_create_many_writes_the_events_an_instance_starts_with(store: RedisStore) -> None:
    # create_or_send: the instance and its first event in one write, on several partitions at once.
    rows = [(p, WF, iid, T0, fields_of(iid, T0, {"n": p})) for p, iid in [(0, "a"), (1, "b"), (3, "c")]]
    events = [[b"event a1", b"event a2"], [], [b"event c"]]

    assert await store.create_many(rows, events=events) == [True, True, True]

    loaded = await store.load_many([(p, WF, iid) for p, _, iid, _, _ in rows])
    assert [(s.meta, s.events) for s in loaded if s] == [
        (meta_from_fields(fields), evs) for (_, _, _, _, fields), evs in zip(rows, events, strict=True)
    ]
    # An id that exists keeps its own events and gets none of the call's.
    assert await store.create_many([rows[0]], events=[[b"event other"]]) == [False]
    again = await store.load(0, WF, "a")
    assert again is not None and again.events == [b"event a1", b"event a2"]
    with pytest.raises(ValueError, match="2 event lists for 1 instances"):
        await store.create_many([rows[1]], events=[[], []])


async def test_create_many_skips_existing_ids(backend: Backend, store: RedisStore) -> None:
    assert await create(store, "b", params="old")
    rows = [
        (0, WF, "a", T0, fields_of("a", T0, "new")),
        (1, WF, "b", T0 + 1, fields_of("b", T0 + 1, "new")),
        (3, WF, "c", T0 + 2, fields_of("c", T0 + 2, "new")),
    ]

    assert await store.create_many(rows) == [True, False, True]

    metas = {iid: await store.read_meta(p, WF, iid) for p, _, iid, _, _ in rows}
    assert {iid: m["params"] for iid, m in metas.items() if m} == {"a": "new", "b": "old", "c": "new"}
    assert await index(backend, store, keys.ALL, partition=1) == {"orders:b": T0}


async def test_create_many_of_nothing_is_a_no_op(backend: Backend, store: RedisStore) -> None:
    assert await store.create_many([]) == []
    assert await backend.keys() == []


async def test_load_many_and_reads_of_unknown_instances(store: RedisStore) -> None:
    await create(store, "a", partition=0)
    await create(store, "b", partition=2)

    snaps = await store.load_many([(0, WF, "a"), (1, WF, "nope"), (2, WF, "b")])

    assert [s.meta["id"] if s else None for s in snaps] == ["a", None, "b"]
    assert await store.load(0, WF, "b") is None  # right id, wrong partition: a different key
    assert await store.read_meta(3, WF, "nope") is None
    assert await store.history(3, WF, "nope") == []


async def test_delete_unstarted_removes_a_queued_instance_everywhere(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    assert await store.delete_unstarted(1, WF, "a") is True

    assert await store.read_meta(1, WF, "a") is None
    assert await store.active_instances(1) == []
    assert await index(backend, store, "queued") == {}
    assert await index(backend, store, keys.ALL) == {}
    assert await store.delete_unstarted(1, WF, "a") is False  # gone already


async def test_delete_unstarted_keeps_an_instance_that_started(backend: Backend, store: RedisStore) -> None:
    # Its owner started it (from the create's announcement) before the undo came.
    await create(store, "a")
    started = tx("a", 0, meta={"status": "running"}, status_from="queued", status_to="running")
    assert await commit(store, started) is CommitResult.COMMITTED

    assert await store.delete_unstarted(1, WF, "a") is False
    meta = await store.read_meta(1, WF, "a")
    assert meta is not None and meta["status"] == "running"
    assert await store.active_instances(1) == [(WF, "a")]


# ---------------------------------------------------------------------------- commits
async def test_one_commit_applies_every_part_of_a_transition(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    ev1, ev2 = pack({"type": "approval", "n": 1}), pack({"type": "approval", "n": 2})
    t1 = tx(
        "a",
        0,
        meta={"status": "running", "started": T0 + 10, "output": pack(None)},
        history=[rec("step", "charge"), rec("sleep", "cool", due=T0 + 500)],
        timers_add=[(T0 + 500, timer("cool")), (T0 + 900, timer("retry"))],
        events_push=[ev1, ev2],
        status_from="queued",
        status_to="running",
    )

    assert await commit(store, t1) is CommitResult.COMMITTED

    snap = await store.load(1, WF, "a")
    assert snap is not None
    assert snap.seq == 1
    assert (snap.meta["status"], snap.meta["started"], snap.meta["output"]) == ("running", T0 + 10, None)
    assert snap.meta["params"] is None  # fields the transition did not name are kept
    assert [r["n"] for r in snap.history] == ["charge", "cool"]
    assert snap.events == [ev1, ev2]
    assert await store.due_timers([1], now_ms=T0 + 1000) == [
        (1, timer("cool"), T0 + 500),
        (1, timer("retry"), T0 + 900),
    ]
    assert await index(backend, store, "queued") == {}
    assert await index(backend, store, "running") == {"orders:a": T0}
    assert await index(backend, store, keys.ALL) == {"orders:a": T0}
    assert await store.active_instances(1) == [(WF, "a")]

    t2 = tx(
        "a",
        1,
        meta={"status": "waiting"},
        history=[rec("res", "cool", ref="sleep", g=1)],
        timers_remove=[timer("cool")],
        events_remove=[ev1],
        active="-",
        status_from="running",
        status_to="waiting",
    )
    assert await commit(store, t2) is CommitResult.COMMITTED

    snap = await store.load(1, WF, "a")
    assert snap is not None
    assert snap.seq == 2
    assert snap.meta["status"] == "waiting"
    assert [r["k"] for r in snap.history] == ["step", "sleep", "res"]  # appended, in order
    assert snap.events == [ev2]
    assert await store.due_timers([1], now_ms=T0 + 1000) == [(1, timer("retry"), T0 + 900)]
    assert await index(backend, store, "running") == {}
    assert await index(backend, store, "waiting") == {"orders:a": T0}
    assert await store.active_instances(1) == []

    assert await commit(store, tx("a", 2, active="+")) is CommitResult.COMMITTED
    assert await store.active_instances(1) == [(WF, "a")]


async def test_commit_without_status_change_leaves_indexes_alone(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    assert await commit(store, tx("a", 0, history=[rec("step", "x")])) is CommitResult.COMMITTED
    assert await index(backend, store, "queued") == {"orders:a": T0}
    assert await index(backend, store, keys.ALL) == {"orders:a": T0}


async def test_stale_expected_seq_is_a_conflict_that_changes_nothing(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    assert await commit(store, tx("a", 0, meta={"status": "running"}, status_from="queued", status_to="running"))
    before = await backend.dump()

    stale = tx(
        "a",
        0,
        meta={"status": "complete", "output": pack("late")},
        history=[rec("step", "stale")],
        timers_add=[(T0, timer("stale"))],
        events_push=[b"stale"],
        active="-",
        status_from="running",
        status_to="complete",
        ttl_s=60,
    )
    ahead = replace(stale, expected_seq=7)

    assert await store.commit_many([stale, ahead], {}) == [CommitResult.CONFLICT, CommitResult.CONFLICT]
    assert await backend.dump() == before


async def test_a_duplicated_commit_of_the_same_transition_commits_once(store: RedisStore) -> None:
    await create(store, "a")
    t = tx("a", 0, history=[rec("step", "charge")], events_push=[b"ev"])

    # Twice in one pipelined batch, then once more in a later round trip (a redelivered message).
    assert await store.commit_many([t, t], {}) == [CommitResult.COMMITTED, CommitResult.CONFLICT]
    assert await commit(store, t) is CommitResult.CONFLICT

    snap = await store.load(1, WF, "a")
    assert snap is not None
    assert snap.seq == 1
    assert [r["n"] for r in snap.history] == ["charge"]
    assert snap.events == [b"ev"]


async def test_a_fenced_out_owner_cannot_commit(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    await store.claim(1, "worker-a:1")
    assert await commit(store, tx("a", 0, history=[rec("step", "one")]), {1: "worker-a:1"}) is CommitResult.COMMITTED

    await store.claim(1, "worker-b:2")  # worker b took the partition over
    before = await backend.dump()
    old_owner = tx("a", 1, meta={"status": "complete"}, history=[rec("step", "two")], status_to="complete")
    assert await commit(store, old_owner, {1: "worker-a:1"}) is CommitResult.FENCED
    assert await backend.dump() == before

    assert await commit(store, old_owner, {1: "worker-b:2"}) is CommitResult.COMMITTED
    assert [r["n"] for r in await store.history(1, WF, "a")] == ["one", "two"]


async def test_fences_are_per_partition_and_an_unclaimed_partition_fences(store: RedisStore) -> None:
    await create(store, "a", partition=0)
    await create(store, "b", partition=2)
    await store.claim(0, "me")

    results = await store.commit_many([tx("a", 0, partition=0), tx("b", 0, partition=2)], {0: "me", 2: "me"})

    assert results == [CommitResult.COMMITTED, CommitResult.FENCED]  # nobody claimed partition 2 for "me"
    # No fence given for a partition: the commit is only sequence-checked.
    assert await commit(store, tx("b", 0, partition=2)) is CommitResult.COMMITTED


async def test_commit_on_an_unknown_instance_is_missing_and_creates_nothing(
    backend: Backend, store: RedisStore
) -> None:
    await store.claim(1, "me")
    before = await backend.dump()

    t = tx("ghost", 0, meta={"status": "running"}, history=[rec("step", "x")], timers_add=[(T0, timer("x"))])
    assert await commit(store, t, {1: "me"}) is CommitResult.MISSING

    assert await backend.dump() == before


async def test_retention_ttl_is_set_on_finish_and_removed_on_restart(backend: Backend, store: RedisStore) -> None:
    await create(store, "a")
    key = store.keys
    data_keys = [key.meta(1, WF, "a"), key.history(1, WF, "a"), key.event_buffer(1, WF, "a")]
    assert await commit(store, tx("a", 0, history=[rec("step", "x")], events_push=[b"early"]))

    finish = tx("a", 1, meta={"status": "complete"}, active="-", status_from="queued", status_to="complete")
    finish.ttl_s = RETENTION_S
    assert await commit(store, finish) is CommitResult.COMMITTED

    for k in data_keys:
        assert RETENTION_S - 60 <= await backend.redis.ttl(k) <= RETENTION_S, k
    # The partition's shared structures never expire with one instance.
    for k in (key.status_index(1, WF, "complete"), key.status_index(1, WF, keys.ALL), key.timers(1)):
        assert await backend.redis.ttl(k) in (-1, -2), k

    # A later commit that is neither finish nor restart keeps the retention clock running.
    assert await commit(store, tx("a", 2, history=[rec("life", "note")]))
    assert await backend.redis.ttl(data_keys[0]) > 0

    restart = tx(
        "a",
        3,
        meta={"status": "running", "run": 1},
        reset_history=True,
        history=[rec("life", "restarted")],
        active="+",
        status_from="complete",
        status_to="running",
        ttl_s=-1,
    )
    assert await commit(store, restart) is CommitResult.COMMITTED
    assert await backend.redis.ttl(data_keys[0]) == -1
    assert await backend.redis.ttl(data_keys[1]) == -1
    assert await backend.redis.exists(data_keys[2]) == 0  # the restart emptied the event buffer


async def test_reset_history_replaces_history_and_event_buffer(store: RedisStore) -> None:
    await create(store, "a", params={"p": 1})
    assert await commit(store, tx("a", 0, history=[rec("step", "a"), rec("step", "b")], events_push=[b"e1"]))

    t = tx("a", 1, meta={"run": 1}, reset_history=True, history=[rec("life", "restarted")])
    assert await commit(store, t) is CommitResult.COMMITTED

    snap = await store.load(1, WF, "a")
    assert snap is not None
    assert [(r["k"], r["n"]) for r in snap.history] == [("life", "restarted")]
    assert snap.events == []
    assert (snap.meta["params"], snap.meta["run"], snap.seq) == ({"p": 1}, 1, 2)


# ---------------------------------------------------------------------------- timers
async def test_due_timers_in_due_order_per_partition_with_a_limit(store: RedisStore) -> None:
    for p in (0, 2):
        await create(store, f"i{p}", partition=p)
    due = {0: [T0 + 30, T0 + 10, T0 + 20, T0 + 99], 2: [T0 + 5, T0 + 50]}
    for p, times in due.items():
        t = tx(f"i{p}", 0, partition=p, timers_add=[(d, timer(f"t{d}")) for d in times])
        assert await commit(store, t) is CommitResult.COMMITTED

    got = await store.due_timers([0, 1, 2], now_ms=T0 + 30)
    assert got == [
        (0, timer(f"t{T0 + 10}"), T0 + 10),
        (0, timer(f"t{T0 + 20}"), T0 + 20),
        (0, timer(f"t{T0 + 30}"), T0 + 30),  # due exactly now counts as due
        (2, timer(f"t{T0 + 5}"), T0 + 5),
    ]
    assert await store.due_timers([0, 2], now_ms=T0 + 1000, limit=2) == [
        (0, timer(f"t{T0 + 10}"), T0 + 10),
        (0, timer(f"t{T0 + 20}"), T0 + 20),
        (2, timer(f"t{T0 + 5}"), T0 + 5),
        (2, timer(f"t{T0 + 50}"), T0 + 50),
    ]
    assert await store.due_timers([2], now_ms=T0) == []
    assert await store.due_timers([], now_ms=T0 + 1000) == []

    assert await store.next_due([0, 1, 2], after_ms=T0) == T0 + 5
    assert await store.next_due([0, 1, 2], after_ms=T0 + 5) == T0 + 10  # strictly after
    assert await store.next_due([2], after_ms=T0 + 5) == T0 + 50
    assert await store.next_due([0, 2], after_ms=T0 + 99) is None
    assert await store.next_due([1], after_ms=0) is None


# ---------------------------------------------------------------------------- listing
async def _page_through(store: RedisStore, status: str | None, limit: int) -> list[tuple[str, int]]:
    """Every row, following the cursor the way the client does; fails on a page that repeats or stalls."""
    rows: list[tuple[str, int]] = []
    before: tuple[int, str] | None = None
    for _ in range(1000):
        page = await store.list_instances(WF, status, before=before, limit=limit)
        assert len(page) <= limit
        rows += page
        if len(page) < limit:
            return rows
        before = (page[-1][1], page[-1][0])
    raise AssertionError("paging did not end")


async def test_list_instances_newest_first_across_partitions_with_status_filter(store: RedisStore) -> None:
    expected: list[tuple[str, int]] = []
    running: list[tuple[str, int]] = []
    for n in range(37):
        iid, created, p = f"i{n:02d}", T0 + (n * 7) % 23, n % PARTITIONS  # out of order, with ties
        assert await create(store, iid, partition=p, created_ms=created)
        expected.append((iid, created))
        if n % 3 == 0:
            t = tx(iid, 0, partition=p, created_ms=created, meta={"status": "running"})
            t.status_from, t.status_to = "queued", "running"
            assert await commit(store, t) is CommitResult.COMMITTED
            running.append((iid, created))

    def newest_first(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)

    for limit in (1, 5, 36, 37, 100):
        assert await _page_through(store, None, limit) == newest_first(expected), limit
    assert await _page_through(store, "running", 4) == newest_first(running)
    queued = [r for r in expected if r not in running]
    assert await _page_through(store, "queued", 6) == newest_first(queued)
    assert await store.list_instances(WF, "errored", before=None, limit=10) == []
    assert await store.list_instances("other", None, before=None, limit=10) == []


async def test_list_instances_pages_through_many_instances_created_in_one_millisecond(store: RedisStore) -> None:
    # create_batch gives its whole batch one creation time, and with few partitions one
    # partition can hold more same-millisecond instances than a page.
    rows = [(0, WF, f"b{n:03d}", T0, fields_of(f"b{n:03d}", T0)) for n in range(100)]
    assert all(await store.create_many(rows))

    listed = await _page_through(store, None, 10)

    assert [iid for iid, _ in listed] == [f"b{n:03d}" for n in reversed(range(100))]


async def test_check_deployment_refuses_a_changed_partition_count(backend: Backend, store: RedisStore) -> None:
    await store.check_deployment(Limits())
    await backend.store(PARTITIONS).check_deployment(Limits())  # same settings: fine, and idempotent

    with pytest.raises(
        DeploymentMismatch,
        match=rf"holds data for {PARTITIONS} partitions.*HUTCH_PARTITIONS=8.*partitions = {PARTITIONS}",
    ):
        await backend.store(8).check_deployment(Limits())
    # Another namespace on the same Redis is another deployment.
    await backend.store(8, namespace=f"{backend.namespace}:other").check_deployment(Limits())


async def test_check_deployment_records_the_limits_and_refuses_others(backend: Backend, store: RedisStore) -> None:
    recorded = Limits(max_steps=5, retention="7 days")
    await store.check_deployment(recorded)
    await backend.store().check_deployment(Limits(max_steps=5, retention=7 * 86400))  # equal, however written

    with pytest.raises(DeploymentMismatch) as caught:
        await backend.store().check_deployment(Limits())  # a process left on the defaults
    message = str(caught.value)
    assert "enforces the limits max_steps=5, retention='P7D'" in message
    assert "this process has max_steps=10000, retention='P30D'" in message
    assert f"HDEL {backend.namespace}:config limits" in message
    assert "max_payload_bytes" not in message  # only what differs is named


async def test_check_deployment_records_limits_where_only_the_partition_count_was(
    backend: Backend, store: RedisStore
) -> None:
    # A deployment from before limits were recorded: its next process records them, then they hold.
    await backend.redis.hset(f"{backend.namespace}:config", "partitions", PARTITIONS)
    await store.check_deployment(Limits(max_steps=7))
    with pytest.raises(DeploymentMismatch, match="max_steps=7"):
        await backend.store().check_deployment(Limits())


# ---------------------------------------------------------------------------- retention of the indexes
RETENTION_MS = RETENTION_S * 1000


def finish(iid: str, seq: int, ended: int, *, status: str = "complete", partition: int = 1, **more: Any) -> Transition:
    """The transition that ends an instance at ``ended`` (the engine's clock), as the actor makes it."""
    return tx(
        iid,
        seq,
        partition=partition,
        meta={"status": status, "ended": ended},
        active="-",
        status_from="queued",
        status_to=status,
        ttl_s=RETENTION_S,
        **more,
    )


async def expire(backend: Backend, store: RedisStore, iid: str, partition: int = 1) -> None:
    """What Redis does to an instance when its retention ends: its data keys are gone."""
    k = store.keys
    await backend.redis.delete(
        k.meta(partition, WF, iid), k.history(partition, WF, iid), k.event_buffer(partition, WF, iid)
    )


async def indexed(backend: Backend, store: RedisStore, partition: int = 1) -> dict[str, set[str]]:
    """The ids in each of the partition's indexes that hold any, and in its retention set."""
    out: dict[str, set[str]] = {}
    for status in ("queued", "running", "complete", "errored", "terminated", keys.ALL):
        members = {m.removeprefix(f"{WF}:") for m in await index(backend, store, status, partition)}
        if members:
            out[status] = members
    retained = await backend.redis.zrange(store.keys.retention(partition), 0, -1)
    if retained:
        out["retention"] = {m.decode().removeprefix(f"{WF}:") for m in retained}
    return out


async def test_a_finish_records_when_the_retention_ends_and_a_restart_forgets_it(
    backend: Backend, store: RedisStore
) -> None:
    await create(store, "a")
    assert await commit(store, finish("a", 0, ended=T0 + 1000)) is CommitResult.COMMITTED

    retention_key = store.keys.retention(1)
    assert await backend.redis.zrange(retention_key, 0, -1, withscores=True) == [
        (b"orders:a", T0 + 1000 + RETENTION_MS)
    ]
    # In the partition's slot, like every key a commit of the partition touches.
    assert retention_key.startswith(f"{backend.namespace}:{{p1}}:")
    assert key_slot(retention_key.encode()) == key_slot(store.keys.meta(1, WF, "a").encode())

    restart = tx("a", 1, meta={"status": "running"}, status_from="complete", status_to="running", ttl_s=-1)
    assert await commit(store, restart) is CommitResult.COMMITTED
    assert await backend.redis.exists(retention_key) == 0  # running again: nothing to expire


async def test_an_expired_instance_is_not_listed_and_a_later_finish_prunes_its_entries(
    backend: Backend, store: RedisStore
) -> None:
    await create(store, "old")
    for n, iid in enumerate(("early", "late"), start=1):
        await create(store, iid, created_ms=T0 + n)
    assert await commit(store, finish("old", 0, ended=T0 + 1000)) is CommitResult.COMMITTED
    await expire(backend, store, "old")

    # Listed only while it exists, though no finish has pruned its index entries yet.
    assert await store.list_instances(WF, None, before=None, limit=10) == [("late", T0 + 2), ("early", T0 + 1)]
    assert await store.list_instances(WF, "complete", before=None, limit=10) == []
    # A commit that finishes nothing (every step's) leaves the indexes alone.
    assert await commit(store, tx("early", 0, history=[rec("step", "x")])) is CommitResult.COMMITTED
    # A finish before the old instance's retention ended does not touch it.
    assert await commit(store, finish("early", 1, ended=T0 + 999 + RETENTION_MS)) is CommitResult.COMMITTED
    assert await indexed(backend, store) == {
        "queued": {"late"},
        "complete": {"old", "early"},
        "all": {"old", "early", "late"},
        "retention": {"old", "early"},
    }

    assert await commit(store, finish("late", 0, ended=T0 + 1000 + RETENTION_MS)) is CommitResult.COMMITTED

    assert await indexed(backend, store) == {
        "complete": {"early", "late"},
        "all": {"early", "late"},
        "retention": {"early", "late"},
    }


@pytest.mark.parametrize("status", ["errored", "terminated"])
async def test_every_final_status_index_is_pruned(backend: Backend, store: RedisStore, status: str) -> None:
    await create(store, "old", partition=2)
    await create(store, "new", partition=2)
    assert await commit(store, finish("old", 0, ended=T0, status=status, partition=2)) is CommitResult.COMMITTED
    await expire(backend, store, "old", partition=2)

    assert await commit(store, finish("new", 0, ended=T0 + RETENTION_MS, partition=2)) is CommitResult.COMMITTED

    assert await indexed(backend, store, partition=2) == {"complete": {"new"}, "all": {"new"}, "retention": {"new"}}


async def test_pruning_does_a_bounded_share_per_finish_oldest_first(backend: Backend) -> None:
    store = backend.store()
    store.prune_per_finish = 2
    old = [f"old{n}" for n in range(5)]
    for n, iid in enumerate(old):
        await create(store, iid)
        # Finished in reverse order: the pruning goes by the end of retention, not by creation.
        assert await commit(store, finish(iid, 0, ended=T0 + 10 - n)) is CommitResult.COMMITTED
        await expire(backend, store, iid)
    later = T0 + 100 + RETENTION_MS
    for iid in ("a", "b", "c"):
        await create(store, iid, created_ms=T0 + 50)

    assert await commit(store, finish("a", 0, ended=later)) is CommitResult.COMMITTED
    assert (await indexed(backend, store))["retention"] == {"old0", "old1", "old2", "a"}
    # Two finishes in one call do two shares (a step's commit in it, none).
    batch = [finish("b", 0, ended=later), finish("c", 0, ended=later), tx("a", 1, history=[rec("life", "note")])]
    assert await store.commit_many(batch, {}) == [CommitResult.COMMITTED] * 3
    done = {"a", "b", "c"}
    assert await indexed(backend, store) == {"complete": done, "all": done, "retention": done}


async def test_an_id_created_again_after_it_expired_keeps_only_its_new_entries(
    backend: Backend, store: RedisStore
) -> None:
    await create(store, "x")
    assert await commit(store, finish("x", 0, ended=T0)) is CommitResult.COMMITTED
    await expire(backend, store, "x")
    again = T0 + RETENTION_MS + 5
    assert await create(store, "x", created_ms=again)

    # The old incarnation's "complete" entry is still there, but x is queued now.
    assert await store.list_instances(WF, None, before=None, limit=10) == [("x", again)]
    assert await store.list_instances(WF, "queued", before=None, limit=10) == [("x", again)]
    assert await store.list_instances(WF, "complete", before=None, limit=10) == []

    await create(store, "y")
    assert await commit(store, finish("y", 0, ended=again)) is CommitResult.COMMITTED

    assert await indexed(backend, store) == {
        "queued": {"x"},
        "complete": {"y"},
        "all": {"x", "y"},
        "retention": {"y"},
    }


async def test_an_entry_due_by_a_workers_clock_stays_while_redis_keeps_the_instance(
    backend: Backend, store: RedisStore
) -> None:
    # A worker whose clock runs ahead of Redis's finds the entry due before the keys expired.
    await create(store, "a")
    await create(store, "b")
    assert await commit(store, finish("a", 0, ended=T0)) is CommitResult.COMMITTED

    assert await commit(store, finish("b", 0, ended=T0 + RETENTION_MS + 1)) is CommitResult.COMMITTED

    assert await indexed(backend, store) == {"complete": {"a", "b"}, "all": {"a", "b"}, "retention": {"a", "b"}}
    assert [iid for iid, _ in await store.list_instances(WF, "complete", before=None, limit=10)] == ["b", "a"]


async def test_listing_skips_many_expired_entries_and_still_fills_its_pages(
    backend: Backend, store: RedisStore
) -> None:
    live = []
    for n in range(250):
        iid = f"i{n:03d}"
        await create(store, iid, created_ms=T0 + n)
        if n % 50 == 0:
            live.append((iid, T0 + n))
        else:
            await expire(backend, store, iid)  # nothing has pruned them: more than one page of dead rows

    assert await _page_through(store, None, 2) == sorted(live, key=lambda r: r[1], reverse=True)


# ---------------------------------------------------------------------------- key layout
async def test_every_key_of_an_instance_shares_its_partition_hash_tag(backend: Backend, store: RedisStore) -> None:
    await store.check_deployment(Limits())
    await create(store, "a", partition=3)
    await store.claim(3, "me")
    t = tx(
        "a",
        0,
        partition=3,
        meta={"status": "running"},
        history=[rec("step", "x")],
        timers_add=[(T0, timer("x"))],
        events_push=[b"ev"],
        status_from="queued",
        status_to="running",
    )
    assert await commit(store, t, {3: "me"}) is CommitResult.COMMITTED

    ns = re.escape(backend.namespace)
    deployment_wide = {f"{backend.namespace}:workflows", f"{backend.namespace}:config"}
    partition_keys = [k for k in await backend.keys() if k not in deployment_wide]
    kinds = {re.sub(rf"^{ns}:\{{p3\}}:", "", k) for k in partition_keys}
    assert kinds == {
        "i:orders:a:meta",
        "i:orders:a:hist",
        "i:orders:a:evbuf",
        "timers",
        "active",
        "owner",
        "idx:orders:running",
        "idx:orders:all",
    }
    assert all(re.match(rf"^{ns}:\{{p3\}}:", k) for k in partition_keys)
    assert len({key_slot(k.encode()) for k in partition_keys}) == 1  # one Redis Cluster slot


# ---------------------------------------------------------------------------- batched script calls
@pytest.mark.parametrize("cross_slot", [True, False], ids=["one-call", "call-per-partition"])
async def test_a_batch_mixing_stale_and_fresh_transitions_commits_exactly_the_fresh_ones(
    backend: Backend, cross_slot: bool
) -> None:
    if cross_slot and backend.kind == "cluster":
        pytest.skip("a cluster refuses a script over several partitions' slots (what cross_slot=False is for)")
    store = RedisStore(backend.store().redis, PARTITIONS, namespace=backend.namespace, cross_slot=cross_slot)
    ids = [f"i{n}" for n in range(8)]
    for n, iid in enumerate(ids):
        assert await create(store, iid, partition=n % PARTITIONS)
    for p in range(PARTITIONS):
        await store.claim(p, f"owner-{p}")
    fences = {p: f"owner-{p}" for p in range(PARTITIONS)}
    fences[3] = "someone-else"  # partition 3 was taken over: its fresh transitions are fenced
    # Move every instance to seq 1 first, so "stale" (expects 0) and "ahead" (expects 2) both miss.
    assert set(await store.commit_many([tx(i, 0, partition=n % PARTITIONS) for n, i in enumerate(ids)], {})) == {
        CommitResult.COMMITTED
    }
    expected_seq = {"fresh": 1, "stale": 0, "ahead": 2}
    plan = ["fresh", "stale", "fresh", "ahead", "stale", "fresh", "stale", "fresh"]
    batch = [
        tx(
            iid,
            expected_seq[kind],
            partition=n % PARTITIONS,
            meta={"status": "running", "note": pack(kind)},
            history=[rec("step", f"{iid}-{kind}")],
            timers_add=[(T0 + n, timer(f"{iid}-{kind}"))],
            status_from="queued",
            status_to="running",
        )
        for n, (iid, kind) in enumerate(zip(ids, plan, strict=True))
    ]
    # A second transition of i0 in the same batch, computed against the seq the first one commits.
    batch.append(tx("i0", 2, partition=0, history=[rec("step", "i0-again")]))

    results = await store.commit_many(batch, fences)

    def outcome(n: int, kind: str) -> CommitResult:
        if kind != "fresh":
            return CommitResult.CONFLICT
        return CommitResult.FENCED if n % PARTITIONS == 3 else CommitResult.COMMITTED

    expected = [outcome(n, kind) for n, kind in enumerate(plan)] + [CommitResult.COMMITTED]
    assert results == expected
    committed = {iid for iid, kind, r in zip(ids, plan, results, strict=False) if r is CommitResult.COMMITTED}
    assert committed == {"i0", "i2", "i5"}  # i7 is fresh but on the fenced partition 3
    for n, (iid, kind) in enumerate(zip(ids, plan, strict=True)):
        snap = await store.load(n % PARTITIONS, WF, iid)
        assert snap is not None
        names = [r["n"] for r in snap.history]
        if iid in committed:
            assert snap.seq == (3 if iid == "i0" else 2)
            assert snap.meta["status"] == "running" and snap.meta["note"] == kind
            assert names == ([f"{iid}-fresh", "i0-again"] if iid == "i0" else [f"{iid}-fresh"])
        else:  # nothing of a rejected transition was written
            assert (snap.seq, snap.meta["status"], names) == (1, "queued", [])
            assert "note" not in snap.meta
    due = await store.due_timers(range(PARTITIONS), now_ms=T0 + 100)
    assert sorted(m for _, m, _ in due) == sorted(timer(f"{i}-fresh") for i in committed)
    for p in range(PARTITIONS):
        running = {m for m in await index(backend, store, "running", partition=p)}
        queued = {m for m in await index(backend, store, "queued", partition=p)}
        mine = {f"{WF}:{i}" for n, i in enumerate(ids) if n % PARTITIONS == p}
        assert running == {f"{WF}:{i}" for i in committed} & mine
        assert queued == mine - running


async def test_a_cluster_store_makes_one_single_slot_script_call_per_partition(backend: Backend) -> None:
    store = RedisStore(backend.store().redis, PARTITIONS, namespace=backend.namespace, cross_slot=False)
    assert (
        await store.create_many([(p, WF, f"i{p}", T0, fields_of(f"i{p}", T0)) for p in range(PARTITIONS)])
        == [True] * PARTITIONS
    )
    sent: list[list[str]] = []
    evalsha_many = store._evalsha_many

    async def spy(script: Any, calls: Any, **kwargs: Any) -> list[Any]:
        sent.extend(call_keys for call_keys, _ in calls)
        return await evalsha_many(script, calls, **kwargs)

    store._evalsha_many = spy  # type: ignore[method-assign]
    batch = [
        tx(f"i{p}", 0, partition=p, timers_add=[(T0, timer(f"t{p}"))], status_from="queued", status_to="running")
        for p in range(PARTITIONS)
    ]
    assert await store.commit_many(batch, {}) == [CommitResult.COMMITTED] * PARTITIONS
    assert len(sent) == PARTITIONS
    assert all(len({key_slot(k.encode()) for k in call_keys}) == 1 for call_keys in sent)
    if backend.kind == "cluster":  # the default there: a call per partition
        assert RedisStore(backend.store().redis, PARTITIONS, namespace=backend.namespace).cross_slot is False
        return
    # A standalone server takes the whole batch in one call.
    one = RedisStore(backend.store().redis, PARTITIONS, namespace=backend.namespace)
    assert one.cross_slot is True
    one._evalsha_many = spy  # type: ignore[method-assign]
    sent.clear()
    assert (
        await one.commit_many([tx(f"i{p}", 1, partition=p) for p in range(PARTITIONS)], {})
        == [CommitResult.COMMITTED] * PARTITIONS
    )
    assert len(sent) == 1


async def test_a_flushed_script_cache_is_reloaded_and_the_batch_applied_once(
    backend: Backend, store: RedisStore
) -> None:
    for p in range(PARTITIONS):
        assert await create(store, f"i{p}", partition=p)
    await backend.redis.script_flush()

    single = await store.commit_many([tx("i0", 0, partition=0, history=[rec("step", "one")])], {})
    await backend.redis.script_flush()
    many = await store.commit_many([tx(f"i{p}", 0, partition=p) for p in range(1, PARTITIONS)], {})

    assert single == [CommitResult.COMMITTED]
    assert many == [CommitResult.COMMITTED] * (PARTITIONS - 1)
    assert [r["n"] for r in await store.history(0, WF, "i0")] == ["one"]
    snaps = [await store.load(p, WF, f"i{p}") for p in range(PARTITIONS)]
    assert [s.seq if s else None for s in snaps] == [1] * PARTITIONS


# ---------------------------------------------------------------------------- watched instances
async def test_only_the_commits_of_a_watched_instance_are_announced_with_their_seq(
    backend: Backend, store: RedisStore
) -> None:
    # What a gateway's live dashboard page follows (hutch.commits): on the instance's partition's
    # changed channel, in its slot (a script's SPUBLISH must be, on a cluster).
    heard: list[bytes] = []
    feed = ChannelFeed(backend.store().redis, heard.append)
    await feed.start([store.keys.changed_channel(1), store.keys.changed_channel(2)])
    try:
        for iid, partition in (("a", 1), ("b", 1), ("c", 2), ("d", 2)):
            assert await create(store, iid, partition=partition)
        running = {"meta": {"status": "running"}, "status_from": "queued", "status_to": "running"}
        assert await commit(store, tx("a", 0, **running)) is CommitResult.COMMITTED  # not watched yet
        now = time.time_ns() // 1_000_000
        assert (await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 60_000)).seq == 1  # its seq
        assert (await store.mark_watched(2, WF, "d", now_ms=now, until_ms=now + 60_000)).seq == 0
        assert (await store.mark_watched(1, WF, "nobody", now_ms=now, until_ms=now + 60_000)).seq is None
        batch = [
            tx("a", 1, history=[rec("step", "x")]),
            tx("b", 0, **running),  # in a's partition (and call), not watched: not announced
            tx("c", 0, partition=2, **running),
            tx("d", 0, partition=2, **running),
        ]
        assert await store.commit_many(batch, {}) == [CommitResult.COMMITTED] * 4
        # A channel's messages arrive in order: once these are heard, b's or c's would have been.
        assert await commit(store, tx("a", 2, history=[rec("step", "y")])) is CommitResult.COMMITTED
        assert await commit(store, tx("d", 1, partition=2, history=[rec("step", "y")])) is CommitResult.COMMITTED
        await eventually(lambda: _heard(heard, 4))
        assert sorted(heard) == [b"1 orders:d", b"2 orders:a", b"2 orders:d", b"3 orders:a"]
        assert heard.index(b"2 orders:a") < heard.index(b"3 orders:a")
    finally:
        await feed.close()


async def _heard(heard: list[bytes], count: int) -> bool:
    return len(heard) >= count


async def test_a_mark_says_whether_every_live_worker_has_a_feature(backend: Backend, store: RedisStore) -> None:
    # A gateway follows by announcements only while no worker of an earlier version commits unannounced.
    now = time.time_ns() // 1_000_000

    async def every_worker() -> bool:
        marked = await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 60_000, worker_feature="changed")
        return marked.every_worker

    assert await every_worker()  # no worker at all
    await backend.redis.zadd(store.keys.workers(), {"w1": now, "w2": now})
    await backend.redis.zadd(store.keys.worker_feature("changed"), {"w1": now})
    assert not await every_worker()  # w2 is of an earlier version
    await backend.redis.zadd(store.keys.worker_feature("changed"), {"w2": now})
    assert await every_worker()
    assert (await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 60_000)).every_worker  # not asked


async def test_lapsed_marks_are_dropped_and_no_refresh_shortens_a_mark(backend: Backend, store: RedisStore) -> None:
    watched = store.keys.watched(1)
    now = time.time_ns() // 1_000_000
    await store.mark_watched(1, WF, "gone", now_ms=now - 120_000, until_ms=now - 60_000)  # lapsed a minute ago
    await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 60_000)
    assert await backend.redis.zrange(watched, 0, -1, withscores=True) == [(b"orders:a", now + 60_000)]
    assert 50_000 < await backend.redis.pttl(watched) <= 60_000  # the set expires when no one refreshes it
    # Another follower with a shorter mark: neither the mark nor the set's expiry shrinks.
    await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 10_000)
    assert await backend.redis.zscore(watched, "orders:a") == now + 60_000
    assert await backend.redis.pttl(watched) > 10_000
    await store.mark_watched(1, WF, "a", now_ms=now, until_ms=now + 90_000)  # a later refresh extends both
    assert await backend.redis.zscore(watched, "orders:a") == now + 90_000
    assert await backend.redis.pttl(watched) > 60_000
    slot = key_slot(store.keys.meta(1, WF, "a").encode())
    assert key_slot(watched.encode()) == key_slot(store.keys.changed_channel(1).encode()) == slot


async def test_a_creation_time_check_refuses_another_instance_with_the_same_id(store: RedisStore) -> None:
    assert await create(store, "a", created_ms=T0 + 7)
    wrong = tx("a", 0, created_ms=T0, history=[rec("step", "stale")])
    wrong.check_created = True
    right = tx("a", 0, created_ms=T0 + 7, history=[rec("step", "fresh")])
    right.check_created = True

    assert await store.commit_many([wrong], {}) == [CommitResult.CONFLICT]
    assert await store.commit_many([right], {}) == [CommitResult.COMMITTED]
    assert [r["n"] for r in await store.history(1, WF, "a")] == ["fresh"]


# ---------------------------------------------------------------------------- compare-and-set property
OFFSETS = st.integers(min_value=-3, max_value=2)  # expected seq relative to the true one; 0 is fresh


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(OFFSETS, min_size=1, max_size=4), min_size=1, max_size=8))
async def test_stale_transitions_never_commit(store: RedisStore, batches: list[list[int]]) -> None:
    iid = unique("prop")
    assert await create(store, iid)
    seq, accepted = 0, []
    for n, batch in enumerate(batches):
        # Every transition of a pipelined batch was computed against the seq at the batch's start,
        # like duplicate or stale messages racing a live one.
        start = seq
        transitions = [tx(iid, max(start + off, 0), history=[rec("step", f"{n}.{j}")]) for j, off in enumerate(batch)]
        results = await store.commit_many(transitions, {})
        for t, result in zip(transitions, results, strict=True):
            if t.expected_seq == seq:
                assert result is CommitResult.COMMITTED
                seq += 1
                accepted.append(unpack(t.history[0])["n"])
            else:
                assert result is CommitResult.CONFLICT

    snap = await store.load(1, WF, iid)
    assert snap is not None
    assert snap.seq == len(accepted) == seq
    assert [r["n"] for r in snap.history] == accepted


# ---------------------------------------------------------------------------- footprint
class TenSteps(WorkflowEntrypoint):
    async def run(self, event, step):
        results = []
        for i in range(10):
            results.append(await step.do(f"step {i}", _step_body(i)))
        return {"steps": len(results)}


def _step_body(i: int) -> Any:
    async def body() -> dict[str, Any]:
        return {"index": i, "note": "a typical small step result"}

    return body


@pytest.mark.redis
async def test_redis_bytes_per_finished_ten_step_instance(make_client: MakeClient, redis_url: str) -> None:
    # Run a real 10-step instance on the embedded engine, then write exactly the records the
    # engine stored into the real Redis through the store, so MEMORY USAGE measures real data.
    client = await make_client({"ten": TenSteps})
    instance = await client.workflow("ten").create(id="ten-1", params={"customer": "c-42"})
    assert (await instance.wait(timeout=10)).status == "complete"
    source: RedisStore = client._store
    p = client._partition("ten", "ten-1")
    meta_raw = await source.redis.hgetall(source.keys.meta(p, "ten", "ten-1"))
    history_raw = await source.redis.lrange(source.keys.history(p, "ten", "ten-1"), 0, -1)
    assert len(history_raw) >= 10

    namespace = unique("ns")
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(redis, source.partitions, namespace=namespace)
        fields = {k.decode(): v for k, v in meta_raw.items() if k not in (b"seq", b"status")}
        assert await store.create(p, "ten", "ten-1", T0, {**fields, "status": "queued", "seq": 0})
        finish = Transition(p, "ten", "ten-1", 0, T0, meta={"status": "complete"}, history=history_raw)
        finish.status_from, finish.status_to, finish.active, finish.ttl_s = "queued", "complete", "-", RETENTION_S
        assert await store.commit_many([finish], {}) == [CommitResult.COMMITTED]

        data_keys = {"meta": store.keys.meta(p, "ten", "ten-1"), "hist": store.keys.history(p, "ten", "ten-1")}
        per_key = {name: await redis.memory_usage(key, samples=0) or 0 for name, key in data_keys.items()}
        total = sum(per_key.values())
        print(f"\nRedis bytes per finished 10-step instance: {total} ({per_key}, {len(history_raw)} history records)")
        assert 0 < total < 64 * 1024
    finally:
        doomed = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
        if doomed:
            await redis.delete(*doomed)
        await redis.aclose()
