"""Run the chaos suite: ``python -m tests.chaos [--long] [--only NAME,...] [--seed N] [--instances N]``.

The short form (the default; CI runs it through tests/chaos/test_chaos.py and test_multihost.py)
takes a few minutes; ``--long`` runs hundreds of instances through longer, repeated faults and adds
the ``everything`` scenario. Needs the shared Redis and RabbitMQ (127.0.0.1:6379, :5672),
``redis-server``; ``rabbitmq-server`` for ``rabbitmq-node``; root and iproute2 for ``host-cut``.
Prints a table per scenario as it finishes and a summary; exits 1 when a scenario broke a guarantee
(a scenario whose known product defect is written down in tests/chaos/scenarios.py counts as an
expected failure, and as a failure once it passes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from tests.chaos.checker import Report, render
from tests.chaos.harness import LONG, SHORT, Form
from tests.chaos.scenarios import SCENARIOS, Scenario, run_scenario, unavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="the long form: more instances, longer faults")
    parser.add_argument("--only", help="comma-separated scenario names (default: all of the form)")
    parser.add_argument("--seed", type=int, help="random seed (durations, event timing, fault targets)")
    parser.add_argument("--instances", type=int, help="override the form's instance count")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every fault as it is injected")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS.values():
            extra = " (long form only)" if scenario.long_only else ""
            print(f"{scenario.name:15} {scenario.description}{extra}")
        return 0
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR, format="%(asctime)s %(message)s")
    form = LONG if args.long else SHORT
    if args.instances:
        form = dataclasses.replace(form, instances=args.instances, waves=min(form.waves, args.instances))
    if args.only:
        unknown = set(args.only.split(",")) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; see --list")
        chosen = [SCENARIOS[name] for name in args.only.split(",")]
    else:
        chosen = [s for s in SCENARIOS.values() if args.long or not s.long_only]
    return asyncio.run(_run(chosen, form, args.seed))


async def _run(chosen: list[Scenario], form: Form, seed: int | None) -> int:
    reports: list[Report] = []
    verdicts: dict[str, str] = {}
    failed = False
    for scenario in chosen:
        reason = unavailable(scenario)
        if reason is not None:
            print(f"{scenario.name}: skipped ({reason})")
            continue
        report = await run_scenario(scenario, form, seed=seed)
        reports.append(report)
        if scenario.xfail and not report.ok:
            verdicts[scenario.name] = "xfail"
        elif scenario.xfail:
            verdicts[scenario.name] = "XPASS"
            failed = True
        else:
            failed |= not report.ok
        print(render([report], title=f"{scenario.name} ({form.name} form): {scenario.description}", verdicts=verdicts))
        if scenario.xfail:
            print(f"  known defect: {scenario.xfail}")
        if not report.ok and report.logs:
            print(report.logs)
        sys.stdout.flush()
    if len(reports) > 1:
        print(render(reports, title=f"chaos suite, {form.name} form", verdicts=verdicts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
