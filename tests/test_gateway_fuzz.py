"""Property-based fuzzing of the gateway's published OpenAPI schema with schemathesis.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid, against the
ASGI app serving an embedded runtime. No response may be a 5xx, and every response must
conform to the schema: a documented status code, the documented content type and a body
that validates against the documented model (the envelope). Invalid requests must be rejected.

Both auth modes are fuzzed: bearer tokens (``hutch gateway``), and the open mode of ``hutch dev``
without ``--token``, whose schema must not ask for a token it does not check.

The embedded runtime's objects belong to the event loop that created them, while schemathesis
drives a synchronous Hypothesis test; so the runtime and the app live on a private loop that
each example's request is run on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import hutch
import pytest
import schemathesis
from hutch import Client, WorkflowEntrypoint
from hutch.events import WorkflowEvent
from hutch.gateway.api import require_token
from hutch.gateway.app import create_app
from hutch.step import WorkflowStep
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import eventually

TOKEN = "fuzz-token"
BASE_URL = "http://gateway.test"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# In open mode, a schema declaring bearer auth fails these: requests without a token are answered.
OPEN_CHECKS = [*CHECKS, ignored_auth, missing_required_header]
# Ids Hypothesis generates first for the id pattern: instances with these ids exist, so the
# generated requests reach real instances and not only 404s.
SEEDED_IDS = ["0", "00", "a", "A", "_", "aa", "0-"]


class Echo(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        params = await step.do("echo", lambda: event.payload)
        got = await step.wait_for_event("go", "go", timeout="1 hour")
        return {"params": params, "event": got.payload}


class Harness:
    """An embedded runtime and the gateway app on a private event loop."""

    def __init__(self, *, open_mode: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: Client = self.loop.run_until_complete(hutch.connect({"echo": Echo, "0": Echo}))
        self.app = create_app(self.client, tokens=[TOKEN])
        if open_mode:  # as hutch dev without --token does it
            self.app.dependency_overrides[require_token] = _no_auth
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url=BASE_URL, timeout=30)
        workflow = self.client.workflow("echo")
        self.loop.run_until_complete(workflow.create_batch([{"id": iid, "params": {"n": 1}} for iid in SEEDED_IDS]))

    def send(self, request: dict[str, Any]) -> httpx.Response:
        """Send a request in schemathesis' ``requests`` form through the ASGI app."""
        return self.loop.run_until_complete(self.http.request(**_httpx_arguments(request)))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def _httpx_arguments(request: dict[str, Any]) -> dict[str, Any]:
    arguments = {k: v for k, v in request.items() if k in ("method", "url", "headers", "params", "cookies", "json")}
    data = request.get("data")
    if isinstance(data, str | bytes):
        arguments["content"] = data
    elif data is not None:
        arguments["data"] = data
    if request.get("files") is not None:
        arguments["files"] = request["files"]
    if not arguments.get("cookies"):
        arguments.pop("cookies", None)
    return arguments


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


async def _no_auth() -> None:
    pass


@pytest.fixture(scope="module")
def api_schema(harness: Harness) -> Any:
    return schemathesis.openapi.from_dict(harness.app.openapi())


@pytest.fixture(scope="module")
def open_harness() -> Iterator[Harness]:
    h = Harness(open_mode=True)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def open_api_schema(open_harness: Harness) -> Any:
    return schemathesis.openapi.from_dict(open_harness.app.openapi())


schema = schemathesis.pytest.from_fixture("api_schema")
open_schema = schemathesis.pytest.from_fixture("open_api_schema")
FUZZ_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_conforms_to_the_schema(case: Any, harness: Harness) -> None:
    request = case.as_transport_kwargs(base_url=BASE_URL, headers={"Authorization": f"Bearer {TOKEN}"})
    response = harness.send(request)
    case.validate_response(response, checks=CHECKS)


