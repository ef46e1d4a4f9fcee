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
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import tempfile
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
