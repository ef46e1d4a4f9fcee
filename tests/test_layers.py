"""The layers' seams: the engine reaches the runtime only through hutch.runtime, never by importing above it.

`lint-imports` (CI, pyproject's [tool.importlinter]) checks the static imports; these tests check
what it cannot see: that ``connect()`` goes through the declared seam (the ``hutch.runtimes``
entry point and the :class:`~hutch.runtime.Runtime` Protocol), not an import by name, and that
importing the engine and its testing toolkit loads no layer above them.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import hutch
import pytest
from hutch.broker.transports.inprocess import InProcessTransport
from hutch.client import Client
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers import runtime as consumers_runtime
from hutch.consumers.embedded import EmbeddedProbe
from hutch.consumers.worker import Worker
from hutch.entrypoint import WorkflowEntrypoint
from hutch.runtime import ENTRY_POINT_GROUP, EmbeddedRuntimeProbe, Runtime, load_runtime
from hutch.settings import Settings


class FakeRuntime:
    """A runtime of another package, registered under the seam's entry point in place of Hutch's own."""

    def __init__(self) -> None:
        self.opened: list[Client] = []

    async def open_client(
        self,
        workflows: Mapping[str, type[WorkflowEntrypoint]],
        *,
        settings: Settings,
        limits: Limits,
        clock: Clock,
        resources: Mapping[str, Any],
        binding_names: Mapping[str, str],
    ) -> Client:
        client = Client(_NoStore(), _NoDispatcher(), workflows=list(workflows), limits=limits, clock=clock)
        self.opened.append(client)
        return client


class _NoStore:
    pass


class _NoDispatcher:
    pass


FAKE = FakeRuntime()


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRuntime]:
    """Register FAKE as the ``default`` runtime of the ``hutch.runtimes`` group (and nothing else)."""
    entry = importlib.metadata.EntryPoint("default", f"{__name__}:FAKE", ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        if params.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints([entry]).select(**params)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    load_runtime.cache_clear()
    FAKE.opened.clear()
    yield FAKE
    load_runtime.cache_clear()


async def test_connect_starts_the_runtime_the_entry_point_names(fake_runtime: FakeRuntime) -> None:
    client = await hutch.connect({}, limits=Limits())
    assert fake_runtime.opened == [client]


def test_the_installed_default_runtime_is_the_consumers_layer() -> None:
    runtime = load_runtime()
    assert runtime is consumers_runtime.RUNTIME
    assert isinstance(runtime, Runtime)


def test_a_missing_runtime_is_an_import_error_naming_the_group() -> None:
    with pytest.raises(ImportError, match=r"no Hutch runtime 'nope' is installed.*hutch\.runtimes"):
        load_runtime("nope")


async def test_the_embedded_client_carries_its_probe() -> None:
    async with hutch.connect({}) as client:
        probe: EmbeddedRuntimeProbe | None = client.runtime
        assert isinstance(probe, EmbeddedProbe)
        assert probe.is_idle() and probe.commits == 0 and probe.steps_running == 0
        assert await probe.next_due(0) is None and not await probe.has_due_timer(2**62)
        assert isinstance(client.runtime_worker, Worker)
        assert isinstance(client.runtime_worker.transport, InProcessTransport)


def test_importing_the_engine_and_its_testing_toolkit_loads_no_layer_above() -> None:
    code = (
        "import sys, hutch, hutch.testing, hutch.runtime, hutch.store.base, hutch.tracing\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['hutch', 'broker'], ['hutch', 'consumers'], ['hutch', 'gateway'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
