"""Workflows the distributed tests run in worker subprocesses.

Each step body counts its attempts and records its side effect through an idempotency ledger in
the real Redis (the key prefix comes from the HUTCH_NAMESPACE the worker runs in), so the test can
check what ran how often after a worker was killed.
"""

from __future__ import annotations

import asyncio
import os
import time

from hutch import WorkflowEntrypoint
from redis.asyncio import Redis

_redis: Redis | None = None
_APPLY_ONCE = "if redis.call('SET', KEYS[1], '1', 'NX') then redis.call('INCR', KEYS[2]) end return 1"


def ledger() -> Redis:
    """The Redis the step bodies write their counters to (one client per worker process).

    In-process tests run these workflows too: they call :func:`close_ledger` before their event
    loop ends, since a client's connections belong to the loop that opened them.
    """
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ.get("HUTCH_TEST_LEDGER_URL", "redis://127.0.0.1:6379/0"))
    return _redis


async def close_ledger() -> None:
    """Close this process's ledger client (the next step body opens a new one)."""
    global _redis
    if _redis is not None:
        client, _redis = _redis, None
        await client.aclose()


def counter_key(kind: str, instance_id: str, step: str, namespace: str | None = None) -> str:
    """Where a step's counters live: attempts started, effects applied (namespace: the worker's)."""
    return f"{namespace or os.environ['HUTCH_NAMESPACE']}:test:{kind}:{instance_id}:{step}"


async def _body(instance_id: str, step: str, seconds: float) -> dict[str, str]:
    r = ledger()
    await r.incr(counter_key("attempts", instance_id, step))
    if seconds:
        await asyncio.sleep(seconds)
    # The side effect, made idempotent by a ledger keyed on (instance, step) and applied atomically
    # with its ledger entry: a re-executed attempt after a crash finds the entry and does nothing.
    await r.eval(_APPLY_ONCE, 2, counter_key("ledger", instance_id, step), counter_key("effects", instance_id, step))
    return {"step": step}


class LedgerWorkflow(WorkflowEntrypoint):
    """Four steps, two of them long enough to be running when a worker is killed."""

    STEPS = (("quick-1", 0.0), ("long-1", 2.0), ("quick-2", 0.0), ("long-2", 1.0))

    async def run(self, event, step):
        iid = event.instance_id
        done = []
        for name, seconds in self.STEPS:
            result = await step.do(
                name,
                lambda name=name, seconds=seconds: _body(iid, name, seconds),
                config={"retries": {"limit": 3, "delay": "100 milliseconds", "backoff": "constant"}},
            )
            done.append(result["step"])
        return done


class HoldWorkflow(WorkflowEntrypoint):
    """One step that runs for a while: used to check drains and unacknowledged deliveries."""

    async def run(self, event, step):
        seconds = float(event.payload.get("seconds", 1.0))
        return await step.do("hold", lambda: _body(event.instance_id, "hold", seconds))


class RelayWorkflow(WorkflowEntrypoint):
    """One step whose first two attempts run for a while and any later one finishes at once.

    Built for a step taken over by another worker and handed back: the original attempt is still
    running when its partition returns, and only a re-driven third attempt ends the instance soon.
    """

    async def run(self, event, step):
        iid, seconds = event.instance_id, float(event.payload.get("seconds", 10.0))

        async def relay(ctx):
            return await _body(iid, "relay", seconds if ctx.attempt <= 2 else 0.0)

        return await step.do("relay", relay)


def starts_key(instance_id: str, namespace: str | None = None) -> str:
    """Where :class:`StampWorkflow` records when each attempt of its step started."""
    return f"{namespace or os.environ['HUTCH_NAMESPACE']}:test:starts:{instance_id}"


class StampWorkflow(WorkflowEntrypoint):
    """One step; each attempt records ``<attempt>:<epoch seconds>`` when it starts. The first runs
    ``hold`` seconds (so it is in flight when a worker is killed), later ones end at once."""

    async def run(self, event, step):
        iid, hold = event.instance_id, float(event.payload.get("hold", 30.0))

        async def stamp(ctx):
            await ledger().rpush(starts_key(iid), f"{ctx.attempt}:{time.time()}")
            if ctx.attempt == 1:
                await asyncio.sleep(hold)
            return ctx.attempt

        return await step.do("stamp", stamp)
