"""How failures become responses: engine errors, schema errors and HTTP errors, all in the envelope.

=====================================  ======  ===================
failure                                status  code
=====================================  ======  ===================
missing or wrong bearer token          401     UNAUTHORIZED
engine rule broken (id, name, cursor)  400     INVALID_INPUT
unknown query parameter                400     INVALID_INPUT
request does not match the schema      422     VALIDATION_FAILED
body not JSON, or nested too deeply    422     VALIDATION_FAILED
unknown workflow / instance / route    404     ..._NOT_FOUND
method not allowed on the path         405     METHOD_NOT_ALLOWED
duplicate instance id                  409     INSTANCE_EXISTS
lifecycle change not allowed           409     ILLEGAL_TRANSITION
body over the limit                    413     PAYLOAD_TOO_LARGE
JSON body sent as another media type   415     UNSUPPORTED_MEDIA_TYPE
Redis or RabbitMQ unreachable          503     UNAVAILABLE
anything else (a bug)                  500     INTERNAL
=====================================  ======  ===================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from hutch.broker.transports.rabbitmq import CONNECTION_ERRORS
from hutch.errors import (
    HutchError,
    IllegalTransition,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInputError,
    PayloadTooLarge,
    WorkflowNotFound,
)
from hutch.gateway.api.auth import Unauthorized, authorized, token_required
from hutch.gateway.api.envelope import ErrorCode, error_response
from hutch.gateway.api.models import MAX_INPUT_DEPTH
from hutch.serialization import INTEGER_RANGE
from hutch.store.redis import STORE_ERRORS
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("gateway")

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = tuple(
    {e for e in (*STORE_ERRORS, *CONNECTION_ERRORS, TimeoutError) if issubclass(e, Exception)}
)
"""Errors meaning a backend is unreachable right now (or a publish was not confirmed in time): retry."""

RETRY_AFTER_S = "1"


class BodyTooLarge(StarletteHTTPException):
    """The request body is larger than the gateway accepts; raised while the body is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_INPUT,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.ILLEGAL_TRANSITION,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_FAILED,
    503: ErrorCode.UNAVAILABLE,
}


def engine_error_status(exc: HutchError) -> tuple[int, ErrorCode]:
    """The status and code of an engine error raised by the client API."""
    if isinstance(exc, PayloadTooLarge):
        return 413, ErrorCode.PAYLOAD_TOO_LARGE
    if isinstance(exc, InvalidInputError):
        return 400, ErrorCode.INVALID_INPUT
    if isinstance(exc, WorkflowNotFound):
        return 404, ErrorCode.WORKFLOW_NOT_FOUND
    if isinstance(exc, InstanceNotFound):
        return 404, ErrorCode.INSTANCE_NOT_FOUND
    if isinstance(exc, InstanceAlreadyExists):
        return 409, ErrorCode.INSTANCE_EXISTS
    if isinstance(exc, IllegalTransition):
        return 409, ErrorCode.ILLEGAL_TRANSITION
    return 500, ErrorCode.INTERNAL


def engine_error_message(exc: HutchError) -> str:
    """The message of an engine error, worded for a caller of the REST API."""
    if isinstance(exc, InstanceAlreadyExists):
        # The engine's own hint names the SDK's create_batch; over HTTP that is the batch endpoint.
        return (
            f"instance {exc.instance_id!r} of workflow {exc.workflow!r} already exists; send another id (or none, "
            f"for a random one), or create through POST /api/workflows/{exc.workflow}/instances/batch, which "
            "skips ids that exist"
        )
    return str(exc)


def json_body_failure(exc: BaseException) -> tuple[int, str] | None:
    """Status and message for a JSON body the parser gave up on without a syntax error; None for other errors.

    Python's parser fails on such bodies with RecursionError (nesting), UnicodeDecodeError (not
    UTF-8) or a bare ValueError (an integer over its 4300-digit limit); FastAPI reports all three
    as "There was an error parsing the body", which says nothing about what to change.
    """
    if isinstance(exc, RecursionError):
        return 422, f"body: nested too deeply to parse; JSON values may nest at most {MAX_INPUT_DEPTH} levels"
    if isinstance(exc, UnicodeDecodeError):
        return 422, f"body: not valid JSON: not {exc.encoding.upper()} text ({exc.reason} at byte {exc.start})"
    if type(exc) is ValueError and "digits" in str(exc):
        return 400, f"body: a number is too large; {INTEGER_RANGE}"
    return None


def validation_messages(errors: Sequence[Any]) -> list[str]:
    """One sentence per pydantic error, naming where in the request it is (``body.params``, ``query.per_page``)."""
    messages = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid" and len(loc) == 2 and isinstance(loc[1], int):
            # FastAPI reports a JSON syntax error at ("body", <character offset>).
            reason = (err.get("ctx") or {}).get("error", "invalid syntax")
            messages.append(f"body: not valid JSON: {reason} at character {loc[1]}")
            continue
        where = ".".join(str(part) for part in loc)
        messages.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return messages or ["the request does not match the schema"]


async def _hutch_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HutchError)
    status, code = engine_error_status(exc)
    if status == 500:
        log.error("unexpected engine error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, ErrorCode.INTERNAL, "internal error; the gateway log has the details")
    return error_response(status, code, engine_error_message(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if token_required(request) and not authorized(request):
        # FastAPI parses a JSON body before it runs dependencies; the token check still comes first.
        return await _http_error(request, Unauthorized("missing or invalid bearer token"))
    return error_response(422, ErrorCode.VALIDATION_FAILED, *validation_messages(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    failure = json_body_failure(exc.__cause__) if exc.status_code == 400 and exc.__cause__ is not None else None
    if failure is not None:
        # FastAPI's "There was an error parsing the body", raised from the parser's exception. The
        # body is parsed before the token is checked; the token check still comes first.
        if token_required(request) and not authorized(request):
            return await _http_error(request, Unauthorized("missing or invalid bearer token"))
        exc = StarletteHTTPException(*failure)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.INTERNAL if exc.status_code >= 500 else ErrorCode.INVALID_INPUT)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = exc.headers
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request)
        message = f"method {request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"
        # Starlette names only the methods of the first route whose path matched.
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=headers)
    return error_response(exc.status_code, code, message, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app fully matches on the request's path.

    Asked of the routes themselves (``matches``), method by method, so routers included in any
    way count; Starlette's own header names only the first route whose path matched.
    """
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("backend unavailable on %s %s: %r", request.method, request.url.path, exc)
    return error_response(
        503,
        ErrorCode.UNAVAILABLE,
        "Redis or RabbitMQ is unreachable right now; retry the request",
        headers={"Retry-After": RETRY_AFTER_S},
    )


async def _internal(request: Request, exc: Exception) -> Response:
    # Starlette runs this from its outermost middleware and re-raises afterwards, so the
    # server logs the traceback as well; the client only sees the envelope.
    return error_response(500, ErrorCode.INTERNAL, "internal error; the gateway log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure of ``app`` as an error envelope with the right status."""
    app.add_exception_handler(HutchError, _hutch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(Exception, _internal)
