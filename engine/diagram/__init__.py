"""Workflow diagrams derived statically from a workflow's code (Python's ``ast``; nothing is run).

``analyze(OrderWorkflow)`` reads ``run()`` and the helpers it calls into a typed
:class:`Diagram` (its JSON is the ``model_dump``), and :func:`to_mermaid` renders it as a
Mermaid flowchart. The CLI is ``hutch workflows diagram NAME|FILE:Class [--format json|mermaid]``.
"""

from hutch.diagram.analyze import analyze
from hutch.diagram.mermaid import to_mermaid
from hutch.diagram.model import (
    Break,
    Call,
    Continue,
    Dag,
    Diagram,
    Function,
    Handler,
    If,
    IfBranch,
    Invoke,
    Loop,
    Match,
    MatchCase,
    Node,
    Parallel,
    Raise,
    Resolve,
    Return,
    RollbackAll,
    Sleep,
    SleepUntil,
    StepDo,
    Try,
    Undo,
    WaitForEvent,
    walk,
)

__all__ = [
    "Break",
    "Call",
    "Continue",
    "Dag",
    "Diagram",
    "Function",
    "Handler",
    "If",
    "IfBranch",
    "Invoke",
    "Loop",
    "Match",
    "MatchCase",
    "Node",
    "Parallel",
    "Raise",
    "Resolve",
    "Return",
    "RollbackAll",
    "Sleep",
    "SleepUntil",
    "StepDo",
    "Try",
    "Undo",
    "WaitForEvent",
    "analyze",
    "to_mermaid",
    "walk",
]
