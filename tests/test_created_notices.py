"""Creation notices: the owner starts a new instance on the create's Redis announcement.

A start message waits for a quorum queue's replicated write before it is delivered; create.lua
also publishes what it created on its partition's sharded channel ``<namespace>:{pN}:created``, and
a distributed worker, subscribed to the channels of the partitions it owns, starts them from that at
once. The start message stays the durable path: a notice only ever saves time, and the message that
trails it is acknowledged with no further work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hutch import Client, Settings, Status, WorkflowEntrypoint
from hutch.broker import Outgoing
from hutch.broker.envelopes import InstanceCreated, encode
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers import Worker
from hutch.consumers.runtime import start_distributed
from hutch.consumers.settlement import ACK, REQUEUE
from hutch.errors import InstanceNotFound
from hutch.serialization import pack
from hutch.store.announcements import Created, created_instances
from hutch.store.redis import ANNOUNCED_BLOB_MAX, RedisStore, meta_from_fields
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.conftest import drop_namespace
from tests.helpers import count_loads, eventually, record_settles, unique

pytestmark = [pytest.mark.redis]

RAN: dict[str, int] = {}  # instance id -> executions of its one step


class OneStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def work() -> str:
            RAN[event.instance_id] = RAN.get(event.instance_id, 0) + 1
            return "done"

        return await step.do("work", work)


def _fields(iid: str, created: int, params: Any) -> dict[str, Any]:
    """The meta fields a client writes at creation."""
    return {
        "wf": "one",
        "id": iid,
        "status": "queued",
        "seq": 0,
        "run": 0,
        "params": pack(params),
        "created": created,
        "trigger": pack({"source": "api"}),
    }


async def _next_announcement(pubsub: PubSub) -> tuple[str, list[Created]]:
    """The channel and the instances of the next creation notice."""
    async with asyncio.timeout(10):
        while True:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                return message["channel"].decode(), created_instances(message["data"])


# ---------------------------------------------------------------------------- the announcement
async def test_the_create_script_announces_only_what_it_created(redis_url: str) -> None:
    namespace = unique("test")
    redis = Redis.from_url(redis_url)
    store = RedisStore(redis, 4, namespace=namespace, announce_created=True)
    quiet = RedisStore(redis, 4, namespace=namespace)  # an embedded-style store announces nothing
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(*(store.keys.created_channel(p) for p in range(4)))
    try:
        small, large, also = unique("small"), unique("large"), unique("also")
        rows = [
            (1, "one", small, 1000, _fields(small, 1000, {"n": 1})),
            (2, "one", large, 1001, _fields(large, 1001, {"blob": "x" * ANNOUNCED_BLOB_MAX})),
            (1, "one", also, 1001, _fields(also, 1001, None)),
        ]
        assert await store.create_many(rows) == [True, True, True]
        # One message per partition, on the partition's own channel.
        announced = {}
        for _ in range(2):
            channel, created = await _next_announcement(pubsub)
            announced[channel] = [(c.workflow, c.instance_id, c.meta()) for c in created]
        # The small ones carry the meta a load returns (their owner needs no read); the large one
        # only names itself.
        assert announced == {
            store.keys.created_channel(1): [
                ("one", small, await store.read_meta(1, "one", small)),
                ("one", also, await store.read_meta(1, "one", also)),
            ],
            store.keys.created_channel(2): [("one", large, None)],
        }

        fresh, unheard = unique("fresh"), unique("unheard")
        assert await quiet.create(3, "one", unheard, 1002, _fields(unheard, 1002, None))
        assert await store.create_many(
            [(1, "one", small, 1003, _fields(small, 1003, None)), (3, "one", fresh, 1004, _fields(fresh, 1004, None))]
        ) == [False, True]
        # The next message names only the instance created: not the existing id, not the quiet store's.
        channel, created = await _next_announcement(pubsub)
        assert (channel, [c.instance_id for c in created]) == (store.keys.created_channel(3), [fresh])
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
        await drop_namespace(namespace)


async def test_an_instance_created_with_events_is_announced_by_member_only(redis_url: str) -> None:
    # Its owner must load it to see its events: a notice carrying its meta would start it without them.
    namespace = unique("test")
    redis = Redis.from_url(redis_url)
    store = RedisStore(redis, 4, namespace=namespace, announce_created=True)
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(store.keys.created_channel(1))
    try:
        signalled, plain = unique("signalled"), unique("plain")
        rows = [
            (1, "one", signalled, 1000, _fields(signalled, 1000, None)),
            (1, "one", plain, 1000, _fields(plain, 1000, None)),
        ]
        assert await store.create_many(rows, events=[[b"an event"], []]) == [True, True]

        _, created = await _next_announcement(pubsub)
        assert [(c.instance_id, c.meta()) for c in created] == [
            (signalled, None),
            (plain, await store.read_meta(1, "one", plain)),
        ]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
        await drop_namespace(namespace)


def test_a_truncated_announcement_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        created_instances(b"1 1000 9 2\none:i-1ab")  # promises a 9-byte member and a 2-byte part
    with pytest.raises(ValueError):
        created_instances(b"1 1000 9")  # no end of header


# ---------------------------------------------------------------------------- the owner
@pytest.fixture
async def owner(redis_url: str, amqp_url: str) -> AsyncIterator[tuple[Client, Worker]]:
    """A distributed worker (and its colocated client) on the real servers, in a namespace of its own."""
    namespace = unique("test")
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=4, heartbeat_s=0.2)
    client, worker = await start_distributed(
        {"one": OneStep}, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
    )
    try:
        yield client, worker
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()
        await client.close()
        await drop_namespace(namespace)


async def _start_message_settled(worker: Worker, partition: int, iid: str, fields: dict[str, Any]) -> list[Any]:
    """Publish the instance's start message now; how the owner settled it (outcomes until the ack)."""
    settled = record_settles(worker)
    message = InstanceCreated(workflow="one", instance_id=iid, fields=fields)
    await worker.transport.publish([Outgoing(partition, encode(message))])

    async def acked() -> bool:
        return (message, ACK) in settled

    await eventually(acked)
    return [outcome for m, outcome in settled if m == message]


