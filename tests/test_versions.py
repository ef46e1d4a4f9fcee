"""Code versions per instance and several versions side by side (SPEC §10, issue 12 items 1 and 2).

The rolling deploy across worker processes is tests/distributed/test_rolling_deploy.py; these
check the rules one by one on the embedded runtime: what version a class has, that an instance
records it, that new instances start on the newest, how versions are configured, and what a
worker reports about an instance whose version it lacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hutch
import pytest
from hutch import InvalidInputError, Settings, Status, WorkflowEntrypoint
from hutch.consumers.versions import VERSION_MISSING_METRIC, VersionWaits
from hutch.gateway.cli.options import parse_workflows
from hutch.testing import TestEnv
from hutch.versions import WorkflowVersions, version_of
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import ValidationError

from tests.distributed.versioned import OrderV1, OrderV2
from tests.helpers import wait_status


class Unversioned(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("a", lambda: "a")


class UnversionedChanged(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("b", lambda: "b")


class Copy(OrderV1):
    """Another class that says it is version "1"."""

    version = "1"


class Inherits(OrderV1):
    """Inherits OrderV1's ``version`` attribute, which does not make it version "1"."""


def test_a_class_version_is_its_own_version_attribute_else_a_hash_of_its_source() -> None:
    assert version_of(OrderV1) == "1" and version_of(OrderV2) == "2"
    assert len(version_of(Unversioned)) == 12
    assert version_of(Unversioned) != version_of(UnversionedChanged)
    assert version_of(Inherits) not in ("1", "2")


def test_versions_of_one_workflow_must_differ_and_be_workflow_classes() -> None:
    with pytest.raises(InvalidInputError, match="both have version '1'"):
        WorkflowVersions("order", [OrderV1, Copy])
    with pytest.raises(InvalidInputError, match="WorkflowEntrypoint subclass"):
        WorkflowVersions("order", [OrderV1, object])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="no class"):
        WorkflowVersions("order", [])
    versions = WorkflowVersions("order", [OrderV1, OrderV2])
    assert versions.versions == ["1", "2"]
    assert versions.resolve(None, started=False) == ("2", OrderV2)  # a new instance: the newest
    assert versions.resolve("1", started=True) == ("1", OrderV1)
    assert versions.resolve("0", started=True) == ("0", None)  # not here: never run on other code
    assert versions.resolve(None, started=True) == (None, OrderV1)  # started before versions existed


async def test_an_instance_records_its_version_and_new_ones_start_on_the_newest() -> None:
    async with hutch.connect({"order": [OrderV1, OrderV2], "plain": Unversioned}) as client:
        order = await client.workflow("order").create()
        plain = await client.workflow("plain").create()
        await wait_status(order, Status.WAITING)
        detail = await order.describe()
        assert detail.version == "2" and detail.waiting_for_version is None
        assert [s.name for s in detail.steps] == ["reserve stock", "nap", "go"]  # OrderV2's code
        assert (await plain.wait()).status is Status.COMPLETE
        assert (await plain.describe()).version == version_of(Unversioned)


async def test_connect_refuses_two_classes_with_one_version() -> None:
    with pytest.raises(InvalidInputError, match="both have version"):
        await hutch.connect({"order": [OrderV1, Copy]})


async def test_the_testing_toolkit_runs_several_versions() -> None:
    async with TestEnv({"order": [OrderV1, OrderV2]}) as env:
        instance = await env.create("order", params={"sleep": 0})
        await instance.wait_for_status(Status.WAITING)
        assert (await (await env.client.workflow("order").get(instance.id)).describe()).version == "2"


def test_hutch_toml_lists_versions_oldest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hutch.toml"
    config.write_text(
        '[[workflows]]\nname = "order"\n'
        'versions = ["tests.distributed.versioned:OrderV1", "tests.distributed.versioned:OrderV2"]\n'
        '[[workflows]]\nname = "plain"\nclass_name = "tests.test_versions:Unversioned"\n'
    )
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    settings = Settings()
    assert settings.workflow_classes() == {"order": [OrderV1, OrderV2], "plain": Unversioned}
    assert settings.workflows[0].load() is OrderV2  # the newest: what diagrams show
    with pytest.raises(ValidationError, match="either class_name or versions"):
        Settings(workflows=[{"name": "order"}])
    with pytest.raises(ValidationError, match="either class_name or versions"):
        Settings(workflows=[{"name": "order", "class_name": "a:B", "versions": ["a:C"]}])


def test_the_cli_takes_a_workflow_name_twice_as_two_versions() -> None:
    parsed = parse_workflows(
        (
            "order=tests.distributed.versioned:OrderV1",
            "order=tests.distributed.versioned:OrderV2",
            "p=tests.test_versions:Unversioned",
        )
    )
    assert parsed == {"order": [OrderV1, OrderV2], "p": Unversioned}


def test_an_instance_waiting_for_a_version_is_logged_and_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    waits = VersionWaits("w1", {"order": ["2"]}, meter=MeterProvider(metric_readers=[reader]).get_meter("hutch"))
    with caplog.at_level(logging.WARNING, logger="hutch.worker"):
        for _ in range(3):  # redelivered, re-driven, its timer fired again...
            waits.waiting("order", "i1", "1")
        waits.waiting("order", "i2", "1")
    assert [r.getMessage() for r in caplog.records] == [
        "instance order/i1 waits for version '1' of its workflow: worker w1 has only '2'; "
        "it runs once a worker with that version owns its partition",
        "instance order/i2 waits for version '1' of its workflow: worker w1 has only '2'; "
        "it runs once a worker with that version owns its partition",
    ]
    data = reader.get_metrics_data()
    assert data is not None
    [point] = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == VERSION_MISSING_METRIC
        for p in m.data.data_points
    ]
    assert point.value == 2 and dict(point.attributes or {}) == {"workflow": "order", "version": "1"}  # type: ignore[union-attr]
