"""Test helpers: await conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hutch import Client, Instance, InstanceDetail, Status
from hutch.broker.partitioning import partition_of
from hutch.consumers import Worker
from hutch.consumers.settlement import Outcome

T = TypeVar("T")


# CI tags every name of its run, so that it can delete the queues this run left and no one else's.
RUN_TAG = os.environ.get("HUTCH_TEST_RUN", "")


def unique(prefix: str = "t") -> str:
    """A name no other test uses (instance ids, queue names, key prefixes)."""
    return f"{prefix}-{RUN_TAG}{uuid.uuid4().hex[:10]}"


def ids_per_partition(workflow: str, partitions: int, count: int, prefix: str = "i") -> dict[int, list[str]]:
    """``count`` fresh instance ids of ``workflow`` for every partition, in partition order.

    For tests that must not depend on random ids happening to land in a partition."""
    ids: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(v) < count for v in ids.values()):
        iid = unique(prefix)
        found = ids[partition_of(workflow, iid, partitions)]
        if len(found) < count:
            found.append(iid)
    return ids


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.005) -> T:
    """Await ``check()`` until it returns a truthy value or raises nothing; fail after ``timeout``.

    ``check`` may raise AssertionError while the condition does not hold yet.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s") from last
        await asyncio.sleep(interval)


async def wait_status(instance: Instance, *statuses: Status | str, timeout: float = 10.0) -> Status:
    """Wait until the instance is in one of ``statuses``; returns it."""
    wanted = {Status(s) for s in statuses}

    async def check() -> Status | None:
        st = (await instance.status()).status
        return st if st in wanted else None

    return await eventually(check, timeout=timeout)


async def wait_step(instance: Instance, name: str, *, timeout: float = 10.0, **match: Any) -> InstanceDetail:
    """Wait until describe() shows a step called ``name`` (optionally with field values); returns the detail."""

    async def check() -> InstanceDetail | None:
        detail = await instance.describe()
        for step in detail.steps:
            if step.name == name and all(getattr(step, k) == v for k, v in match.items()):
                return detail
        return None

    return await eventually(check, timeout=timeout)


def worker_of(client: Client) -> Worker:
    """The worker running in the client's process (embedded, or a colocated distributed one)."""
    worker = client.runtime_worker
    assert isinstance(worker, Worker), "this runtime has no worker in the client's process"
    return worker


def count_loads(client: Client) -> list[tuple[int, str, str]]:
    """Record every instance the client's worker reads from the store from now on."""
    store = worker_of(client).orchestrator.store
    loaded: list[tuple[int, str, str]] = []
    load_many = store.load_many

    async def spy(items: Any) -> Any:
        loaded.extend(items)
        return await load_many(items)

    store.load_many = spy  # type: ignore[method-assign]
    return loaded


def record_settles(worker: Worker) -> list[tuple[Any, Outcome]]:
    """Record (input, outcome) of every broker delivery ``worker``'s owner settles from now on."""
    orchestrator = worker.orchestrator
    settled: list[tuple[Any, Outcome]] = []
    process = orchestrator.process

    async def spy(batch: list[Any]) -> None:
        before = {id(item) for item in batch if item.settled}
        try:
            await process(batch)
        finally:
            for item in batch:
                if item.settled and id(item) not in before:
                    settled.append((item.input, item.settlement.outcome))

    orchestrator.process = spy  # type: ignore[method-assign]
    return settled
