"""Parallel fan-out: one step per document, run concurrently with ``asyncio.gather``, then aggregate.

Run it::

    hutch run examples/fanout.py:FanOutWorkflow --params '{"documents": ["the quick brown fox", "the lazy dog"]}'

Without ``documents`` it processes a small built-in corpus. Each document is its own step, so a
failure retries only that document, and results already checkpointed are never recomputed.
Step identity is (name, count), never completion order, so the gathered steps replay correctly
even though they finish in any order.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hutch import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

SAMPLE_DOCUMENTS = (
    "Durable workflows survive crashes and restarts.",
    "Each step is checkpointed, so completed work never runs twice.",
    "Steps fan out in parallel and the workflow waits for all of them.",
    "A sleeping workflow holds no worker memory while it waits.",
)


class FanOutWorkflow(WorkflowEntrypoint):
    """Counts words in each document in parallel, then merges the counts."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, Any]:
        """Fan out one ``count words`` step per document, then one ``aggregate`` step."""
        payload = event.payload if isinstance(event.payload, Mapping) else {}
        documents = list(payload.get("documents") or SAMPLE_DOCUMENTS)

        # Every step.do() call is issued right away; gather awaits them together, so they run
        # concurrently on the worker. ``partial`` binds each step to its own document (a lambda
        # in a loop would see only the last one).
        counts = await asyncio.gather(
            *(step.do(f"count words {i + 1}", functools.partial(count_words, doc)) for i, doc in enumerate(documents))
        )

        summary = await step.do("aggregate", lambda: aggregate(counts))
        return {"documents": len(documents), **summary}


async def count_words(document: Any) -> dict[str, int]:
    """Word frequencies of one document (an async step: a call to a text service in real life)."""
    if not isinstance(document, str):
        raise NonRetryableError(f"documents must be strings, got {type(document).__name__}")
    await asyncio.sleep(0.05)  # simulated I/O; the documents are processed concurrently
    return dict(Counter(re.findall(r"[a-z']+", document.lower())))


def aggregate(counts: list[dict[str, int]]) -> dict[str, Any]:
    """Merge per-document counts; ties in the top list are broken alphabetically."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    top = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {"totalWords": sum(total.values()), "distinctWords": len(total), "top": [[w, n] for w, n in top]}
