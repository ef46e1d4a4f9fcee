"""Limits (CLOUDFLARE_SEMANTICS rules 20-21, SPEC §2): each violation is a clear, catchable error.

Every error is a :class:`HutchError` whose message names the bad value and the rule; nothing
is stored for a rejected request; and the runtime keeps working afterwards, which each test
proves by running another instance to completion in the same runtime.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hutch
import pytest
from hutch import (
    Client,
    HutchError,
    InstanceNotFound,
    InvalidInputError,
    InvalidInstanceId,
    InvalidStepName,
    InvalidWorkflowName,
    Limits,
    PayloadTooLarge,
    SleepTooLong,
    StepLimitExceeded,
    StepResultTooLarge,
    WorkflowEntrypoint,
)
from hutch.config import INSTANCE_ID_PATTERN
from hutch.events import WorkflowEvent
from hutch.settings import Settings
from pydantic import ValidationError

from tests.conftest import MakeClient
from tests.helpers import unique, wait_status

MIB = 1024 * 1024
BIN32_HEADER = 5  # msgpack encodes bytes of 64 KiB or more as 0xc6 + a 4-byte length


class Echo(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload.get("v"))


async def assert_runtime_still_works(client: Client) -> None:
    """The runtime that just rejected something creates and completes another instance."""
    instance = await client.workflow("echo").create(params={"v": "still alive"})
    final = await instance.wait(timeout=10)
    assert final.status == "complete" and final.output == "still alive", final


async def assert_not_stored(client: Client, workflow: str, instance_id: str) -> None:
    with pytest.raises(InstanceNotFound):
        await client.workflow(workflow).get(instance_id)
    assert instance_id not in (await client.workflow(workflow).list()).instances


# --------------------------------------------------------------------------- instance ids


@pytest.mark.parametrize(
    "bad_id",
    ["", "has space", "-leading-dash", "dot.ted", "slash/ed", "ümlaut", "a" * 101, 42],
    ids=["empty", "space", "leading-dash", "dot", "slash", "non-ascii", "101-chars", "not-a-str"],
)
async def test_invalid_instance_ids_are_rejected_before_anything_is_stored(
    make_client: MakeClient, bad_id: Any
) -> None:
    client = await make_client({"echo": Echo})
    echo = client.workflow("echo")
    with pytest.raises(InvalidInstanceId) as info:
        await echo.create(id=bad_id, params={"v": 1})
    err = info.value
    assert isinstance(err, HutchError) and isinstance(err, ValueError)
    message = str(err)
    if isinstance(bad_id, str) and len(bad_id) > 100:
        assert "101 characters" in message and "the limit is 100" in message
        assert bad_id[:20] in message
    else:
        assert repr(bad_id) in message and INSTANCE_ID_PATTERN in message
    with pytest.raises(InvalidInstanceId):
        await echo.get(bad_id)
    assert (await echo.list()).instances == []
    await assert_runtime_still_works(client)


async def test_instance_ids_at_the_limit_are_accepted(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo})
    for iid in ("_" + "a" * 99, "0-x_Y", "a"):
        assert len(iid) <= 100
        instance = await client.workflow("echo").create(id=iid, params={"v": iid})
        assert (await instance.wait(timeout=10)).output == iid


async def test_a_configured_instance_id_limit_is_enforced(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo}, limits=Limits(max_instance_id_length=8))
    with pytest.raises(InvalidInstanceId, match="is 9 characters; the limit is 8"):
        await client.workflow("echo").create(id="a" * 9)
    await client.workflow("echo").create(id="a" * 8)
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- workflow names


async def test_workflow_names_over_64_characters_are_rejected(make_client: MakeClient) -> None:
    with pytest.raises(InvalidWorkflowName, match="is 65 characters; the limit is 64"):
        await hutch.connect({"w" * 65: Echo})
    with pytest.raises(InvalidWorkflowName, match=r"must match"):
        await hutch.connect({"has space": Echo})

    longest = "w" * 64
    client = await make_client({"echo": Echo, longest: Echo})
    instance = await client.workflow(longest).create(params={"v": 64})
    assert (await instance.wait(timeout=10)).output == 64
    with pytest.raises(InvalidWorkflowName) as info:
        client.workflow("w" * 65)
    assert "w" * 20 in str(info.value)
    with pytest.raises(InvalidWorkflowName, match=r"'bad/name' must match"):
        client.workflow("bad/name")
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- step names


class StepNames(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        caught = []
        for name in (event.payload["name"], ""):
            try:
                await step.do(name, lambda: "ran")
            except InvalidStepName as exc:
                caught.append(str(exc))
        fine = await step.do("s" * 256, lambda: "ran")
        return {"caught": caught, "fine": fine}


class LongStepNameUncaught(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await step.do("ok", lambda: 1)
        await step.sleep("n" * 257, 1)


async def test_step_names_over_256_characters_raise_into_run(make_client: MakeClient) -> None:
    client = await make_client({"names": StepNames, "uncaught": LongStepNameUncaught, "echo": Echo})
    instance = await client.workflow("names").create(params={"name": "n" * 257})
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    too_long, empty = final.output["caught"]
    assert "is 257 characters; the limit is 256" in too_long and "n" * 30 in too_long
    assert "must be a non-empty string" in empty
    assert final.output["fine"] == "ran"
    steps = (await instance.describe()).steps
    assert [s.name for s in steps] == ["s" * 256], "rejected steps leave no trace in history"

    uncaught = await client.workflow("uncaught").create()
    final = await uncaught.wait(timeout=10)
    assert final.status == "errored"
    assert final.error is not None and final.error.name == "InvalidStepName"
    assert "257 characters" in final.error.message
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- payload sizes


class WaitsForEvent(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        got = await step.wait_for_event("input", "data", timeout="1 minute")
        return got.payload


async def test_params_over_1_mib_are_rejected_up_front_and_nothing_is_stored(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo})
    echo = client.workflow("echo")
    iid = unique("big")
    with pytest.raises(PayloadTooLarge) as info:
        await echo.create(id=iid, params={"v": b"x" * MIB})
    assert f"params of instance {iid!r}" in str(info.value) and f"the limit is {MIB} bytes" in str(info.value)
    await assert_not_stored(client, "echo", iid)

    # One oversized item fails the whole batch before anything is written.
    ok_id, big_id = unique("ok"), unique("big")
    with pytest.raises(PayloadTooLarge):
        await echo.create_batch([{"id": ok_id, "params": {"v": 1}}, {"id": big_id, "params": b"x" * (MIB + 1)}])
    await assert_not_stored(client, "echo", ok_id)
    await assert_not_stored(client, "echo", big_id)
    await assert_runtime_still_works(client)


async def test_params_of_exactly_1_mib_are_accepted(make_client: MakeClient) -> None:
    client = await make_client({"raw": RawParams, "echo": Echo})
    instance = await client.workflow("raw").create(params=b"x" * (MIB - BIN32_HEADER))
    final = await instance.wait(timeout=10)
    assert final.status == "complete" and final.output == MIB - BIN32_HEADER
    with pytest.raises(PayloadTooLarge, match=f"{MIB + 1} bytes encoded"):
        await client.workflow("raw").create(params=b"x" * (MIB - BIN32_HEADER + 1))


class RawParams(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return len(event.payload)


async def test_event_payloads_over_1_mib_are_rejected_and_the_wait_keeps_waiting(make_client: MakeClient) -> None:
    client = await make_client({"waits": WaitsForEvent, "echo": Echo})
    instance = await client.workflow("waits").create()
    await wait_status(instance, "waiting")
    with pytest.raises(PayloadTooLarge) as info:
        await instance.send_event(type="data", payload="x" * MIB)
    assert "payload of event 'data'" in str(info.value) and f"the limit is {MIB} bytes" in str(info.value)
    assert (await instance.status()).status == "waiting", "the rejected event was not delivered"

    await instance.send_event(type="data", payload={"small": True})
    final = await instance.wait(timeout=10)
    assert final.status == "complete" and final.output == {"small": True}
    await assert_runtime_still_works(client)


class BigResult(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        try:
            await step.do("huge", lambda: b"x" * MIB, config={"retries": {"limit": 3, "delay": 0.01}})
        except StepResultTooLarge as exc:
            return {"caught": type(exc).__name__, "message": str(exc)}
        return "not reached"


class BigOutput(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await step.do("small", lambda: 1)
        return "x" * MIB


async def test_step_results_over_1_mib_fail_the_step_once_and_are_catchable(make_client: MakeClient) -> None:
    client = await make_client({"big": BigResult, "echo": Echo})
    instance = await client.workflow("big").create()
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output["caught"] == "StepResultTooLarge"
    message = final.output["message"]
    assert "step 'huge'#1 result is" in message and f"the limit is {MIB} bytes" in message
    (huge,) = (await instance.describe()).steps
    assert len(huge.attempts) == 1, "too large is not retried"
    assert huge.success is False and huge.output is None
    assert huge.error is not None and huge.error.name == "StepResultTooLarge"
    await assert_runtime_still_works(client)


async def test_an_output_over_1_mib_errors_the_instance(make_client: MakeClient) -> None:
    client = await make_client({"bigout": BigOutput, "echo": Echo})
    instance = await client.workflow("bigout").create()
    final = await instance.wait(timeout=10)
    assert final.status == "errored" and final.output is None
    assert final.error is not None and final.error.name == "PayloadTooLarge"
    assert f"output of instance {instance.id!r}" in final.error.message
    assert f"the limit is {MIB} bytes" in final.error.message
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- step count


class ManySteps(WorkflowEntrypoint):
    """Five steps with sleeps in between (sleeps do not count), then a sixth that hits the limit."""

    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        total = 0
        for i in range(5):
            total += await step.do("inc", lambda: 1)
            if i % 2 == 0:
                await step.sleep(f"pause {i}", 0.01)
        try:
            await step.do("sixth", lambda: 1)
        except StepLimitExceeded as exc:
            caught = str(exc)
        # Still over the limit: an uncaught sixth step errors the instance.
        if event.payload.get("reraise"):
            await step.do("seventh", lambda: 1)
        return {"total": total, "caught": caught}


async def test_the_sixth_step_fails_when_max_steps_is_5_and_sleeps_do_not_count(make_client: MakeClient) -> None:
    client = await make_client({"many": ManySteps, "echo": Echo}, limits=Limits(max_steps=5))
    instance = await client.workflow("many").create()
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert final.output == {"total": 5, "caught": "The limit of 5 steps has been reached"}
    kinds = [s.type for s in (await instance.describe()).steps]
    assert kinds.count("step") == 5 and kinds.count("sleep") == 3

    uncaught = await client.workflow("many").create(params={"reraise": True})
    final = await uncaught.wait(timeout=10)
    assert final.status == "errored"
    assert final.error is not None
    assert (final.error.name, final.error.message) == ("StepLimitExceeded", "The limit of 5 steps has been reached")
    assert issubclass(StepLimitExceeded, HutchError)
    await assert_runtime_still_works(client)


async def test_limits_are_settings_from_hutch_toml_and_hutch_limits_variables(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hutch.toml"
    config.write_text('[limits]\nmax_steps = 5\nretention = "7 days"\n')
    monkeypatch.setenv("HUTCH_CONFIG", str(config))
    monkeypatch.setenv("HUTCH_LIMITS__MAX_SLEEP", "3600")  # seconds, as an environment variable gives them
    monkeypatch.setenv("HUTCH_LIMITS__MAX_PAYLOAD_BYTES", "4096")
    settings = Settings(redis_url="", amqp_url="")

    assert settings.limits == Limits(
        max_steps=5, retention=timedelta(days=7), max_sleep=timedelta(hours=1), max_payload_bytes=4096
    )
    # No limits= argument: the runtime enforces the settings' limits, as hutch worker and hutch dev do.
    client = await make_client({"many": ManySteps, "echo": Echo}, settings=settings)
    final = await (await client.workflow("many").create()).wait(timeout=10)
    assert final.output == {"total": 5, "caught": "The limit of 5 steps has been reached"}, final
    with pytest.raises(PayloadTooLarge):
        await client.workflow("echo").create(params={"v": "x" * 5000})


def test_invalid_limit_settings_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_LIMITS__MAX_STEPS", "0")
    with pytest.raises(ValidationError, match=r"limits\.max_steps"):
        Settings()
    monkeypatch.setenv("HUTCH_LIMITS__MAX_STEPS", "5")
    monkeypatch.setenv("HUTCH_LIMITS__RETENTION", "forever")
    with pytest.raises(ValidationError, match="duration 'forever' is not understood"):
        Settings()


# --------------------------------------------------------------------------- sleeps


class LongSleeps(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        caught = []
        far = datetime.now(UTC) + timedelta(days=400)
        for attempt in (
            lambda: step.sleep("366 days", "366 days"),
            lambda: step.sleep("timedelta", timedelta(days=365, seconds=1)),
            lambda: step.sleep_until("far", far),
            lambda: step.wait_for_event("slow approval", "approval", timeout="2 years"),
        ):
            try:
                await attempt()
            except SleepTooLong as exc:
                caught.append(str(exc))
        await step.sleep("just under", timedelta(seconds=0))
        return caught


async def test_sleeps_and_waits_over_365_days_raise_sleep_too_long(make_client: MakeClient) -> None:
    client = await make_client({"long": LongSleeps, "echo": Echo})
    instance = await client.workflow("long").create()
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    caught = final.output
    assert len(caught) == 4
    limit_s = 365 * 86400
    for message, name in zip(caught, ["366 days", "timedelta", "far", "slow approval"], strict=True):
        assert message.startswith(f"{name!r} would wait") and f"the limit is {limit_s} s" in message
    assert [s.name for s in (await instance.describe()).steps] == ["just under"]
    await assert_runtime_still_works(client)


class ConfiguredSleep(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await step.sleep("ok", timedelta(hours=1) - timedelta(hours=1))
        await step.sleep("two hours", "2 hours")


async def test_a_configured_sleep_limit_is_enforced_and_named(make_client: MakeClient) -> None:
    client = await make_client({"sleepy": ConfiguredSleep, "echo": Echo}, limits=Limits(max_sleep=timedelta(hours=1)))
    final = await (await client.workflow("sleepy").create()).wait(timeout=10)
    assert final.status == "errored" and final.error is not None
    assert final.error.name == "SleepTooLong"
    assert "'two hours' would wait 7200 s; the limit is 3600 s" in final.error.message
    assert "Limits.max_sleep" in final.error.message, "the message names the setting that sets the limit"
    await assert_runtime_still_works(client)


def test_limit_errors_are_input_errors() -> None:
    for cls in (
        InvalidInstanceId,
        InvalidWorkflowName,
        InvalidStepName,
        PayloadTooLarge,
        SleepTooLong,
        StepLimitExceeded,
    ):
        assert issubclass(cls, InvalidInputError) and issubclass(cls, HutchError) and issubclass(cls, ValueError)
    assert issubclass(StepResultTooLarge, HutchError)
