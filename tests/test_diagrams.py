"""Workflow diagrams: golden JSON and Mermaid for every example and every shape of the corpus,
the Mermaid output's structure, the meaning of the tricky shapes, and ``hutch workflows diagram``.

Goldens live in ``tests/diagrams/``: ``<module>.<Class>.json`` and ``.mmd``. After an intended
change to the analyser, the renderer or an example, rewrite them and review the diff::

    HUTCH_UPDATE_GOLDENS=1 python -m pytest tests/test_diagrams.py
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hutch import InvalidInputError, WorkflowEntrypoint
from hutch.diagram import (
    Call,
    Dag,
    Diagram,
    If,
    Invoke,
    Loop,
    Match,
    Node,
    Parallel,
    Resolve,
    Return,
    RollbackAll,
    StepDo,
    Try,
    analyze,
    to_mermaid,
    walk,
)
from hutch.gateway.cli.diagram import diagram as diagram_command

from tests.diagrams import corpus

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = Path(__file__).resolve().parent / "diagrams"
UPDATE = os.environ.get("HUTCH_UPDATE_GOLDENS", "") == "1"


def _workflows(module: Any) -> list[type[WorkflowEntrypoint]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, WorkflowEntrypoint)
        and obj is not WorkflowEntrypoint
        and obj.__module__ == module.__name__
    ]


def _cases() -> dict[str, type[WorkflowEntrypoint]]:
    cases: dict[str, type[WorkflowEntrypoint]] = {}
    for path in sorted((ROOT / "examples").glob("*.py")):
        if path.stem != "__init__":
            module = importlib.import_module(f"examples.{path.stem}")
            cases.update({f"{path.stem}.{cls.__name__}": cls for cls in _workflows(module)})
    cases.update({f"corpus.{cls.__name__}": cls for cls in _workflows(corpus)})
    return cases


CASES = _cases()


def _check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no golden {path.name}; create it with HUTCH_UPDATE_GOLDENS=1 and review it"
    assert actual == path.read_text(encoding="utf-8"), (
        f"{path.name} differs from the analysis; if the change is intended, "
        "rewrite the goldens with HUTCH_UPDATE_GOLDENS=1 and review the diff"
    )


# --------------------------------------------------------------------------- goldens
def test_public_names_of_engine_diagram() -> None:
    import hutch.diagram

    assert sorted(hutch.diagram.__all__) == [
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
    assert all(hasattr(hutch.diagram, name) for name in hutch.diagram.__all__)


def test_every_example_and_corpus_shape_is_covered() -> None:
    names = set(CASES)
    assert {"order.OrderWorkflow", "approval.ApprovalWorkflow", "fanout.FanOutWorkflow"} <= names
    assert len([n for n in names if n.startswith("corpus.")]) >= 12
    stale = {p.stem for p in [*GOLDENS.glob("*.json"), *GOLDENS.glob("*.mmd")]} - names
    assert not stale, f"goldens without a workflow (delete them): {sorted(stale)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_json(case: str) -> None:
    _check_golden(GOLDENS / f"{case}.json", analyze(CASES[case]).to_json() + "\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_mermaid(case: str) -> None:
    _check_golden(GOLDENS / f"{case}.mmd", to_mermaid(analyze(CASES[case])))


@pytest.mark.parametrize("case", sorted(CASES))
def test_json_round_trips_through_the_typed_model(case: str) -> None:
    diagram = analyze(CASES[case])
    assert Diagram.model_validate_json(diagram.to_json()) == diagram


# --------------------------------------------------------------------------- Mermaid structure
_NODE = re.compile(
    r'^(?P<id>[A-Za-z][\w]*)(?P<open>\(\[|\[\[|\[/|\{\{|\[|\{|>)"(?P<text>[^"]*)"(?P<close>\]\)|\]\]|/\]|\\\]|\}\}|\]|\})$'
)
_SUBGRAPH = re.compile(r'^subgraph (?P<id>[A-Za-z][\w]*) \["(?P<title>[^"]*)"\]$')
_EDGE = re.compile(r'^(?P<src>[A-Za-z][\w]*) (?:-->|-\.->)(?:\|"(?P<label>[^"|]*)"\|)? (?P<dst>[A-Za-z][\w]*)$')
_SHAPES = {"([": "])", "[[": "]]", "[/": "/]", "{{": "}}", "[": "]", "{": "}", ">": "]"}


def parse_mermaid(text: str) -> tuple[dict[str, str], dict[str, set[str]], list[tuple[str, str]]]:
    """Check the flowchart line by line; returns nodes (id → label), subgraphs (id → members) and edges."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, str] = {}
    subgraphs: dict[str, set[str]] = {}
    open_subgraphs: list[str] = []
    edges: list[tuple[str, str]] = []
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if match := _SUBGRAPH.match(line):
            assert not edges, f"line {number}: subgraph after the first edge"
            assert match["id"] not in subgraphs and match["id"] not in nodes, f"line {number}: duplicate id"
            subgraphs[match["id"]] = set()
            open_subgraphs.append(match["id"])
        elif line == "end":
            assert open_subgraphs, f"line {number}: 'end' without an open subgraph"
            open_subgraphs.pop()
        elif match := _NODE.match(line):
            assert not edges, f"line {number}: node declared after the first edge"
            assert match["id"] not in nodes and match["id"] not in subgraphs, f"line {number}: duplicate id"
            assert _SHAPES[match["open"]] == match["close"] or match["close"] == "\\]", (
                f"line {number}: mismatched shape"
            )
            nodes[match["id"]] = match["text"]
            for subgraph in open_subgraphs:
                subgraphs[subgraph].add(match["id"])
        elif match := _EDGE.match(line):
            edges.append((match["src"], match["dst"]))
        else:
            pytest.fail(f"line {number} is not a node, subgraph, end or edge: {raw!r}")
    assert not open_subgraphs, f"unclosed subgraphs: {open_subgraphs}"
    declared = set(nodes) | set(subgraphs)
    for src, dst in edges:
        assert src in declared and dst in declared, f"edge {src} -> {dst} has an undeclared end"
    return nodes, subgraphs, edges


