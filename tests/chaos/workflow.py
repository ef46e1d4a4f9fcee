"""The workflow the chaos suite runs in ``hutch worker`` subprocesses, and its execution ledger.

Every attempt of a step body appends one record (step, count, attempt, worker, start time) to a
list in Redis before it does anything else, so the checker can count how often each step ran and
when, next to what ``describe()`` says was committed. The ledger lives in a Redis the faults never
touch (``HUTCH_TEST_LEDGER_URL``; the shared test Redis, under the run's namespace) except on a
simulated host, where it is reached over the host's own link like everything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from hutch import EventTimeoutError, WorkflowEntrypoint

from tests.distributed.workflows import ledger

WORKFLOW = "chaos"
TARGET = "tests.chaos.workflow:ChaosWorkflow"
EVENT_TYPE = "approval"

#: Retries generous enough that only a fault longer than a minute fails a step for good.
RETRIES = {"retries": {"limit": 60, "delay": "1 second", "backoff": "constant"}, "timeout": "1 minute"}


def executions_key(namespace: str, instance_id: str) -> str:
    """The ledger list of one instance's step executions."""
    return f"{namespace}:chaos:exec:{instance_id}"


async def _execute(instance_id: str, ctx: Any, seconds: float) -> dict[str, str]:
    record = {
        "step": ctx.step.name,
        "count": ctx.step.count,
        "attempt": ctx.attempt,
        "worker": f"{os.environ.get('HUTCH_TEST_WORKER', '?')}/{os.getpid()}",
        "start_ms": time.time() * 1000,
    }
    await ledger().rpush(executions_key(os.environ["HUTCH_NAMESPACE"], instance_id), json.dumps(record))
    await asyncio.sleep(seconds)
    return {"step": ctx.step.name, "of": instance_id}


def expected_output(instance_id: str, approval: Any) -> dict[str, Any]:
    """What a ChaosWorkflow instance returns when nothing went wrong."""
    return {
        "prepare": {"step": "prepare", "of": instance_id},
        "approval": approval,
        "finish": {"step": "finish", "of": instance_id},
        "second": None,
    }


class ChaosWorkflow(WorkflowEntrypoint):
    """Two timed steps around a sleep and a wait for an event, then a check that no event came twice.

    Params: ``prepare`` and ``finish`` (seconds each step body runs), ``nap`` (the sleep) and
    ``window`` (how long to wait for a second ``approval`` event, which must never come: the test
    sends one per instance, so a second is a duplicate delivery).
    """

    async def run(self, event, step):
        iid, params = event.instance_id, event.payload
        prepared = await step.do("prepare", lambda ctx: _execute(iid, ctx, params["prepare"]), config=RETRIES)
        await step.sleep("nap", params["nap"])
        approval = await step.wait_for_event("approval", EVENT_TYPE, timeout="10 minutes")
        finished = await step.do("finish", lambda ctx: _execute(iid, ctx, params["finish"]), config=RETRIES)
        try:
            second = (await step.wait_for_event("no second approval", EVENT_TYPE, timeout=params["window"])).payload
        except EventTimeoutError:
            second = None
        return {"prepare": prepared, "approval": approval.payload, "finish": finished, "second": second}
