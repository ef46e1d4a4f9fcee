"""Garbage-collector settings for a process that runs a worker (``hutch worker``, ``hutch dev``, the bench).

Each step allocates a few dozen short-lived containers (history records, the transition, the
attempt's task and futures), so CPython's default first-generation threshold (700 allocations)
runs a young collection every few steps, and every tenth of those also walks the middle
generation, where the live instances of a busy worker sit. Profiled under W1 that is about a
tenth of the worker's CPU. Two changes make it negligible:

* :func:`gc.freeze` after start-up moves what the process holds by then (modules, classes,
  pydantic schemas: ~200 000 objects) out of the collector's sight, so full collections stop
  walking them again and again;
* a larger first-generation threshold, so young collections run about 30 times less often.
  The garbage cycles they reclaim live a little longer (a few MB at most).

A library must not change a host application's collector: only the commands that own their
process call :func:`tune` (an application embedding a ``Worker`` may call it too).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000
"""Allocations (minus deallocations) of container objects between young collections (CPython: 700)."""


def tune() -> None:
    """Collect once, freeze what survives, and raise the first-generation threshold (idempotent)."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)
