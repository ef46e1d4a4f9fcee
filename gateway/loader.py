"""Finds a workflow class from a ``FILE[:Class]`` or ``module[:Class]`` target, as ``hutch run`` takes it.

The loading itself is :mod:`hutch.loader`, shared with hutch.toml's ``[[workflows]]`` so every
command resolves a target the same way; this module adds the name ``hutch run`` registers a
class under.
"""

from __future__ import annotations

import re

from hutch.config import DEFAULT_LIMITS
from hutch.errors import TargetError
from hutch.loader import load_workflow

__all__ = ["TargetError", "load_workflow", "workflow_name"]


def workflow_name(cls: type) -> str:
    """The workflow name ``hutch run`` registers a class under: ``OrderWorkflow`` → ``order-workflow``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", cls.__name__)
    name = re.sub(r"[^a-z0-9-]+", "-", words.lower()).strip("-") or "workflow"
    return name[: DEFAULT_LIMITS.max_workflow_name_length].rstrip("-")
