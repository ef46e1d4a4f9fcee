"""Settings every process shares: one rule for a workflow's default binding name, wherever it is declared."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hutch import InvalidInputError, WorkflowEntrypoint
from hutch.entrypoint import default_binding_name
from hutch.events import WorkflowEvent
from hutch.settings import Settings, WorkflowSpec, parse_amqp_urls

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


def test_a_broker_cluster_is_several_amqp_urls_in_every_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = "amqp://u:p@h1:5701/vh,amqp://u:p@h2:5702/vh"
    short = "amqp://u:p@h1:5701,h2:5702/vh"
    expected = ["amqp://u:p@h1:5701/vh", "amqp://u:p@h2:5702/vh"]
    assert parse_amqp_urls(full) == parse_amqp_urls(short) == parse_amqp_urls(expected) == expected
    assert parse_amqp_urls(" amqp://g:g@h:5701, h:5702/?heartbeat=5 ") == [
        "amqp://g:g@h:5701/?heartbeat=5",
        "amqp://g:g@h:5702/?heartbeat=5",
    ]
    assert parse_amqp_urls("amqps://u@[::1]:5671,[::2]/") == ["amqps://u@[::1]:5671/", "amqps://u@[::2]/"]
    assert parse_amqp_urls("") == []

    monkeypatch.setenv("HUTCH_AMQP_URL", short)  # the environment: one comma-separated string
    assert Settings().amqp_urls == expected
    monkeypatch.delenv("HUTCH_AMQP_URL")
    config = tmp_path / "hutch.toml"
    config.write_text('amqp_url = ["amqp://u:p@h1:5701/vh", "amqp://u:p@h2:5702/vh"]\n')  # hutch.toml: a list
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    assert Settings().amqp_urls == expected
    assert Settings().redacted(Settings().amqp_url) == "amqp://u:***@h1:5701/vh,amqp://u:***@h2:5702/vh"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("h1:5672,h2:5672", "is not a comma-separated list of AMQP URLs"),
        ("http://h1/", "is not an AMQP URL"),
        ("amqp://h1:port/", "Port could not be cast"),
        ("amqp://u:p@h1/a,h2/b", "only the last host (or the first) may be followed by a path"),
    ],
)
def test_a_malformed_amqp_url_is_refused_naming_it(value: str, error: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(error)):
        parse_amqp_urls(value)
