"""Retries decided by the error (SPEC §11): ``retries.retry_if`` and a wait taken from the error.

The wait an error asks for — ``RetryAfter(delay)``, any ``retry_after`` attribute, an HTTP 429/503
with ``Retry-After`` (httpx's ``HTTPStatusError``, raised here by a real httpx client over a mock
transport) — replaces the backoff's for that retry, capped by ``max_delay``. The owner records
where each wait came from (``wait``) and a ``retry_if`` refusal (``stop``) in the attempt's end
record, and ``describe()`` shows both; replay reads them and never asks the predicate again.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hutch import (
    AttemptDetail,
    InstanceDetail,
    RetryAfter,
    RetryConfig,
    StepDetail,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from hutch.consumers.retry import ErrorVerdict, error_wait_ms, judge_error, retry_due_ms
from hutch.errors import error_from_record, error_record
from hutch.history import Record
from hutch.status import build_detail
from hutch.testing import TestEnv

from tests.conftest import MakeClient

T = 1_700_000_000_000  # epoch ms
BACKOFF_MS = round(RetryConfig().wait_before_retry(1) * 1000)  # the default config's first wait: 10 s


def http_error(status: int, retry_after: str | None) -> httpx.HTTPStatusError:
    """The error a real httpx client raises for ``status`` (``raise_for_status``), with that header."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers))
    with httpx.Client(transport=transport) as client:
        response = client.get("https://api.example/charge")
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError(f"status {status} did not raise")


def only_step(detail: InstanceDetail, name: str) -> StepDetail:
    matching = [s for s in detail.steps if s.name == name]
    assert len(matching) == 1, [(s.name, s.count) for s in detail.steps]
    return matching[0]


def ms_between(a: datetime | None, b: datetime | None) -> int:
    assert a is not None and b is not None
    return round((b - a).total_seconds() * 1000)


# --------------------------------------------------------------------------- the wait an error asks for


