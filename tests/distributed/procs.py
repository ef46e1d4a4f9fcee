"""Worker subprocesses for crash tests: started as users start them (``hutch worker``), killed for real."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from bench.child_process import die_with_parent
from tests.conftest import AMQP_URL, REDIS_URL
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One ``hutch worker`` process with its output in a temporary file.

    ``netns`` runs it inside that Linux network namespace (``ip netns exec``: another "host", see
    tests/chaos/netns.py). After it exited (killed, say) :meth:`start` starts it again, appending to
    the same output.
    """

    def __init__(
        self, namespace: str, workflows: dict[str, str], *, partitions: int = 8, netns: str | None = None, **env: str
    ) -> None:
        self.namespace = namespace
        self.netns = netns
        self._workflows = workflows
        self._env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HUTCH_REDIS_URL": REDIS_URL,
            "HUTCH_AMQP_URL": AMQP_URL,
            "HUTCH_NAMESPACE": namespace,
            "HUTCH_PARTITIONS": str(partitions),
            "HUTCH_HEARTBEAT_S": "0.5",
            "HUTCH_WORKER_TTL_S": "1.5",
            "HUTCH_TIMER_POLL_S": "0.5",
            **env,
        }
        self._log = tempfile.NamedTemporaryFile(prefix="hutch-worker-", suffix=".log", delete=False)
        self.proc: asyncio.subprocess.Process | None = None
        self._started_at = 0  # where the current process's output begins in the log

    async def start(self) -> WorkerProcess:
        if self.proc is not None and self.proc.returncode is None:
            raise RuntimeError("the worker is already running")
        args = [sys.executable, "-m", "hutch", "worker"]
        for name, target in self._workflows.items():
            args += ["--workflow", f"{name}={target}"]
        if self.netns is not None:
            args = ["ip", "netns", "exec", self.netns, *args]  # ip execs the worker: the PID is the worker's
        self._started_at = len(self.output)
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env=self._env,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        await eventually(self._ready, timeout=30, interval=0.05)
        return self

    @property
    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    async def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output}")
        output = self.output[self._started_at :]
        return "hutch worker" in output and "connected to" in output

    def worker_id(self) -> str | None:
        """The id the running process printed when it was ready (None before)."""
        for line in reversed(self.output[self._started_at :].splitlines()):
            if line.startswith("hutch worker ") and " connected to " in line:
                return line.split()[2]
        return None

    def partitions(self) -> list[int] | None:
        """The partitions the worker last said it owns (from its log), or None before it said."""
        owned = None
        for line in self.output.splitlines():
            if "owns partitions" in line:
                owned = ast.literal_eval(line.split("owns partitions", 1)[1].split("(")[0].strip())
        return owned

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its connections stay open, it neither heartbeats nor answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # a stopped (SIGSTOP) process dies of SIGKILL all the same
            await self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)