@open_schema.parametrize()
@FUZZ_SETTINGS
def test_open_mode_conforms_to_its_schema(case: Any, open_harness: Harness) -> None:
    response = open_harness.send(case.as_transport_kwargs(base_url=BASE_URL))
    case.validate_response(response, checks=OPEN_CHECKS)


def _conforms(harness: Harness, api_schema: Any, path: str, method: str, **parts: Any) -> dict[str, Any]:
    """Send one request built from the schema's operation and check the response with every check."""
    case = api_schema[path][method].Case(**parts)
    response = harness.send(case.as_transport_kwargs(base_url=BASE_URL, headers={"Authorization": f"Bearer {TOKEN}"}))
    case.validate_response(response, checks=CHECKS)
    body: dict[str, Any] = response.json()
    return body


def test_the_fleet_routes_conform_on_states_random_requests_rarely_reach(harness: Harness, api_schema: Any) -> None:
    """Random ids and cursors mostly meet 404s and 400s: here the fleet routes answer real jobs, pages and
    instances, and each answer must still be what the schema says (status code, content type, body)."""
    workflow = harness.client.workflow("echo")
    ids = [f"fleet-{n}" for n in range(5)]
    harness.loop.run_until_complete(workflow.create_batch([{"id": iid, "params": {"n": 2}} for iid in ids]))

    async def waiting() -> bool:
        statuses = [(await (await workflow.get(iid)).status()).status for iid in ids]
        assert statuses == ["waiting"] * len(ids), statuses
        return True

    harness.loop.run_until_complete(eventually(waiting, timeout=30, interval=0.02))

    # A search paged by its cursor, across workflows and within one.
    query = {"workflow": "echo", "id_prefix": "fleet-", "per_page": 2, "order": "asc"}
    page = _conforms(harness, api_schema, "/api/instances", "GET", query=query)
    assert [i["id"] for i in page["result"]] == ids[:2] and page["result_info"]["cursor"]
    query["cursor"] = page["result_info"]["cursor"]
    assert [i["id"] for i in _conforms(harness, api_schema, "/api/instances", "GET", query=query)["result"]] == ids[2:4]
    assert _conforms(harness, api_schema, "/api/workflows/{name}/instances", "GET", path_parameters={"name": "echo"})

    # Restart from a step, and terminate with rollback.
    status = "/api/workflows/{name}/instances/{instance_id}/status"
    restart = {"status": "restart", "from": {"name": "echo", "count": 1}}
    _conforms(
        harness, api_schema, status, "PATCH", path_parameters={"name": "echo", "instance_id": ids[0]}, body=restart
    )
    body = {"status": "terminate", "rollback": True}
    _conforms(harness, api_schema, status, "PATCH", path_parameters={"name": "echo", "instance_id": ids[1]}, body=body)

    # A bulk job: started, read, waited for, cancelled once finished; terminate-all by status.
    started = _conforms(
        harness,
        api_schema,
        "/api/bulk",
        "POST",
        body={"action": "pause", "filter": {"workflow": "echo", "id_prefix": "fleet-"}},
    )
    job = {"job_id": started["result"]["id"]}
    harness.loop.run_until_complete(harness.client.bulk_job(job["job_id"]).wait(timeout=30))
    progress = _conforms(harness, api_schema, "/api/bulk/{job_id}", "GET", path_parameters=job)["result"]
    assert (progress["state"], progress["total"]) == ("done", 5), progress
    assert (
        _conforms(harness, api_schema, "/api/bulk/{job_id}", "DELETE", path_parameters=job)["result"]["state"] == "done"
    )
    terminate_all = "/api/workflows/{name}/instances/terminate"
    terminated = _conforms(
        harness, api_schema, terminate_all, "PUT", path_parameters={"name": "echo"}, query={"status": "paused"}
    )
    harness.loop.run_until_complete(harness.client.bulk_job(terminated["result"]["id"]).wait(timeout=30))
