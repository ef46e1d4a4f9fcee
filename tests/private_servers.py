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

A :class:`PrivateRabbitMQ` is a RabbitMQ node of the test's own (its own node name, ports, Erlang
cookie, data and log directories; no plugins), and a :class:`PrivateRabbitMQCluster` is three of
them joined into one cluster, whose nodes a test may stop and start again one at a time. Starting a
node takes a few seconds; each is stopped by its PID, and killed with the test run if that dies.

A :class:`PrivateRedisCluster` is three ``redis-server`` masters joined into one Redis Cluster (no
replicas, no persistence); it is started and stopped synchronously, so one session-scoped fixture
can outlive every test's event loop (``redis_cluster_url`` in tests/conftest.py).

Example::

    with PrivateRedisCluster() as cluster:
        store = RedisStore(open_redis(cluster.url), 4)  # redis+cluster://...: a RedisCluster (consumers.runtime)

Example::

    async with PrivateRabbitMQCluster() as cluster:
        urls = cluster.urls           # one AMQP URL per node
        await cluster.nodes[0].stop()
        await cluster.nodes[0].start()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from redis.asyncio import Redis

from bench.child_process import die_with_parent
from bench.private_redis import redis_server_args
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

    def __init__(self, *, port: int | None = None, bind: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.bind = ["127.0.0.1", *bind]  # more addresses to listen on (a veth's, for tests/chaos/netns.py)
        self._dir = Path(tempfile.mkdtemp(prefix="hutch-redis-"))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_at(self, host: str) -> str:
        """The URL through another of its listening addresses (see ``bind``)."""
        return f"redis://{host}:{self.port}/0"

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
            # Every write fsynced; more bind addresses (a veth's) take clients with no password.
            *redis_server_args(executable, self.port, self._dir, appendfsync="always", bind=self.bind),
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


RABBITMQ_HOME = Path("/usr/lib/rabbitmq")
"""Where the Debian/Ubuntu package installs RabbitMQ; its ``bin/`` scripts run as the current user
(``/usr/sbin/rabbitmq-server`` would switch to the ``rabbitmq`` user and its home, cookie included)."""


def _raise_open_files() -> None:
    """``preexec_fn`` of a RabbitMQ node: die with the test run; open-file limit at its hard maximum.

    Every quorum queue reserves file handles; the common soft default of 1024 caps a node at a few
    hundred queues (README, "What production needs").
    """
    die_with_parent()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PrivateRabbitMQ:
    """One RabbitMQ node owned by a test: its own node name, ports, cookie, data and logs.

    Args:
        name: the node's short name (``<name>@localhost``); default: a unique ``hutch-test-...``.
        home: the directory holding ``.erlang.cookie`` (the CLI tools use it too); nodes of one
            cluster share it. Default: a fresh one with a random cookie.
        listen: addresses the AMQP listener binds besides 127.0.0.1 (a veth's, say).
        join: a running node (``name@localhost``) this one joins on its first boot, forming a cluster
            (peer discovery from the config file; later boots find the cluster in their data).
    """

    def __init__(
        self, *, name: str | None = None, home: Path | None = None, listen: Sequence[str] = (), join: str | None = None
    ) -> None:
        self.name = name or f"hutch-test-{uuid.uuid4().hex[:8]}"
        self.node = f"{self.name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.listen = ["127.0.0.1", *listen]
        self.join = join
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.home = home or _cookie_home(self._dir / "home")
        self.proc: asyncio.subprocess.Process | None = None
        self._log = self._dir / "stdout.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def url_at(self, host: str) -> str:
        """The URL through another of its listening addresses (see ``listen``)."""
        return f"amqp://guest:guest@{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def log(self) -> str:
        """The node's console output and its main log file."""
        parts = [self._log.read_text(errors="replace")] if self._log.exists() else []
        for path in sorted((self._dir / "log").glob("*.log")):
            parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self._dir / "rabbitmq-env.conf"),  # not the system's node name
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self._dir / "rabbitmq.pid"),
            # The script then execs the VM instead of waiting on it in a shell: the process started
            # here is the node itself, so its PID stops it and PR_SET_PDEATHSIG reaches it.
            "RUNNING_UNDER_SYSTEMD": "1",
        }

    def _write_config(self) -> None:
        (self._dir / "rabbitmq-env.conf").write_text("")
        (self._dir / "enabled_plugins").write_text("[].\n")
        listeners = "".join(f"listeners.tcp.{i} = {host}:{self.port}\n" for i, host in enumerate(self.listen, 1))
        (self._dir / "rabbitmq.conf").write_text(
            listeners
            + "loopback_users = none\n"  # guest may connect through a veth address
            + "log.console = true\nlog.console.level = warning\nlog.file.level = info\n"
            + (
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {self.join}\n"
                if self.join
                else ""
            )
        )

    async def start(self) -> PrivateRabbitMQ:
        """Start the node (again, with its data) and wait until it accepts AMQP connections."""
        if self.running:
            raise RuntimeError(f"the private RabbitMQ node {self.node} is already running")
        script = RABBITMQ_HOME / "bin" / "rabbitmq-server"
        if not script.exists():
            raise RuntimeError(f"RabbitMQ is not installed ({script} is missing)")
        self._write_config()
        with self._log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(script),
                cwd=self._dir,
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_raise_open_files,
            )
        try:
            await eventually(self._answers, timeout=120, interval=0.1)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"RabbitMQ node {self.node} exited with {self.proc.returncode}:\n{self.log[-4000:]}")
        # The AMQP protocol header answered by the server's Connection.Start frame: the listener is up,
        # which the node opens last, once it has booted.
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"AMQP\x00\x00\x09\x01")
                    answer = await reader.read(8)
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise AssertionError(f"not accepting connections yet: {exc!r}") from exc
        if not answer.startswith(b"\x01\x00\x00"):  # a method frame on channel 0
            raise AssertionError(f"not speaking AMQP yet: {answer!r}")
        return True

    async def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` (with this node's cookie); returns its output."""
        proc = await asyncio.create_subprocess_exec(
            str(RABBITMQ_HOME / "bin" / "rabbitmqctl"),
            "-n",
            self.node,
            *args,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({proc.returncode}):\n{text}")
        return text

    async def stop(self, *, timeout: float = 60) -> None:
        """Shut the node down (SIGTERM: a clean stop); SIGKILL if it takes longer than ``timeout``; idempotent."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await proc.wait()

    def kill(self) -> None:
        """SIGKILL the node: a crash, connections reset at once."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def close(self) -> None:
        """Stop the node and delete its directory."""
        await self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> PrivateRabbitMQ:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _cookie_home(home: Path) -> Path:
    """A HOME whose ``.erlang.cookie`` (mode 600) no other node or test shares."""
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o600)
    return home


class PrivateRabbitMQCluster:
    """``size`` private RabbitMQ nodes joined into one cluster (the first node is the seed).

    Args:
        size: how many nodes (3: a quorum queue keeps a majority with one node down).
        listen: extra addresses every node's AMQP listener binds.
    """

    def __init__(self, size: int = 3, *, listen: Sequence[str] = ()) -> None:
        prefix = f"hutch-test-{uuid.uuid4().hex[:6]}"
        self._home_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-home-"))
        home = _cookie_home(self._home_dir)
        seed = PrivateRabbitMQ(name=f"{prefix}-1", home=home, listen=listen)
        self.nodes = [seed] + [
            PrivateRabbitMQ(name=f"{prefix}-{i}", home=home, listen=listen, join=seed.node) for i in range(2, size + 1)
        ]

    @property
    def urls(self) -> list[str]:
        """One AMQP URL per node, in node order."""
        return [node.url for node in self.nodes]

    async def start(self) -> PrivateRabbitMQCluster:
        """Start the first node, then the others at once (each joins the first), and wait until all run clustered."""
        try:
            await self.nodes[0].start()
            await asyncio.gather(*(node.start() for node in self.nodes[1:]))
            await eventually(self._clustered, timeout=60, interval=0.2)
        except BaseException:
            await self.close()
            raise
        return self

    async def running_nodes(self, via: PrivateRabbitMQ | None = None) -> list[str]:
        """The cluster's running nodes, as a running node (``via``, default the first running) sees them."""
        node = via or next(n for n in self.nodes if n.running)
        status = json.loads(await node.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    async def connections(self) -> dict[str, int]:
        """How many AMQP client connections each node holds (node name → count; every node listed)."""
        via = next(n for n in self.nodes if n.running)
        listed = json.loads(await via.ctl("list_connections", "--formatter", "json", "port"))
        by_port = {node.port: node.node for node in self.nodes}
        counts = dict.fromkeys(by_port.values(), 0)
        for connection in listed:
            node = by_port.get(int(connection["port"]))
            if node is not None:
                counts[node] += 1
        return counts

    async def _clustered(self) -> bool:
        return await self.running_nodes() == sorted(node.node for node in self.nodes)

    async def close(self) -> None:
        """Stop every node and delete their directories."""
        await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)
        shutil.rmtree(self._home_dir, ignore_errors=True)

    async def __aenter__(self) -> PrivateRabbitMQCluster:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
