"""Webhook ingress: ``POST /webhooks/{path}`` for third-party senders, driven by ``[[webhooks]]``.

For each request, in order (the first failure answers):

1. the path must name a configured route (404);
2. the body must fit ``max_body_bytes``, judged from ``Content-Length`` and while reading, before
   anything is parsed (413);
3. the signature over the raw body must match one of the route's secrets, and a signed timestamp
   must be within ``tolerance_s`` of now (401);
4. the body must be JSON (400), and the route's templates must render over it (400, with the
   field that is missing);
5. the delivery id is claimed in Redis (``SET NX`` with a TTL): a delivery seen before is answered
   200 with ``duplicate: true`` and has no effect; one still being handled by a concurrent request
   is answered 409 so the sender retries it later;
6. the route's action runs through the client (send an event, create an instance, or create it if
   absent and send it the event, in one atomic call: ``WorkflowClient.create_or_send``), and only
   once that call returned (the instance record is in Redis and the broker confirmed the message)
   is the request answered 202. Any failure releases
   the delivery id, so the sender's retry is processed: 404 when the instance to signal does not
   exist, 400/413 for input the engine refused, 503 when Redis or the broker is unavailable.

Every answer uses the REST API's envelope ``{"success", "errors", "messages", "result"}``.

A crash after the action but before the delivery is marked done leaves the claim to expire
(``_PENDING_TTL_S``); the sender's retry then repeats the action: a create is idempotent when the
route has an ``instance_id``, and an event is sent with an id derived from the delivery id, so the
instance ignores the copy (unless it was restarted in between; without a delivery id, an event may
be delivered twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from hutch.client import MAX_EVENT_ID_LENGTH, Client, Instance, WorkflowClient
from hutch.config import check_instance_id
from hutch.consumers.templates import WEBHOOK_ROOTS, MessageContext, Template, TemplateError
from hutch.errors import (
    HutchError,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInputError,
    PayloadTooLarge,
    WorkflowNotFound,
)
from hutch.gateway.signatures import SignatureError, Verifier, verifier
from hutch.triggers import WebhookRoute
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect

log = logging.getLogger("hutch.webhooks")

# How long a claimed delivery id blocks concurrent copies while its request is being handled.
_PENDING_TTL_S = 60
_DONE = "done"
# Deletes the claim only if it is still this request's (it may have expired and been re-claimed).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def envelope(
    status_code: int, *, result: Any = None, errors: Sequence[str] = (), messages: Sequence[str] = ()
) -> JSONResponse:
    """A response in the REST API's envelope: ``{"success", "errors", "messages", "result"}``.

    Errors are ``{"code": <HTTP status>, "message": ...}`` objects, as in Cloudflare's API.
    """
    return JSONResponse(
        status_code=status_code,
        content={
            "success": status_code < 400,
            "errors": [{"code": status_code, "message": message} for message in errors],
            "messages": [{"code": status_code, "message": message} for message in messages],
            "result": result,
        },
    )


@dataclass(frozen=True, slots=True)
class _Route:
    spec: WebhookRoute
    verifier: Verifier
    workflow: WorkflowClient
    instance_id: Template | None
    event_type: Template | None
    delivery_id: Template | None


@dataclass(frozen=True, slots=True)
class _Claim:
    key: str
    token: str


class _Rejected(Exception):
    """Answer the request with this status and message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _compile(client: Client, spec: WebhookRoute, environ: Mapping[str, str] | None) -> _Route:
    def template(name: str) -> Template | None:
        source = getattr(spec, name)
        if source is None:
            return None
        try:
            return Template(source, roots=WEBHOOK_ROOTS)
        except TemplateError as exc:
            raise InvalidInputError(f"[[webhooks]] path {spec.path!r}: {name}: {exc}") from None

    try:
        check = verifier(spec.signature, spec.secrets(environ), tolerance_s=spec.tolerance_s)
        workflow = client.workflow(spec.workflow)
    except (InvalidInputError, WorkflowNotFound) as exc:
        raise InvalidInputError(f"[[webhooks]] path {spec.path!r}: {exc}") from None
    return _Route(
        spec=spec,
        verifier=check,
        workflow=workflow,
        instance_id=template("instance_id"),
        event_type=template("event_type"),
        delivery_id=template("delivery_id"),
    )


