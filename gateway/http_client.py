"""An async client of the gateway's REST API, for the ``hutch`` CLI and for scripts.

It speaks the API's paths under ``/api`` and unwraps Cloudflare's envelope
``{"success", "errors", "messages", "result"}``: a method returns ``result`` (plain JSON
values, as the API sent them) or raises. The errors::

    GatewayError                 anything that kept a request from getting an answer from the API
    ├── GatewayUnreachable       no connection, or no answer in time (the URL, the network, the server)
    ├── UnexpectedResponse       something answered, but not with the API's envelope (a proxy, another server)
    └── ApiRequestError          the API answered with an error envelope: status_code and errors

Example::

    async with GatewayClient("http://127.0.0.1:8787", token="...") as api:
        created = await api.create_instance("order", params={"orderId": "A-1"})
        detail = await api.describe_instance("order", created["id"])
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from hutch.status import Action

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
MAX_PER_PAGE = 100
USER_AGENT = "hutch-cli"


class GatewayError(Exception):
    """A request to the gateway did not get an answer from the API; the root of this module's errors."""


class GatewayUnreachable(GatewayError):
    """The gateway could not be reached, or did not answer in time.

    Attributes:
        url: the URL that was requested.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Hutch gateway at {url}: {reason}")
        self.url = url


class UnexpectedResponse(GatewayError):
    """Something answered, but not with the REST API's envelope (a proxy's error page, another server).

    Attributes:
        url: the URL that was requested.
        status_code: the HTTP status of the answer.
    """

    def __init__(self, url: str, status_code: int, snippet: str) -> None:
        super().__init__(
            f"{url} answered HTTP {status_code} without the Hutch API envelope; is this a Hutch gateway? "
            f"The answer began with: {snippet!r}"
        )
        self.url = url
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One entry of the envelope's ``errors``: a stable numeric code and a sentence."""

    code: int
    message: str


class ApiRequestError(GatewayError):
    """The API answered with an error envelope (a 4xx, or a 5xx such as 503 when a backend is down).

    Attributes:
        status_code: the HTTP status (401, 404, 409, ...).
        errors: the envelope's errors, in order.
        method: the request's method.
        path: the request's path.
    """

    def __init__(self, status_code: int, errors: list[ErrorDetail], method: str, path: str) -> None:
        messages = "; ".join(e.message for e in errors) or "no error message"
        super().__init__(messages)
        self.status_code = status_code
        self.errors = errors
        self.method = method
        self.path = path

    @property
    def codes(self) -> list[int]:
        """The errors' numeric codes (see :class:`gateway.api.ErrorCode`)."""
        return [e.code for e in self.errors]


@dataclass(frozen=True, slots=True)
class InstancePage:
    """One page of an instance listing, newest first; pass ``cursor`` back for the next page (None: the end)."""

    instances: list[dict[str, Any]]
    cursor: str | None


