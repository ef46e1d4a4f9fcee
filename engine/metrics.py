"""Every Prometheus metric family Hutch exports, defined once (SPEC §7, §13).

The worker records what it commits, runs and fires; the gateway records its requests; each
process serves them at ``/metrics`` (``hutch worker --metrics-port``, the gateway's route). When
``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported, prometheus_client keeps
the values in files there, and :func:`exposition` merges the processes' files (a gateway run
with several processes); otherwise the process's own registry is served.

Nothing here does I/O on the path of a step: values come from what the worker already holds
(committed transitions, the step results it reports, the round trips it makes anyway).
:func:`set_enabled` turns recording off (the benchmark compares both).

Step names are label values: keep them static strings (a name built from data, say an id,
makes one series per value).
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The media type of :func:`exposition`'s text (Prometheus text format 0.0.4)."""

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STEPS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LATENESS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# ---------------------------------------------------------------------------- instances
INSTANCES_CREATED = Counter("hutch_instances_created", "Instances created, by workflow.", ["workflow"])
INSTANCES_FINISHED = Counter(
    "hutch_instances_finished", "Instances that finished, by workflow and status.", ["workflow", "status"]
)

# ---------------------------------------------------------------------------- steps and timers
STEP_ATTEMPTS = Counter(
    "hutch_step_attempts",
    "Step attempts that ended, by workflow, step and outcome (ok|error).",
    ["workflow", "step", "outcome"],
)
STEP_RETRIES = Counter("hutch_step_retries", "Failed step attempts that will be retried.", ["workflow", "step"])
STEP_DURATION = Histogram(
    "hutch_step_duration_seconds", "Time a step attempt ran.", ["workflow", "step"], buckets=_STEPS
)
TIMER_LATENESS = Histogram(
    "hutch_timer_lateness_seconds", "How long after its due time a timer fired.", buckets=_LATENESS
)

# ---------------------------------------------------------------------------- partitions and commits
PARTITIONS_OWNED = Gauge("hutch_partitions_owned", "Partitions this worker owns.", multiprocess_mode="livesum")
PARTITION_CHANGES = Counter(
    "hutch_partition_changes", "Partitions this worker took, lost to another worker, or released.", ["change"]
)
QUEUE_DEPTH = Gauge(
    "hutch_partition_queue_depth",
    "Messages waiting in an owned partition's queue (sampled).",
    ["partition"],
    multiprocess_mode="liveall",
)
OLDEST_MESSAGE_AGE = Gauge(
    "hutch_partition_oldest_message_age_seconds",
    "Age of the oldest message waiting in an owned partition's queue (sampled; 0 when none waits).",
    ["partition"],
    multiprocess_mode="liveall",
)
COMMITS = Counter("hutch_commits", "Instance transitions committed or rejected, by result.", ["result"])
DEAD_LETTERS = Counter("hutch_dead_letters", "Messages dead-lettered by the worker.")

# ---------------------------------------------------------------------------- backends
REDIS_ROUND_TRIP = Histogram(
    "hutch_redis_round_trip_seconds", "Round trips to Redis (sampled: the membership heartbeat).", buckets=_FAST
)
BROKER_ROUND_TRIP = Histogram(
    "hutch_broker_round_trip_seconds", "Round trips to the broker (sampled: the queue-depth reads).", buckets=_FAST
)

_enabled = True


def enabled() -> bool:
    """Whether the worker records metrics (on unless :func:`set_enabled` turned it off)."""
    return _enabled


def set_enabled(on: bool) -> None:
    """Turn recording on or off for this process (the benchmark measures what it costs)."""
    global _enabled
    _enabled = on


def multiprocess_mode() -> bool:
    """Whether values live in ``PROMETHEUS_MULTIPROC_DIR`` (shared by the processes of one server)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(*own: Collector, scraped: Collector | None = None) -> bytes:
    """The text ``/metrics`` serves: this process's metrics, ``own`` collectors, then ``scraped``.

    Under ``PROMETHEUS_MULTIPROC_DIR`` the values of every process writing there replace this
    process's and ``own``'s (those are in the files too). ``scraped`` is read at this scrape
    (say, counts read from the store), once, whichever process answers.
    """
    parts: list[Collector]
    if multiprocess_mode():
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        parts = [merged]
    else:
        parts = [REGISTRY, *own]
    if scraped is not None:
        parts.append(scraped)
    return b"".join(generate_latest(part) for part in parts)
