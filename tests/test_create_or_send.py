"""create_or_send: create an instance if absent and deliver an event to it either way (SPEC §11).

On both runtimes (the embedded one and a worker on the real Redis and RabbitMQ): callers racing
on one new id get one instance and every event exactly once; an instance created by the call
holds its event from the start, even when the caller dies before the start message is sent; an
idempotency key makes a retried call harmless; and the REST route and the testing toolkit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import hutch
import pytest
from hutch import Client, CreatedOrSent, Instance, InvalidInputError, Settings, Status, WorkflowEntrypoint
from hutch.gateway.app import create_app
from hutch.serialization import unpack
from hutch.testing import TestEnv

from tests.conftest import AMQP_URL, REDIS_URL, MakeClient
from tests.helpers import eventually, unique

CALLERS = 50


class Gather(WorkflowEntrypoint):
    """Waits for ``params["expect"]`` "ping" events and returns their payloads in arrival order."""

    async def run(self, event, step):
        got: list[Any] = []
        for i in range(event.payload["expect"]):
            received = await step.wait_for_event(f"ping {i}", "ping", timeout="1 hour")
            got.append(received.payload)
        return got


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {"gather": Gather}


@asynccontextmanager
async def callers(client: Client, runtime: str, count: int) -> AsyncIterator[list[Client]]:
    """Clients for concurrent callers: on the distributed runtime, separate connections to its deployment.

    Each is a process of its own as far as Redis and RabbitMQ can tell, so the race is decided
    where it would be in production (the store's script), not inside one client.
    """
    if runtime == "embedded":
        yield [client]
        return
    settings = Settings(
        partitions=client._dispatcher.partitions,
        redis_url=REDIS_URL,
        amqp_url=AMQP_URL,
        namespace=client._store.keys.namespace,
    )
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(hutch.connect(WORKFLOWS, settings=settings)) for _ in range(count)]


async def test_racing_callers_create_one_instance_and_deliver_every_event_once(
    make_client: MakeClient, runtime: str
) -> None:
    client = await make_client(WORKFLOWS)
    iid = unique("race")
    async with callers(client, runtime, 5) as clients:
        results = await asyncio.gather(
            *(
                clients[n % len(clients)].workflow("gather").create_or_send(iid, {"expect": CALLERS}, "ping", n)
                for n in range(CALLERS)
            )
        )

    assert sum(r.created for r in results) == 1
    assert {r.instance.id for r in results} == {iid}
    assert not any(r.instance_finished for r in results)
    final = await Instance(client, "gather", iid).wait(timeout=30)
    assert final.status is Status.COMPLETE, final
    assert sorted(final.output) == list(range(CALLERS))  # every event, each once
    page = await client.workflow("gather").list()
    assert page.instances == [iid]
    # The creator's own event is among them, and its instance records that this call created it.
    detail = await Instance(client, "gather", iid).describe()
    assert detail.trigger == {"source": "api"}


class _Crash(BaseException):
    """The caller's process dies here."""


async def test_an_instance_created_by_the_call_has_its_event_even_if_the_caller_dies(
    make_client: MakeClient, runtime: str
) -> None:
    client = await make_client(WORKFLOWS)
    iid = unique("crash")

    async def die(*args: Any, **kwargs: Any) -> Any:
        raise _Crash

    # The caller dies right after the store write: no start message, and no undo of the create.
    dispatcher, store = client._dispatcher, client._store
    original_created, original_delete = dispatcher.created, store.delete_unstarted
    dispatcher.created, store.delete_unstarted = die, die  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            await client.workflow("gather").create_or_send(iid, {"expect": 1}, "ping", "first")
    finally:
        dispatcher.created, store.delete_unstarted = original_created, original_delete  # type: ignore[method-assign]

    if runtime == "embedded":
        # An embedded runtime dies with its caller (and has no create announcements to start the
        # instance): the store holds what a restarted one would find, the instance with its event.
        snapshot = await store.load(dispatcher.partition_of("gather", iid), "gather", iid)
        assert snapshot is not None and snapshot.meta["status"] == "queued"
        assert [unpack(raw)["payload"] for raw in snapshot.events] == ["first"]
        return
    # The create's announcement starts it on the worker; it loads the event written with it and completes.
    final = await Instance(client, "gather", iid).wait(timeout=30)
    assert final.status is Status.COMPLETE and final.output == ["first"], final


async def test_the_event_is_written_with_the_instance(make_client: MakeClient) -> None:
    client = await make_client({})  # nothing runs the instance: the store shows what the call wrote
    iid = unique("atomic")
    done = await client.workflow("gather").create_or_send(iid, {"expect": 1}, "ping", {"n": 1}, event_id="k-1")

    assert done.created and done.instance.id == iid
    partition = client._dispatcher.partition_of("gather", iid)
    snapshot = await client._store.load(partition, "gather", iid)
    assert snapshot is not None and snapshot.meta["status"] == "queued" and snapshot.seq == 0
    (event,) = [unpack(raw) for raw in snapshot.events]
    assert event["type"] == "ping" and event["payload"] == {"n": 1} and event["id"] == "k-1"

    # A second call finds it: nothing is written to the instance by the client, the event goes to its owner.
    again = await client.workflow("gather").create_or_send(iid, {"expect": 1}, "ping", {"n": 2})
    assert not again.created and not again.instance_finished
    snapshot = await client._store.load(partition, "gather", iid)
    assert snapshot is not None and len(snapshot.events) == 1 and snapshot.meta["params"] == {"expect": 1}


async def test_a_retried_call_with_an_event_id_delivers_its_event_once(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    gather = client.workflow("gather")
    iid = unique("retry")

    first = await gather.create_or_send(iid, {"expect": 3}, "ping", "a", event_id="a")
    assert first.created
    instance = first.instance

    async def a_taken() -> bool:  # "a" was taken by the first wait: its id is in history now
        steps = (await instance.describe()).steps
        return len(steps) >= 2 and steps[0].outcome == "received"

    await eventually(a_taken)
    retried = await gather.create_or_send(iid, {"expect": 3}, "ping", "a", event_id="a")
    assert not retried.created
    # Twice at once: the copy finds "b" buffered or already taken, either way it is ignored.
    await asyncio.gather(*(gather.create_or_send(iid, None, "ping", "b", event_id="b") for _ in range(2)))
    await gather.create_or_send(iid, None, "ping", "c", event_id="c")

    final = await instance.wait(timeout=30)
    assert final.output == ["a", "b", "c"], final


async def test_without_an_event_id_every_call_is_a_new_event(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    gather = client.workflow("gather")
    iid = unique("noid")
    for _ in range(2):
        await gather.create_or_send(iid, {"expect": 2}, "ping", "same")
    assert (await Instance(client, "gather", iid).wait(timeout=30)).output == ["same", "same"]


async def test_a_finished_instance_is_reported_and_not_created_again(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    gather = client.workflow("gather")
    iid = unique("done")
    await gather.create_or_send(iid, {"expect": 1}, "ping", 1)
    await Instance(client, "gather", iid).wait(timeout=30)

    late = await gather.create_or_send(iid, {"expect": 1}, "ping", 2)

    assert (late.created, late.instance_finished) == (False, True)
    assert (await late.instance.status()).output == [1]


@pytest.mark.embedded_only
async def test_invalid_input_is_refused_before_anything_is_written(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    gather = client.workflow("gather")
    for args, kwargs, fragment in [
        (("bad id!", None, "ping"), {}, "instance id 'bad id!'"),
        (("ok-1", None, ""), {}, "event type ''"),
        (("ok-1", None, "ping"), {"event_id": ""}, "event id ''"),
        (("ok-1", None, "ping"), {"event_id": "x" * 201}, "at most 200 characters"),
        (("ok-1", {"x": object()}, "ping"), {}, "params of instance 'ok-1'"),
        (("ok-1", None, "ping", b"x" * (2 << 20)), {}, "payload of event 'ping'"),
    ]:
        with pytest.raises(InvalidInputError, match=fragment[:20].replace("(", r"\(")):
            await gather.create_or_send(*args, **kwargs)
    assert (await gather.list()).instances == []


# ----------------------------------------------------------------------------- REST
TOKEN = "cos-token"


async def test_rest_create_or_send_racing_requests(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    app = create_app(client, tokens=[TOKEN])
    iid = unique("rest")
    transport = httpx.ASGITransport(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=auth) as http:
        path = "/api/workflows/gather/instances/create_or_send"
        responses = await asyncio.gather(
            *(
                http.post(path, json={"id": iid, "params": {"expect": 20}, "event_type": "ping", "payload": n})
                for n in range(20)
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
        created = next(r.json() for r in responses if r.status_code == 201)
        assert created == {
            "success": True,
            "errors": [],
            "messages": [],
            "result": {
                "id": iid,
                "workflow": "gather",
                "created": True,
                "event_type": "ping",
                "instance_finished": False,
            },
        }
        final = await Instance(client, "gather", iid).wait(timeout=30)
        assert sorted(final.output) == list(range(20))

        # A repeated request with an event id is a no-op; a finished instance is reported.
        body = {"id": iid, "event_type": "ping", "payload": "late", "event_id": "late-1"}
        late = (await http.post(path, json=body)).json()["result"]
        assert late["created"] is False and late["instance_finished"] is True

        # Refusals: unknown workflow 404, an invalid id or event id 400, a missing event type 422.
        unknown = await http.post("/api/workflows/nope/instances/create_or_send", json=body)
        assert unknown.status_code == 404
        for bad, status in [({**body, "id": "bad id"}, 400), ({**body, "event_id": ""}, 400), ({"id": iid}, 422)]:
            response = await http.post(path, json=bad)
            assert response.status_code == status, response.text

        schema = (await http.get("/openapi.json")).json()
        operation = schema["paths"]["/api/workflows/{name}/instances/create_or_send"]["post"]
        assert {"200", "201", "404"} <= set(operation["responses"])


async def test_rest_send_event_takes_an_event_id_so_a_retried_request_delivers_once(make_client: MakeClient) -> None:
    client = await make_client(WORKFLOWS)
    app = create_app(client, tokens=[TOKEN])
    iid = unique("rest-id")
    await client.workflow("gather").create(id=iid, params={"expect": 2})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway", headers=auth) as http:
        path = f"/api/workflows/gather/instances/{iid}/events/ping"
        # A request sent twice (a retry after a lost answer), concurrently and once more later: one event.
        first = await asyncio.gather(*(http.post(path, params={"event_id": "k-1"}, json="a") for _ in range(2)))
        assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
        assert first[0].json()["result"] == {"instance_id": iid, "type": "ping", "instance_finished": False}
        assert (await http.post(path, params={"event_id": "k-1"}, json="a")).status_code == 200
        assert (await http.post(path, params={"event_id": "k-2"}, json="b")).status_code == 200
        final = await Instance(client, "gather", iid).wait(timeout=30)
        assert final.output == ["a", "b"], final

        # The key's rules are the client's (a 400 naming them), and the schema documents them.
        for bad in ("", "x" * 201):
            response = await http.post(path, params={"event_id": bad}, json="c")
            assert response.status_code == 400 and "event id" in response.text, response.text
        schema = (await http.get("/openapi.json")).json()
        operation = schema["paths"]["/api/workflows/{name}/instances/{instance_id}/events/{event_type}"]["post"]
        (event_id,) = [p for p in operation["parameters"] if p["name"] == "event_id"]
        assert event_id["in"] == "query" and not event_id.get("required")
        assert (event_id["schema"]["minLength"], event_id["schema"]["maxLength"]) == (1, 200)


# ----------------------------------------------------------------------------- the testing toolkit
async def test_testenv_create_or_send() -> None:
    async with TestEnv(WORKFLOWS) as env:
        first = await env.create_or_send("gather", "t-1", {"expect": 2}, "ping", "x", event_id="x")
        again = await env.create_or_send("gather", "t-1", {"expect": 2}, "ping", "x", event_id="x")
        await env.create_or_send("gather", "t-1", None, "ping", "y")
        assert isinstance(first, CreatedOrSent) and (first.created, again.created) == (True, False)
        await first.instance.wait_for_status(Status.COMPLETE)
        assert (await first.instance.status()).output == ["x", "y"]
