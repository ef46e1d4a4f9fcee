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
"""

from hutch.testing.clock import TestClock
from hutch.testing.env import TestEnv, TestInstance, UnexpectedStatus
from hutch.testing.modifiers import Modifier

__all__ = ["Modifier", "TestClock", "TestEnv", "TestInstance", "UnexpectedStatus"]