def webhook_router(
    client: Client,
    routes: Sequence[WebhookRoute],
    *,
    dedupe_redis: Redis | None,
    namespace: str = "hutch",
    environ: Mapping[str, str] | None = None,
    now: Callable[[], float] = time.time,
) -> APIRouter:
    """The webhook ingress as a FastAPI router: ``POST /webhooks/{path}`` for each route.

    Include it without the REST API's bearer-token dependency: senders authenticate by signature.

    Args:
        client: creates instances and sends events (embedded or remote).
        routes: the ``[[webhooks]]`` of the settings (``Settings.webhooks``).
        dedupe_redis: where delivery ids are remembered (the deployment's Redis; in the embedded
            runtime, the store's fakeredis). None turns deduplication off.
        namespace: prefix of the dedupe keys (``Settings.namespace``).
        environ: where secrets are read (default ``os.environ``), once, here.
        now: the clock signed timestamps are checked against (epoch seconds).

    Raises:
        InvalidInputError: a route's secret is unset or malformed, a template is malformed, or its
            workflow is unknown to the client; the message names the route.
    """
    compiled = {spec.path: _compile(client, spec, environ) for spec in routes}
    ingress = _Ingress(client, compiled, dedupe_redis, namespace, now)
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])

    @router.post(
        "/{path:path}",
        summary="Receive a webhook",
        status_code=202,
        responses={
            200: {"description": "a delivery already processed (no effect)"},
            400: {"description": "the body is not JSON or lacks a field the route's templates need"},
            401: {"description": "missing or wrong signature, or a timestamp outside the tolerance"},
            404: {"description": "no such route, or the instance to signal does not exist"},
            409: {"description": "the same delivery is being processed by another request; retry"},
            413: {"description": "the body is larger than the route allows"},
            503: {"description": "Redis or the broker is unavailable; retry"},
        },
    )
    async def receive_webhook(path: str, request: Request) -> JSONResponse:
        """Verify a webhook's signature and turn it into an instance creation or an event."""
        return await ingress.handle(path, request)

    return router


