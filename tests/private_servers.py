"""Private servers a test may stop, pause and restart without touching the shared ones.

A :class:`PrivateRedis` is a ``redis-server`` of the test's own, on a free port with its own
directory. Its data lives in an append-only file fsynced on every write, so :meth:`PrivateRedis.stop`
then :meth:`PrivateRedis.start` is an outage clients see as refused connections, after which the
server comes back on the same port with every acknowledged write. :meth:`PrivateRedis.pause` and
:meth:`PrivateRedis.resume` (SIGSTOP/SIGCONT) are the other kind of outage: connections stay open
and nothing answers.

Example::

    async with PrivateRedis() as server:
        store = RedisStore(Redis.from_url(server.url), 4)
        await server.stop()   # clients get "connection refused"
        await server.start()  # back, with its data

A :class:`PrivateRedisCluster` is three ``redis-server`` masters joined into one Redis Cluster (no
replicas, no persistence); it is started and stopped synchronously, so one session-scoped fixture
can outlive every test's event loop (``redis_cluster_url`` in tests/conftest.py).

Example::

    with PrivateRedisCluster() as cluster:
        store = RedisStore(open_redis(cluster.url), 4)  # redis+cluster://...: a RedisCluster (consumers.runtime)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from redis.asyncio import Redis

from bench.child_process import die_with_parent
from tests.helpers import eventually


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A port P free for a Redis Cluster node: P and its cluster bus port P + 10000 are both unused.

    Drawn below the kernel's ephemeral range (``free_port()`` answers from it, and P + 10000 of such
    a port may be past 65535 or taken by an outgoing connection).
    """
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("found no free port pair (P, P + 10000) for a Redis Cluster node")


class PrivateRedis:
    """A ``redis-server`` owned by one test: started, stopped and restarted by its PID."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="hutch-redis-"))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self) -> PrivateRedis:
        """Start the server (again, on the same port and data) and wait until it answers."""
        if self.proc is not None and self.proc.returncode is None:
            raise RuntimeError("the private Redis is already running")
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = await asyncio.create_subprocess_exec(
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--logfile",
            "redis.log",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # never outlives a killed test run
        )
        await eventually(self._answers, timeout=15, interval=0.02)
        return self

    async def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log}")
        client = Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except Exception as exc:  # refused, or BusyLoadingError while it reads its append-only file
            raise AssertionError(f"not answering yet: {exc!r}") from exc
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Shut the server down (SIGTERM: it fsyncs its data and closes the port); idempotent."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server would not act on the SIGTERM
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its connections stay open and nothing answers."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(signal.SIGCONT)

    async def close(self) -> None:
        """Stop the server and delete its directory."""
        await self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> PrivateRedis:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class PrivateRedisCluster:
    """``size`` ``redis-server`` masters (no replicas) joined into one Redis Cluster owned by the tests.

    Each node runs with ``--cluster-enabled yes`` on a port whose bus port (+10000) is free too, in
    a directory of its own, without persistence; ``redis-cli --cluster create`` spreads the 16384
    slots over them. Every node is stopped by its PID and killed with the test run if that dies.
    Synchronous, unlike :class:`PrivateRedis`: a session-scoped fixture starts it once, outside any
    test's event loop.
    """

    def __init__(self, size: int = 3) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="hutch-redis-cluster-"))
        self.ports: list[int] = []
        for _ in range(size):
            port = free_cluster_port()
            while port in self.ports:
                port = free_cluster_port()
            self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The Hutch settings URL of the cluster (every node a startup node)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def node_urls(self) -> list[str]:
        """A plain ``redis://`` URL per node (``RedisCluster.from_url`` takes any of them)."""
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-4000:] for path in sorted(self._dir.glob("*/redis.log")) if path.exists()
        )

    def start(self) -> PrivateRedisCluster:
        """Start the nodes, create the cluster, and wait until every node reports ``cluster_state:ok``."""
        executable, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if executable is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for a private Redis Cluster")
        try:
            for port in self.ports:
                node_dir = self._dir / str(port)
                node_dir.mkdir()
                self.procs.append(
                    subprocess.Popen(
                        [
                            executable,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(node_dir),
                            "--logfile",
                            "redis.log",
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        preexec_fn=die_with_parent,  # never outlives a killed test run
                    )
                )
            for port in self.ports:
                self._until(lambda port=port: self._cli(port, "ping") == "PONG", "answer PING")
            created = subprocess.run(
                [cli, "--cluster", "create", *self._addresses(), "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{created.stdout.decode()}{created.stderr.decode()}"
                )
            for port in self.ports:
                self._until(lambda port=port: self._agrees(port), "report cluster_state:ok with every node")
        except BaseException:
            self.close()
            raise
        return self

    def _addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def _cli(self, port: int, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(port), *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=5, check=False
        )
        return result.stdout.decode(errors="replace").strip()

    def _agrees(self, port: int) -> bool:
        info = self._cli(port, "cluster", "info")
        return "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.ports)}" in info

    def _until(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a cluster node exited with {proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private Redis Cluster did not {what} within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s) and delete their directories; idempotent."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
