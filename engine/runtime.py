"""The engine's seams to the runtime that runs workflows: :class:`Runtime` and :class:`EmbeddedRuntimeProbe`.

The engine (the root package ``hutch``) sits below the broker and consumers layers and never
imports them. :func:`hutch.connect` still has to start a runtime, which lives in
``hutch.consumers``; it finds one through the ``hutch.runtimes`` entry point group, declared in
pyproject.toml (``default = "hutch.consumers.runtime:RUNTIME"``), and types it by :class:`Runtime`.

Why an entry point and not a composition root above the layers: the engine *is* the root
package, and ``hutch/__init__.py`` is where ``connect`` is exported, so any module wiring
``connect`` to the consumers layer would be imported by ``import hutch`` — pulling aio-pika, the
worker and the broker into every ``from hutch import connect`` (slower, and an upward import the
layer contracts would have to excuse) — or be reached lazily by name, which is what this replaces.
An entry point is a seam the packaging metadata declares: the engine names only the group and the
Protocol, the consumers layer names its implementation, the lookup happens once, at the first
``connect()``, not at import, and mypy checks the implementation against the Protocol where it
is defined (``hutch.consumers.runtime.RUNTIME: Runtime``).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from hutch.client import Client
    from hutch.clock import Clock
    from hutch.config import Limits
    from hutch.settings import Settings
    from hutch.versions import Workflows

ENTRY_POINT_GROUP = "hutch.runtimes"
"""The entry point group :func:`load_runtime` looks a runtime up in."""

DEFAULT_RUNTIME = "default"
"""The entry point name of the runtime :func:`hutch.connect` uses (embedded or distributed, by the settings)."""


@runtime_checkable
class Runtime(Protocol):
    """What :func:`hutch.connect` needs of a runtime: a client for the runtime the settings describe."""

    async def open_client(
        self,
        workflows: Workflows,
        *,
        settings: Settings,
        limits: Limits,
        clock: Clock,
        resources: Mapping[str, Any],
        binding_names: Mapping[str, str],
    ) -> Client:
        """Start (embedded) or reach (distributed) the runtime and return a client of it."""
        ...


class EmbeddedRuntimeProbe(Protocol):
    """What the testing toolkit reads of an embedded runtime to skip time only when it is idle.

    The embedded runtime (``hutch.consumers.embedded``) implements it and hands it to its client
    (:attr:`hutch.Client.runtime`); a remote client has none.
    """

    @property
    def commits(self) -> int:
        """Transitions committed so far: a change between two reads means work happened in between."""
        ...

    @property
    def steps_running(self) -> int:
        """Step attempts running right now."""
        ...

    def is_idle(self) -> bool:
        """Whether nothing is queued, being processed or running: nothing left to do without time passing."""
        ...

    async def has_due_timer(self, now_ms: int) -> bool:
        """Whether a timer is due by ``now_ms`` (the timer service is about to fire it)."""
        ...

    async def next_due(self, after_ms: int) -> int | None:
        """When the earliest timer due strictly after ``after_ms`` is due (epoch ms), or None."""
        ...


@functools.cache
def load_runtime(name: str = DEFAULT_RUNTIME) -> Runtime:
    """The runtime registered under ``name`` in the ``hutch.runtimes`` entry point group (loaded once).

    Raises:
        ImportError: no such runtime is installed, or what is registered is not a :class:`Runtime`
            (a broken installation: reinstall Hutch).
    """
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise ImportError(
            f"no Hutch runtime {name!r} is installed (entry point group {ENTRY_POINT_GROUP!r}); reinstall hutch"
        )
    entry = next(iter(found))
    runtime = entry.load()
    if not isinstance(runtime, Runtime):
        raise ImportError(f"the {ENTRY_POINT_GROUP} entry point {entry.value!r} is not a Hutch Runtime: {runtime!r}")
    return runtime
