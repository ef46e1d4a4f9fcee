"""Gateway benchmarks: the REST API's request throughput and W3 (event round trip) measured through it.

Run ``python -m bench.gateway [--requests N] [--concurrency C] [--runtime embedded|rabbitmq]``.

The server is a real ``hutch dev`` subprocess (``python -m hutch dev``) on a free loopback
port — gateway, worker and backends in one process, as users run it — so the figures are the
server's, not shared with the load generator's event loop. The client is one
``httpx.AsyncClient`` with ``C`` concurrent tasks pulling from ``N`` requests.

Figures (one line each):

* ``create``: ``POST /api/workflows/wait/instances``, requests/s and per-request p50/p99 ms.
  The workflow is W3's (it waits for ``go``), so the worker also starts each instance meanwhile.
* ``send-event``: ``POST .../instances/{id}/events/go`` to the instances just created (each
  waiting by then), requests/s and p50/p99 ms. The worker resumes and finishes each instance meanwhile.
* ``W3``: ``WORKLOADS.md``'s event round trip through the API: create an instance, poll its
  status until ``waiting``, then time from the event ``POST`` to the completion of the step after
  the wait (its body records ``time.time()``, read back from the instance's output), ``--w3-repeats``
  sequential repeats (50), p50/p99 ms.

With ``--runtime rabbitmq`` the server runs a distributed worker on the real Redis and RabbitMQ
(``HUTCH_REDIS_URL``/``HUTCH_AMQP_URL``) in a namespace of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from bench.__main__ import _drop_namespace
from bench.child_process import die_with_parent
from bench.workloads import percentile

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = "wait"
WORKFLOW_TARGET = "bench.workloads:WaitForGo"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.001  # status polling in W3: outside the timed interval, which the step's own clock ends


@dataclass(frozen=True, slots=True)
class Figure:
    """One output line: a name, its values (label → value) and how it was produced."""

    name: str
    values: dict[str, float]
    note: str

    def line(self, runtime: str) -> str:
        """``embedded gateway create  requests/s=1520.3  p50_ms=18.20  p99_ms=40.10  (n=1000 c=32)``."""
        values = "  ".join(f"{k}={v:.1f}" if k == "requests/s" else f"{k}={v:.2f}" for k, v in self.values.items())
        return f"{runtime} gateway {self.name}  {values}  ({self.note})"


# ---------------------------------------------------------------------------- the server
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(runtime: str, *, redis_url: str, amqp_url: str, namespace: str) -> dict[str, str]:
    """The ``hutch dev`` subprocess's environment for ``runtime``."""
    env = dict(os.environ)
    # The bench's modules (the workflow target) must import from the subprocess wherever it is run from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for var in ("HUTCH_REDIS_URL", "HUTCH_AMQP_URL", "HUTCH_NAMESPACE", "HUTCH_CONFIG"):
        # An inherited setting must not silently turn the embedded figures into remote ones (or vice versa).
        env.pop(var, None)
    if runtime == "rabbitmq":
        env |= {"HUTCH_REDIS_URL": redis_url, "HUTCH_AMQP_URL": amqp_url, "HUTCH_NAMESPACE": namespace}
    return env


@contextlib.asynccontextmanager
async def hutch_dev(runtime: str, *, redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    """Run ``hutch dev`` serving W3's workflow on a free port; yields its base URL once ``/healthz`` answers.

    Raises:
        RuntimeError: the server exited, or did not answer within :data:`START_TIMEOUT_S`
            (the message includes its output).
    """
    port = free_port()
    namespace = f"bench-gw-{uuid.uuid4().hex[:10]}"
    env = server_env(runtime, redis_url=redis_url, amqp_url=amqp_url, namespace=namespace)
    # The server's output goes to a file, not a pipe nobody reads (a full pipe would block it).
    with tempfile.TemporaryFile("w+") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "hutch", "dev", "--port", str(port)),
            *("--workflow", f"{WORKFLOW}={WORKFLOW_TARGET}", "--no-access-log", "--log-level", "WARNING"),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            await _until_healthy(url, process, log)
            yield url
        finally:
            await _stop(process)
            if runtime == "rabbitmq":
                await _drop_namespace(redis_url, namespace, amqp_url)


async def _until_healthy(url: str, process: asyncio.subprocess.Process, log: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=2.0) as http:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"hutch dev exited with {process.returncode}:\n{_output(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise RuntimeError(f"hutch dev did not answer /healthz within {START_TIMEOUT_S} s:\n{_output(log)}")
            await asyncio.sleep(0.05)


