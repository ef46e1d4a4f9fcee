"""Test your workflows: the embedded engine under a virtual clock, with mocks and time control.

The Python counterpart of Cloudflare's ``introspectWorkflowInstance`` / ``introspectWorkflow``,
with temporalio's time skipping::

    from hutch.testing import TestEnv

    async def test_approval_is_provisioned() -> None:
        async with TestEnv({"approval": ApprovalWorkflow}) as env:
            env.modify("PR-7").mock_event("approval", {"approved": True, "approver": "grace"})
            instance = await env.create("approval", id="PR-7", params={"requestId": "PR-7"})
            assert (await instance.output())["decision"] == "approved"

With pytest, the ``hutch_env`` fixture (installed with the package as a pytest plugin) gives
each test a started :class:`TestEnv`; override the ``hutch_workflows`` fixture to choose the
workflows (default: those of ``hutch.toml``), or call ``hutch_env_factory(workflows, ...)``.

Before a deploy, replay recorded histories against the new code, running no step: export an
instance with ``hutch instances export NAME ID --out FILE``, then in a test
``replay_history(OrderWorkflow, load_history(FILE))`` (raises NondeterminismError on a breaking
change) or ``verify_histories(OrderWorkflow, histories)`` for a report on many.
"""

from hutch.testing.clock import TestClock
from hutch.testing.env import TestEnv, TestInstance, UnexpectedStatus
from hutch.testing.history_file import InstanceHistory, load_history, save_history
from hutch.testing.modifiers import Modifier
from hutch.testing.replayer import InstanceVerdict, ReplayResult, VerifyReport, replay_history, verify_histories

__all__ = [
    "InstanceHistory",
    "InstanceVerdict",
    "Modifier",
    "ReplayResult",
    "TestClock",
    "TestEnv",
    "TestInstance",
    "UnexpectedStatus",
    "VerifyReport",
    "load_history",
    "replay_history",
    "save_history",
    "verify_histories",
]
