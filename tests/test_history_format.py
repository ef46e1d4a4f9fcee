"""History format 2 (issue 15 target 6): compact stored records, read alike with format 1's.

Format 2 (hutch.history) stores the common record shapes as msgpack arrays without their keys,
with times relative to the instance's creation, without the default step config, and folds a
step's first attempt start into its command and a successful attempt end into its resolution.
These tests pin its stored bytes, check that every recorded golden history decodes back to
itself key order included, that ``describe()`` of one instance is the same from either form,
that a deployment recorded before format 2 keeps writing format 1 (which the previous version
reads) until ``hutch admin history-format --upgrade``, and that a finished 10-step instance
takes at most 2 000 bytes of Redis.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner
from hutch import Settings, Status, StepConfig, WorkflowEntrypoint
from hutch.clock import Clock
from hutch.consumers.runtime import open_redis, start_distributed
from hutch.errors import DeploymentMismatch
from hutch.gateway.cli import main
from hutch.history import (
    DEFAULT_STEP_CONFIG,
    Record,
    decode_history,
    decode_record,
    encode_history,
    encode_record,
)
from hutch.keys import Keys
from hutch.store.redis import HISTORY_FORMAT_FIELD, RedisStore
from hutch.testing.history_file import from_json, to_json

from tests.conftest import MakeClient, drop_namespace
from tests.helpers import unique, wait_status, wait_step, worker_of
from tests.test_golden_histories import HISTORIES, SCENARIOS, load, record, replay

T0 = 1_700_000_000_000  # the instance's creation
DEFAULT_CFG = {"retries": {"limit": 5, "delay": 10.0, "backoff": "exponential", "max_delay": None}, "timeout": 600.0}

# One commit's records of each shape format 2 compacts, with the folds, and one it leaves as a map.
RECORDS: list[Record] = [
    {"k": "life", "what": "started", "t": T0 + 5},
    {"k": "step", "n": "charge", "c": 1, "g": 0, "t": T0 + 6, "cfg": DEFAULT_CFG},
    {"k": "att", "n": "charge", "c": 1, "a": 1, "t": T0 + 5},  # folded into the command
    {"k": "attend", "n": "charge", "c": 1, "a": 1, "ok": True, "t": T0 + 9},  # folded into the resolution
    {"k": "res", "ref": "step", "n": "charge", "c": 1, "ok": True, "vb": b"\x2a", "t": T0 + 9, "g": 0},
    {"k": "step", "n": "ship", "c": 1, "g": 1, "t": T0 + 9, "cfg": {"retries": {"limit": 0}}, "deps": ["charge"]},
    {"k": "att", "n": "ship", "c": 1, "a": 1, "t": T0 + 9},
    {
        "k": "attend",
        "n": "ship",
        "c": 1,
        "a": 1,
        "ok": False,
        "t": T0 + 12,
        "err": {"name": "ValueError", "message": "no"},
    },
    {
        "k": "res",
        "ref": "step",
        "n": "ship",
        "c": 1,
        "ok": False,
        "err": {"name": "ValueError", "message": "no"},
        "t": T0 + 12,
        "g": 1,
    },
    {"k": "sleep", "n": "nap", "c": 1, "g": 2, "t": T0 + 13, "due": T0 + 1013},
    {"k": "res", "ref": "sleep", "n": "nap", "c": 1, "ok": True, "t": T0 + 1015, "g": 2},
    {"k": "wait", "n": "approval", "c": 1, "g": 3, "t": T0 + 1016, "due": T0 + 61_016, "type": "approved"},
    {
        "k": "res",
        "ref": "wait",
        "n": "approval",
        "c": 1,
        "ok": True,
        "ev": {"type": "approved", "payload": {"by": "ann"}, "ts": T0 + 2000, "id": "e1"},
        "t": T0 + 2001,
        "g": 3,
    },
    {"k": "att", "n": "charge", "c": 2, "a": 2, "t": T0 + 2002},
    {"k": "attend", "n": "charge", "c": 2, "a": 2, "ok": True, "t": T0 + 2003},
    {"k": "life", "what": "paused", "g": 4, "t": T0 + 2004},  # no format 2 shape: a map, as in format 1
]

# RECORDS as format 2 stores them (written by this version on: never to change).
PINNED = [
    "9301a77374617274656405",
    "9702a6636861726765010006c0ff",
    "9806a663686172676501c4012a09000100",
    "9803a47368697001010981a77265747269657381a56c696d69740091a663686172676500",
    (
        "87a16ba6617474656e64a16ea473686970a16301a16101a26f6bc2a174cf0000018bcfe5680ca365727282a46e616d65aa56"
        "616c75654572726f72a76d657373616765a26e6f"
    ),
    "9709a473746570a4736869700182a46e616d65aa56616c75654572726f72a76d657373616765a26e6f0c01",
    "960aa36e617001020dcd03f5",
    "9607a5736c656570a36e617001cd03f702",
    "970ba8617070726f76616c0103cd03f8cdee58a8617070726f766564",
    (
        "9608a8617070726f76616c0184a474797065a8617070726f766564a77061796c6f616481a26279a3616e6ea27473cf000001"
        "8bcfe56fd0a26964a26531cd07d103"
    ),
    "9504a66368617267650202cd07d2",
    "9505a66368617267650202cd07d3",
    "84a16ba46c696665a477686174a6706175736564a16704a174cf0000018bcfe56fd4",
]


def test_format_2_folds_and_compacts_and_decodes_to_the_same_records() -> None:
    stored = encode_history(RECORDS, T0)

    # life, step+att, attend+res, DAG step (explicit cfg)+att, attend (failed), res (error), sleep,
    # res (sleep), wait, res (event), att (2nd attempt), attend+... no res: two records, pause map.
    assert len(stored) == 13
    decoded = decode_history(stored, T0)
    assert decoded == RECORDS
    assert [list(r) for r in decoded] == [list(r) for r in RECORDS]  # key order too
    assert sum(map(len, stored)) < sum(len(encode_record(r)) for r in RECORDS) / 2


def test_format_2_stored_bytes_are_pinned() -> None:
    # The stored form must never change: histories in Redis have to keep decoding.
    stored = encode_history(RECORDS, T0)

    pinned = [b.hex() for b in stored]
    assert pinned == PINNED
    assert decode_history([bytes.fromhex(h) for h in PINNED], T0) == RECORDS


def test_a_history_mixing_both_formats_decodes_in_order() -> None:
    half = len(RECORDS) // 2
    raw = [encode_record(r) for r in RECORDS[:half]] + encode_history(RECORDS[half:], T0)

    assert decode_history(raw, T0) == RECORDS


@pytest.mark.parametrize("name", sorted(p.stem for p in HISTORIES.glob("*.json")))
def test_every_golden_history_survives_format_2(name: str) -> None:
    golden = load(name)
    records, created = golden["history"], golden["created_ms"]

    decoded = decode_history(encode_history(records, created), created)

    assert decoded == records
    assert [list(r) for r in decoded] == [list(r) for r in records]


def test_the_default_step_config_left_out_is_todays_default_and_exact() -> None:
    assert StepConfig().model_dump() == DEFAULT_STEP_CONFIG
    # Equal in value but not in type: stored as given, so it reads back exactly.
    ints = {"retries": {"limit": 5, "delay": 10, "backoff": "exponential", "max_delay": None}, "timeout": 600}
    step: Record = {"k": "step", "n": "s", "c": 1, "g": 0, "t": T0, "cfg": ints}

    (back,) = decode_history(encode_history([step], T0), T0)

    assert back["cfg"] == ints  # type: ignore[typeddict-item]
    assert type(back["cfg"]["timeout"]) is int  # type: ignore[typeddict-item]


def test_an_unknown_format_2_code_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown format 2 code 99"):
        decode_history([bytes.fromhex("9163")], T0)


# ----------------------------------------------------------------------------- in Redis
async def _ok(value: Any = None) -> Any:
    return value


FAILS: dict[str, int] = {}


async def _flaky() -> str:
    FAILS["n"] = FAILS.get("n", 0) + 1
    if FAILS["n"] == 1:
        raise ValueError("first try fails")
    return "second try"


class Mixed(WorkflowEntrypoint):
    """Every common record shape: steps (one retried, one None, one failing), a sleep and a wait."""

    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: _ok({"x": 1}))
        b = await step.do("flaky", _flaky, config={"retries": {"limit": 2, "delay": 0.01}})
        await step.do("none", lambda: _ok(None))
        try:
            await step.do("fails", lambda: _fail(), config={"retries": {"limit": 0}})
        except Exception as exc:
            failed = str(exc)
        await step.sleep("nap", 0.01)
        go = await step.wait_for_event("go", "go", timeout="1 hour")
        return [a, b, failed, go.payload]


async def _fail() -> None:
    raise ValueError("always")


def _raw_history_key(client: Any, instance: Any) -> str:
    store: RedisStore = client._store
    return store.keys.history(instance._partition, instance.workflow, instance.id)


async def test_describe_is_the_same_from_format_1_and_format_2(make_client: MakeClient) -> None:
    FAILS.clear()
    client = await make_client({"mixed": Mixed})
    instance = await client.workflow("mixed").create(id=unique("mixed"))
    await wait_status(instance, Status.WAITING)
    await instance.send_event("go", {"ok": True})
    assert (await instance.wait(timeout=20)).status == Status.COMPLETE
    store: RedisStore = client._store
    key = _raw_history_key(client, instance)
    stored_v2: list[bytes] = await store.redis.lrange(key, 0, -1)  # type: ignore[assignment]
    new = await instance.describe()
    records = await store.history(instance._partition, "mixed", instance.id)

    # The same records stored as the previous version wrote them.
    await store.redis.delete(key)
    await store.redis.rpush(key, *(encode_record(r) for r in records))
    old = await instance.describe()

    assert any(isinstance(decode_record(r), list) for r in stored_v2), "the worker wrote format 1"
    assert len(stored_v2) < len(records)  # folded
    assert old == new
    assert old.model_dump_json() == new.model_dump_json()
    assert [s.name for s in new.steps] == ["a", "flaky", "none", "fails", "nap", "go"]
    assert len(new.steps[1].attempts) == 2


async def test_a_deployment_recorded_before_format_2_writes_format_1_until_upgraded(
    redis_url: str, amqp_url: str
) -> None:
    """Rolling deploy: the previous version's processes still run, so nothing they cannot read is written."""
    namespace = unique("fmt1")
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=2, heartbeat_s=0.2)
    redis = open_redis(redis_url)
    client = None
    try:
        # The record a process of the previous version left: limits without the history format.
        old_limits = json.dumps(settings.limits.model_dump(mode="json"), sort_keys=True)
        await redis.hset(Keys(namespace).config(), mapping={"partitions": 2, "limits": old_limits})
        FAILS.clear()
        client, _ = await start_distributed(
            {"mixed": Mixed}, settings=settings, limits=settings.limits, clock=Clock(), resources={}, binding_names={}
        )
        instance = await client.workflow("mixed").create(id="begun-on-format-1")
        await wait_step(instance, "go", timeout=20)  # waiting for the event (not sleeping): history is still
        key = _raw_history_key(client, instance)
        before: list[bytes] = await redis.lrange(key, 0, -1)  # type: ignore[assignment]
        records = await client._store.history(instance._partition, "mixed", instance.id)
        # Format 1: byte for byte what the previous version writes and reads.
        assert before == [encode_record(r) for r in records]
        assert worker_of(client).store.history_format == 1

        # Every process runs this version now: the operator upgrades, the worker restarts.
        args = ["admin", "history-format", "--upgrade", "--redis-url", redis_url]
        # The CLI runs its own event loop: in a thread, as the operator's separate process would.
        result = await asyncio.to_thread(CliRunner().invoke, main, args, env={"HUTCH_NAMESPACE": namespace})
        assert result.exit_code == 0, result.output
        assert "history format 1 -> 2" in result.output
        worker_of(client).store.history_format = 2
        await instance.send_event("go", "after")
        assert (await instance.wait(timeout=20)).output[-1] == "after"
        after: list[bytes] = await redis.lrange(key, 0, -1)  # type: ignore[assignment]
        assert after[: len(before)] == before
        assert any(isinstance(decode_record(r), list) for r in after[len(before) :])
        detail = await instance.describe()
        assert [s.name for s in detail.steps] == ["a", "flaky", "none", "fails", "nap", "go"]
        assert [len(s.attempts) for s in detail.steps[:4]] == [1, 2, 1, 1]

        recorded = json.loads(await redis.hget(Keys(namespace).config(), "limits"))  # type: ignore[arg-type]
        assert recorded[HISTORY_FORMAT_FIELD] == 2
        again = RedisStore(open_redis(redis_url), 2, namespace=namespace)
        try:
            await again.check_deployment(settings.limits)
            assert again.history_format == 2
        finally:
            await again.close()
    finally:
        if client is not None:
            worker = client.runtime_worker
            if worker is not None:
                await worker.shutdown(timeout=0)
                await worker.transport.delete_topology()
            await client.close()
        await redis.aclose()
        await drop_namespace(namespace)