def _output(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGINT (hutch dev's Ctrl-C: graceful), then SIGKILL if it does not exit in time."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()


# ---------------------------------------------------------------------------- the client side
def _result(response: httpx.Response, expected: int) -> Any:
    """The envelope's ``result``; any other status than ``expected`` is a bench failure."""
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
        )
    return response.json()["result"]


async def load(requests: int, concurrency: int, request: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run ``request(i)`` for ``i`` in ``range(requests)`` from ``concurrency`` tasks.

    Returns:
        The wall time in seconds and every request's latency in ms.
    """
    latencies: list[float] = []
    indices = iter(range(requests))

    async def worker() -> None:
        # One shared iterator: each task takes the next request as soon as its previous one is answered.
        for i in indices:
            began = time.perf_counter()
            await request(i)
            latencies.append((time.perf_counter() - began) * 1000)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(min(concurrency, requests)):
            tasks.create_task(worker())
    return time.perf_counter() - start, latencies


def throughput(name: str, wall: float, latencies: list[float], concurrency: int) -> Figure:
    """A throughput figure from a :func:`load` run."""
    return Figure(
        name,
        {
            "requests/s": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        },
        f"n={len(latencies)} c={concurrency}",
    )


async def _counts(http: httpx.AsyncClient) -> dict[str, int]:
    counts: dict[str, int] = _result(await http.get(f"/api/workflows/{WORKFLOW}"), 200)["instances"]
    return counts


async def _until_count(http: httpx.AsyncClient, status: str, at_least: int, timeout: float = 120.0) -> None:
    """Poll the workflow's instance counts until ``at_least`` are in ``status`` (untimed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (counts := await _counts(http)).get(status, 0) < at_least:
        if loop.time() > deadline:
            raise RuntimeError(f"fewer than {at_least} bench instances {status} within {timeout} s: {counts}")
        await asyncio.sleep(0.02)


async def _until_status(http: httpx.AsyncClient, instance_id: str, status: str, timeout: float = 60.0) -> Any:
    """Poll one instance's status until it is ``status``; its ``{status, output, error}``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = _result(await http.get(f"/api/workflows/{WORKFLOW}/instances/{instance_id}/status"), 200)
        if state["status"] == status:
            return state
        if state["status"] in ("errored", "terminated", "complete"):
            raise RuntimeError(f"bench instance {instance_id} ended {state['status']}: {state['error']}")
        if loop.time() > deadline:
            raise RuntimeError(f"bench instance {instance_id} not {status} within {timeout} s: {state}")
        await asyncio.sleep(POLL_S)


async def measure_requests(http: httpx.AsyncClient, requests: int, concurrency: int) -> list[Figure]:
    """The ``create`` and ``send-event`` throughput figures (after an untimed warm-up of each)."""
    base = f"/api/workflows/{WORKFLOW}/instances"
    ids: list[str] = []

    async def create(i: int) -> None:
        ids.append(_result(await http.post(base, json={}), 201)["id"])

    async def send(i: int) -> None:
        result = _result(await http.post(f"{base}/{ids[i]}/events/go", json={"n": i}), 200)
        if result["instance_finished"]:
            raise RuntimeError(f"bench instance {ids[i]} had finished before its event")

    # Warm-up: connections opened, routes and code paths used once; then the server is idle again.
    await load(concurrency, concurrency, create)
    await _until_count(http, "waiting", len(ids))
    await load(concurrency, concurrency, send)
    await _until_count(http, "complete", len(ids))
    done = len(ids)
    ids.clear()

    wall, latencies = await load(requests, concurrency, create)
    figures = [throughput("create", wall, latencies, concurrency)]
    # Every instance waiting first, so the event phase measures events, not the tail of the starts.
    await _until_count(http, "waiting", requests)
    wall, latencies = await load(requests, concurrency, send)
    figures.append(throughput("send-event", wall, latencies, concurrency))
    # Untimed check that the events did their job: every instance resumed and completed.
    await _until_count(http, "complete", done + requests)
    return figures


async def measure_w3(http: httpx.AsyncClient, repeats: int) -> Figure:
    """W3 through the API: event ``POST`` to the completion of the step after the wait, sequential repeats."""
    base = f"/api/workflows/{WORKFLOW}/instances"
    samples: list[float] = []
    for i in range(repeats + 1):  # the first one is an untimed warm-up
        instance_id = _result(await http.post(base, json={}), 201)["id"]
        await _until_status(http, instance_id, "waiting")
        sent = time.time()  # the wall clock the step body stamps its completion with, in the server process
        _result(await http.post(f"{base}/{instance_id}/events/go"), 200)
        state = await _until_status(http, instance_id, "complete")
        if i:
            samples.append((state["output"]["t"] - sent) * 1000)
    return Figure(
        "W3 event-round-trip",
        {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)},
        f"n={repeats} sequential",
    )


async def run(args: argparse.Namespace) -> list[Figure]:
    """Start the server, measure every figure, stop it; the figures in order, each printed as it is ready."""
    figures: list[Figure] = []
    async with hutch_dev(args.runtime, redis_url=args.redis_url, amqp_url=args.amqp_url) as url:
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        # trust_env=False: an HTTP(S)_PROXY in the environment must not route loopback traffic.
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0, trust_env=False) as http:
            for figure in await measure_requests(http, args.requests, args.concurrency):
                figures.append(figure)
                print(figure.line(args.runtime), flush=True)
            figure = await measure_w3(http, args.w3_repeats)
            figures.append(figure)
            print(figure.line(args.runtime), flush=True)
    return figures


def header(args: argparse.Namespace) -> str:
    """One comment line with what produced the figures."""
    meta: dict[str, Any] = {
        "engine": f"hutch {importlib.metadata.version('hutch')}",
        "runtime": args.runtime,
        "server": "hutch dev subprocess (uvicorn, 127.0.0.1)",
        "client": f"httpx {httpx.__version__} AsyncClient",
    }
    if args.runtime == "rabbitmq":
        meta |= {"store": args.redis_url, "transport": args.amqp_url.rsplit("@", 1)[-1]}  # no credentials
    meta |= {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load1": f"{os.getloadavg()[0]:.2f}",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return "# " + "  ".join(f"{k}={v}" for k, v in meta.items())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description="Hutch gateway (REST API) benchmarks.")
    parser.add_argument("--requests", type=int, default=1000, help="requests per throughput figure (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent client tasks (default 32)")
    parser.add_argument("--w3-repeats", type=int, default=50, help="sequential W3 round trips (default 50)")
    parser.add_argument("--runtime", choices=("embedded", "rabbitmq"), default="embedded")
    parser.add_argument(
        "--redis-url", default=os.environ.get("HUTCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), help="rabbitmq only"
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("HUTCH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="rabbitmq only",
    )
    args = parser.parse_args(argv)
    for option in ("requests", "concurrency", "w3_repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway benchmarks; returns the exit status."""
    args = parse_args(argv)
    print(header(args), flush=True)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
