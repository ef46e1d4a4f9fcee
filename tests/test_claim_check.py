"""Claim check (SPEC §11): step results over the inline threshold are stored once, outside the history."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hutch import Limits, WorkflowEntrypoint, WorkflowEvent, WorkflowStep, connect
from hutch.blobs import (
    BlobAddress,
    BlobRef,
    BlobsNeeded,
    BlobStore,
    by_reference,
    open_blob_store,
    stored_ref,
)
from hutch.errors import InvalidInputError, NotSerializable
from hutch.gateway.live_histories import instance_history
from hutch.history import Record
from hutch.serialization import encode_value, pack, unpack
from hutch.settings import Settings
from hutch.store.redis import RedisStore
from hutch.testing import load_history, replay_history, save_history, verify_histories

from tests.conftest import IN_CI, MakeClient
from tests.helpers import eventually

RunFn = Callable[[WorkflowEvent, WorkflowStep], Awaitable[Any]]
MIB = 1024 * 1024
BIG_LIMITS = Limits(max_payload_bytes=16 * MIB)


def workflow(run: RunFn) -> type[WorkflowEntrypoint]:
    class ClaimCheck(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await run(event, step)

    return ClaimCheck


class CountingBlobs:
    """A blob store that counts what is fetched from the one it wraps."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.fetched: list[str] = []

    async def put(self, where: BlobAddress, ref: BlobRef, data: bytes) -> None:
        await self.inner.put(where, ref, data)

    async def get_many(self, where: BlobAddress, refs: Sequence[BlobRef]) -> list[bytes | None]:
        self.fetched += [ref.key for ref in refs]
        return await self.inner.get_many(where, refs)

    async def close(self) -> None:
        await self.inner.close()


