"""Hutch's edge: the ``hutch`` command line (``gateway.cli:main``) and its building blocks.

``gateway.cli`` is deliberately not imported here, so ``python -m gateway.cli`` runs it cleanly.
"""

from gateway.loader import TargetError, load_workflow, workflow_name
from gateway.progress import (
    Active,
    HumanSink,
    JsonSink,
    ProgressEvent,
    ProgressSink,
    ProgressTracker,
    RunResult,
    follow,
)

__all__ = [
    "Active",
    "HumanSink",
    "JsonSink",
    "ProgressEvent",
    "ProgressSink",
    "ProgressTracker",
    "RunResult",
    "TargetError",
    "follow",
    "load_workflow",
    "workflow_name",
]
