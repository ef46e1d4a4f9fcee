"""One copy of each name rule: the pattern the engine enforces is the one every schema publishes."""

from __future__ import annotations

import re

import pytest
from hutch.config import INSTANCE_ID_PATTERN, WORKFLOW_NAME_PATTERN, check_instance_id, check_workflow_name
from hutch.errors import InvalidInstanceId, InvalidWorkflowName
from hutch.gateway.api.models import INSTANCE_ID_SCHEMA, WORKFLOW_NAME_SCHEMA
from hutch.settings import WorkflowSpec
from hutch.triggers import CronSpec, QueueConsumerSpec, WebhookRoute
from pydantic import BaseModel


def test_the_rest_schema_publishes_the_patterns_the_engine_enforces() -> None:
    assert WORKFLOW_NAME_SCHEMA["pattern"] == WORKFLOW_NAME_PATTERN
    assert INSTANCE_ID_SCHEMA["pattern"] == INSTANCE_ID_PATTERN


@pytest.mark.parametrize(
    ("model", "field"),
    [(WorkflowSpec, "name"), (CronSpec, "workflow"), (QueueConsumerSpec, "workflow"), (WebhookRoute, "workflow")],
)
def test_hutch_toml_checks_workflow_names_with_the_same_pattern(model: type[BaseModel], field: str) -> None:
    assert model.model_json_schema()["properties"][field]["pattern"] == WORKFLOW_NAME_PATTERN


def test_the_errors_quote_the_pattern_they_check() -> None:
    with pytest.raises(InvalidWorkflowName, match=re.escape(WORKFLOW_NAME_PATTERN)):
        check_workflow_name("bad/name")
    with pytest.raises(InvalidInstanceId, match=re.escape(INSTANCE_ID_PATTERN)):
        check_instance_id("bad id")


@pytest.mark.parametrize("pattern", [WORKFLOW_NAME_PATTERN, INSTANCE_ID_PATTERN])
def test_a_hyphen_in_a_class_comes_last_so_json_schema_validators_accept_the_pattern(pattern: str) -> None:
    # ECMA-262 with the "u" flag (ajv and other JSON Schema validators) rejects "0-9-_" as a range.
    classes = re.findall(r"\[([^\]]*)\]", pattern)
    assert all("-" not in c.replace("a-z", "").replace("A-Z", "").replace("0-9", "")[:-1] for c in classes)
