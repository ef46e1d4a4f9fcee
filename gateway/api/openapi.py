"""The published ``/openapi.json``: FastAPI's schema, made to say what this app enforces.

Two things are only known once the app is built:

* the limits of the client it serves (a deployment may configure them), which bound workflow
  names, instance ids and batch sizes; the schema's ``maxLength``/``maxItems`` are those limits;
* whether bearer tokens are checked. ``hutch dev`` without ``--token`` overrides the token check
  (``app.dependency_overrides[require_token]``); its schema then declares no security scheme and
  no 401, since a client or a fuzzer reading it would otherwise expect requests to be refused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from hutch.config import Limits
from hutch.gateway.api.auth import require_token


def install_schema(app: FastAPI, limits: Limits) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) publish ``limits`` and the app's auth mode."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    published: dict[bool, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        # Read per call: the override is set after the app is built (and a test may remove it).
        guarded = require_token not in app.dependency_overrides
        if guarded not in published:
            schema = copy.deepcopy(generate())
            _publish_limits(schema, limits)
            if not guarded:
                _drop_bearer_auth(schema)
            published[guarded] = schema
        return published[guarded]

    app.openapi = openapi  # type: ignore[method-assign]


def _publish_limits(schema: dict[str, Any], limits: Limits) -> None:
    lengths = {"name": limits.max_workflow_name_length, "instance_id": limits.max_instance_id_length}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in lengths:
                    parameter["schema"]["maxLength"] = lengths[parameter["name"]]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("type") == "array" and "maxItems" in body:
                body["maxItems"] = limits.max_batch
                body["description"] = f"At most {limits.max_batch} instances."
    create = schema.get("components", {}).get("schemas", {}).get("CreateInstance")
    if create is not None:
        create["properties"]["id"]["maxLength"] = limits.max_instance_id_length


def _drop_bearer_auth(schema: dict[str, Any]) -> None:
    components = schema.get("components", {})
    components.get("securitySchemes", {}).pop("bearer", None)
    if not components.get("securitySchemes", True):
        del components["securitySchemes"]
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
