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
    """One ``hutch worker`` process with its output in a temporary file."""

    def __init__(self, namespace: str, workflows: dict[str, str], *, partitions: int = 8, **env: str) -> None:
        self.namespace = namespace
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

    async def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", "gateway.cli", "worker"]
        for name, target in self._workflows.items():
            args += ["--workflow", f"{name}={target}"]
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
        return "hutch worker" in self.output and "connected to" in self.output

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

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)
