"""A rolling deploy across worker generations on RabbitMQ + Redis (SPEC §10, issue 12 items 1 and 2).

``hutch worker`` processes configured by hutch.toml: generation 1 has ``OrderV1`` only,
generation 2 ``versions = [OrderV1, OrderV2]``, generation 3 ``OrderV2`` only. Instances sleep and
wait for events across each step. Every instance records the version it started on, never runs
on other code (the two versions name their first step differently, so that would raise
``NondeterminismError``), and completes on it: a v1 instance still waiting when only v2 workers
are left waits visibly (``describe()``, a log line) and completes once a worker with v1 owns it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import hutch
import pytest
from hutch import Client, Instance, Settings, Status
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.conftest import AMQP_URL, REDIS_URL, drop_namespace
from tests.distributed.procs import WorkerProcess
from tests.helpers import eventually, unique

PARTITIONS = 4
WF = "order"
V1, V2 = "tests.distributed.versioned:OrderV1", "tests.distributed.versioned:OrderV2"


@pytest.fixture
async def namespace(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    namespace = unique("deploy")
    yield namespace
    transport = RabbitMQTransport(AMQP_URL, partitions=PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


def _config(tmp_path: Path, name: str, classes: list[str]) -> str:
    path = tmp_path / f"{name}.toml"
    listed = ", ".join(f'"{c}"' for c in classes)
    path.write_text(f'[[workflows]]\nname = "{WF}"\nversions = [{listed}]\n')
    return str(path)


def _generation(namespace: str, config: str, count: int) -> list[WorkerProcess]:
    return [WorkerProcess(namespace, {}, partitions=PARTITIONS, HUTCH_CONFIG=config) for _ in range(count)]


async def _roll(old: list[WorkerProcess], new: list[WorkerProcess]) -> None:
    """Start ``new``, then stop ``old`` gracefully (SIGTERM): their partitions move to ``new``."""
    for worker in new:
        await worker.start()
    for worker in old:
        worker.terminate()
        assert await worker.wait(timeout=30) == 0, worker.output


async def _in_status(client: Client, ids: list[str], status: Status) -> None:
    async def reached() -> bool:
        return all([(await Instance(client, WF, i).status()).status is status for i in ids])

    await eventually(reached, timeout=30, interval=0.05)


async def _version(client: Client, iid: str) -> str | None:
    return (await Instance(client, WF, iid).describe()).version


async def _started(client: Client, ids: list[str]) -> None:
    async def recorded() -> bool:
        return None not in {await _version(client, i) for i in ids}

    await eventually(recorded, timeout=30, interval=0.05)


async def _complete_on(client: Client, ids: list[str], version: str) -> None:
    for iid in ids:
        await Instance(client, WF, iid).send_event("go")
    for iid in ids:
        final = await Instance(client, WF, iid).wait(timeout=30)
        assert final.status is Status.COMPLETE, (iid, final)
        assert final.output["version"] == version == await _version(client, iid)


async def test_a_rolling_deploy_runs_every_instance_on_the_version_it_started_on(
    namespace: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=REDIS_URL, amqp_url=AMQP_URL, namespace=namespace, partitions=PARTITIONS)
    gen1 = _generation(namespace, _config(tmp_path, "gen1", [V1]), 2)
    gen2 = _generation(namespace, _config(tmp_path, "gen2", [V1, V2]), 2)
    gen3 = _generation(namespace, _config(tmp_path, "gen3", [V2]), 2)
    gen4 = _generation(namespace, _config(tmp_path, "gen4", [V1, V2]), 1)
    everyone = gen1 + gen2 + gen3 + gen4
    try:
        async with hutch.connect(settings=settings) as client:
            orders = client.workflow(WF)
            for worker in gen1:
                await worker.start()
            # v1: some asleep across the next step, some waiting for their event, one waiting until v2 only is left.
            sleeping_v1 = [(await orders.create(params={"sleep": 4})).id for _ in range(4)]
            waiting_v1 = [(await orders.create()).id for _ in range(4)]
            late_v1 = [(await orders.create()).id for _ in range(3)]
            await _in_status(client, waiting_v1 + late_v1, Status.WAITING)
            await _started(client, sleeping_v1)
            assert {await _version(client, i) for i in sleeping_v1 + waiting_v1 + late_v1} == {"1"}

            await _roll(gen1, gen2)
            sleeping_v2 = [(await orders.create(params={"sleep": 4})).id for _ in range(4)]
            waiting_v2 = [(await orders.create()).id for _ in range(4)]
            await _in_status(client, waiting_v2, Status.WAITING)
            # New ones start on the newest. A version is recorded when its instance starts, and the sleeping ones
            # are not awaited into a status: wait until each has one.
            await _started(client, sleeping_v2)
            assert {await _version(client, i) for i in sleeping_v2 + waiting_v2} == {"2"}
            await _in_status(client, sleeping_v1, Status.WAITING)  # woke on v1+v2 workers, now wait for "go"
            await _complete_on(client, sleeping_v1 + waiting_v1, "1")

            await _roll(gen2, gen3)
            await _complete_on(client, sleeping_v2 + waiting_v2, "2")

            # No v2-only worker runs a v1 instance: its event is taken and it waits, visibly.
            for iid in late_v1:
                await Instance(client, WF, iid).send_event("go")

            async def waiting_for_v1() -> bool:
                details = [await Instance(client, WF, i).describe() for i in late_v1]
                return all(d.waiting_for_version == "1" for d in details)

            await eventually(waiting_for_v1, timeout=30, interval=0.05)
            assert all([(await Instance(client, WF, i).status()).status is Status.RUNNING for i in late_v1])
            logged = "".join(w.output for w in gen3)
            assert all(f"instance {WF}/{i} waits for version '1'" in logged for i in late_v1), logged

            # A worker with v1 takes their partitions over: they go on, on v1.
            await _roll(gen3, gen4)
            for iid in late_v1:
                final = await Instance(client, WF, iid).wait(timeout=30)
                assert final.status is Status.COMPLETE, (iid, final)
                assert final.output["version"] == "1"
                detail = await Instance(client, WF, iid).describe()
                assert detail.version == "1" and detail.waiting_for_version is None
            output = "".join(w.output for w in everyone)
            assert "NondeterminismError" not in output, output
    finally:
        for worker in everyone:
            await worker.close()