async def test_a_new_deployment_writes_format_2_and_fences_older_processes(redis_url: str) -> None:
    namespace = unique("fmt2")
    store = RedisStore(open_redis(redis_url), 2, namespace=namespace)
    try:
        await store.check_deployment(Settings().limits)
        assert store.history_format == 2
        recorded = json.loads(await store.redis.hget(store.keys.config(), "limits"))  # type: ignore[arg-type]
        # What the previous version's check does: every recorded limit must equal its own. The one it
        # lacks makes it refuse to start here, instead of reading histories it cannot decode.
        previous = Settings().limits.model_dump(mode="json")
        differ = sorted(k for k in previous.keys() | recorded.keys() if previous.get(k) != recorded.get(k))
        assert differ == [HISTORY_FORMAT_FIELD]

        # A format this version does not know (a newer version's): refused, naming it.
        recorded[HISTORY_FORMAT_FIELD] = 3
        await store.redis.hset(store.keys.config(), "limits", json.dumps(recorded))
        newer = RedisStore(open_redis(redis_url), 2, namespace=namespace)
        try:
            with pytest.raises(DeploymentMismatch, match="histories in format 3"):
                await newer.check_deployment(Settings().limits)
        finally:
            await newer.close()
    finally:
        await store.close()
        await drop_namespace(namespace)