class GatewayClient:
    """The REST API of one Hutch gateway.

    Args:
        url: the gateway's base URL (``http://127.0.0.1:8787``; a path prefix is kept).
        token: the bearer token (``HUTCH_TOKEN``); None sends no ``Authorization`` header.
        timeout: seconds per request, or an :class:`httpx.Timeout`.
        transport: an httpx transport to use instead of the network (tests use
            :class:`httpx.MockTransport` or :class:`httpx.ASGITransport`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; idempotent."""
        await self._http.aclose()

    # ------------------------------------------------------------------ workflows
    async def list_workflows(self) -> list[dict[str, Any]]:
        """Every workflow with its instance counts by status: ``[{"name", "instances": {status: n}}]``."""
        result: list[dict[str, Any]] = (await self._call("GET", "/api/workflows"))["result"]
        return result

    async def get_workflow(self, name: str) -> dict[str, Any]:
        """One workflow and its instance counts."""
        result: dict[str, Any] = (await self._call("GET", _path("workflows", name)))["result"]
        return result

    # ------------------------------------------------------------------ instances
    async def create_instance(
        self, name: str, params: Any = None, *, id: str | None = None, priority: int | None = None
    ) -> dict[str, Any]:
        """Create and start an instance: ``{"id", "workflow", "status"}``; a taken id is a 409.

        ``priority`` orders it among instances waiting for a concurrency slot (lower first; default 0).
        """
        body: dict[str, Any] = {"params": params}
        if id is not None:
            body["id"] = id
        if priority is not None:
            body["priority"] = priority
        result: dict[str, Any] = (await self._call("POST", _path("workflows", name, "instances"), json=body))["result"]
        return result

    async def list_instances(
        self, name: str, *, status: str | None = None, cursor: str | None = None, per_page: int = 50
    ) -> InstancePage:
        """One page of a workflow's instances, newest first, optionally only those in ``status``."""
        query: dict[str, Any] = {"per_page": per_page}
        if status is not None:
            query["status"] = status
        if cursor is not None:
            query["cursor"] = cursor
        body = await self._call("GET", _path("workflows", name, "instances"), params=query)
        info = body.get("result_info") or {}
        return InstancePage(instances=list(body["result"] or []), cursor=info.get("cursor"))

    async def recent_instances(self, name: str, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Up to ``limit`` of the newest instances, following the cursor across pages as needed."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(rows) < limit:
            page = await self.list_instances(
                name, status=status, cursor=cursor, per_page=min(MAX_PER_PAGE, limit - len(rows))
            )
            rows.extend(page.instances)
            cursor = page.cursor
            if cursor is None or not page.instances:
                break
        return rows[:limit]

    async def latest_instance_id(self, name: str) -> str | None:
        """The id of the workflow's newest instance, or None when it has none."""
        page = await self.list_instances(name, per_page=1)
        return str(page.instances[0]["id"]) if page.instances else None

    async def describe_instance(self, name: str, instance_id: str) -> dict[str, Any]:
        """The instance's detail: status, params, trigger, timestamps, output, error and every step."""
        result: dict[str, Any] = (await self._call("GET", _path("workflows", name, "instances", instance_id)))["result"]
        return result

    async def instance_status(self, name: str, instance_id: str) -> dict[str, Any]:
        """``{"status", "output", "error"}`` of an instance."""
        path = _path("workflows", name, "instances", instance_id, "status")
        result: dict[str, Any] = (await self._call("GET", path))["result"]
        return result

    async def change_status(
        self,
        name: str,
        instance_id: str,
        action: Action,
        *,
        from_step: dict[str, Any] | None = None,
        rollback: bool = False,
    ) -> dict[str, Any]:
        """Pause, resume, terminate or restart an instance: ``{"status", "applied", "timestamp"}``.

        ``applied`` is false (HTTP 202) when no worker applied the change within the gateway's wait;
        it stays queued and is applied when a worker takes the instance's partition. ``from_step``
        (``{"name", "count", "type"}``) restarts from a step; ``rollback`` terminates with the undos.
        """
        path = _path("workflows", name, "instances", instance_id, "status")
        body: dict[str, Any] = {"status": action}
        if from_step is not None:
            body["from"] = from_step
        if rollback:
            body["rollback"] = True
        result: dict[str, Any] = (await self._call("PATCH", path, json=body))["result"]
        return result

    async def send_event(
        self, name: str, instance_id: str, event_type: str, payload: Any = None, *, event_id: str | None = None
    ) -> dict[str, Any]:
        """Send an event: ``{"instance_id", "type", "instance_finished"}``.

        ``event_id`` is the event's idempotency key: sending again with the same key does not deliver it twice.
        """
        path = _path("workflows", name, "instances", instance_id, "events", event_type)
        query = {"event_id": event_id} if event_id is not None else None
        result: dict[str, Any] = (await self._call("POST", path, json=payload, params=query))["result"]
        return result

    async def create_or_send(
        self,
        name: str,
        instance_id: str,
        event_type: str,
        payload: Any = None,
        *,
        params: Any = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Create the instance unless it exists and send it the event either way.

        Returns ``{"id", "workflow", "created", "event_type", "instance_finished"}``; ``params`` are
        used only if this call creates the instance, ``event_id`` as in :meth:`send_event`.
        """
        body: dict[str, Any] = {"id": instance_id, "params": params, "event_type": event_type, "payload": payload}
        if event_id is not None:
            body["event_id"] = event_id
        path = _path("workflows", name, "instances", "create_or_send")
        result: dict[str, Any] = (await self._call("POST", path, json=body))["result"]
        return result

    # ------------------------------------------------------------------ operations
    async def health(self) -> bool:
        """Whether ``/healthz`` answers 200 (liveness only; raises :class:`GatewayUnreachable` when down)."""
        response = await self._send("GET", "/healthz")
        return response.status_code == 200

    # ------------------------------------------------------------------ plumbing
    async def search_instances(self, name: str | None, query: dict[str, Any]) -> InstancePage:
        """One page of a search (``GET /api/instances``, or a workflow's listing when ``name`` is given).

        ``query`` holds the filters by their REST names (status, date_start, date_end, id_prefix,
        version, order, cursor, page, per_page); None values are left out.
        """
        params = {k: v for k, v in query.items() if v is not None}
        path = _path("workflows", name, "instances") if name is not None else "/api/instances"
        body = await self._call("GET", path, params=params)
        info = body.get("result_info") or {}
        return InstancePage(instances=list(body["result"] or []), cursor=info.get("cursor"))

    async def start_bulk(self, action: str, where: dict[str, Any]) -> dict[str, Any]:
        """Start a bulk job (``POST /api/bulk``); its progress record."""
        body = {"action": action, "filter": {k: v for k, v in where.items() if v is not None}}
        result: dict[str, Any] = (await self._call("POST", "/api/bulk", json=body))["result"]
        return result

    async def bulk_progress(self, job_id: str) -> dict[str, Any]:
        """A bulk job's progress record (``GET /api/bulk/{id}``)."""
        result: dict[str, Any] = (await self._call("GET", _path("bulk", job_id)))["result"]
        return result

    async def cancel_bulk(self, job_id: str) -> dict[str, Any]:
        """Cancel a bulk job (``DELETE /api/bulk/{id}``); its progress record."""
        result: dict[str, Any] = (await self._call("DELETE", _path("bulk", job_id)))["result"]
        return result

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send a request and return the whole envelope when it succeeded; raise otherwise."""
        response = await self._send(method, path, **kwargs)
        body = _envelope(response)
        if body is None:
            raise UnexpectedResponse(str(response.request.url), response.status_code, response.text[:200])
        if response.is_success and body["success"] is True:
            return body
        errors = [_error_detail(e) for e in body.get("errors") or []]
        if not errors:
            errors = [ErrorDetail(code=0, message=f"HTTP {response.status_code} {response.reason_phrase}")]
        raise ApiRequestError(response.status_code, errors, method, path)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise GatewayUnreachable(self.url, "no answer in time") from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(self.url, _reason(exc)) from None


def _path(*segments: str) -> str:
    """``/api/...`` with each segment percent-encoded, so a ``/`` or ``?`` in a name stays inside its segment."""
    return "/api/" + "/".join(quote(segment, safe="") for segment in segments)


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The response's envelope, or None when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("success"), bool) or "result" not in body:
        return None
    return body


def _error_detail(raw: Any) -> ErrorDetail:
    if isinstance(raw, dict):
        code = raw.get("code")
        return ErrorDetail(code=code if isinstance(code, int) else 0, message=str(raw.get("message", raw)))
    return ErrorDetail(code=0, message=str(raw))


def _reason(exc: httpx.TransportError) -> str:
    """The root cause of a transport failure, in words the user can act on."""
    # httpx wraps httpcore, which wraps the OS error; the innermost one says what happened.
    root: BaseException = exc
    seen: set[int] = set()
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(root))
        root = nxt
    if isinstance(root, ConnectionRefusedError):
        return "connection refused"
    if isinstance(root, socket.gaierror):
        return f"unknown host ({root.strerror})"
    return str(root) or str(exc) or type(exc).__name__
