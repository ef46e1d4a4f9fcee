"""The chaos suite's short form, one test per scenario (``python -m tests.chaos`` runs it, or ``--long``).

Each test starts a private Redis, 3 ``hutch worker`` processes and a client, runs 40 instances of
tests/chaos/workflow.py:ChaosWorkflow (steps of 0.2 to 2 s, a sleep, a wait for an event) while the
scenario's faults hit, then checks every guarantee (tests/chaos/checker.py) and prints the table.
The ``host-cut`` scenario runs in test_multihost.py, with its stall bound.
"""

from __future__ import annotations

import pytest

from tests.chaos.checker import render
from tests.chaos.harness import SHORT
from tests.chaos.scenarios import SCENARIOS, run_scenario, unavailable
from tests.conftest import IN_CI

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

SHORT_FORM = [s for s in SCENARIOS.values() if not s.long_only and not s.options.get("hosts")]


def require(name: str) -> None:
    """Skip when this machine lacks what the scenario needs; in CI, fail instead."""
    reason = unavailable(SCENARIOS[name])
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"chaos scenario {name}: {reason} (CI must run it)")
    pytest.skip(reason)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(s.name, marks=pytest.mark.xfail(reason=s.xfail, strict=True)) if s.xfail else s.name
        for s in SHORT_FORM
    ],
)
async def test_chaos_scenario(name: str) -> None:
    require(name)
    scenario = SCENARIOS[name]
    report = await run_scenario(scenario, SHORT)
    table = render([report], title=f"{name}: {scenario.description}")
    print(table)
    assert report.ok, f"{table}\n{report.logs}"