def ten_mib() -> bytes:
    return bytes(range(256)) * (10 * MIB // 256)


def step_values(history: list[Record]) -> dict[str, bytes]:
    return {r["n"]: r["vb"] for r in history if r["k"] == "res" and r["ref"] == "step" and "vb" in r}


async def test_a_10_mib_result_round_trips_by_reference(make_client: MakeClient) -> None:
    """The result is stored once outside the history; waking after the sleep replays and loads it."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        data = await step.do("big", ten_mib)
        await step.sleep("evict", 0.01)
        return {"size": len(data), "sha": hashlib.sha256(data).hexdigest()}

    client = await make_client({"cc": workflow(run)}, limits=BIG_LIMITS)
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0  # the sleep evicts, so waking replays
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=30)

    assert final.status == "complete", final.error
    expected = ten_mib()
    assert final.output == {"size": len(expected), "sha": hashlib.sha256(expected).hexdigest()}
    history = await store.history(*_where(client, instance.id))
    ref = stored_ref(step_values(history)["big"])
    assert ref is not None and ref.size == len(pack(expected))  # a 27-byte reference, not 10 MiB
    assert counting.fetched == [ref.key]  # the replay after the sleep loaded it, once
    stored = await store.redis.hget(store.keys.blobs(*_where(client, instance.id)), ref.key)
    assert stored == pack(expected)


async def test_small_results_stay_inline_and_replay_fetches_nothing(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        small = await step.do("small", lambda: "x" * 1000)
        await step.sleep("evict", 0.01)
        return len(small)

    client = await make_client({"cc": workflow(run)})
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=15)

    assert final.output == 1000
    history = await store.history(*_where(client, instance.id))
    assert unpack(step_values(history)["small"]) == "x" * 1000
    assert counting.fetched == []
    assert not await store.redis.exists(store.keys.blobs(*_where(client, instance.id)))


@pytest.mark.embedded_only
async def test_replay_loads_a_large_value_only_when_it_is_delivered(make_client: MakeClient) -> None:
    """Loading the history (describe, an evicted instance's reload) fetches nothing; a replay fetches
    each stored value when the code receives it, and each only once."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        first = await step.do("first", lambda: b"a" * 200_000)
        await step.sleep("evict 1", 0.01)
        second = await step.do("second", lambda: b"b" * 300_000)
        await step.sleep("evict 2", 0.01)
        return [len(first), len(second)]

    client = await make_client({"cc": workflow(run)})
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=15)
    detail = await instance.describe()

    assert final.output == [200_000, 300_000]
    refs = {name: stored_ref(vb) for name, vb in step_values(await store.history(*_where(client, instance.id))).items()}
    first, second = refs["first"], refs["second"]
    assert first is not None and second is not None
    # Wake 1 replays "first"; wake 2 replays both (one fetch round per group the code blocks on).
    assert counting.fetched == [first.key, first.key, second.key]
    outputs = {s.name: s.output for s in detail.steps if s.type == "step"}
    assert outputs["first"] == first  # describe() shows the reference, it does not load the value


def _sha(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha": hashlib.sha256(data).hexdigest()}


async def test_a_10_mib_output_is_stored_by_reference_and_loaded_by_status_only(make_client: MakeClient) -> None:
    """The output's meta field holds a reference; status() (and wait()) load it, describe() loads nothing."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return ten_mib()

    client = await make_client({"cc": workflow(run)}, limits=BIG_LIMITS)
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=30)

    assert final.status == "complete", final.error
    assert final.output == ten_mib()
    store = client._store
    meta = await store.read_meta(*_where(client, instance.id))
    assert meta is not None
    ref = meta["output"]
    assert isinstance(ref, BlobRef) and ref.size == len(pack(ten_mib()))
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    detail = await instance.describe()
    assert detail.output == ref and counting.fetched == []  # describe() shows the reference
    assert (await instance.status()).output == ten_mib()
    assert counting.fetched == [ref.key]


async def test_a_10_mib_event_payload_is_stored_by_reference_and_loaded_when_delivered(
    make_client: MakeClient,
) -> None:
    """Sent while the instance sleeps (buffered as a reference), loaded when the wait takes it and
    again when a replay delivers it; describe() shows the reference and loads nothing."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("before", 0.2)
        received = await step.wait_for_event("big", "big", timeout="1 minute")
        await step.sleep("evict", 0.01)
        return _sha(received.payload)

    client = await make_client({"cc": workflow(run)}, limits=BIG_LIMITS)
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    instance = await client.workflow("cc").create()
    await instance.send_event("big", ten_mib())
    final = await instance.wait(timeout=30)

    assert final.status == "complete", final.error
    assert final.output == _sha(ten_mib())
    history = await store.history(*_where(client, instance.id))
    [ev] = [r["ev"] for r in history if r["k"] == "res" and r["ref"] == "wait"]
    ref = ev["payload"]
    assert isinstance(ref, BlobRef) and ref.size == len(pack(ten_mib()))
    # Delivered to the wait (once), then replayed after the sleep (once): never for the reloads before.
    assert counting.fetched == [ref.key, ref.key]
    client_counting = CountingBlobs(client._store.blobs)
    client._store.blobs = client_counting
    detail = await instance.describe()
    [wait] = [s for s in detail.steps if s.type == "waitForEvent"]
    assert wait.output["payload"] == ref and client_counting.fetched == []


def _where(client: Any, instance_id: str) -> tuple[int, str, str]:
    return client._partition("cc", instance_id), "cc", instance_id


# --------------------------------------------------------------------------- units
def test_a_reference_is_recognised_from_its_bytes_alone() -> None:
    ref = BlobRef.new(b"payload")
    data = pack(ref)
    assert stored_ref(data) == ref
    assert unpack(data) == ref
    assert len(data) == 27  # what the history holds in place of the value
    assert stored_ref(pack(b"x" * 25)) is None  # inline values of the same length
    assert stored_ref(pack("y" * 26)) is None


def test_a_user_value_cannot_pass_for_a_reference() -> None:
    forged = msgpack.ExtType(1, BlobRef.new(b"z").ext_data())
    with pytest.raises(NotSerializable, match="extension types"):
        encode_value(forged, what="step 'x'#1 result", limit=MIB)


def test_the_blob_store_setting_names_redis_a_directory_or_a_bucket(tmp_path: Path) -> None:
    assert Settings(blob_store="redis").blob_store == "redis"
    assert open_blob_store("redis") is None
    assert type(open_blob_store(f"file://{tmp_path}")).__name__ == "FileBlobs"
    assert type(open_blob_store("s3://bucket/prefix?endpoint=http://127.0.0.1:1")).__name__ == "S3Blobs"
    with pytest.raises(ValueError, match="blob_store: 'ftp://host/x' is not a blob store"):
        Settings(blob_store="ftp://host/x")
    with pytest.raises(InvalidInputError):
        open_blob_store("s3:///no-bucket")


def test_the_inline_threshold_is_a_limit_up_to_64_mib() -> None:
    assert Limits().inline_threshold == 64 * 1024
    assert Limits(max_payload_bytes=64 * MIB).max_payload_bytes == 64 * MIB
    with pytest.raises(ValueError):
        Limits(inline_threshold=64 * MIB + 1)


async def test_a_deployment_recorded_before_the_inline_threshold_still_matches(redis_url: str) -> None:
    """A record written before ``inline_threshold`` existed lacks it: the default is what it held."""
    from tests.conftest import drop_namespace
    from tests.helpers import unique

    namespace = unique("cc")
    store = RedisStore(_redis(redis_url), 4, namespace=namespace)
    try:
        old = {k: v for k, v in Limits().model_dump(mode="json").items() if k != "inline_threshold"}
        await store.redis.hset(store.keys.config(), mapping={"partitions": 4, "limits": json.dumps(old)})
        await store.check_deployment(Limits())
    finally:
        await store.close()
        await drop_namespace(namespace)


def _redis(url: str) -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(url)


# --------------------------------------------------------------------------- the stores
async def _round_trip(blobs: BlobStore) -> None:
    where = BlobAddress(3, "wf", "order-1")
    data = pack(b"v" * 300_000)
    ref = BlobRef.new(data)
    await blobs.put(where, ref, data)
    await blobs.put(where, ref, data)  # stored once, again: harmless
    missing = BlobRef.new(b"other")
    assert await blobs.get_many(where, [ref, missing]) == [data, None]
    assert await blobs.get_many(BlobAddress(3, "wf", "order-2"), [ref]) == [None]


async def test_filesystem_blob_store(tmp_path: Path) -> None:
    blobs = open_blob_store(f"file://{tmp_path}/blobs")
    assert blobs is not None
    await _round_trip(blobs)
    assert len(list((tmp_path / "blobs" / "wf" / "order-1").iterdir())) == 1


async def test_redis_blob_store_keeps_an_instance_s_blobs_in_its_slot(redis_url: str) -> None:
    from tests.conftest import drop_namespace
    from tests.helpers import unique

    namespace = unique("cc")
    store = RedisStore(_redis(redis_url), 4, namespace=namespace)
    try:
        await _round_trip(store.blobs)
        key = store.keys.blobs(3, "wf", "order-1")
        assert key.startswith(f"{namespace}:{{p3}}:") and key in store.keys.instance_keys(3, "wf", "order-1")
    finally:
        await store.close()
        await drop_namespace(namespace)


@pytest.fixture
async def s3_endpoint() -> AsyncIterator[str]:
    """A local S3-compatible server, moto's (``moto[server]`` in the dev lock), on a free port, with
    the bucket ``hutch-blobs``; in CI a missing moto fails the test rather than skipping it."""
    if importlib.util.find_spec("moto") is None:
        message = "moto[server] is not installed (pip install -r requirements-dev.lock)"
        if IN_CI:
            pytest.fail(f"{message} (CI must test the S3 blob store)")
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    def put_bucket() -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/hutch-blobs", method="PUT"), timeout=1).close()
        except OSError:
            return False
        return True

    async def bucket_created() -> bool:  # once the server listens
        assert proc.returncode is None, f"moto_server exited with {proc.returncode}"
        return await asyncio.to_thread(put_bucket)

    try:
        await eventually(bucket_created, timeout=30)
        yield endpoint
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def test_s3_blob_store_against_a_local_s3_server(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    blobs = open_blob_store(f"s3://hutch-blobs/deploy-1?endpoint={s3_endpoint}&region=us-east-1")
    assert blobs is not None
    await _round_trip(blobs)


# --------------------------------------------------------------------------- costs (the W2L budget)
def test_large_bytes_and_str_are_not_decoded_again() -> None:
    """encode_value hands back the value itself for bytes and str: decoding megabytes to get an equal copy costs."""
    for value in (b"b" * MIB, "s" * MIB):
        data, decoded = encode_value(value, what="step 'x'#1 result", limit=2 * MIB)
        assert decoded is value and unpack(data) == value
    data, decoded = encode_value((1, b"x"), what="step 'x'#1 result", limit=MIB)
    assert decoded == [1, b"x"]  # containers still come back as replay sees them


async def test_each_stored_value_gets_a_fresh_key_without_hashing_it(tmp_path: Path) -> None:
    """Keys are drawn, not hashed: no SHA-256 of megabytes per result, and two runs of one attempt
    storing different bytes never overwrite the blob the committed one refers to."""
    blobs = open_blob_store(f"file://{tmp_path}")
    assert blobs is not None
    where = BlobAddress(0, "wf", "i-1")
    data = pack(b"d" * 100_000)
    first = await by_reference(blobs, where, data, 64 * 1024)
    second = await by_reference(blobs, where, data, 64 * 1024)
    ref1, ref2 = stored_ref(first), stored_ref(second)
    assert ref1 is not None and ref2 is not None and ref1.key != ref2.key
    assert await blobs.get_many(where, [ref1, ref2]) == [data, data]
    assert await by_reference(blobs, where, b"small", 64 * 1024) == b"small"  # inline below the threshold


# --------------------------------------------------------------------------- replay tooling
class _WaitsWithLargeValues(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        data = await step.do("big", lambda: b"r" * 200_000)
        received = await step.wait_for_event("big event", "big", timeout="1 hour")
        if data != b"r" * 200_000 or received.payload != b"e" * 300_000:  # replay hands back the values
            raise ValueError("not the recorded values")
        await step.wait_for_event("never", "never", timeout="1 hour")
        return [len(data), len(received.payload)]


async def test_verify_and_exported_histories_replay_values_stored_by_reference(tmp_path: Path) -> None:
    """``hutch workflows verify`` reads the live store's blobs, and an exported file carries them:
    both replay a history whose step result and event payload are stored by reference."""
    async with connect({"cc": _WaitsWithLargeValues}) as client:
        instance = await client.workflow("cc").create()
        await instance.send_event("big", b"e" * 300_000)

        async def waiting_for_never() -> bool:
            detail = await instance.describe()
            return any(s.name == "never" for s in detail.steps)

        await eventually(waiting_for_never, timeout=15)
        history = await instance_history(client._store, "cc", instance.id)
    assert history is not None
    assert len(history.blobs) == 2 and all(stored_ref(v) is None for v in history.blobs.values())

    assert verify_histories(_WaitsWithLargeValues, [history]).ok
    path = tmp_path / "history.json"
    save_history(history, path)
    assert len(path.read_bytes()) < 1_000_000 and load_history(path) == history
    result = replay_history(_WaitsWithLargeValues, load_history(path))
    assert not result.finished and result.error is None
    with pytest.raises(BlobsNeeded):  # what replay did before histories carried their blobs
        replay_history(_WaitsWithLargeValues, history.model_copy(update={"blobs": {}}))


# --------------------------------------------------------------------------- params
def _params_sha(event: WorkflowEvent) -> dict[str, Any]:
    return _sha(event.payload["blob"])


async def test_10_mib_params_are_stored_by_reference_and_loaded_when_the_run_is_built(
    make_client: MakeClient,
) -> None:
    """The meta holds a reference; the run's start loads the params once, the replay after the
    sleep once more; describe() shows the reference and loads nothing."""

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        before = await step.do("before", lambda: _params_sha(event))
        await step.sleep("evict", 0.01)
        return [before, _params_sha(event)]

    client = await make_client({"cc": workflow(run)}, limits=BIG_LIMITS)
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0  # the sleep evicts, so waking replays
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    params = {"blob": ten_mib()}
    instance = await client.workflow("cc").create(params=params)
    final = await instance.wait(timeout=30)

    assert final.status == "complete", final.error
    assert final.output == [_sha(ten_mib()), _sha(ten_mib())]
    meta = await client._store.read_meta(*_where(client, instance.id))
    assert meta is not None
    ref = meta["params"]
    assert isinstance(ref, BlobRef) and ref.size == len(pack(params))  # a reference, not 10 MiB
    assert counting.fetched == [ref.key, ref.key]  # the start, then the replay after the sleep
    stored = await store.redis.hget(store.keys.blobs(*_where(client, instance.id)), ref.key)
    assert stored == pack(params)
    client_counting = CountingBlobs(client._store.blobs)
    client._store.blobs = client_counting
    detail = await instance.describe()
    assert detail.params == ref and client_counting.fetched == []  # describe() shows the reference


async def test_small_params_stay_in_the_meta(make_client: MakeClient) -> None:
    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return len(event.payload["s"])

    client = await make_client({"cc": workflow(run)})
    instance = await client.workflow("cc").create(params={"s": "x" * 1000})
    assert (await instance.wait(timeout=15)).output == 1000
    meta = await client._store.read_meta(*_where(client, instance.id))
    assert meta is not None and meta["params"] == {"s": "x" * 1000}
    store = client._store
    assert isinstance(store, RedisStore)
    assert not await store.redis.exists(store.keys.blobs(*_where(client, instance.id)))


async def test_a_child_workflow_s_large_params_are_stored_under_the_child(make_client: MakeClient) -> None:
    async def parent(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.invoke("child", "child", params={"blob": ten_mib()}, id="the-child")

    async def child(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return _params_sha(event)

    client = await make_client({"cc": workflow(parent), "child": workflow(child)}, limits=BIG_LIMITS)
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=60)

    assert final.status == "complete", final.error
    assert final.output == _sha(ten_mib())
    where = (client._partition("child", "the-child"), "child", "the-child")
    meta = await client._store.read_meta(*where)
    assert meta is not None
    ref = meta["params"]
    assert isinstance(ref, BlobRef) and ref.size == len(pack({"blob": ten_mib()}))
    assert await client._store.blobs.get_many(BlobAddress(*where), [ref]) == [pack({"blob": ten_mib()})]


@pytest.mark.embedded_only
async def test_rest_create_with_large_params_up_to_the_configured_body_limit(make_client: MakeClient) -> None:
    import httpx
    from hutch.gateway.app import create_app

    async def run(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return len(event.payload["text"])

    client = await make_client({"cc": workflow(run)}, limits=BIG_LIMITS)
    text = "t" * (10 * MIB)
    app = create_app(client, tokens=["cc-token"], max_body_bytes=16 * MIB)
    auth = {"Authorization": "Bearer cc-token"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=auth) as http:
        created = await http.post("/api/workflows/cc/instances", json={"id": "rest-big", "params": {"text": text}})
        assert created.status_code == 201, created.text
        final = await (await client.workflow("cc").get("rest-big")).wait(timeout=30)
        assert final.output == len(text)
        described = await http.get("/api/workflows/cc/instances/rest-big")
        assert described.status_code == 200
        params = described.json()["result"]["params"]  # the reference, not 10 MiB of JSON
        assert params["size"] == len(pack({"text": text})) and len(described.content) < 10_000
    meta = await client._store.read_meta(*_where(client, "rest-big"))
    assert meta is not None and isinstance(meta["params"], BlobRef)


@pytest.mark.embedded_only
async def test_exported_history_carries_params_stored_by_reference() -> None:
    """``hutch instances export`` / verify replay an instance whose params are stored by reference."""
    async with connect({"cc": _ReadsLargeParams}) as client:
        instance = await client.workflow("cc").create(params={"blob": b"p" * 200_000})

        async def waiting() -> bool:
            return any(s.name == "never" for s in (await instance.describe()).steps)

        await eventually(waiting, timeout=15)
        history = await instance_history(client._store, "cc", instance.id)
    assert history is not None and history.params == {"blob": b"p" * 200_000}
    assert verify_histories(_ReadsLargeParams, [history]).ok


class _ReadsLargeParams(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        if event.payload["blob"] != b"p" * 200_000:
            raise ValueError("not the params")
        await step.wait_for_event("never", "never", timeout="1 hour")


async def test_a_child_s_large_params_are_held_by_reference_in_the_parent_s_history(
    make_client: MakeClient,
) -> None:
    """The invoke command records a reference to the params stored under the parent (not 10 MiB in
    its history); the child gets the full params; the parent's replay after a sleep never loads them."""

    async def parent(event: WorkflowEvent, step: WorkflowStep) -> Any:
        got = await step.invoke("child", "child", params={"blob": ten_mib()}, id="big-child")
        await step.sleep("evict", 0.01)
        return got

    async def child(event: WorkflowEvent, step: WorkflowStep) -> Any:
        return _params_sha(event)

    client = await make_client({"cc": workflow(parent), "child": workflow(child)}, limits=BIG_LIMITS)
    orchestrator = client.runtime_worker.orchestrator
    orchestrator.warm_horizon_ms = 0  # the sleep evicts, so waking replays
    store = orchestrator.store
    assert isinstance(store, RedisStore)
    counting = CountingBlobs(store.blobs)
    store.blobs = counting
    instance = await client.workflow("cc").create()
    final = await instance.wait(timeout=60)

    assert final.status == "complete", final.error
    assert final.output == _sha(ten_mib())  # the child read the full params
    history = await store.history(*_where(client, instance.id))
    [invoke] = [r for r in history if r["k"] == "invoke"]
    assert len(pack(invoke)) < 1024  # the params are not in the parent's history
    ref = stored_ref(invoke["pb"])
    assert ref is not None and ref.size == len(pack({"blob": ten_mib()}))
    stored = await store.redis.hget(store.keys.blobs(*_where(client, instance.id)), ref.key)
    assert stored == pack({"blob": ten_mib()})  # stored once, under the parent
    # Read once, to create the child; the replay after the sleep compared the command without it.
    assert counting.fetched.count(ref.key) == 1