@pytest.mark.parametrize("case", sorted(CASES))
def test_mermaid_is_well_formed_and_every_node_is_reachable(case: str) -> None:
    diagram = analyze(CASES[case])
    nodes, subgraphs, edges = parse_mermaid(to_mermaid(diagram))
    # Every diagram node is drawn, with its own id.
    for function in diagram.functions:
        assert f"{function.id}_start" in nodes and f"{function.id}_end" in nodes
        for node in walk(function.body):
            assert node.id in nodes or node.id in subgraphs, f"{node.kind} {node.id} not drawn"
    # Everything is reachable from a function's start; an edge from a subgraph leaves any of its members.
    successors: dict[str, set[str]] = {}
    for src, dst in edges:
        successors.setdefault(src, set()).add(dst)
    reached = {f"{f.id}_start" for f in diagram.functions}
    queue = deque(reached)
    while queue:
        current = queue.popleft()
        nexts = set(successors.get(current, ()))
        nexts |= {s for s, members in subgraphs.items() if current in members}
        for nxt in nexts - reached:
            reached.add(nxt)
            queue.append(nxt)
    unreachable = sorted(set(nodes) - reached - {f"{f.id}_end" for f in diagram.functions})
    assert not unreachable, f"nodes not reachable from a start: {unreachable}"


def test_mermaid_parser_rejects_malformed_text() -> None:
    with pytest.raises(AssertionError, match="undeclared"):
        parse_mermaid('flowchart TD\n    a["x"]\n    a --> b\n')
    with pytest.raises(AssertionError, match="unclosed"):
        parse_mermaid('flowchart TD\n    subgraph s ["t"]\n    a["x"]\n')
    with pytest.raises(pytest.fail.Exception):
        parse_mermaid('flowchart TD\n    a["x" --> b\n')


