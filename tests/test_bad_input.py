"""Bad input never crashes the runtime: clear errors for users, dead letters for poison messages.

Covers invalid durations and step configs (raised into ``run()``, catchable), unknown
workflows, duplicate ids, non-serializable params / payloads / results, and messages that
reach a partition but cannot be decoded or validated: those are dead-lettered with the
reason while the partition owner keeps processing its other instances. Each test ends by
running another instance to completion in the same runtime.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import hutch
import msgpack
import pytest
from hutch import (
    BatchTooLarge,
    Client,
    HutchError,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidDuration,
    InvalidInputError,
    NotSerializable,
    StepResultNotSerializable,
    WorkflowEntrypoint,
    WorkflowNotFound,
)
from hutch.broker import EventReceived, InProcessTransport, Outgoing, partition_of
from hutch.broker.envelopes import encode
from hutch.broker.transports.base import REASON_HEADER
from hutch.events import WorkflowEvent
from hutch.serialization import pack
from pydantic import BaseModel

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status, worker_of


class Echo(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload.get("v"))


class WaitsForEvent(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        got = await step.wait_for_event("input", "data", timeout="1 minute")
        return got.payload


async def assert_runtime_still_works(client: Client) -> None:
    """The runtime that just rejected something creates and completes another instance."""
    instance = await client.workflow("echo").create(params={"v": "still alive"})
    final = await instance.wait(timeout=10)
    assert final.status == "complete" and final.output == "still alive", final


# --------------------------------------------------------------------------- durations and configs

BAD_DURATIONS: list[tuple[str, Any, str]] = [
    ("word", "soon", "'soon' is not understood"),
    ("unknown unit", "3 fortnights", "'3 fortnights' is not understood"),
    ("nan", math.nan, "nan must be a finite, non-negative amount of time"),
    ("bool", True, "True is a bool"),
    ("none", None, "has type NoneType"),
]


class BadDurations(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        caught: dict[str, str] = {}
        for label, value, _ in BAD_DURATIONS:
            try:
                await step.sleep(f"sleep {label}", value)
            except InvalidDuration as exc:
                caught[f"sleep {label}"] = str(exc)
        try:
            await step.wait_for_event("wait", "data", timeout="eventually")
        except InvalidDuration as exc:
            caught["wait"] = str(exc)
        # A negative sleep completes at once (tests/test_cloudflare_differences.py); a negative timeout is an error.
        try:
            await step.wait_for_event("wait negative", "data", timeout=-1)
        except InvalidDuration as exc:
            caught["wait negative"] = str(exc)
        for label, when in (("naive", datetime(2030, 1, 1)), ("text", "tomorrow")):
            try:
                await step.sleep_until(f"until {label}", when)
            except InvalidDuration as exc:
                caught[f"until {label}"] = str(exc)
        await step.sleep("fine", "10 milliseconds")
        return caught


async def test_invalid_durations_raise_into_run_and_are_catchable(make_client: MakeClient) -> None:
    client = await make_client({"durations": BadDurations, "echo": Echo})
    instance = await client.workflow("durations").create()
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    caught = final.output
    for label, _, expected in BAD_DURATIONS:
        assert expected in caught[f"sleep {label}"], (label, caught[f"sleep {label}"])
    assert "'eventually' is not understood" in caught["wait"]
    assert "-1 must be a finite, non-negative amount of time" in caught["wait negative"]
    assert "must be timezone-aware" in caught["until naive"] and "'until naive'" in caught["until naive"]
    assert "'tomorrow' must be an aware datetime or epoch seconds" in caught["until text"]
    assert [s.name for s in (await instance.describe()).steps] == ["fine"], "rejected sleeps are not recorded"
    await assert_runtime_still_works(client)


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"retries": {"delay": "whenever"}}, "retries.delay: Value error, duration 'whenever' is not understood"),
    ({"timeout": 0}, "timeout: Value error, timeout must be positive"),
    ({"retries": {"backoff": "random"}}, "retries.backoff"),
    ({"retries": {"limit": -1}}, "retries.limit"),
    ({"retry": {"limit": 1}}, "retry: Extra inputs are not permitted"),
]


class BadConfigs(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        caught = []
        for config, _ in BAD_CONFIGS:
            try:
                await step.do("configured", lambda: 1, config=config)
            except InvalidInputError as exc:
                caught.append(str(exc))
        try:
            await step.wait_for_event("untyped", "", timeout=1)
        except InvalidInputError as exc:
            caught.append(str(exc))
        # The rejected calls consumed no step count: this is 'configured'#1.
        return {"caught": caught, "ok": await step.do("configured", lambda ctx: ctx.step.count)}


class UncaughtBadConfig(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        await step.do("configured", lambda: 1, config={"timeout": "forever"})


async def test_invalid_step_configs_are_input_errors_naming_the_field(make_client: MakeClient) -> None:
    client = await make_client({"configs": BadConfigs, "uncaught": UncaughtBadConfig, "echo": Echo})
    final = await (await client.workflow("configs").create()).wait(timeout=10)
    assert final.status == "complete", final
    caught = final.output["caught"]
    assert len(caught) == len(BAD_CONFIGS) + 1
    for message, (config, expected) in zip(caught[:-1], BAD_CONFIGS, strict=True):
        assert message.startswith(f"invalid step config {config!r}: ") and expected in message
    assert "wait_for_event 'untyped': event type must be a non-empty string" == caught[-1]
    assert final.output["ok"] == 1

    final = await (await client.workflow("uncaught").create()).wait(timeout=10)
    assert final.status == "errored" and final.error is not None
    assert final.error.name == "InvalidInputError" and "'forever' is not understood" in final.error.message
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- workflows and ids


async def test_unknown_workflows_raise_workflow_not_found(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo})
    with pytest.raises(WorkflowNotFound) as info:
        client.workflow("nope")
    err = info.value
    assert isinstance(err, HutchError) and isinstance(err, KeyError)
    assert str(err) == "workflow 'nope' is not registered" and err.workflow == "nope"
    with pytest.raises(InvalidInputError, match="must be a WorkflowEntrypoint subclass"):
        await client_with_bad_class()
    await assert_runtime_still_works(client)


async def client_with_bad_class() -> None:
    await hutch.connect({"bad": dict})  # type: ignore[dict-item]


async def test_duplicate_ids_are_rejected_and_the_original_is_untouched(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo, "other": Echo})
    echo = client.workflow("echo")
    iid = unique("dup")
    first = await echo.create(id=iid, params={"v": "first"})
    assert (await first.wait(timeout=10)).output == "first"

    with pytest.raises(InstanceAlreadyExists) as info:
        await echo.create(id=iid, params={"v": "second"})
    err = info.value
    assert (err.workflow, err.instance_id) == ("echo", iid)
    assert f"instance {iid!r} of workflow 'echo' already exists" in str(err) and "create_batch" in str(err)
    detail = await first.describe()
    assert detail.params == {"v": "first"} and [s.name for s in detail.steps] == ["echo"]
    assert (await first.status()).output == "first"

    # create_batch skips existing ids and creates the rest; a repeated id within one batch is an error.
    new_id = unique("new")
    created = await echo.create_batch([{"id": iid, "params": {"v": "x"}}, {"id": new_id, "params": {"v": "y"}}])
    assert [i.id for i in created] == [new_id]
    assert (await created[0].wait(timeout=10)).output == "y"
    twice = unique("twice")
    with pytest.raises(InvalidInputError, match=f"instance id {twice!r} appears twice in one batch"):
        await echo.create_batch([{"id": twice}, {"id": twice}])
    with pytest.raises(InstanceNotFound):
        await echo.get(twice)
    with pytest.raises(BatchTooLarge, match="create_batch got 101 instances; the limit is 100"):
        await echo.create_batch([{"params": {"v": i}} for i in range(101)])
    with pytest.raises(InvalidInputError, match=r"instance options \['parms'\] are not known"):
        await echo.create_batch([{"id": unique("typo"), "parms": {}}])

    # The same id under another workflow is a different instance.
    same_id = await client.workflow("other").create(id=iid, params={"v": "other"})
    assert (await same_id.wait(timeout=10)).output == "other"
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- serialization


class Model(BaseModel):
    sku: str
    qty: int


@pytest.mark.parametrize(
    ("params", "offending"),
    [
        ({"x": object()}, "type object is not serializable"),
        ({"tags": {"a", "b"}}, "type set is not serializable"),
        ({"when": datetime(2030, 1, 1)}, "type datetime is not serializable"),
        ({1: "int key"}, "int is not allowed for map key"),
    ],
    ids=["object", "set", "datetime", "int-key"],
)
async def test_non_serializable_params_are_rejected_and_nothing_is_stored(
    make_client: MakeClient, params: Any, offending: str
) -> None:
    client = await make_client({"echo": Echo})
    iid = unique("ns")
    with pytest.raises(NotSerializable) as info:
        await client.workflow("echo").create(id=iid, params=params)
    message = str(info.value)
    assert message.startswith(f"params of instance {iid!r} is not serializable") and offending in message
    assert "dicts with str keys, or a pydantic model" in message
    with pytest.raises(InstanceNotFound):
        await client.workflow("echo").get(iid)
    await assert_runtime_still_works(client)


async def test_pydantic_params_are_stored_as_their_dump(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo})
    instance = await client.workflow("echo").create(params={"v": Model(sku="a-1", qty=2)})
    assert (await instance.wait(timeout=10)).output == {"sku": "a-1", "qty": 2}


class BadResult(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: Any) -> Any:
        try:
            await step.do("returns object", lambda: object(), config={"retries": {"limit": 3, "delay": 0.01}})
        except StepResultNotSerializable as exc:
            return str(exc)
        return "not reached"


async def test_a_non_serializable_step_result_fails_once_and_is_catchable(make_client: MakeClient) -> None:
    client = await make_client({"bad": BadResult, "waits": WaitsForEvent, "echo": Echo})
    instance = await client.workflow("bad").create()
    final = await instance.wait(timeout=10)
    assert final.status == "complete", final
    assert "step 'returns object'#1 result is not serializable: type object is not serializable" in final.output
    (step,) = (await instance.describe()).steps
    assert len(step.attempts) == 1 and step.error is not None and step.error.name == "StepResultNotSerializable"

    waiting = await client.workflow("waits").create()
    await wait_status(waiting, "waiting")
    with pytest.raises(NotSerializable, match="payload of event 'data' is not serializable: type object"):
        await waiting.send_event(type="data", payload=object())
    for bad_type in ("", "t" * 101, 7):
        with pytest.raises(InvalidInputError, match="event type"):
            await waiting.send_event(type=bad_type, payload=None)  # type: ignore[arg-type]
    await waiting.send_event(type="data", payload="good")
    assert (await waiting.wait(timeout=10)).output == "good"
    await assert_runtime_still_works(client)


# --------------------------------------------------------------------------- poison messages


async def test_poison_messages_are_dead_lettered_and_the_partition_keeps_working(make_client: MakeClient) -> None:
    client = await make_client({"echo": Echo, "waits": WaitsForEvent})
    worker = worker_of(client)
    transport = worker.transport

    done = await client.workflow("echo").create(params={"v": "committed"})
    assert (await done.wait(timeout=10)).output == "committed"
    waiting = await client.workflow("waits").create()
    await wait_status(waiting, "waiting")
    partition = partition_of("waits", waiting.id, transport.partitions)
    before = await done.describe()

    event = EventReceived(
        workflow="waits", instance_id=waiting.id, event_type="data", payload=pack("after poison"), sent_ms=1
    )
    poison = [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # a truncated array
        msgpack.packb({"kind": "bogus", "workflow": "w", "instance_id": "i"}),
        msgpack.packb({"kind": "created", "workflow": "waits"}),  # instance_id missing
        msgpack.packb([1, 2, 3]),
        encode(EventReceived(workflow="waits", instance_id="ghost", event_type="data", payload=b"\xc0", sent_ms=1)),
    ]
    # The poison shares a partition (and a batch) with a good message for a waiting instance.
    await transport.publish([*(Outgoing(partition, body) for body in poison), Outgoing(partition, encode(event))])

    final = await waiting.wait(timeout=10)
    assert final.status == "complete" and final.output == "after poison"

    async def all_dead() -> list[Any]:
        letters = await transport.dead_letters()
        return letters if len(letters) == len(poison) else []

    letters = await eventually(all_dead)
    assert [d.body for d in letters] == poison
    assert all(d.partition == partition and d.headers[REASON_HEADER] == d.reason for d in letters)
    reasons = [d.reason for d in letters]
    assert reasons[0].startswith("undecodable body") and reasons[1].startswith("undecodable body")
    assert reasons[2].startswith("invalid message: ") and "bogus" in reasons[2]
    assert reasons[3].startswith("invalid message: created.instance_id")
    assert reasons[4].startswith("invalid message: ")
    assert reasons[5] == "instance 'ghost' of workflow 'waits' does not exist (expired or never created)"

    async def settled() -> bool:
        if isinstance(transport, InProcessTransport):
            return transport.depth(partition) == (0, 0)
        return await transport.ready_count(partition) == 0

    await eventually(settled)  # nothing is left unacknowledged (acks follow commits, so poll)

    # Nothing already committed was lost or changed.
    after = await done.describe()
    assert after == before and after.output == "committed"
    await assert_runtime_still_works(client)
    assert len(await transport.dead_letters()) == len(poison)
