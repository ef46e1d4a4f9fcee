"""A ``redis-server`` of the bench's own that persists: an append-only file in a temporary directory.

``python -m bench --redis-aof everysec`` (or ``always``) runs the chosen runtime on one, so the
durable figure is one command: the shared Redis of a development machine keeps nothing on disk,
while a production one (the README's setting) appends every write and fsyncs it every second.
The server listens on a free loopback port, lives in its own directory, is stopped by its PID
at the end (SIGTERM, then SIGKILL) and is killed with the bench if the bench dies.

tests/private_servers.py's ``PrivateRedis`` starts its servers with :func:`redis_server_args` too.

Example::

    with AofRedis("everysec") as server:
        print(server.url)  # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

from bench.child_process import die_with_parent

Fsync = Literal["everysec", "always", "no"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_args(
    executable: str, port: int, directory: Path, *, appendfsync: Fsync, bind: Sequence[str] = ("127.0.0.1",)
) -> list[str]:
    """A private server's command line: AOF (``appendfsync`` as given), no RDB snapshots, log in ``directory``."""
    return [
        executable,
        "--port",
        str(port),
        "--bind",
        " ".join(bind),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--protected-mode",
        "no" if len(bind) > 1 else "yes",  # clients from other addresses, no password
        "--logfile",
        "redis.log",
    ]


class AofRedis:
    """A private ``redis-server`` with AOF, started and stopped synchronously by its PID."""

    def __init__(self, appendfsync: Fsync = "everysec") -> None:
        self.appendfsync: Fsync = appendfsync
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="hutch-bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 15.0) -> AofRedis:
        """Start the server and wait until it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("--redis-aof needs redis-server on the PATH")
        self.proc = subprocess.Popen(
            redis_server_args(executable, self.port, self._dir, appendfsync=self.appendfsync),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the private redis-server did not answer within {timeout} s:\n{self.log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, SIGKILL after 15 s) and delete its directory; idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> AofRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def durability(redis_url: str) -> str:
    """How a Redis persists, from ``CONFIG GET`` (``"aof appendfsync=everysec"``, ``"none"``, ``"rdb ..."``)."""
    if not redis_url.startswith("redis://"):
        return "unknown"
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, decode_responses=True)
    try:
        config = client.config_get("appendonly") | client.config_get("appendfsync") | client.config_get("save")
    except redis.RedisError:
        return "unknown"
    finally:
        client.close()
    parts = []
    if config.get("appendonly") == "yes":
        parts.append(f"aof appendfsync={config.get('appendfsync')}")
    if config.get("save"):
        parts.append(f"rdb save={config['save']!r}")
    return ", ".join(parts) or "none (no AOF, no RDB)"
