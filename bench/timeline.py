"""``python -m bench.timeline``: where W6's time goes, hop by hop.

W6 is one number (create call → first step body starts). This breaks it into the hops of the
path with one in-process worker (as ``python -m bench`` runs it), by wrapping the functions each
hop ends in and stamping ``time.perf_counter()`` per instance:

    created (the create script returned) · noticed (the owner heard of it on the store's
    "created" channel) · published / confirmed (the start message: publish called, returned —
    on RabbitMQ once confirmed) · delivered (the start message reached the worker) · turn (the
    orchestrator turn that starts it) · commit / committed (its first commit) · step-scheduled ·
    step (the step body's first line)

Each line is the p50 over the instances of the time since the create call, in ms, in the order
the hops happened; the first turn is whichever input came first (on the RabbitMQ runtime the
creation notice, with the start message trailing behind). The wrappers cost a few microseconds
per hop; the total is comparable to ``python -m bench --only W6``, not identical.

Usage::

    python -m bench.timeline [--runtime rabbitmq|embedded] [--instances 60] [--redis-url ...] [--amqp-url ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.workloads import FirstStep, _finish, _warm_up, percentile

HOPS = (
    "created",
    "noticed",
    "published",
    "confirmed",
    "delivered",
    "turn",
    "commit",
    "committed",
    "step-scheduled",
    "step",
)


class _Stamps:
    """Per-instance hop times; the instance under way is the one the current create started.

    The next create waits until the start message of the last one was delivered (with a creation
    notice it trails the instance's end), so every stamp belongs to the instance it is kept for.
    """

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None
        self.runs: list[dict[str, float]] = []
        self.delivered = asyncio.Event()

    def begin(self) -> None:
        self.current = {"called": time.perf_counter()}
        self.runs.append(self.current)
        self.delivered.clear()

    def stamp(self, hop: str) -> None:
        # Only the first time a hop is reached counts: a later batch (the step's result, the
        # final commit) belongs to the same instance but is not on the path to its first step.
        if self.current is not None and hop not in self.current:
            self.current[hop] = time.perf_counter()
            if hop == "delivered":
                self.delivered.set()


@contextlib.contextmanager
def _patched(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _stamped(stamps: _Stamps, *, called: str | None = None, returned: str | None = None) -> Callable[[Any], Any]:
    """Wrap an async function: stamp ``called`` when it is called and ``returned`` when it returns."""

    def make(original: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if called is not None:
                stamps.stamp(called)
            result = await original(*args, **kwargs)
            if returned is not None:
                stamps.stamp(returned)
            return result

        return wrapper

    return make


async def measure(runtime: str, redis_url: str, amqp_url: str, instances: int) -> list[dict[str, float]]:
    from hutch.broker.transports.inprocess import InProcessTransport
    from hutch.broker.transports.rabbitmq import RabbitMQTransport
    from hutch.consumers import orchestrator, steps
    from hutch.store.redis import RedisStore

    from bench.__main__ import make_connect

    stamps = _Stamps()

    def on_delivery(original: Any) -> Any:
        def wrapper(self: Any, delivery: Any) -> None:
            stamps.stamp("delivered")
            original(self, delivery)

        return wrapper

    def notice_created(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            stamps.stamp("noticed")
            original(*args, **kwargs)

        return wrapper

    def runner_start(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            stamps.stamp("step-scheduled")
            original(*args, **kwargs)

        return wrapper

    connect = make_connect(runtime, redis_url=redis_url, amqp_url=amqp_url)
    transport = RabbitMQTransport if runtime == "rabbitmq" else InProcessTransport
    wrappers = [
        (RedisStore, "create_many", _stamped(stamps, returned="created")),
        (transport, "publish", _stamped(stamps, called="published", returned="confirmed")),
        (orchestrator.Orchestrator, "on_delivery", on_delivery),
        (orchestrator.Orchestrator, "notice_created", notice_created),
        (orchestrator.Orchestrator, "process", _stamped(stamps, called="turn")),
        (RedisStore, "commit_many", _stamped(stamps, called="commit", returned="committed")),
        (steps.StepRunner, "start", runner_start),
    ]
    with contextlib.ExitStack() as patches:
        for owner, name, make in wrappers:
            patches.enter_context(_patched(owner, name, make))
        async with connect({"first": FirstStep}) as client:
            wf = client.workflow("first")
            await _warm_up(client, "first", {})
            stamps.runs.clear()
            for _ in range(instances):
                stamps.begin()
                called_wall = time.time()
                output = await _finish(await wf.create(), timeout=60)
                await asyncio.wait_for(stamps.delivered.wait(), timeout=10)
                run = stamps.runs[-1]
                # The step body stamps wall time (it may run in another process in other setups).
                run["step"] = run["called"] + (output["t"] - called_wall)
            stamps.current = None
    return stamps.runs


def report(runs: list[dict[str, float]]) -> str:
    """One line per hop reached: its p50 (ms since the create call), and the gap since the line above."""
    medians = {}
    for hop in HOPS:
        values = [(run[hop] - run["called"]) * 1000 for run in runs if hop in run]
        if values:
            medians[hop] = percentile(values, 50)
    lines = [f"W6 timeline, p50 over {len(runs)} instances, ms since the create call"]
    previous = 0.0
    for hop, at in sorted(medians.items(), key=lambda item: item[1]):
        lines.append(f"  {hop:<15} {at:7.3f}   (+{at - previous:.3f})")
        previous = at
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("rabbitmq", "embedded"), default="rabbitmq")
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    redis_url, amqp_url = (args.redis_url, args.amqp_url) if args.runtime == "rabbitmq" else ("", "")
    print(report(asyncio.run(measure(args.runtime, redis_url, amqp_url, args.instances))))


if __name__ == "__main__":
    main()