async def test_a_finished_10_step_instance_takes_at_most_2000_bytes_of_redis(redis_url: str) -> None:
    """MEMORY USAGE of its meta and history on a real Redis (a size, not a timing: deterministic enough)."""
    from bench.instance_bytes import measure

    out = await measure(redis_url, instances=5, steps=10)

    assert out["own_bytes_per_instance"] <= 2000, out
    assert out["memory_usage_mean"]["hist"] <= 1000, out


def test_memory_bound_is_not_met_by_format_1() -> None:
    """The bound above means something: format 1's history of the same instance alone is larger."""
    records: list[Record] = [{"k": "life", "what": "started", "t": T0}]
    for i in range(10):
        n = f"step {i}"
        records += [
            {"k": "step", "n": n, "c": 1, "g": i, "t": T0 + i, "cfg": DEFAULT_CFG},
            {"k": "att", "n": n, "c": 1, "a": 1, "t": T0 + i},
            {"k": "attend", "n": n, "c": 1, "a": 1, "ok": True, "t": T0 + i},
            {"k": "res", "ref": "step", "n": n, "c": 1, "ok": True, "vb": b"\x81\xa1i\x00", "t": T0 + i, "g": i},
        ]
    v1 = sum(len(encode_record(r)) for r in records)
    v2 = sum(map(len, encode_history(records, T0)))
    assert v1 > 2000 > 4 * v2


