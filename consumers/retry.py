"""The retry policy of a step's failed attempt, as pure functions of its config and attempt count.

``RetryConfig.limit`` counts retries, so a step makes at most ``limit + 1`` attempts; the wait
before each retry is the config's (``RetryConfig.wait_before_retry``).
"""

from __future__ import annotations

from hutch.config import RetryConfig


def attempts_left(retries: RetryConfig, attempts: int) -> bool:
    """Whether a step that made ``attempts`` attempts may make another."""
    return attempts < retries.limit + 1


def retry_due_ms(retries: RetryConfig, attempts: int, now_ms: int, *, retryable: bool) -> int | None:
    """When attempt ``attempts + 1`` of a step whose attempt ``attempts`` failed at ``now_ms`` is due.

    None: the step fails for good (the error is not retryable, or no attempt is left).
    """
    if not retryable or not attempts_left(retries, attempts):
        return None
    return now_ms + round(retries.wait_before_retry(attempts) * 1000)
