"""The gateway's REST API: routers, the response envelope, auth and error mapping.

Build the whole app with :func:`hutch.gateway.app.create_app`; routers written elsewhere (webhooks)
reach the client through :func:`get_client` and raise engine errors, which render as envelopes.
"""

from hutch.gateway.api.auth import TokenSet, Unauthorized, authorized, require_token
from hutch.gateway.api.body_limit import BodyLimitMiddleware
from hutch.gateway.api.deps import WorkflowNames, get_client, get_workflow_names
from hutch.gateway.api.envelope import ApiError, CursorInfo, Envelope, ErrorCode, ErrorEnvelope, ListEnvelope, ok
from hutch.gateway.api.errors import BodyTooLarge, install_error_handlers
from hutch.gateway.api.metrics import MetricsMiddleware, RequestMetrics

__all__ = [
    "ApiError",
    "BodyLimitMiddleware",
    "BodyTooLarge",
    "CursorInfo",
    "Envelope",
    "ErrorCode",
    "ErrorEnvelope",
    "ListEnvelope",
    "MetricsMiddleware",
    "RequestMetrics",
    "TokenSet",
    "Unauthorized",
    "WorkflowNames",
    "authorized",
    "get_client",
    "get_workflow_names",
    "install_error_handlers",
    "ok",
    "require_token",
]
