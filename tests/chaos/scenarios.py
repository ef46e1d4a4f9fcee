"""The chaos scenarios: which faults each injects while the load runs, and how to run one.

Each scenario's ``faults`` coroutine runs next to the load (:meth:`ChaosRun.load`) and repeats its
fault ``form.repeats`` times; fault durations are explicit holds (``form.hold_s``), never waits for
a condition. :func:`run_scenario` runs one scenario end to end and returns its report.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.checker import Report
from tests.chaos.harness import ChaosRun, Form
from tests.chaos.netns import netns_unavailable_reason
from tests.private_servers import RABBITMQ_HOME


@dataclass(frozen=True)
class Scenario:
    """A named fault schedule and the deployment it runs against."""

    name: str
    description: str
    faults: Callable[[ChaosRun], Awaitable[None]]
    options: dict[str, Any] = field(default_factory=dict)  # ChaosRun keyword arguments
    xfail: str | None = None  # a known product defect this scenario exposes (the test is xfail, strict)
    long_only: bool = False


async def _sigkill(run: ChaosRun) -> None:
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        i = run.pick_worker()
        await run.kill_worker(i)
        await run.hold(run.form.hold_s)
        await run.restart_worker(i)


async def _sigstop(run: ChaosRun) -> None:
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        i = run.pick_worker()
        run.stop_worker(i)  # longer than the worker TTL: its partitions move while it is frozen
        await run.hold(run.form.hold_s)
        run.continue_worker(i)


async def _proxy_cuts(run: ChaosRun, which: str) -> None:
    proxy = run.redis_proxy if which == "redis" else run.amqp_proxy
    assert proxy is not None
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        await run.cut(proxy, which)
        await run.hold(run.form.settle_s)
        run.stall(proxy, which)
        await run.hold(run.form.hold_s)
        run.unstall(proxy, which)


async def _redis_cuts(run: ChaosRun) -> None:
    await _proxy_cuts(run, "redis")


async def _amqp_cuts(run: ChaosRun) -> None:
    await _proxy_cuts(run, "rabbitmq")


async def _redis_restart(run: ChaosRun) -> None:
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        await run.restart_redis(run.form.hold_s)


async def _duplicates(run: ChaosRun) -> None:
    for _ in range(run.form.repeats + 1):
        await run.hold(run.form.settle_s + run.form.hold_s / 2)
        await run.duplicate_messages(0.5)


async def _poison(run: ChaosRun) -> None:
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        await run.poison_messages(8)


async def _rabbitmq_node(run: ChaosRun) -> None:
    assert run.cluster is not None
    await run.hold(run.form.settle_s)
    # The node the client is connected to: its publishes in flight go with it, and it reconnects.
    client_node = run.transport.node or ""
    node = next(node for node in run.cluster.nodes if f":{node.port}/" in client_node)
    listing = await node.ctl("list_queues", "name", "leader", "--formatter", "json")
    led = Counter(q["leader"] for q in json.loads(listing[listing.find("[") :]) if q["name"].startswith(run.namespace))
    # Publishes in flight while the node goes away (duplicates of start messages, harmless) must be
    # confirmed all the same: a client call must not fail because one node of three stopped.
    async with run.publishing_duplicates():
        run.fault(f"stop-node {node.node} (the client's, leader of {led[node.node]} queues; stays down)")
        await node.stop()
        await run.hold(run.form.hold_s)


async def _host_cuts(run: ChaosRun) -> None:
    assert run.network is not None
    i = run.pick_worker()
    for _ in range(run.form.repeats):
        await run.hold(run.form.settle_s)
        await run.cut_host(i)
        await run.hold(run.form.hold_s)
        await run.heal_host(i)


async def _everything(run: ChaosRun) -> None:
    faults = [_sigkill, _sigstop, _redis_cuts, _amqp_cuts, _redis_restart, _duplicates, _poison]
    run.rng.shuffle(faults)
    for fault in faults:
        await fault(run)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("sigkill", "SIGKILL a worker mid-run, restart it", _sigkill),
        Scenario("sigstop", "SIGSTOP a worker past its TTL, then SIGCONT (a stale owner wakes)", _sigstop),
        Scenario("redis-cut", "reset every worker connection to Redis; stall Redis traffic", _redis_cuts),
        Scenario("rabbitmq-cut", "reset every worker connection to RabbitMQ; stall its traffic", _amqp_cuts),
        Scenario("redis-restart", "stop the private Redis (AOF) and start it again", _redis_restart),
        Scenario("duplicates", "publish start and event messages again (same message ids)", _duplicates),
        Scenario("poison", "garbage and invalid messages into partition queues", _poison),
        Scenario(
            "rabbitmq-node",
            "stop one node of a private 3-node RabbitMQ cluster for good, publishing all along",
            _rabbitmq_node,
            options={"cluster": True},
        ),
        Scenario(
            "host-cut",
            "workers on simulated hosts (network namespaces); a host's link goes down, then up",
            _host_cuts,
            options={"hosts": True},
        ),
        Scenario(
            "everything",
            "every fault above but the cluster's and the hosts', in random order",
            _everything,
            long_only=True,
        ),
    ]
}


def unavailable(scenario: Scenario) -> str | None:
    """What this machine lacks to run ``scenario`` (None: nothing)."""
    for name, host, port in (("Redis", "127.0.0.1", 6379), ("RabbitMQ", "127.0.0.1", 5672)):
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return f"the shared {name} is not reachable at {host}:{port}"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if scenario.options.get("cluster") and not (RABBITMQ_HOME / "bin" / "rabbitmq-server").exists():
        return f"rabbitmq-server is not installed under {RABBITMQ_HOME}"
    if scenario.options.get("hosts"):
        return netns_unavailable_reason()
    return None


async def run_scenario(scenario: Scenario, form: Form, *, seed: int | None = None, **options: Any) -> Report:
    """Run ``scenario`` in ``form``: start everything, load and faults together, quiesce, check, clean up.

    Never raises for a failed run: what went wrong is in the report (``errors``, ``logs``).
    """
    run = ChaosRun(scenario.name, form, seed=seed, **{**scenario.options, **options})
    try:
        async with run:
            load = asyncio.create_task(run.load(), name=f"chaos-load-{scenario.name}")
            try:
                await scenario.faults(run)
            finally:
                await load  # the load ends by itself; a failed fault still lets it finish
            await run.quiesce()
            await run.check()
            if not run.report.ok:
                run.report.logs = run.worker_logs()
    except Exception as exc:
        run.report.errors.append(f"the run failed: {exc!r}")
    return run.report
