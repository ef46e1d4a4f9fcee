"""A bulk job whose gateway is killed with SIGKILL mid-way resumes in another gateway and acts once.

Real processes where production has them: ``hutch gateway`` subprocesses (the process that runs
the bulk jobs it accepts) on the real Redis and RabbitMQ, and a worker (in this process) running
the instances. The job restarts 2 000 complete instances: a restart applied twice is visible (the
instance's run number would be 2, its step would have run three times), one never applied too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hutch import Client, Settings, WorkflowEntrypoint
from hutch.bulk import BulkJobs, BulkProgress, BulkState
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.runtime import start_distributed

from bench.child_process import die_with_parent
from tests.conftest import drop_namespace
from tests.helpers import eventually, ids_per_partition, unique
from tests.private_servers import free_port

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bulk-crash-token"
PARTITIONS = 4
INSTANCES = 2000
BATCH = 100  # instances per checkpoint of the gateways' bulk runners: 20 checkpoints
LEASE_S = 2.0  # a dead gateway's job is taken over this long after its last checkpoint

RUNS: Counter[str] = Counter()  # instance id -> times its step body ran (in this process's worker)


class Counted(WorkflowEntrypoint):
    """One step that counts its runs: a restart runs it once more."""

    async def run(self, event: Any, step: Any) -> Any:
        def body() -> str:
            RUNS[event.instance_id] += 1
            return event.instance_id

        return await step.do("count", body)


@dataclass
class Gateway:
    """A ``hutch gateway`` subprocess (tests/distributed/bulk_gateway.py) with its output in a file."""

    url: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Deployment:
    """A worker in this process, and ``hutch gateway`` subprocesses started on demand."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self.gateways: list[Gateway] = []
        self._dir = tempfile.TemporaryDirectory(prefix="hutch-bulk-crash-")

    async def start_gateway(self, **extra_env: str) -> Gateway:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
        env.update(
            PYTHONPATH=str(ROOT),
            HUTCH_CONFIG=str(ROOT / "tests" / "no-such-hutch.toml"),
            HUTCH_REDIS_URL=self.settings.redis_url or "",
            HUTCH_AMQP_URL=self.settings.amqp_url or "",
            HUTCH_NAMESPACE=self.settings.namespace,
            HUTCH_PARTITIONS=str(PARTITIONS),
            HUTCH_GATEWAY_TOKENS=TOKEN,
            HUTCH_TEST_BULK_BATCH=str(BATCH),
            HUTCH_TEST_BULK_LEASE_S=str(LEASE_S),
            **extra_env,
        )
        log = Path(self._dir.name) / f"gateway-{len(self.gateways)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "tests.distributed.bulk_gateway", "--port", str(port), "--no-access-log"),
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        gateway = Gateway(f"http://127.0.0.1:{port}", process, log)
        self.gateways.append(gateway)

        async def healthy() -> bool:
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}:\n{gateway.output}")
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    return (await http.get(f"{gateway.url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(healthy, timeout=60, interval=0.1)
        return gateway

    async def close(self) -> None:
        for gateway in self.gateways:
            if gateway.process.returncode is None:
                gateway.process.kill()
                await gateway.process.wait()
        self._dir.cleanup()


@pytest.fixture
async def deployment(redis_url: str, amqp_url: str) -> AsyncIterator[Deployment]:
    namespace = unique("bulkcrash")
    settings = Settings(
        redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=PARTITIONS, heartbeat_s=0.2
    )
    client, worker = await start_distributed(
        {"counted": Counted}, settings=settings, limits=Limits(), clock=Clock(), resources={}, binding_names={}
    )
    deployment = Deployment(settings, client)
    try:
        yield deployment
    finally:
        await deployment.close()
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()  # type: ignore[attr-defined]
        await client.close()
        await drop_namespace(namespace, redis_url)


@pytest.fixture
def runs() -> Iterator[Counter[str]]:
    RUNS.clear()
    yield RUNS
    RUNS.clear()


async def _metas(client: Client, ids: list[str]) -> list[tuple[str, int]]:
    """(status, run number) of each instance, read from its meta."""
    store = client._store
    pipe = store.redis.pipeline(transaction=False)
    for iid in ids:
        pipe.hmget(store.keys.meta(client._partition("counted", iid), "counted", iid), ["status", "run"])
    return [(status.decode(), int(run or 0)) for status, run in await pipe.execute()]


@pytest.mark.timeout(300)  # a loaded CI machine; about 20 s otherwise
@pytest.mark.parametrize("dies", ["before sending", "after sending"])
async def test_a_bulk_restart_whose_gateway_is_killed_resumes_in_another_and_restarts_each_instance_once(
    deployment: Deployment, runs: Counter[str], dies: str
) -> None:
    """The first gateway is killed in a batch: after marking its restarts and before sending them, or
    after sending them and before recording the batch. The second must send the first kind and
    only those; a restart sent twice would be applied twice unless fenced to its run."""
    client = deployment.client
    ids = [f"c-{n:05d}" for n in range(INSTANCES)]
    counted = client.workflow("counted")
    for i in range(0, INSTANCES, 100):
        await counted.create_batch([{"id": iid} for iid in ids[i : i + 100]])

    async def all_complete(run: int, ran: int) -> bool:
        metas = await _metas(client, ids)
        assert Counter(metas) == {("complete", run): INSTANCES}, Counter(metas).most_common(4)
        assert Counter(runs[iid] for iid in ids) == {ran: INSTANCES}, Counter(runs[iid] for iid in ids)
        return True

    await eventually(lambda: all_complete(0, 1), timeout=120, interval=0.5)

    # The first gateway pauses a second there in each batch: the kill lands in that window.
    first = await deployment.start_gateway(HUTCH_TEST_BULK_PAUSE=dies.split()[0], HUTCH_TEST_BULK_PAUSE_S="1")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=first.url, headers=headers, timeout=30) as http:
        created = await http.post("/api/bulk", json={"action": "restart", "filter": {"workflow": "counted"}})
        assert created.status_code == 202, created.text
        job_id = created.json()["result"]["id"]

    jobs = BulkJobs(client._store)
    keys = client._store.keys

    async def in_the_window() -> bool:
        # The gateway marks each restart before it sends it, and records the batch once all were sent:
        # more marks than instances done is a batch marked and not recorded yet (after one recorded).
        pipe = client._store.redis.pipeline(transaction=False)
        pipe.hget(keys.bulk_job(job_id), "done")
        pipe.hlen(keys.bulk_marks(job_id))
        done, marked = await pipe.execute()
        if not 0 < int(done) < marked:
            return False
        if dies == "after sending":  # and some of the batch's restarts were applied
            return sum(run for _, run in await _metas(client, ids)) > int(done)
        return True

    await eventually(in_the_window, timeout=120, interval=0.01)
    first.process.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(first.process.wait(), 30) == -signal.SIGKILL
    killed = await jobs.read(job_id)
    assert killed.state == BulkState.RUNNING and 0 < killed.done < killed.total == INSTANCES, (
        f"the kill came mid-job: {killed}"
    )

    second = await deployment.start_gateway()  # takes the job over once the dead gateway's lease ends

    async def finished() -> BulkProgress:
        progress = await jobs.read(job_id)
        assert progress.finished, progress
        return progress

    try:
        done = await eventually(finished, timeout=120, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"the job did not finish; the second gateway said:\n{second.output[-5000:]}") from exc
    assert (done.state, done.total, done.done, done.skipped, done.failed) == (
        BulkState.DONE,
        INSTANCES,
        INSTANCES,
        0,
        0,
    ), done.failures[:5]
    assert done.failures == []

    await eventually(lambda: all_complete(1, 2), timeout=120, interval=0.5)
    # A restart sent twice could still be on its way: one more instance per partition, created after
    # everything the gateways sent (so delivered after it), has completed once those were handled.
    sentinels = [v[0] for v in ids_per_partition("counted", PARTITIONS, 1, prefix="sentinel").values()]
    for instance in await counted.create_batch([{"id": iid} for iid in sentinels]):
        await instance.wait(timeout=60)
    await all_complete(1, 2)

    second.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.process.wait(), 60) == 0, second.output
