"""The embedded Redis compiles each script once and skips fakeredis's per-call Lua costs, with fakeredis's semantics."""

from __future__ import annotations

from typing import Any

import fakeredis
import hutch
import pytest
from hutch import Settings
from hutch.consumers import embedded_redis as er
from hutch.consumers.embedded_redis import compiled_scripts, embedded_redis
from redis.exceptions import ResponseError

from bench.workloads import Sequential, _finish

# Scripts whose replies or errors must be the same on plain fakeredis and on the embedded Redis.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", ["k", "v"]),
    ("return {1, 'two', {3}, redis.status_reply('OK')}", []),
    ("return redis.error_reply('MYERR broken')", []),
    ("return redis.pcall('INCR', KEYS[1])", ["k"]),  # an error reply inside a table: WRONGTYPE
    ("local x = nil; return x.y", []),  # a runtime error
    ("return (", []),  # a syntax error
    ("leaked = 1; return redis.call('GET', KEYS[1])", ["k"]),  # a new global, caught at redis.call
    ("leaked_at_end = 1; return 1", []),  # a new global, caught when the script ends
    ("return leaked", []),  # the refused globals were cleared: nil, so an empty reply
    ("return redis.call('HSET', KEYS[1], 'f', ARGV[1])", ["h", "1"]),
]


async def _outcomes(redis: Any) -> list[Any]:
    out: list[Any] = []
    for _ in range(2):  # the second round runs every script from the cache
        for script, args in SCRIPTS:
            keys = [a for a in args if a in ("k", "h")]
            argv = [a for a in args if a not in ("k", "h")]
            try:
                out.append(await redis.eval(script, len(keys), *keys, *argv))
            except ResponseError as exc:
                out.append(f"error: {exc}")
    return out


async def test_scripts_answer_as_on_plain_fakeredis() -> None:
    plain = await _outcomes(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()))
    server = fakeredis.FakeServer()
    assert await _outcomes(embedded_redis(server)) == plain
    assert any("global variable" in str(o) for o in plain), plain  # the refusals were exercised
    scripts = compiled_scripts(server)
    assert scripts is not None
    # Each distinct text compiled once (the syntax error never is).
    assert scripts.compiles == len(SCRIPTS) - 1


async def test_evalsha_runs_the_compiled_function() -> None:
    server = fakeredis.FakeServer()
    redis = embedded_redis(server)
    sha = await redis.script_load("return redis.call('INCR', KEYS[1])")
    assert [await redis.evalsha(sha, 1, "n") for _ in range(50)] == list(range(1, 51))
    scripts = compiled_scripts(server)
    assert scripts is not None and scripts.compiles == 1


async def test_cache_starts_over_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(er, "MAX_CACHED_SCRIPTS", 3)
    server = fakeredis.FakeServer()
    redis = embedded_redis(server)
    for i in range(7):
        assert await redis.eval(f"return {i}", 0) == i
    scripts = compiled_scripts(server)
    assert scripts is not None and len(scripts._compiled) <= 3


async def test_embedded_runtime_compiles_each_store_script_once() -> None:
    async with hutch.connect({"seq": Sequential}, settings=Settings(redis_url="", amqp_url="")) as client:
        wf = client.workflow("seq")
        for _ in range(5):
            await _finish(await wf.create(params={"steps": 3}), timeout=30)
        server = client._store.redis.connection_pool.connection_kwargs["server"]
        scripts = compiled_scripts(server)
    assert scripts is not None, "the embedded runtime does not run its scripts through embedded_redis()"
    # create + commit (+ the few others a worker runs): each compiled once, not once per call.
    assert 1 <= scripts.compiles <= 8, scripts.compiles
