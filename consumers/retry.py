"""The retry policy of a step's failed attempt, as pure functions of its config, attempt count and error.

``RetryConfig.limit`` counts retries, so a step makes at most ``limit + 1`` attempts; the wait
before each retry is the config's (``RetryConfig.wait_before_retry``) unless the error names one.

The decision is split where the facts are. The worker that ran the attempt holds the exception:
it asks the step's ``retry_if`` and reads the wait the error asks for (:func:`judge_error`), and
its :class:`~hutch.consumers.items.StepDone` carries the verdict. The instance's owner sees only
that outcome; it turns it into a due time (:func:`retry_due_ms`) and records the due time and where
its wait came from in the attempt's end record. Replay and a new owner read that record: neither
ever asks the predicate again, so a predicate whose answer changes (new code, another clock)
cannot change a recorded decision.

What an error's wait is (:func:`error_wait_ms`), first found wins:

* a ``retry_after`` attribute (``RetryAfter(delay)`` has one): seconds, a ``timedelta``, or an aware
  ``datetime`` to retry at;
* an HTTP response error with status 429 or 503 and a ``Retry-After`` header, in seconds or as an
  HTTP date: anything with ``.response.status_code`` and ``.response.headers`` (httpx's
  ``HTTPStatusError``, requests' ``HTTPError``), recognised by shape so httpx is never imported.

A wait from the error is capped by ``max_delay`` like the backoff's, and is never negative.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from hutch.config import RetryConfig
from hutch.history import RetryWait

log = logging.getLogger("hutch.retry")

_RETRY_AFTER_STATUSES = frozenset({429, 503})  # the statuses RFC 9110 gives Retry-After a meaning on


@dataclass(frozen=True, slots=True)
class ErrorVerdict:
    """What a failed attempt's error says about retrying, decided where the exception is.

    Attributes:
        refused: the step's ``retry_if`` answered False (or raised): the step fails now.
        wait_ms: the wait the error asked for, uncapped; None: the backoff decides.
    """

    refused: bool = False
    wait_ms: int | None = None


NO_VERDICT = ErrorVerdict()


def attempts_left(retries: RetryConfig, attempts: int) -> bool:
    """Whether a step that made ``attempts`` attempts may make another."""
    return attempts < retries.limit + 1


def judge_error(
    retries: RetryConfig, attempts: int, error: BaseException, now_ms: int, *, step: str = "step"
) -> ErrorVerdict:
    """The verdict on a retryable ``error`` that ended attempt ``attempts`` at ``now_ms``.

    Nothing is asked when no attempt is left. A ``retry_if`` that raises refuses (the step's
    error is what gets recorded; the predicate's is logged): a retry nobody decided on is not made.
    """
    if not attempts_left(retries, attempts):
        return NO_VERDICT
    if retries.retry_if is not None:
        try:
            retry = bool(retries.retry_if(error))
        except Exception:
            log.exception("retry_if of %s raised on %r; the step fails without further attempts", step, error)
            retry = False
        if not retry:
            return ErrorVerdict(refused=True)
    wait_ms = error_wait_ms(error, now_ms)
    return NO_VERDICT if wait_ms is None else ErrorVerdict(wait_ms=wait_ms)


def retry_due_ms(
    retries: RetryConfig,
    attempts: int,
    now_ms: int,
    *,
    retryable: bool,
    error_wait_ms: int | None = None,
    longest_ms: int | None = None,
) -> tuple[int, RetryWait] | None:
    """When attempt ``attempts + 1`` of a step whose attempt ``attempts`` failed at ``now_ms`` is due.

    ``error_wait_ms`` is the wait the error asked for (:func:`judge_error`): it replaces the
    backoff's, capped by ``max_delay`` and by ``longest_ms`` (the longest sleep the deployment
    allows: an error's word does not get to park a step for centuries). Returns the due time and
    where its wait came from; None: the step fails for good (the error is not retryable or was
    refused, or no attempt is left).
    """
    if not retryable or not attempts_left(retries, attempts):
        return None
    if error_wait_ms is None:
        return now_ms + round(retries.wait_before_retry(attempts) * 1000), "backoff"
    caps = [error_wait_ms, *([] if longest_ms is None else [longest_ms])]
    if retries.max_delay is not None:
        caps.append(round(retries.max_delay * 1000))
    return now_ms + min(caps), "error"


def error_wait_ms(error: BaseException, now_ms: int) -> int | None:
    """The wait (ms from ``now_ms``, at least 0) ``error`` asks for before the next attempt, if any.

    A value of an unexpected type or form is ignored (the backoff decides): the error is already
    the step's failure, and reading it must not raise a second one.
    """
    value = _attribute(error, "retry_after")
    if value is None:
        value = _http_retry_after(error)
    if value is None:
        return None
    wait_s = _seconds_from(value, now_ms)
    if wait_s is None:
        log.warning("ignoring the retry delay %r of %r: not seconds, a timedelta or an aware datetime", value, error)
        return None
    return max(0, round(wait_s * 1000))


def _seconds_from(value: Any, now_ms: int) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            return None  # local time or UTC? guessing could be off by hours
        seconds = value.timestamp() - now_ms / 1000
    elif isinstance(value, str):
        return _header_seconds(value, now_ms)
    else:
        return None
    return seconds if math.isfinite(seconds) else None


def _header_seconds(header: str, now_ms: int) -> float | None:
    """A ``Retry-After`` value: delay-seconds, or an HTTP date (RFC 9110 §10.2.3)."""
    text = header.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": the date is UTC, its source is unknown (RFC 5322 §3.3)
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now_ms / 1000


def _http_retry_after(error: BaseException) -> str | None:
    """The ``Retry-After`` header of a 429/503 response the error carries (httpx's or requests' shape)."""
    response = _attribute(error, "response")
    status = _attribute(response, "status_code")
    if not isinstance(status, int) or status not in _RETRY_AFTER_STATUSES:
        return None
    headers = _attribute(response, "headers")
    try:
        value = headers.get("Retry-After") if headers is not None else None
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _attribute(obj: object, name: str) -> Any:
    # A property of a third-party error may raise (httpx's RequestError.request does when unset).
    try:
        return getattr(obj, name, None)
    except Exception:
        return None