# ----------------------------------------------------------------------------- golden stored histories
# tests/histories/format2/<scenario>.json: the history list exactly as a run of this version stored
# it in format 2 (hex, one stored record per line), its creation time and the records it decodes to.
# Later versions must keep reading them. Re-record (only when adding a scenario) from the repository
# root with ``python -m tests.test_history_format``.
STORED = HISTORIES / "format2"


@pytest.mark.parametrize("name", sorted(p.stem for p in STORED.glob("*.json")))
def test_stored_format_2_histories_decode_and_replay_to_the_recorded_outcome(name: str) -> None:
    stored = json.loads((STORED / f"{name}.json").read_text())
    raw = [bytes.fromhex(line) for line in stored["stored"]]

    records = decode_history(raw, stored["created_ms"])

    assert any(isinstance(decode_record(r), list) for r in raw), "not a format 2 recording"
    assert records == from_json(stored["records"])
    golden = {**load(name), "history": records}  # the scenario's class, params and outcome
    result = replay(golden)
    assert result.new_commands == [] and result.ok == (golden["status"] == "complete")


def test_every_scenario_has_a_stored_format_2_history() -> None:
    assert {p.stem for p in STORED.glob("*.json")} == set(SCENARIOS)


async def _record_stored() -> None:
    STORED.mkdir(exist_ok=True)
    for name, scenario in SCENARIOS.items():
        golden = await record(scenario, raw=True)
        text = json.dumps(
            {
                "created_ms": golden["created_ms"],
                "stored": [r.hex() for r in golden["raw"]],
                "records": to_json(golden["history"]),
            },
            indent=1,
        )
        (STORED / f"{name}.json").write_text(text + "\n")
        print(f"recorded {name}: {len(golden['raw'])} stored records, {len(golden['history'])} records")


if __name__ == "__main__":
    asyncio.run(_record_stored())
