"""README "Run it distributed", as written: the console script from the repository root, the
settings from the environment and ``compose/hutch.toml``, the trigger snippet pasted as it stands.

A newcomer copies these commands; a test that ran them any other way (a PYTHONPATH, the module
instead of the console script, other params) would have kept passing while they failed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import hutch
import pytest
from hutch import Settings, Status
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.conftest import drop_namespace
from tests.helpers import eventually, unique

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _trigger_snippet() -> str:
    """Step 3's Python block, dedented as the reader would paste it."""
    block = re.search(r"```python\n(.*?)```", _section("Run it distributed"), re.S)
    assert block is not None, "the section has no Python block"
    lines = block.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


@pytest.fixture
async def readme_env(redis_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    namespace = unique("readme")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HUTCH_") and key != "PYTHONPATH"}
    env |= {
        "HUTCH_REDIS_URL": redis_url,
        "HUTCH_AMQP_URL": amqp_url,
        "HUTCH_CONFIG": "compose/hutch.toml",
        "HUTCH_NAMESPACE": namespace,
    }
    for key in ("HUTCH_REDIS_URL", "HUTCH_AMQP_URL", "HUTCH_NAMESPACE"):
        monkeypatch.setenv(key, env[key])
    yield env
    transport = RabbitMQTransport(amqp_url, partitions=16, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


async def test_the_distributed_walkthrough_runs_as_written(readme_env: dict[str, str]) -> None:
    console = shutil.which("hutch")
    assert console is not None, "the hutch console script is not installed"
    with tempfile.TemporaryFile() as log:
        worker = await asyncio.create_subprocess_exec(
            console, "worker", cwd=ROOT, env=readme_env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        try:

            async def ready() -> bool:
                log.seek(0)
                output = log.read().decode(errors="replace")
                if worker.returncode is not None:
                    raise RuntimeError(f"hutch worker exited with {worker.returncode}:\n{output}")
                return "owns partitions" in output

            await eventually(ready, timeout=30, interval=0.05)
            namespace: dict[str, object] = {"hutch": hutch}
            exec(f"async def trigger():\n{_indent(_trigger_snippet())}", namespace)
            await namespace["trigger"]()  # type: ignore[operator]

            settings = Settings(
                redis_url=readme_env["HUTCH_REDIS_URL"],
                amqp_url=readme_env["HUTCH_AMQP_URL"],
                namespace=readme_env["HUTCH_NAMESPACE"],
            )
            async with hutch.connect(settings=settings) as client:
                order = client.workflow("order")
                instances = [await order.get(f"order-{i}") for i in range(100)]
                results = await asyncio.gather(*(i.wait(timeout=120) for i in instances))
            # Step 4 of the README says every instance completes.
            errors = {i.id: r.error for i, r in zip(instances, results, strict=True) if r.error}
            assert {r.status for r in results} == {Status.COMPLETE}, errors
        finally:
            if worker.returncode is None:
                worker.terminate()
        # SIGTERM drains and exits 0, as step 4 says.
        assert await asyncio.wait_for(worker.wait(), timeout=30) == 0


def _indent(code: str) -> str:
    return "\n".join(f"    {line}" for line in code.splitlines())