@pytest.mark.rabbitmq
async def test_the_notice_alone_starts_an_owned_instance_and_its_message_then_costs_nothing(
    owner: tuple[Client, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    client, worker = owner
    loaded = count_loads(client)
    iid = unique("noticed")
    partition = client._partition("one", iid)
    fields = _fields(iid, client.clock.now_ms(), None)
    # Created in Redis with no start message at all: only the notice can start it.
    assert await client._store.create(partition, "one", iid, fields["created"], fields)
    instance = await client.workflow("one").get(iid)
    final = await instance.wait(timeout=10)
    assert (final.status, final.output, RAN[iid]) == (Status.COMPLETE, "done", 1)

    # The start message arriving now (as it would, a broker round trip later) is acknowledged as
    # done: no read, no transition refused by the sequence check, the step not run again.
    caplog.set_level(logging.DEBUG, logger="hutch.worker")
    assert await _start_message_settled(worker, partition, iid, fields) == [ACK]
    assert loaded == []  # the notice carried the instance: it never read it either
    assert not [r for r in caplog.records if "commit rejected" in r.getMessage()]
    assert RAN[iid] == 1 and (await instance.status()).status == Status.COMPLETE


@pytest.mark.rabbitmq
async def test_a_large_instance_is_noticed_by_name_and_read_once(owner: tuple[Client, Worker]) -> None:
    client, _ = owner
    loaded = count_loads(client)
    iid = unique("large")
    partition = client._partition("one", iid)
    fields = _fields(iid, client.clock.now_ms(), {"blob": "x" * ANNOUNCED_BLOB_MAX})
    assert await client._store.create(partition, "one", iid, fields["created"], fields)
    final = await (await client.workflow("one").get(iid)).wait(timeout=10)
    assert (final.status, RAN[iid]) == (Status.COMPLETE, 1)
    assert loaded == [(partition, "one", iid)]


@pytest.mark.rabbitmq
async def test_a_notice_that_lost_to_the_start_message_is_dropped_quietly(
    owner: tuple[Client, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    client, worker = owner
    orchestrator = worker.orchestrator
    settled = record_settles(worker)
    instance = await client.workflow("one").create()
    assert (await instance.wait(timeout=10)).status == Status.COMPLETE

    async def start_message_acked() -> bool:
        return [(m.instance_id, outcome) for m, outcome in settled] == [(instance.id, ACK)]

    await eventually(start_message_acked)
    partition = client._partition("one", instance.id)
    meta = await client._store.read_meta(partition, "one", instance.id)
    assert meta is not None
    created = meta_from_fields(_fields(instance.id, meta["created"], None)) | {"params": meta["params"]}

    # As if another worker had started it: this one has no memory of the start, and a notice
    # describing the instance as created arrives late. Its commit is refused (the instance moved
    # on); the notice is dropped, not retried, and not worth a warning.
    orchestrator._started.clear()  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG, logger="hutch.instances")  # where rejected commits are logged
    commits = orchestrator.commits
    orchestrator.notice_created(partition, "one", instance.id, created)
    assert not orchestrator._inbox.empty()  # type: ignore[attr-defined]
    await orchestrator.settle()
    assert orchestrator._inbox.empty()  # type: ignore[attr-defined]
    assert orchestrator.commits == commits + 1  # the one refused attempt
    rejected = [r for r in caplog.records if "commit rejected" in r.getMessage()]
    assert [r.levelno for r in rejected] == [logging.DEBUG]
    assert RAN[instance.id] == 1 and (await instance.status()).output == "done"

    # A notice for a partition this worker does not own is not even queued.
    orchestrator.notice_created(worker.transport.partitions + 1, "one", instance.id, created)
    assert orchestrator._inbox.empty()  # type: ignore[attr-defined]


@pytest.mark.rabbitmq
async def test_a_start_message_the_owner_forgot_it_had_started_is_settled_by_a_reload(
    owner: tuple[Client, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    client, worker = owner
    iid = unique("forgotten")
    partition = client._partition("one", iid)
    fields = _fields(iid, client.clock.now_ms(), None)
    assert await client._store.create(partition, "one", iid, fields["created"], fields)
    instance = await client.workflow("one").get(iid)
    assert (await instance.wait(timeout=10)).status == Status.COMPLETE

    # Its memory of starts is bounded (or the worker restarted): the trailing start message is
    # tried, refused by the sequence check, redelivered, and the reloaded instance acks it.
    worker.orchestrator._started.clear()  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG, logger="hutch.worker")
    assert await _start_message_settled(worker, partition, iid, fields) == [REQUEUE, ACK]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert RAN[iid] == 1 and (await instance.status()).output == "done"


# ---------------------------------------------------------------------------- a failed start message
def _broker_fails(client: Client, error: BaseException, *, once_started: bool) -> None:
    """Make the client's start-message publish fail, optionally only once the owner started the instance."""

    async def created(items: Any) -> None:
        if once_started:
            for item in items:

                async def started(item: Any = item) -> bool:
                    partition = client._partition(item.workflow, item.instance_id)
                    meta = await client._store.read_meta(partition, item.workflow, item.instance_id)
                    return meta is not None and meta["seq"] > 0

                await eventually(started)
        raise error

    client._dispatcher.created = created  # type: ignore[method-assign]


@pytest.mark.rabbitmq
async def test_a_create_whose_start_message_failed_keeps_the_instance_its_owner_started(
    owner: tuple[Client, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = owner
    _broker_fails(client, ConnectionError("broker unreachable"), once_started=True)

    instance = await client.workflow("one").create()  # it runs: the call succeeded

    assert (await instance.wait(timeout=10)).output == "done" and RAN[instance.id] == 1
    assert [r.getMessage() for r in caplog.records if r.name == "hutch.client"] == [
        "1 instance(s) started from the create's announcement, but their start messages failed: "
        "ConnectionError('broker unreachable')"
    ]


@pytest.mark.rabbitmq
async def test_a_cancelled_create_stays_cancelled_even_if_its_instance_started(owner: tuple[Client, Worker]) -> None:
    client, _ = owner
    _broker_fails(client, asyncio.CancelledError(), once_started=True)
    iid = unique("cancelled")

    with pytest.raises(asyncio.CancelledError):
        await client.workflow("one").create(id=iid)
    assert (await (await client.workflow("one").get(iid)).wait(timeout=10)).output == "done"


@pytest.mark.rabbitmq
async def test_a_create_whose_start_message_failed_is_undone_when_nothing_started_it(
    owner: tuple[Client, Worker],
) -> None:
    client, worker = owner
    worker.orchestrator.notice_created = lambda *args: None  # type: ignore[method-assign]  # the notice is lost
    _broker_fails(client, ConnectionError("broker unreachable"), once_started=False)
    iid = unique("undone")

    with pytest.raises(ConnectionError):
        await client.workflow("one").create(id=iid)
    with pytest.raises(InstanceNotFound):
        await client.workflow("one").get(iid)
    assert await client._store.active_instances(client._partition("one", iid)) == []