def test_labels_escape_quotes_and_markup() -> None:
    class Quoted(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> None:
            await step.do('say "hi" <b>#1</b> | done', lambda: None)

    text = to_mermaid(analyze(Quoted))
    parse_mermaid(text)
    assert '"step: say #quot;hi#quot; #lt;b#gt;#35;1#lt;/b#gt; #124; done"' in text


# --------------------------------------------------------------------------- what the shapes mean
def _function(diagram: Diagram, suffix: str) -> list[Node]:
    return next(f.body for f in diagram.functions if f.name.endswith(suffix))


def _steps(nodes: list[Node]) -> list[str]:
    return [n.name for n in walk(nodes) if isinstance(n, StepDo)]


def _only(nodes: list[Node], kind: type[Any]) -> Any:
    found = [n for n in walk(nodes) if isinstance(n, kind)]
    assert len(found) == 1, found
    return found[0]


def test_example_order_is_a_straight_line_of_steps_with_literal_configs() -> None:
    from examples.order import OrderWorkflow

    body = analyze(OrderWorkflow).functions[0].body
    assert [n.kind for n in body] == ["step_do", "step_do", "step_do", "sleep", "step_do", "return"]
    reserve = body[1]
    assert isinstance(reserve, StepDo) and reserve.function == "reserve_inventory"
    assert reserve.config == {
        "retries": {"limit": 3, "delay": "200 milliseconds", "backoff": "exponential"},
        "timeout": "10 s",
    }


def test_fanout_gathers_one_step_per_document_concurrently() -> None:
    from examples.fanout import FanOutWorkflow

    body = analyze(FanOutWorkflow).functions[0].body
    gather = body[0]
    assert isinstance(gather, Parallel) and gather.mode == "gather"
    (loop,) = gather.branches[0]
    assert isinstance(loop, Loop) and loop.concurrent and loop.header == "for i, doc in enumerate(documents)"
    assert _steps(loop.body) == ["count words {i + 1}"]
    assert _steps(body[1:]) == ["aggregate"]


def test_helpers_are_followed_transitively_and_stepless_ones_trimmed() -> None:
    diagram = analyze(corpus.HelpersWorkflow)
    names = [f.name for f in diagram.functions]
    assert names == [
        "HelpersWorkflow.run",
        "HelpersWorkflow.charge",
        "HelpersWorkflow.capture",
        "notify_all",
        "HelpersWorkflow.finish",
    ]
    calls = [n.function for n in diagram.functions[0].body if isinstance(n, Call)]
    assert calls == ["HelpersWorkflow.charge", "notify_all", "HelpersWorkflow.finish"]
    # The helper names the step object differently (wf_step, s): still recognised.
    assert _steps(_function(diagram, ".capture")) == ["capture"]
    assert _function(diagram, ".finish")[0].kind == "sleep"


def test_local_functions_nest_and_use_the_step_object_of_their_closure() -> None:
    diagram = analyze(corpus.LocalFunctionsWorkflow)
    assert [f.name for f in diagram.functions] == [
        "LocalFunctionsWorkflow.run",
        "LocalFunctionsWorkflow.run.process",
        "LocalFunctionsWorkflow.run.process.enrich",
    ]
    assert _steps(_function(diagram, ".enrich")) == ["enrich {item}"]


def test_try_keeps_handlers_else_and_finally_and_drops_a_try_without_steps() -> None:
    body = analyze(corpus.TryWorkflow).functions[0].body
    tries = [n for n in body if isinstance(n, Try)]
    assert len(tries) == 2
    main = tries[0]
    assert [h.types for h in main.handlers] == [
        ["EventTimeoutError"],
        ["NonRetryableError", "ValueError"],
        ["Exception"],
    ]
    assert _steps(main.handlers[0].body) == ["escalate"]
    assert [n.kind for n in main.handlers[1].body] == ["step_do", "raise"]
    assert _steps(main.orelse or []) == ["apply decision"]
    assert _steps(main.finalbody or []) == ["cleanup"]
    assert tries[1].handlers[0].types == []  # a bare except


def test_early_returns_and_if_arms_are_trimmed_truthfully() -> None:
    body = analyze(corpus.BranchesWorkflow).functions[0].body
    early = body[0]
    assert isinstance(early, If) and early.branches[0].condition == "not payload"
    assert isinstance(early.branches[0].body[0], Return)
    assert body[1].kind == "if" and [n.kind for n in body[1].branches[0].body] == ["raise"]  # type: ignore[union-attr]
    chain = body[2]
    assert isinstance(chain, If)
    # The empty 'pickup' arm stays (else 'freight' would look like its path); the trailing else goes.
    assert [b.condition for b in chain.branches] == ["kind == 'express'", "kind == 'pickup'", "kind == 'freight'"]
    assert chain.branches[1].body == []
    conditional = body[4]
    assert isinstance(conditional, If) and [b.condition for b in conditional.branches] == ["payload.get('vip')", None]


def test_match_cases_with_guards_and_a_stepless_match_trimmed() -> None:
    body = analyze(corpus.MatchWorkflow).functions[0].body
    match = _only(body, Match)
    assert match.subject == "event.payload"
    assert [(c.pattern, c.guard) for c in match.cases] == [
        ("{'type': 'refund', 'amount': amount}", "amount > 100"),
        ("{'type': 'refund'}", None),
        ("{'type': 'noop'}", None),
        ("_", None),
    ]


def test_unawaited_steps_record_where_they_start_and_where_they_resolve() -> None:
    body = analyze(corpus.TasksWorkflow).functions[0].body
    quote, audit, validate, resolve_quote = body[:4]
    assert isinstance(quote, StepDo) and quote.name == "get quote" and not quote.awaited
    assert isinstance(audit, Call) and not audit.awaited
    assert isinstance(validate, StepDo) and validate.awaited
    assert isinstance(resolve_quote, Resolve) and resolve_quote.resolves == [quote.id]
    resolves = [n for n in walk(body) if isinstance(n, Resolve)]
    reserve = next(n for n in walk(body) if isinstance(n, StepDo) and n.name == "reserve {sku}")
    label = next(n for n in walk(body) if isinstance(n, StepDo) and n.name == "label {n}")
    assert [r.resolves for r in resolves] == [[quote.id], [reserve.id], [label.id], [audit.id]]
    assert not reserve.awaited and not label.awaited


def test_invokes_are_steps_that_name_their_child_workflow() -> None:
    diagram = analyze(corpus.InvokeWorkflow)
    run, ship = diagram.functions
    reserve, bill, call, resolve, _ = run.body
    assert isinstance(reserve, Invoke) and not reserve.awaited
    assert (reserve.name, reserve.workflow, reserve.workflow_expr) == ("reserve", None, "self.env.STOCK")
    assert (reserve.child_id, reserve.config, reserve.config_expr) == (None, None, "event.payload['close']")
    assert isinstance(bill, Invoke) and bill.awaited
    assert (bill.name, bill.workflow, bill.child_id_expr) == ("bill {order}", "billing", "f'bill-{order}'")
    assert bill.config == {"parent_close": "abandon"}
    assert isinstance(resolve, Resolve) and resolve.resolves == [reserve.id]
    # A helper whose only step is an invoke runs steps: kept, and called.
    assert isinstance(call, Call) and call.function == ship.name
    (shipped,) = ship.body
    assert isinstance(shipped, Invoke) and (shipped.workflow, shipped.child_id) == ("shipping", "ship-1")
    nodes, _, edges = parse_mermaid(to_mermaid(diagram))
    assert nodes[bill.id] == "invoke: bill {order} → billing"
    assert nodes[reserve.id] == "invoke: reserve → self.env.STOCK"
    assert (reserve.id, resolve.id) in edges  # started early, joined where it is awaited


def test_task_groups_and_gathered_coroutines_fan_out() -> None:
    body = analyze(corpus.TaskGroupWorkflow).functions[0].body
    group, gathered = body[0], body[1]
    assert isinstance(group, Parallel) and group.mode == "task_group" and len(group.branches) == 3
    loop = group.branches[0][0]
    assert isinstance(loop, Loop) and loop.concurrent
    # Coroutines built in a comprehension start only when gathered: they appear at the gather.
    assert isinstance(gathered, Parallel) and gathered.mode == "gather"
    (fan_out,) = gathered.branches[0]
    assert isinstance(fan_out, Loop) and fan_out.concurrent
    assert all(isinstance(n, Call) and n.awaited for n in fan_out.body)


def test_names_render_placeholders_and_configs_are_literal_or_source() -> None:
    steps = {n.name: n for n in walk(analyze(corpus.NamesAndConfigsWorkflow).functions[0].body) if hasattr(n, "name")}
    charge = steps["charge {order_id}"]
    assert isinstance(charge, StepDo) and charge.config == {"retries": {"limit": 3}, "timeout": 30}
    assert "ship {order_id!r} at {event.payload['at']:>10}" in steps
    assert steps["ship {order_id!r} at {event.payload['at']:>10}"].config_expr == "config"  # type: ignore[union-attr]
    assert steps["{name}"].config == {"retries": {"limit": 2, "backoff": "linear"}}  # type: ignore[union-attr]
    assert steps["fetch"].config_expr == "RETRY_FAST"  # type: ignore[union-attr]
    assert steps["dynamic config"].config_expr == "StepConfig(timeout=event.payload['timeout'])"  # type: ignore[union-attr]
    assert steps["bare_decorator"].function == "bare_decorator"  # type: ignore[union-attr]
    assert steps["unnamed"].config == {"timeout": "1 minute"}  # type: ignore[union-attr]
    assert steps["literal seconds"].duration == 30  # type: ignore[union-attr]
    assert steps["timedelta"].duration_expr == "timedelta(minutes=5)"  # type: ignore[union-attr]
    assert steps["default timeout"].timeout is None  # type: ignore[union-attr]
    assert steps["dynamic"].event_type_expr == "event.payload['type']"  # type: ignore[union-attr]


def test_dag_expands_dependencies_once_and_skips_ones_already_run() -> None:
    body = analyze(corpus.DagWorkflow).functions[0].body
    first, dag, call_form = body[0], body[1], body[2]
    assert isinstance(first, StepDo) and first.name == "a"
    assert isinstance(dag, Dag)
    assert [(s.name, s.depends, s.concurrent) for s in dag.steps] == [
        ("b", None, None),
        ("c", ["a", "b"], True),
        ("d", ["a", "c"], None),
    ]
    assert isinstance(call_form, StepDo) and call_form.depends == ["d"]


def test_dag_example_runs_the_shared_dependency_once() -> None:
    from examples.dag import SalesReportWorkflow

    dag = _only(analyze(SalesReportWorkflow).functions[0].body, Dag)
    names = [s.name for s in dag.steps]
    assert sorted(names) == ["build report", "enrich orders", "fetch customers", "fetch orders", "sum totals"]
    assert names[-1] == "build report"
    position = {name: i for i, name in enumerate(names)}
    for step in dag.steps:
        assert all(position[d] < position[step.name] for d in step.depends or ())


def test_saga_records_undos_and_the_rollback_order() -> None:
    body = analyze(corpus.SagaWorkflow).functions[0].body
    reserve, pay = (n for n in walk(body) if isinstance(n, StepDo) and n.rollback)
    assert reserve.undo is not None and reserve.undo.function == "release" and reserve.undo.config is None
    assert pay.undo is not None and pay.undo.config_expr == "RETRY_FAST"
    rollback = _only(body, RollbackAll)
    assert rollback.continue_on_error is True
    assert rollback.undos == ["rollback pay", "rollback reserve"]


def test_recursion_is_analysed_once() -> None:
    diagram = analyze(corpus.RecursiveWorkflow)
    assert [f.name for f in diagram.functions] == ["RecursiveWorkflow.run", "RecursiveWorkflow.walk"]
    inner = _only(_function(diagram, ".walk"), Call)
    assert inner.function == "RecursiveWorkflow.walk"


def test_a_workflow_without_steps_keeps_run_only() -> None:
    diagram = analyze(corpus.NoStepsWorkflow)
    assert [f.name for f in diagram.functions] == ["NoStepsWorkflow.run"]
    assert [n.kind for n in diagram.functions[0].body] == ["return"]


def test_the_step_parameter_may_have_any_name_and_ids_are_in_document_order() -> None:
    class Renamed(WorkflowEntrypoint):
        async def run(self, ev: Any, s: Any) -> None:
            await s.do("one", lambda: 1)
            if ev.payload:
                await s.sleep("two", "1 second")

    diagram = analyze(Renamed)
    assert _steps(diagram.functions[0].body) == ["one"]
    assert [n.id for n in walk(diagram.functions[0].body)] == ["n1", "n2", "n3"]


def test_a_class_without_readable_source_is_a_clear_error() -> None:
    namespace: dict[str, Any] = {"WorkflowEntrypoint": WorkflowEntrypoint}
    exec("class Generated(WorkflowEntrypoint):\n    async def run(self, event, step):\n        pass\n", namespace)
    with pytest.raises(InvalidInputError, match=r"Generated has no run\(\) method with Python source"):
        analyze(namespace["Generated"])


# --------------------------------------------------------------------------- the command
def invoke(*args: str) -> Any:
    result = CliRunner().invoke(diagram_command, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_command_prints_json_by_default_and_mermaid_on_request() -> None:
    from examples.order import OrderWorkflow

    target = str(ROOT / "examples" / "order.py") + ":OrderWorkflow"
    result = invoke(target)
    assert result.exit_code == 0, result.output
    assert Diagram.model_validate_json(result.output) == analyze(OrderWorkflow)
    result = invoke(target, "--format", "mermaid")
    assert result.exit_code == 0, result.output
    assert result.output == to_mermaid(analyze(OrderWorkflow))


def test_command_resolves_a_module_target_and_a_hutch_toml_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.approval import ApprovalWorkflow

    assert invoke("examples.approval:ApprovalWorkflow").output.startswith("{")
    config = tmp_path / "hutch.toml"
    config.write_text('[[workflows]]\nname = "approval"\nclass_name = "examples.approval:ApprovalWorkflow"\n')
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    result = invoke("approval", "--format", "mermaid")
    assert result.exit_code == 0, result.output
    assert result.output == to_mermaid(analyze(ApprovalWorkflow))


def test_command_rejects_an_unknown_name_with_the_configured_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hutch.toml"
    config.write_text('[[workflows]]\nname = "approval"\nclass_name = "examples.approval:ApprovalWorkflow"\n')
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    result = invoke("invoices")
    assert result.exit_code == 2
    assert "'invoices' is not a configured workflow (workflows in hutch.toml: approval)" in result.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples/missing.py:Nope", "file 'examples/missing.py' does not exist"),
        ("examples.order:Nope", "'examples.order' has no class 'Nope'; workflows defined there: OrderWorkflow"),
        ("examples.order:PRICES_CENTS", "examples.order:PRICES_CENTS is not a WorkflowEntrypoint subclass"),
        ("examples.order:", "must look like 'path/to/file.py:Class'"),
    ],
)
def test_command_rejects_a_bad_target(target: str, message: str) -> None:
    result = invoke(target)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_command_reports_a_broken_hutch_toml_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hutch.toml"
    config.write_text('[[workflows]]\nname = "ghost"\nclass_name = "examples.order:GhostWorkflow"\n')
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    result = invoke("ghost")
    assert result.exit_code == 2
    assert "workflow 'ghost': cannot import 'examples.order:GhostWorkflow'" in " ".join(result.output.split())


def test_command_rejects_an_unknown_format() -> None:
    result = invoke("examples.order:OrderWorkflow", "--format", "svg")
    assert result.exit_code == 2
    assert "'svg' is not one of 'json', 'mermaid'" in result.output


def test_command_exits_1_when_the_class_cannot_be_analysed(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, Any] = {"WorkflowEntrypoint": WorkflowEntrypoint}
    exec("class Generated(WorkflowEntrypoint):\n    async def run(self, event, step):\n        pass\n", namespace)
    monkeypatch.setattr("hutch.gateway.cli.diagram.load_workflow", lambda target: namespace["Generated"])
    result = invoke("generated.py:Generated")
    assert result.exit_code == 1
    assert "has no run() method with Python source to analyse" in result.output
