"""The class users subclass to write a workflow."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.events import WorkflowEvent
    from hutch.step import WorkflowStep


def default_binding_name(workflow: str) -> str:
    """The name a workflow has under ``self.env`` when none is given: ``order.v2`` → ``ORDER_V2``.

    Upper-cased, with every character that cannot be in an identifier replaced by ``_``, so the
    binding is an attribute name (``self.env.ORDER_V2``) and an environment-variable-safe word.
    ``connect(workflows=...)`` and hutch.toml's ``[[workflows]]`` both use this rule.
    """
    return re.sub(r"[^A-Za-z0-9_]", "_", workflow).upper()


class Env:
    """The bindings available as ``self.env`` inside a workflow.

    One client per configured workflow under its binding name (``self.env.PAYMENTS``) plus the
    resources the application registered at start-up (``connect(resources={...})``).
    """

    def __init__(self, bindings: dict[str, Any] | None = None) -> None:
        self.__dict__.update(bindings or {})

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"self.env has no binding {name!r}; bindings are the workflows' binding names "
            "(see connect(workflows=...) or hutch.toml) and the resources passed to connect(resources=...)"
        )

    def __repr__(self) -> str:
        return f"Env({', '.join(sorted(self.__dict__))})"


class WorkflowEntrypoint:
    """Base class of a workflow: override ``async def run(self, event, step)``.

    ``run()`` is ordinary async Python. Work with side effects goes in ``step.do`` (its result is
    checkpointed and never re-run once it succeeded); ``step.sleep`` and ``step.wait_for_event``
    suspend the instance without holding a worker. Code outside steps runs again on replay,
    so it must be deterministic.
    """

    env: Env
    # Concurrency limits across every worker (hutch.concurrency): instances of this workflow running
    # at once, and per value of the ``concurrency_key`` template over the params.
    max_concurrency: int | None = None
    concurrency_key: str | None = None
    max_concurrency_per_key: int | None = None

    def __init__(self, env: Env | None = None) -> None:
        self.env = env if env is not None else Env()

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """The workflow's body; its return value is the instance's output."""
        raise NotImplementedError(f"{type(self).__name__} must override async def run(self, event, step)")
