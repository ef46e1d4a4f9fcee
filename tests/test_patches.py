"""In-place patches: ``step.patched(id)`` and ``step.deprecate_patch(id)`` (SPEC §10, Temporal's semantics).

One workflow whose code a test swaps between deploys (``Payment.code``), as a rolling deploy of
a patched class would: instances that passed the patch point on the old code keep the old branch
when they replay on patched code; new ones record a marker and take the new branch. Once the old
branch is gone, ``deprecate_patch`` replays histories with and without markers, and code with the
call removed still replays histories that recorded one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
from hutch import NondeterminismError, Status, WorkflowEntrypoint
from hutch.config import DEFAULT_LIMITS
from hutch.diagram import analyze, to_mermaid
from hutch.events import WorkflowEvent
from hutch.executor import WorkflowRun
from hutch.history import Record
from hutch.status import InstanceDetail
from hutch.testing import TestEnv

WF = "payment"
Code = Callable[[Any], Awaitable[str]]


async def old(step: Any) -> str:
    await step.do("reserve", lambda: "r")
    await step.do("charge", lambda: "c1")
    await step.wait_for_event("go", "go", "1 hour")
    return "old"


async def patched(step: Any) -> str:
    await step.do("reserve", lambda: "r")
    if step.patched("charge-v2"):
        await step.do("charge v2", lambda: "c2")
        branch = "new"
    else:
        await step.do("charge", lambda: "c1")
        branch = "old"
    assert step.patched("charge-v2") is (branch == "new")  # memoized for the run
    await step.wait_for_event("go", "go", "1 hour")
    return branch


async def deprecated(step: Any) -> str:
    await step.do("reserve", lambda: "r")
    step.deprecate_patch("charge-v2")
    await step.do("charge v2", lambda: "c2")
    await step.wait_for_event("go", "go", "1 hour")
    return "new"


async def removed(step: Any) -> str:
    await step.do("reserve", lambda: "r")
    await step.do("charge v2", lambda: "c2")
    await step.wait_for_event("go", "go", "1 hour")
    return "new"


class Payment(WorkflowEntrypoint):
    """One version throughout: the tests change its code in place, as a patch deploy does."""

    version = "1"
    code: ClassVar[Code] = old

    async def run(self, event: Any, step: Any) -> str:
        return await type(self).code(step)


@pytest.fixture(autouse=True)
def _old_code() -> None:
    Payment.code = old


async def _describe(env: TestEnv, instance_id: str) -> InstanceDetail:
    return await (await env.client.workflow(WF).get(instance_id)).describe()


async def _waiting(env: TestEnv, instance_id: str) -> InstanceDetail:
    await env.instance(WF, instance_id).wait_for_status(Status.WAITING)
    return await _describe(env, instance_id)


async def _finish(env: TestEnv, instance_id: str) -> Any:
    await (await env.client.workflow(WF).get(instance_id)).send_event("go")
    return await env.instance(WF, instance_id).output()


async def test_an_old_instance_keeps_the_old_branch_and_a_new_one_takes_the_new() -> None:
    async with TestEnv({WF: Payment}) as env:
        await env.create(WF, "before")
        before = await _waiting(env, "before")
        Payment.code = patched  # the deploy
        await env.create(WF, "after")
        after = await _waiting(env, "after")

        # The old instance replays on patched code (a restart of the run from history): no
        # NondeterminismError, the old branch; the new one recorded its marker.
        assert await _finish(env, "before") == "old"
        assert await _finish(env, "after") == "new"
        assert [s.name for s in before.steps] == ["reserve", "charge", "go"]
        assert [s.name for s in after.steps] == ["reserve", "charge v2", "go"]
        assert before.patches == []
        assert [(p.id, p.deprecated) for p in after.patches] == [("charge-v2", False)]
        assert (await _describe(env, "before")).status is Status.COMPLETE


async def test_deprecate_patch_replays_histories_with_and_without_the_marker() -> None:
    async with TestEnv({WF: Payment}) as env:
        Payment.code = patched
        await env.create(WF, "patched")  # took the new branch: a marker
        await _waiting(env, "patched")
        Payment.code = deprecated  # every old-branch instance has finished: the old branch goes
        await env.create(WF, "deprecated")  # records a deprecated marker
        detail = await _waiting(env, "deprecated")
        assert [(p.id, p.deprecated) for p in detail.patches] == [("charge-v2", True)]
        assert await _finish(env, "patched") == "new"
        assert await _finish(env, "deprecated") == "new"


# ----------------------------------------------------------------------------- replay, unit
def _history(code: Code) -> list[Record]:
    """The history of a run of ``code`` up to its wait (each step's result recorded)."""
    Payment.code = code
    run = _run()
    run.start()
    history: list[Record] = []
    group = 0
    while True:
        commands = run.take_commands()
        history.extend(commands)
        steps = [c for c in commands if c["k"] == "step"]
        if not steps:
            return history
        for c in steps:
            history.append({"k": "res", "ref": "step", "n": c["n"], "c": c["c"], "ok": True, "g": group, "t": 0})
        run.deliver([r for r in history if r["k"] == "res" and r["g"] == group])
        group += 1
        run.group = group


def _run() -> WorkflowRun:
    event = WorkflowEvent.build(None, 0, "i", WF)
    return WorkflowRun(Payment(), event, limits=DEFAULT_LIMITS, now_ms=lambda: 0)


def _replay(code: Code, history: list[Record]) -> WorkflowRun:
    Payment.code = code
    run = _run()
    run.replay(history)
    if run.failure is not None:
        raise run.failure
    return run


def test_patched_is_true_only_where_history_has_the_marker() -> None:
    old_history, new_history = _history(old), _history(patched)
    assert [r["k"] for r in new_history if r["k"] != "res"] == ["step", "patch", "step", "wait"]
    assert not [r for r in old_history if r["k"] == "patch"]
    # Patched code replays both: the old history down the old branch, the new one down the new.
    assert _replay(patched, old_history).take_commands() == []
    assert _replay(patched, new_history).take_commands() == []
    # The old code cannot replay a history that took the new branch.
    with pytest.raises(NondeterminismError):
        _replay(old, new_history)


def test_deprecated_and_removed_patches_replay_histories_with_markers() -> None:
    new_history, deprecated_history = _history(patched), _history(deprecated)
    markers = [r for r in deprecated_history if r["k"] == "patch"]
    assert [{k: v for k, v in r.items() if k not in ("g", "t")} for r in markers] == [
        {"k": "patch", "n": "charge-v2", "dep": True}
    ]
    for code in (deprecated, removed):
        for history in (new_history, deprecated_history):
            assert _replay(code, history).take_commands() == []
    # Code that still asks patched() takes the new branch on a history deprecate_patch recorded.
    assert _replay(patched, deprecated_history).take_commands() == []
    # deprecate_patch does not make the old branch's history replay: that is what patched() is for.
    with pytest.raises(NondeterminismError):
        _replay(deprecated, _history(old))


def test_a_patch_reached_live_after_a_replayed_prefix_takes_the_new_branch() -> None:
    """An instance that had not reached the patch point when the patch was deployed takes the new path."""
    full = _history(old)
    prefix = full[:2]  # reserve issued and resolved: charge not issued yet
    assert [r["k"] for r in prefix] == ["step", "res"]
    run = _replay(patched, prefix)
    assert [(c["k"], c["n"]) for c in run.take_commands()] == [("patch", "charge-v2"), ("step", "charge v2")]


class Drawn(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        if step.patched("charge-v2"):
            await step.do("charge v2", lambda: 2)
        else:
            await step.do("charge", lambda: 1)


def test_a_diagram_draws_a_patch_as_its_new_and_old_code_paths() -> None:
    drawn = to_mermaid(analyze(Drawn))
    assert "{\"patch 'charge-v2'\"}" in drawn
    assert '-->|"new code"| n2' in drawn and '-->|"old code"| n3' in drawn
