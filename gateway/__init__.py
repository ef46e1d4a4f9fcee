"""Hutch's edge: the ``hutch`` command line (:mod:`hutch.gateway.cli`) and its building blocks.

``hutch.gateway.cli`` sits on top: nothing else in ``hutch.gateway`` imports it, and this
package re-exports its two progress renderers.
"""

from hutch.gateway.cli.progress_view import HumanSink, JsonSink
from hutch.gateway.loader import TargetError, load_workflow, workflow_name
from hutch.gateway.progress import (
    Active,
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
