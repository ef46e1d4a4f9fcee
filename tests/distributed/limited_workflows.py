"""A workflow under a concurrency limit for the multi-worker tests: its step bodies write a ledger.

Each step body appends ``"<instance> <start> <end>"`` (epoch seconds, the machine's one clock) to the
Redis list the params name, once it ends: the test sweeps the intervals for the most that overlapped.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from hutch import WorkflowEntrypoint
from redis.asyncio import Redis

_redis: Redis | None = None


def _client() -> Redis:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["HUTCH_REDIS_URL"])
    return _redis


async def _work(ledger: str, iid: str, step: str, seconds: float) -> None:
    start = time.time()
    await asyncio.sleep(seconds)
    await _client().rpush(ledger, f"{iid}/{step} {start} {time.time()}")


class LimitedWorkflow(WorkflowEntrypoint):
    """At most three running at once across every worker: a step, a sleep (no slot), a step."""

    max_concurrency = 3

    async def run(self, event: Any, step: Any) -> Any:
        ledger, iid = event.payload["ledger"], event.instance_id
        first, second = random.Random(iid).uniform(0.05, 0.2), random.Random(iid + "2").uniform(0.05, 0.2)
        await step.do("first", lambda: _work(ledger, iid, "first", first))
        await step.sleep("rest", "100 milliseconds")
        await step.do("second", lambda: _work(ledger, iid, "second", second))
        return iid