class _Ingress:
    def __init__(
        self,
        client: Client,
        routes: dict[str, _Route],
        redis: Redis | None,
        namespace: str,
        now: Callable[[], float],
    ) -> None:
        self._client = client
        self._routes = routes
        self._redis = redis
        self._namespace = namespace
        self._now = now

    async def handle(self, path: str, request: Request) -> JSONResponse:
        route = self._routes.get(path.rstrip("/"))
        if route is None:
            return envelope(404, errors=[f"no webhook route {path!r}; configure it under [[webhooks]] in hutch.toml"])
        try:
            body = await _read_body(request, route.spec.max_body_bytes)
            headers = {name.lower(): value for name, value in request.headers.items()}
            try:
                delivery = route.verifier.verify(headers, body, self._now())
            except SignatureError as exc:
                log.info("webhook %s: rejected: %s", route.spec.path, exc)
                raise _Rejected(401, str(exc)) from None
            payload = _parse_json(body)
            context = MessageContext.from_headers(payload, headers)
            if route.delivery_id is not None:
                delivery = route.delivery_id.render(context)
            elif route.spec.signature == "stripe" and isinstance(payload, dict) and isinstance(payload.get("id"), str):
                delivery = payload["id"]
            instance_id = route.instance_id.render(context) if route.instance_id else None
            event_type = route.event_type.render(context) if route.event_type else None
            if instance_id is not None:
                check_instance_id(instance_id, self._client.limits)
        except _Rejected as exc:
            return envelope(exc.status_code, errors=[exc.message])
        except ClientDisconnect:
            return envelope(400, errors=["the client disconnected before the whole body arrived"])
        except HutchError as exc:
            return envelope(_status_of(exc), errors=[str(exc)])
        # Shielded like a commit: a request cancelled once the delivery is claimed (the sender hung
        # up) still finishes its action and records the delivery as done or releases it.
        return await asyncio.shield(self._deliver(route, payload, instance_id, event_type, delivery))

    async def _deliver(
        self, route: _Route, payload: Any, instance_id: str | None, event_type: str | None, delivery: str | None
    ) -> JSONResponse:
        claim: _Claim | None = None
        try:
            if delivery:
                state, claim = await self._claim(route, delivery)
                if state == "done":
                    return envelope(
                        200,
                        result={"duplicate": True, "delivery_id": delivery},
                        messages=[f"delivery {delivery!r} was already processed; nothing done"],
                    )
                if state == "pending":
                    raise _Rejected(409, f"delivery {delivery!r} is being processed by another request; retry later")
            result = await self._act(route, payload, instance_id, event_type, delivery)
        except _Rejected as exc:
            await self._release(claim)
            return envelope(exc.status_code, errors=[exc.message])
        except HutchError as exc:
            await self._release(claim)
            return envelope(_status_of(exc), errors=[str(exc)])
        except Exception:
            log.exception("webhook %s: could not hand the delivery to Hutch", route.spec.path)
            await self._release(claim)
            return envelope(503, errors=["Hutch could not accept the webhook right now (store or broker); retry"])
        if claim is not None:
            await self._done(route, claim)
        return envelope(202, result={**result, "duplicate": False, "delivery_id": delivery})

    async def _act(
        self, route: _Route, payload: Any, instance_id: str | None, event_type: str | None, delivery: str | None
    ) -> dict[str, Any]:
        spec = route.spec
        trigger: dict[str, Any] = {"source": "webhook", "path": spec.path}
        if delivery:
            trigger["delivery_id"] = delivery
        result: dict[str, Any] = {"action": spec.action, "workflow": spec.workflow, "instance_id": instance_id}
        event_id = _event_id(route, delivery)
        if spec.action == "create":
            try:
                instance = await route.workflow.create(id=instance_id, params=payload, trigger=trigger)
                result.update(instance_id=instance.id, created=True)
            except InstanceAlreadyExists:
                result["created"] = False
            return result
        assert instance_id is not None and event_type is not None  # the route model requires both
        if spec.action == "create_or_send":
            done = await route.workflow.create_or_send(
                instance_id, payload, event_type, payload, event_id=event_id, trigger=trigger
            )
            result.update(created=done.created, instance_finished=done.instance_finished)
        else:
            instance = Instance(self._client, spec.workflow, instance_id)
            accepted = await instance.send_event(event_type, payload, event_id=event_id)
            result.update(instance_finished=accepted.instance_finished)
        result["event_type"] = event_type
        return result

    # ------------------------------------------------------------------ deduplication
    def _key(self, route: _Route, delivery: str) -> str:
        if len(delivery) > 128:
            delivery = "sha256-" + hashlib.sha256(delivery.encode()).hexdigest()
        return f"{self._namespace}:webhook:{route.spec.path}:{delivery}"

    async def _claim(self, route: _Route, delivery: str) -> tuple[Literal["claimed", "done", "pending"], _Claim | None]:
        """Claim a delivery id; returns the claim when this request now owns the delivery."""
        if self._redis is None:
            return "claimed", None
        key = self._key(route, delivery)
        token = f"pending:{uuid.uuid4().hex}"
        try:
            for _ in range(2):
                if await self._redis.set(key, token, nx=True, ex=_PENDING_TTL_S):
                    return "claimed", _Claim(key, token)
                value = await self._redis.get(key)
                if value is not None:
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    return ("done" if text == _DONE else "pending"), None
                # The other claim expired between SET and GET: try again.
        except Exception as exc:
            raise _Rejected(503, f"cannot check the delivery id in Redis ({exc}); retry") from None
        return "pending", None

    async def _release(self, claim: _Claim | None) -> None:
        """Forget a claim after a failure, so the sender's retry is processed."""
        if claim is None or self._redis is None:
            return
        try:
            await self._redis.eval(_RELEASE, 1, claim.key, claim.token)
        except Exception as exc:
            log.warning("could not release webhook claim %s (%s); it expires in %d s", claim.key, exc, _PENDING_TTL_S)

    async def _done(self, route: _Route, claim: _Claim) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.set(claim.key, _DONE, ex=max(1, round(route.spec.dedupe_ttl_s)))
        except Exception as exc:
            # The action happened; the pending claim still blocks copies until it expires.
            log.warning("could not mark webhook delivery %s done (%s)", claim.key, exc)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:
        raise _Rejected(413, f"the body is {int(declared)} bytes; this webhook accepts at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Rejected(413, f"the body is larger than {limit} bytes, the most this webhook accepts")
        chunks.append(chunk)
    return b"".join(chunks)


def _event_id(route: _Route, delivery: str | None) -> str | None:
    """The id of the event a delivery sends: the same for every copy of the delivery, so the instance keeps one."""
    if not delivery:
        return None
    event_id = f"webhook:{route.spec.path}:{delivery}"
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        event_id = "webhook:sha256-" + hashlib.sha256(f"{route.spec.path}:{delivery}".encode()).hexdigest()
    return event_id


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected(400, f"the body is not valid JSON: {exc}") from None


def _status_of(exc: HutchError) -> int:
    if isinstance(exc, InstanceNotFound | WorkflowNotFound):
        return 404
    if isinstance(exc, PayloadTooLarge):
        return 413
    return 400
