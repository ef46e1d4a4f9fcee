"""A burst of concurrent store calls waits for a pooled Redis connection instead of failing."""

from __future__ import annotations

import asyncio

import pytest
from hutch import Settings
from hutch.consumers.runtime import open_store

from tests.conftest import REDIS_URL
from tests.helpers import unique

pytestmark = pytest.mark.redis


async def test_more_concurrent_calls_than_connections_all_succeed_within_the_pool(redis_url: str) -> None:
    settings = Settings(redis_url=REDIS_URL, namespace=unique("test"), partitions=4, redis_max_connections=4)
    store = open_store(settings)
    try:
        results = await asyncio.gather(*(store.read_meta(i % 4, "wf", f"missing-{i}") for i in range(60)))
        assert results == [None] * 60
        pool = store.redis.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
    finally:
        await store.close()
