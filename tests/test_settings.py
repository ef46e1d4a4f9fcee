"""Settings every process shares: one rule for a workflow's default binding name, wherever it is declared."""

from __future__ import annotations

from typing import Any

from engine import WorkflowEntrypoint
from engine.entrypoint import default_binding_name
from engine.events import WorkflowEvent
from engine.settings import WorkflowSpec
from tests.conftest import MakeClient


class ListsBindings(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return sorted(vars(self.env))


async def test_connect_and_hutch_toml_give_a_workflow_the_same_default_binding_name(make_client: MakeClient) -> None:
    client = await make_client({"order.v2": ListsBindings, "fan-out": ListsBindings})
    final = await (await client.workflow("order.v2").create()).wait(timeout=10)

    # Upper-cased, every character that cannot be in an identifier (or an env var name) turned to "_".
    assert final.output == ["FAN_OUT", "ORDER_V2"], final
    specs = [WorkflowSpec(name=name, class_name="examples.order:OrderWorkflow") for name in ("order.v2", "fan-out")]
    assert [spec.binding_name for spec in specs] == ["ORDER_V2", "FAN_OUT"]
    assert [default_binding_name(name) for name in ("order.v2", "fan-out")] == ["ORDER_V2", "FAN_OUT"]