class WithAttribute(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    ("error", "wait_ms"),
    [
        (RetryAfter(2), 2000),
        (RetryAfter(0.25), 250),
        (RetryAfter(timedelta(minutes=1)), 60_000),
        (RetryAfter(datetime.fromtimestamp((T + 90_000) / 1000, UTC)), 90_000),
        (RetryAfter(-5), 0),  # a wait in the past retries at once
        (WithAttribute(3), 3000),
        (WithAttribute(timedelta(seconds=1.5)), 1500),
        (WithAttribute("7"), 7000),
        (http_error(429, "2"), 2000),
        (http_error(503, " 120 "), 120_000),
        (http_error(429, format_datetime(datetime.fromtimestamp(T / 1000 + 30, UTC), usegmt=True)), 30_000),
        (http_error(503, "Tue, 14 Nov 2023 22:13:50 -0000"), 30_000),  # T + 30 s, a date of unknown origin: UTC
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_the_wait_an_error_asks_for(error: BaseException, wait_ms: int) -> None:
    assert error_wait_ms(error, T) == wait_ms


@pytest.mark.parametrize(
    "error",
    [
        ValueError("no delay here"),
        WithAttribute(None),
        WithAttribute(True),  # a bool is not a number of seconds
        WithAttribute(float("nan")),
        WithAttribute(datetime(2030, 1, 1)),  # naive: local time or UTC? not guessed
        WithAttribute(object()),
        WithAttribute("soon"),
        http_error(500, "2"),  # Retry-After means nothing on a 500
        http_error(404, "2"),
        http_error(429, None),
        http_error(429, "not a date"),
        WithAttribute("²"),  # a digit to str.isdigit, not to RFC 9110
    ],
    ids=repr,
)
def test_errors_that_ask_for_nothing_leave_the_wait_to_the_backoff(error: BaseException) -> None:
    assert error_wait_ms(error, T) is None


def test_an_error_shaped_like_an_http_error_is_read_without_httpx() -> None:
    class Response:
        status_code = 429
        headers = {"Retry-After": "4"}

    class ClientError(Exception):
        response = Response()

    class Broken(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("no response on this error")

    assert error_wait_ms(ClientError("429"), T) == 4000
    assert error_wait_ms(Broken(), T) is None  # reading the error never raises a second error


def test_retry_after_rejects_what_is_not_a_delay() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RetryAfter(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="seconds, a timedelta or an aware datetime"):
        RetryAfter("2 seconds")  # type: ignore[arg-type]
    assert str(RetryAfter(2)) == "retry in 2s"
    assert str(RetryAfter(1, "rate limited")) == "rate limited"


def test_a_retry_after_rebuilt_from_its_record_keeps_its_type() -> None:
    rebuilt = error_from_record(error_record(RetryAfter(2, "rate limited")))
    assert type(rebuilt) is RetryAfter and str(rebuilt) == "rate limited" and rebuilt.retry_after is None


# --------------------------------------------------------------------------- the policy (pure)


def test_the_errors_wait_replaces_the_backoff_capped_by_max_delay_and_the_longest_sleep() -> None:
    retries = RetryConfig(limit=3, delay=10, backoff="exponential")
    assert retry_due_ms(retries, 1, T, retryable=True) == (T + 10_000, "backoff")
    assert retry_due_ms(retries, 2, T, retryable=True, error_wait_ms=2000) == (T + 2000, "error")
    assert retry_due_ms(retries, 1, T, retryable=True, error_wait_ms=0) == (T, "error")
    capped = RetryConfig(limit=3, delay=10, max_delay=5)
    assert retry_due_ms(capped, 1, T, retryable=True, error_wait_ms=60_000) == (T + 5000, "error")
    assert retry_due_ms(retries, 1, T, retryable=True, error_wait_ms=10**20, longest_ms=86_400_000) == (
        T + 86_400_000,
        "error",
    )
    assert retry_due_ms(retries, 4, T, retryable=True, error_wait_ms=2000) is None  # no attempt left
    assert retry_due_ms(retries, 1, T, retryable=False, error_wait_ms=2000) is None


def test_retry_if_is_asked_only_while_attempts_are_left() -> None:
    asked: list[BaseException] = []

    def transient(error: BaseException) -> bool:
        asked.append(error)
        return isinstance(error, ConnectionError)

    retries = RetryConfig(limit=1, retry_if=transient)
    assert judge_error(retries, 1, ConnectionError("reset"), T) == ErrorVerdict()
    assert judge_error(retries, 1, ValueError("bad input"), T) == ErrorVerdict(refused=True)
    assert judge_error(retries, 1, RetryAfter(3), T) == ErrorVerdict(refused=True)  # retry_if decides first
    assert judge_error(retries, 2, ValueError("last"), T) == ErrorVerdict()  # nothing to decide: not asked
    assert [str(e) for e in asked] == ["reset", "bad input", "retry in 3s"]
    assert judge_error(RetryConfig(), 1, http_error(429, "2"), T) == ErrorVerdict(wait_ms=2000)


def test_a_retry_if_that_raises_refuses_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(error: BaseException) -> bool:
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR, logger="hutch.retry"):
        verdict = judge_error(RetryConfig(retry_if=broken), 1, ValueError("x"), T, step="step 'charge'#1")
    assert verdict == ErrorVerdict(refused=True)
    assert "retry_if of step 'charge'#1 raised" in caplog.text


def test_retry_if_stays_out_of_the_recorded_config() -> None:
    retries = RetryConfig(limit=2, retry_if=lambda e: True)
    assert retries.retry_if is not None
    assert "retry_if" not in retries.model_dump()
    assert RetryConfig.model_validate(retries.model_dump()).retry_if is None


def test_describe_reads_where_each_wait_came_from() -> None:
    err = {"name": "ValueError", "message": "x"}
    history: list[Record] = [
        {"k": "step", "n": "s", "c": 1, "g": 0, "t": T, "cfg": {}},
        {"k": "att", "n": "s", "c": 1, "a": 1, "t": T},
        # written before error-driven waits: no "wait", which was the backoff's
        {"k": "attend", "n": "s", "c": 1, "a": 1, "ok": False, "err": err, "retry_at": T + 10, "t": T + 1},
        {"k": "att", "n": "s", "c": 1, "a": 2, "t": T + 10},
        {
            "k": "attend",
            "n": "s",
            "c": 1,
            "a": 2,
            "ok": False,
            "err": err,
            "retry_at": T + 20,
            "wait": "error",
            "t": T + 11,
        },
        {"k": "att", "n": "s", "c": 1, "a": 3, "t": T + 20},
        {"k": "attend", "n": "s", "c": 1, "a": 3, "ok": False, "err": err, "t": T + 21, "stop": "retry_if"},
    ]
    meta = {"id": "i", "wf": "w", "status": "running", "created": T}
    attempts = build_detail(meta, history).steps[0].attempts
    assert [(a.retry_delay_from, a.retry_refused) for a in attempts] == [
        ("backoff", False),
        ("error", False),
        (None, True),
    ]


# --------------------------------------------------------------------------- on a runtime


class RateLimited(WorkflowEntrypoint):
    """Charges through an API that answers 429 ``Retry-After: 2`` to the first call."""

    calls: list[float] = []  # wall-clock start of each attempt's body

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def charge() -> int:
            type(self).calls.append(time.time())
            first = len(type(self).calls) == 1
            answer = httpx.Response(429, headers={"Retry-After": "2"}) if first else httpx.Response(200, json=42)
            transport = httpx.MockTransport(lambda request: answer)
            async with httpx.AsyncClient(transport=transport) as http:
                response = await http.post("https://api.example/charge")
            response.raise_for_status()
            value: int = response.json()
            return value

        return await step.do("charge", charge)  # the default config: 10 s exponential backoff


def assert_waited_two_seconds_from_the_error(first: AttemptDetail, second: AttemptDetail) -> None:
    assert first.success is False and first.error is not None
    assert first.error.name == "HTTPStatusError" and "429" in first.error.message
    assert ms_between(first.end, first.retry_at) == 2000 != BACKOFF_MS
    assert first.retry_delay_from == "error"
    assert second.success is True and second.retry_at is None and second.retry_delay_from is None
    assert second.start is not None and first.retry_at is not None and second.start >= first.retry_at


async def test_429_retry_after_2_waits_2_seconds_not_the_backoff_on_virtual_time() -> None:
    RateLimited.calls = []
    async with TestEnv({"charge": RateLimited}) as env:
        instance = await env.create("charge")
        assert await instance.output() == 42
        first, second = only_step(await instance.describe(), "charge").attempts
        assert_waited_two_seconds_from_the_error(first, second)

        history = await env.client._store.history(instance._partition, "charge", instance.id)
        ended = [r for r in history if r["k"] == "attend" and not r["ok"]]
        assert [(r.get("wait"), r.get("retry_at", 0) - r["t"]) for r in ended] == [("error", 2000)]


async def test_429_retry_after_2_waits_2_seconds_measured(make_client: MakeClient) -> None:
    RateLimited.calls = []
    client = await make_client({"charge": RateLimited})
    instance = await client.workflow("charge").create()
    assert (await instance.wait(timeout=15)).output == 42

    first, second = only_step(await instance.describe(), "charge").attempts
    assert_waited_two_seconds_from_the_error(first, second)
    assert first.retry_at is not None
    # The retry ran when the recorded due time came: not before it, and nowhere near the backoff's 10 s.
    started = datetime.fromtimestamp(RateLimited.calls[1], UTC)
    lateness_s = (started - first.retry_at).total_seconds()
    assert -0.05 <= lateness_s < 1.5, lateness_s
    assert RateLimited.calls[1] - RateLimited.calls[0] < BACKOFF_MS / 1000 / 2


async def test_an_http_date_retry_after_is_a_time_to_retry_at() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)

    class Unavailable(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def call(ctx: Any) -> str:
                if ctx.attempt == 1:
                    raise http_error(503, format_datetime(at + timedelta(minutes=5), usegmt=True))
                return "up"

            return await step.do("call", call)

    async with TestEnv({"svc": Unavailable}, start_time=at) as env:
        instance = await env.create("svc")
        assert await instance.output() == "up"
        first, _ = only_step(await instance.describe(), "call").attempts
        assert first.retry_delay_from == "error" and first.retry_at is not None
        # the wait was the date minus the failure's time: due at the date (plus the time the owner took)
        assert timedelta(0) <= first.retry_at - (at + timedelta(minutes=5)) < timedelta(seconds=1)


async def test_a_wait_from_the_error_is_capped_by_max_delay_and_the_last_failure_reaches_run(
    make_client: MakeClient,
) -> None:
    class Impatient(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def busy() -> None:
                raise RetryAfter(timedelta(hours=1), "come back in an hour")

            try:
                await step.do("busy", busy, config={"retries": {"limit": 2, "delay": 0.01, "max_delay": 0.05}})
            except RetryAfter as exc:
                return [type(exc).__name__, str(exc), exc.retry_after]
            return "no error?"

    client = await make_client({"impatient": Impatient})
    instance = await client.workflow("impatient").create()
    final = await instance.wait(timeout=15)
    assert final.output == ["RetryAfter", "come back in an hour", None]
    attempts = only_step(await instance.describe(), "busy").attempts
    assert [(ms_between(a.end, a.retry_at) if a.retry_at else None, a.retry_delay_from) for a in attempts] == [
        (50, "error"),
        (50, "error"),
        (None, None),
    ]


async def test_retry_if_refusing_fails_the_step_now_and_replay_never_asks_again(make_client: MakeClient) -> None:
    asked: list[str] = []
    bodies: list[str] = []
    runs = 0

    def transient(error: BaseException) -> bool:
        asked.append(type(error).__name__)
        return isinstance(error, ConnectionError)

    config = {"retries": {"limit": 5, "delay": 0.01, "retry_if": transient}}

    class Picky(WorkflowEntrypoint):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            nonlocal runs
            runs += 1

            def flaky(ctx: Any) -> str:
                bodies.append(f"flaky#{ctx.attempt}")
                if ctx.attempt == 1:
                    raise ConnectionError("reset")
                return "ok"

            def invalid() -> None:
                bodies.append("invalid")
                raise ValueError("card number is malformed")

            first = await step.do("flaky", flaky, config=config)
            try:
                await step.do("invalid", invalid, config=config)
            except ValueError as exc:
                second = f"refused: {exc}"
            await step.sleep("evict me", 0.05)  # the next wake-up replays run() from history
            return [first, second, await step.do("after", lambda: "done", config=config)]

    client = await make_client({"picky": Picky})
    client.runtime_worker.orchestrator.warm_horizon_ms = 0
    instance = await client.workflow("picky").create()
    final = await instance.wait(timeout=15)

    assert final.output == ["ok", "refused: card number is malformed", "done"]
    assert bodies == ["flaky#1", "flaky#2", "invalid"]  # refused at once: one attempt of five left unused
    assert asked == ["ConnectionError", "ValueError"]  # once per failure, never on replay
    assert runs >= 2, "the sleep evicted the instance and run() was replayed"
    detail = await instance.describe()
    flaky_attempts = only_step(detail, "flaky").attempts
    assert [(a.retry_delay_from, a.retry_refused) for a in flaky_attempts] == [("backoff", False), (None, False)]
    invalid_step = only_step(detail, "invalid")
    assert [(a.retry_at, a.retry_refused) for a in invalid_step.attempts] == [(None, True)]
    assert invalid_step.error is not None and (invalid_step.error.name, invalid_step.error.message) == (
        "ValueError",
        "card number is malformed",
    )
    assert invalid_step.config is not None and "retry_if" not in invalid_step.config["retries"]
