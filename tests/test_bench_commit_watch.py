"""bench.commit_watch still measures commit.lua's watched-instance check (and runs)."""

from __future__ import annotations

import shutil

import pytest
from hutch.store.redis import _script

from bench.commit_watch import CHECK, measure, without_check
from bench.private_redis import AofRedis
from tests.conftest import IN_CI


def test_the_stripped_script_differs_from_commit_lua_by_the_check_alone() -> None:
    script = _script("commit.lua")
    stripped = without_check(script)
    assert CHECK in script and CHECK not in stripped
    assert len(script) - len(stripped) == len(CHECK)
    with pytest.raises(RuntimeError, match=r"update bench/commit_watch\.py"):
        without_check(stripped)


async def test_the_bench_runs_on_a_private_redis() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is needed (CI must run the bench smoke tests)")
        pytest.skip("redis-server is needed")
    with AofRedis("no") as server:
        result = await measure(server.url, blocks=2, calls=5, batch=2)
    assert set(result) == {"with", "without"} and all(len(v) == 2 and min(v) > 0 for v in result.values())
