"""Hutch's edge: the ``hutch`` command line (``hutch.gateway.cli:main``) and its building blocks.

``hutch.gateway.cli`` is deliberately not imported here, so ``python -m hutch`` runs it cleanly.
"""

from hutch.gateway.loader import TargetError, load_workflow, workflow_name
from hutch.gateway.progress import (
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
