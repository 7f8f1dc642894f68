"""Retries: which failures are retried, how long each wait is, when the loop gives up.

* The decisions as pure functions (``is_retryable``, ``backoff``, ``retry_delay``,
  ``parse_retry_after``): tables of cases with a frozen clock and fixed draws, and a
  fuzz of ``Retry-After`` values.
* The one loop (``Retrier``) with its sleep, clock and random draw injected.
* Through a client with aioresponses standing in for the network.
* The fault matrix: both clients, the real transport, the fake server's injected
  faults. Every case asserts the exact outcome: the result after N retries with the
  waits the retry loop asked for (recorded by ``instant_retries``), or the typed error
  with its status, request id, ``retry_after`` and ``attempts``; how many requests the
  fake received (so nothing was retried that must not be); and, where a deadline is
  configured, that the call ends within it. No mocks of our own code.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import math
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phala_kms import (
    APITimeoutError,
    AsyncKMSClient,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    errors,
)
from phala_kms._responses import parse_retry_after
from phala_kms._retry import Retrier, backoff, is_retryable, retry_delay
from phala_kms.errors import (
    APIStatusError,
    ConnectError,
    ConnectRefusedError,
    DNSError,
    TLSError,
)
from phala_kms.testing import (
    DropConnectionFault,
    FakeKMSServer,
    GatewayHTMLFault,
    HugeBodyFault,
    LatencyFault,
    NonJSONFault,
    RedirectFault,
    ResetMidBodyFault,
    StatusFault,
    TruncatedJSONFault,
    WrongShapeFault,
    instant_retries,
)
from tests.helpers import API_KEY, MOCK_BASE, MakeClient, load_fixture

NOW = 1_800_000_000.0  # a frozen clock: 2027-01-15T08:00:00Z
APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"
PUBKEY = {"public_key": "ab" * 32, "signature": "cd" * 65}


# --------------------------------------------------------------------------- Retry-After


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        (http_date(NOW + 30), 30.0),
        (http_date(NOW - 30), 0.0),  # a date in the past: retry now
        ("Wed, 99 Foo 2026 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

retry_after_values = st.one_of(
    st.text(max_size=40),
    st.floats().map(str),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: format_datetime(d, usegmt=True)),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1e400",
            "nan",
            "inf",
            "Infinity",
            "0x10",
            "1_000",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00",
            "Wed, 21 Oct 2015 07:28:00 +0100",
            "Wed, 31 Feb 2015 07:28:00 GMT",
            "Wed, 21 Oct 99999 07:28:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Fri, 31 Dec 9999 23:59:59 -2359",
        ]
    ),
)


@FUZZ
@given(value=retry_after_values)
@example(value=format_datetime(datetime.now(timezone.utc) + timedelta(days=3650), usegmt=True))
def test_parse_retry_after_is_none_or_a_finite_non_negative_wait(value: str) -> None:
    wait = parse_retry_after(value, now=NOW)
    assert wait is None or (isinstance(wait, float) and math.isfinite(wait) and wait >= 0)


# --------------------------------------------------------------------------- decisions


def status_error(cls: type[APIStatusError], status: int, **kw: Any) -> APIStatusError:
    return cls(f"{status}", status=status, **kw)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (status_error(APIStatusError, 408), True),
        (status_error(RateLimitError, 429), True),
        (status_error(ServerError, 500), True),
        (status_error(ServerError, 502), True),
        (status_error(ServerError, 503), True),
        (status_error(ServerError, 504), True),
        (status_error(ServerError, 501), False),
        (status_error(ConflictError, 409), True),
        (status_error(ConflictError, 409, error_code="ERR-03-001"), False),
        (status_error(BadRequestError, 400), False),
        (status_error(AuthenticationError, 401), False),
        (status_error(NotFoundError, 404), False),
        (ConnectRefusedError("refused"), True),
        (ConnectionLostError("lost"), True),
        (APITimeoutError("slow"), True),
        (DNSError("dns"), False),
        (ConnectError("unreachable"), True),
        (TLSError("tls"), False),
        (RedirectError("302", status=302), False),
        (ResponseValidationError("bad", status=200), False),
    ],
)
def test_is_retryable(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable  # type: ignore[arg-type]


POLICY_TABLE = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=4.0, jitter=0.25)


@pytest.mark.parametrize(
    ("retry_number", "rand", "expected"),
    [
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (4, 0.0, 4.0),
        (5, 0.0, 4.0),  # capped at max_backoff
        (60, 0.0, 4.0),  # no overflow for large retry numbers
        (1, 0.5, 0.5 * (1 - 0.25 * 0.5)),
        (3, 0.999, 2.0 * (1 - 0.25 * 0.999)),
    ],
)
def test_backoff(retry_number: int, rand: float, expected: float) -> None:
    assert backoff(retry_number, POLICY_TABLE, rand=rand) == pytest.approx(expected)


def test_backoff_without_jitter_is_deterministic() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.0)
    assert [backoff(n, policy, rand=0.9) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


UNAVAILABLE = status_error(ServerError, 503)


@pytest.mark.parametrize(
    ("error", "retry_number", "policy", "elapsed", "expected"),
    [
        # plain backoff
        (UNAVAILABLE, 1, POLICY_TABLE, 0.0, 0.5),
        (UNAVAILABLE, 3, POLICY_TABLE, 0.0, 2.0),
        # retries used up
        (UNAVAILABLE, 6, POLICY_TABLE, 0.0, None),
        (UNAVAILABLE, 1, RetryPolicy(max_retries=0), 0.0, None),
        # not retryable at all
        (status_error(NotFoundError, 404), 1, POLICY_TABLE, 0.0, None),
        # Retry-After wins over backoff, exactly
        (status_error(RateLimitError, 429, retry_after=7.0), 1, POLICY_TABLE, 0.0, 7.0),
        (status_error(RateLimitError, 429, retry_after=0.0), 4, POLICY_TABLE, 0.0, 0.0),
        # Retry-After above the cap: give up and let the caller see retry_after
        (status_error(RateLimitError, 429, retry_after=61.0), 1, POLICY_TABLE, 0.0, None),
        (status_error(RateLimitError, 429, retry_after=60.0), 1, POLICY_TABLE, 0.0, 60.0),
        # the deadline: a wait that would end at or past it is not started
        (UNAVAILABLE, 1, RetryPolicy(deadline=10.0, jitter=0.0), 9.4, 0.5),
        (UNAVAILABLE, 1, RetryPolicy(deadline=10.0, jitter=0.0), 9.5, None),
        (
            status_error(RateLimitError, 429, retry_after=5.0),
            1,
            RetryPolicy(deadline=4.0),
            0.0,
            None,
        ),
    ],
)
def test_retry_delay(
    error: Exception,
    retry_number: int,
    policy: RetryPolicy,
    elapsed: float,
    expected: float | None,
) -> None:
    got = retry_delay(
        error,  # type: ignore[arg-type]
        retry_number=retry_number,
        policy=policy,
        elapsed=elapsed,
        rand=0.0,
    )
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"jitter": 1.5},
        {"initial_backoff": -1},
        {"max_backoff": float("nan")},
        {"deadline": -0.1},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the loop


class FakeClock:
    """A clock that moves only when the loop sleeps (or an attempt says it took time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


def retrier(policy: RetryPolicy, clock: FakeClock, rand: float = 0.0) -> Retrier:
    return Retrier(policy, sleep=clock.sleep, clock=clock, rand=lambda: rand)


async def test_the_loop_retries_until_an_attempt_succeeds() -> None:
    clock = FakeClock()
    calls: list[tuple[int, float]] = []

    async def attempt(number: int, timeout: float) -> str:
        calls.append((number, timeout))
        if number < 3:
            raise ServerError("503", status=503, attempts=number)
        return "ok"

    policy = RetryPolicy(max_retries=3, initial_backoff=0.5, jitter=0.0)
    got = await retrier(policy, clock).run(attempt, timeout=7.0, describe="GET x")
    assert got == "ok"
    assert calls == [(1, 7.0), (2, 7.0), (3, 7.0)]  # numbered from 1, the full timeout
    assert clock.slept == [0.5, 1.0]


async def test_the_loop_gives_up_with_the_last_error_and_checks_before_each_attempt() -> None:
    clock = FakeClock()
    checks: list[int] = []

    async def attempt(number: int, timeout: float) -> None:
        raise ServerError(f"503 #{number}", status=503, attempts=number)

    policy = RetryPolicy(max_retries=2, initial_backoff=0.1, jitter=0.5)
    with pytest.raises(ServerError) as caught:
        await retrier(policy, clock, rand=0.5).run(
            attempt, timeout=1.0, describe="GET x", check=lambda: checks.append(1)
        )
    assert caught.value.attempts == 3 and str(caught.value) == "503 #3"
    assert clock.slept == pytest.approx([0.075, 0.15])  # the injected draw sets the jitter
    assert len(checks) == 3


async def test_the_loop_stops_when_the_check_raises() -> None:
    clock = FakeClock()
    sent: list[int] = []

    async def attempt(number: int, timeout: float) -> None:
        sent.append(number)
        raise ServerError("503", status=503, attempts=number)

    def check() -> None:
        if sent:
            raise errors.ClientStateError("closed")

    with pytest.raises(errors.ClientStateError):
        await retrier(RetryPolicy(initial_backoff=0), clock).run(
            attempt, timeout=1.0, describe="GET x", check=check
        )
    assert sent == [1]


async def test_the_deadline_bounds_the_waits_and_shortens_attempts() -> None:
    # Waits 0.05, 0.1, 0.2, 0.2, 0.2, 0.2 (0.95 s): the 7th attempt gets the 0.15 s left,
    # and the next 0.2 s wait would end past the deadline, so it is not started.
    clock = FakeClock()
    timeouts: list[float] = []

    async def attempt(number: int, timeout: float) -> None:
        timeouts.append(timeout)
        raise ServerError("503", status=503, attempts=number)

    policy = RetryPolicy(
        max_retries=100, initial_backoff=0.05, max_backoff=0.2, jitter=0.0, deadline=1.1
    )
    with pytest.raises(ServerError) as caught:
        await retrier(policy, clock).run(attempt, timeout=30.0, describe="GET x")
    assert caught.value.attempts == 7
    assert clock.slept == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2, 0.2])
    assert timeouts[0] == pytest.approx(1.1)
    assert timeouts[-1] == pytest.approx(1.1 - 0.95)


# --------------------------------------------------------------------------- aioresponses


async def test_retries_then_succeeds(
    mocked: Any,
    mock_client: AsyncKMSClient,
    mock_waits: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"{MOCK_BASE}/kms/phala/pubkey/{APP_ID}"
    mocked.get(url, status=503, body="down")
    mocked.get(url, status=429, payload={"detail": "slow down"}, headers={"Retry-After": "2"})
    mocked.get(url, status=409, payload={"detail": "busy"})  # no error_code: transient
    mocked.get(url, payload=PUBKEY)
    with caplog.at_level(logging.INFO, logger="phala_kms"):
        key = await mock_client.get_app_env_encrypt_pubkey("phala", APP_ID)
    assert key.public_key == "ab" * 32
    assert mock_waits == [0.0, 2.0, 0.0]
    retry_lines = [r.getMessage() for r in caplog.records if r.name == "phala_kms"]
    assert len(retry_lines) == 3
    assert all("retrying GET" in line for line in retry_lines)
    assert all(API_KEY not in line for line in retry_lines)


async def test_retries_exhausted_raise_last_error(
    mocked: Any, mock_client: AsyncKMSClient, mock_waits: list[float]
) -> None:
    url = f"{MOCK_BASE}/kms/phala"
    mocked.get(url, status=502, body="<html><title>502 Bad Gateway</title></html>", repeat=True)
    with pytest.raises(errors.ServerError) as info:
        await mock_client.get_kms_info("phala")
    assert info.value.status == 502
    assert info.value.attempts == 4
    assert len(mock_waits) == 3


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (400, {"detail": "unsupported chain"}, errors.BadRequestError),
        (401, {"detail": "bad key"}, errors.AuthenticationError),
        (403, {"detail": "no"}, errors.PermissionDeniedError),
        (404, load_fixture("error_structured.json"), errors.NotFoundError),
        (409, {"error_code": "ERR-03-001", "message": "taken"}, errors.ConflictError),
        (422, load_fixture("error_validation_422.json"), errors.UnprocessableEntityError),
        (501, {"detail": "nope"}, errors.ServerError),
    ],
)
async def test_non_retryable_statuses_are_not_retried(
    mocked: Any,
    mock_client: AsyncKMSClient,
    mock_waits: list[float],
    status: int,
    body: Any,
    cls: type,
) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", status=status, payload=body, repeat=True)
    with pytest.raises(cls) as info:
        await mock_client.get_kms_info("phala")
    assert info.value.attempts == 1
    assert mock_waits == []
    assert len(mocked.sent()) == 1


async def test_max_retries_zero_disables(mocked: Any) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", status=503, repeat=True)
    async with AsyncKMSClient(API_KEY, MOCK_BASE, max_retries=0) as c:
        with instant_retries(c) as waits, pytest.raises(errors.ServerError):
            await c.get_kms_info("phala")
    assert waits == []
    assert len(mocked.sent()) == 1


async def test_retry_after_beyond_cap_is_raised_at_once(
    mocked: Any, mock_client: AsyncKMSClient, mock_waits: list[float]
) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", status=429, headers={"Retry-After": "3600"}, repeat=True)
    with pytest.raises(errors.RateLimitError) as info:
        await mock_client.get_kms_info("phala")
    assert info.value.retry_after == 3600.0
    assert mock_waits == []


# --------------------------------------------------------------------------- the fault matrix

# Backoff 0.1, 0.2, 0.4 s (no jitter): the recorded waits are exact.
POLICY = RetryPolicy(max_retries=3, initial_backoff=0.1, max_backoff=1.0, jitter=0.0)
BACKOFFS = [0.1, 0.2, 0.4]
ONE_MIB = 1024 * 1024


def last_request_id(server: FakeKMSServer) -> str:
    return server.requests[-1].request_id


RETRIED: list[Any] = [
    pytest.param(StatusFault(503), BACKOFFS[:2], id="503"),
    pytest.param(StatusFault(500), BACKOFFS[:2], id="500"),
    pytest.param(StatusFault(408), BACKOFFS[:2], id="408"),
    pytest.param(StatusFault(409), BACKOFFS[:2], id="409-without-error-code"),
    pytest.param(GatewayHTMLFault(502), BACKOFFS[:2], id="502-html"),
    pytest.param(GatewayHTMLFault(504), BACKOFFS[:2], id="504-html"),
    pytest.param(
        StatusFault(429, error_code="ERR-05-002", retry_after=2), [2.0, 2.0], id="429-seconds"
    ),
    pytest.param(StatusFault(503, retry_after=1.5), [1.5, 1.5], id="503-retry-after"),
    pytest.param(StatusFault(429, retry_after="soon"), BACKOFFS[:2], id="429-bad-retry-after"),
    pytest.param(
        StatusFault(429, retry_after=datetime(2000, 1, 1, tzinfo=timezone.utc)),
        [0.0, 0.0],
        id="429-date-in-the-past",
    ),
    pytest.param(ResetMidBodyFault(0.5), BACKOFFS[:2], id="reset-mid-body"),
    pytest.param(ResetMidBodyFault(0.5, rst=True), BACKOFFS[:2], id="reset-mid-body-rst"),
    pytest.param(ResetMidBodyFault(0.0), BACKOFFS[:2], id="reset-after-headers"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("fault", "expected_waits"), RETRIED)
def test_transient_fault_is_retried_then_succeeds(
    make_client: MakeClient, server: FakeKMSServer, fault: Any, expected_waits: list[float]
) -> None:
    server.inject("kms_info", fault, times=2)
    kms = make_client(retry_policy=POLICY)
    info = kms.get_kms_info("phala")
    assert info.slug == "phala"
    assert kms.waits == pytest.approx(expected_waits)
    assert server.route_counts == {"kms_info": 3}


def test_retried_503_through_the_real_transport(kms: Any, server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503), times=2)
    info = kms.get_kms_info("phala")
    assert info.slug == "phala"
    assert server.route_counts["kms_info"] == 3


EXHAUSTED: list[Any] = [
    pytest.param(StatusFault(503), ServerError, 503, None, id="503"),
    pytest.param(StatusFault(500, message="boom"), ServerError, 500, None, id="500"),
    pytest.param(StatusFault(408), errors.APIStatusError, 408, None, id="408"),
    pytest.param(StatusFault(409), ConflictError, 409, None, id="409-without-error-code"),
    pytest.param(GatewayHTMLFault(502), ServerError, 502, None, id="502-html"),
    pytest.param(GatewayHTMLFault(504), ServerError, 504, None, id="504-html"),
    pytest.param(
        StatusFault(429, error_code="ERR-05-002", retry_after=3),
        RateLimitError,
        429,
        3.0,
        id="429-seconds",
    ),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("fault", "error_type", "status", "retry_after"), EXHAUSTED)
def test_retries_exhausted_raise_the_last_typed_error(
    make_client: MakeClient,
    server: FakeKMSServer,
    fault: Any,
    error_type: type[errors.APIStatusError],
    status: int,
    retry_after: float | None,
) -> None:
    server.inject("kms_info", fault, times=None)
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(error_type) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert type(err) is error_type
    assert err.status == status
    assert err.attempts == 4
    assert err.retry_after == retry_after
    assert err.request_id == last_request_id(server)  # the last response's id
    assert err.method == "GET" and err.url == server.base_url + "/kms/phala"
    assert server.route_counts == {"kms_info": 4}
    assert kms.waits == ([retry_after] * 3 if retry_after is not None else BACKOFFS)
    if isinstance(fault, GatewayHTMLFault):
        assert "<html>" in err.body
        assert f"{status} {'Bad Gateway' if status == 502 else 'Gateway Timeout'}" in str(err)
    if isinstance(fault, StatusFault) and fault.error_code:
        assert err.error_code == fault.error_code


@pytest.mark.timeout(20)
def test_retry_after_as_http_date(make_client: MakeClient, server: FakeKMSServer) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    server.inject("kms_info", StatusFault(429, error_code="ERR-05-002", retry_after=when))
    kms = make_client(retry_policy=POLICY)
    assert kms.get_kms_info("phala").slug == "phala"
    (wait,) = kms.waits
    assert 27.0 < wait <= 30.0  # the date has whole seconds
    assert server.route_counts == {"kms_info": 2}


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "retry_after",
    [120, datetime.now(timezone.utc) + timedelta(hours=1)],
    ids=["seconds", "http-date"],
)
def test_retry_after_beyond_the_cap_is_raised_at_once(
    make_client: MakeClient, server: FakeKMSServer, retry_after: Any
) -> None:
    server.inject("kms_info", StatusFault(429, error_code="ERR-05-002", retry_after=retry_after))
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(RateLimitError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.attempts == 1 and err.status == 429 and err.error_code == "ERR-05-002"
    assert err.retry_after is not None and err.retry_after > POLICY.max_retry_after
    assert err.request_id == last_request_id(server)
    assert kms.waits == []
    assert server.route_counts == {"kms_info": 1}


@pytest.mark.timeout(20)
def test_a_dropped_connection_is_retried_by_aiohttp_and_then_by_us(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    # aiohttp silently re-sends an idempotent request once when the server closes the
    # connection before answering; our retries count client-visible attempts only.
    server.inject("kms_info", DropConnectionFault(), times=None)
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(ConnectionLostError) as caught:
        kms.get_kms_info("phala")
    assert caught.value.attempts == 4
    assert kms.waits == BACKOFFS
    assert server.route_counts == {"kms_info": 8}


NOT_RETRIED: list[Any] = [
    pytest.param(
        StatusFault(409, error_code="ERR-03-001", message="already exists"),
        ConflictError,
        409,
        id="409-with-error-code",
    ),
    pytest.param(
        StatusFault(409, error_code="ERR-03-001", nested=True),
        ConflictError,
        409,
        id="409-with-nested-error-code",
    ),
    pytest.param(StatusFault(404, error_code="ERR-02-011"), NotFoundError, 404, id="404"),
    pytest.param(StatusFault(400), BadRequestError, 400, id="400"),
    pytest.param(StatusFault(401), AuthenticationError, 401, id="401"),
    pytest.param(StatusFault(403), PermissionDeniedError, 403, id="403"),
    pytest.param(
        StatusFault(422, body={"detail": [{"loc": ["path", "kms_id"], "msg": "bad", "type": "x"}]}),
        errors.UnprocessableEntityError,
        422,
        id="422",
    ),
    pytest.param(StatusFault(501), ServerError, 501, id="501"),
    pytest.param(TruncatedJSONFault(0.5), ResponseValidationError, 200, id="truncated-json"),
    pytest.param(TruncatedJSONFault(0.0), ResponseValidationError, 200, id="empty-body"),
    pytest.param(NonJSONFault("OK"), ResponseValidationError, 200, id="non-json-200"),
    pytest.param(
        NonJSONFault("<html>hi</html>", content_type="text/html"),
        ResponseValidationError,
        200,
        id="html-200",
    ),
    pytest.param(NonJSONFault("[" * 100_000), ResponseValidationError, 200, id="deep-json-200"),
    pytest.param(WrongShapeFault(), ResponseValidationError, 200, id="wrong-shape-200"),
    pytest.param(WrongShapeFault(body=[1, 2]), ResponseValidationError, 200, id="array-200"),
    pytest.param(
        WrongShapeFault(body={"id": 1, "url": "u", "version": "v"}),
        ResponseValidationError,
        200,
        id="wrong-type-200",
    ),
    pytest.param(
        HugeBodyFault(16 * ONE_MIB + 1), ResponseValidationError, 200, id="huge-body-length"
    ),
    pytest.param(
        HugeBodyFault(16 * ONE_MIB + 1, chunked=True),
        ResponseValidationError,
        200,
        id="huge-body-chunked",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("fault", "error_type", "status"), NOT_RETRIED)
def test_deterministic_failures_are_not_retried(
    make_client: MakeClient,
    server: FakeKMSServer,
    fault: Any,
    error_type: type[errors.APIResponseError],
    status: int,
) -> None:
    server.inject("kms_info", fault, times=None)
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(error_type) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert type(err) is error_type
    assert err.status == status
    assert err.attempts == 1
    assert err.request_id == last_request_id(server)
    assert kms.waits == []
    assert server.route_counts == {"kms_info": 1}
    if isinstance(fault, StatusFault) and fault.error_code:
        assert isinstance(err, errors.APIStatusError) and err.error_code == fault.error_code
    if isinstance(err, ResponseValidationError):
        assert err.problems or "exceeds" in str(err)
    if isinstance(fault, HugeBodyFault):
        assert "exceeds the 16777216-byte limit" in str(err)
        assert err.body == ""
    if isinstance(fault, (TruncatedJSONFault, NonJSONFault)):
        assert err.problems[0].startswith("not JSON")
        assert err.model == "KMSInfo"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_is_an_error(
    make_client: MakeClient, server: FakeKMSServer, status: int
) -> None:
    target = "https://elsewhere.invalid/api/v1/kms/phala"
    server.inject("kms_info", RedirectFault(status, location=target), times=None)
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(RedirectError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.status == status and err.location == target and err.attempts == 1
    assert err.request_id == last_request_id(server)
    assert kms.waits == []
    assert server.route_counts == {"kms_info": 1}


@pytest.mark.timeout(20)
def test_read_timeout_is_retried_then_succeeds(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    server.inject("kms_info", LatencyFault(3.0), times=1)
    kms = make_client(retry_policy=POLICY, timeout=0.3)
    assert kms.get_kms_info("phala").slug == "phala"
    assert kms.waits == BACKOFFS[:1]
    assert server.route_counts == {"kms_info": 2}


@pytest.mark.timeout(20)
def test_read_timeouts_exhausted(make_client: MakeClient, server: FakeKMSServer) -> None:
    server.inject("kms_info", LatencyFault(5.0), times=None)
    kms = make_client(timeout=0.3, retry_policy=attrs.evolve(POLICY, max_retries=1))
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as caught:
        kms.get_kms_info("phala")
    elapsed = time.monotonic() - started
    err = caught.value
    assert isinstance(err, TimeoutError)
    assert err.timeout == pytest.approx(0.3)
    assert err.attempts == 2
    assert err.host == "127.0.0.1" and err.port == server.port
    assert kms.waits == BACKOFFS[:1]
    assert server.route_counts == {"kms_info": 2}
    assert elapsed < 4.0  # two 0.3 s attempts, not the server's 5 s


@pytest.mark.timeout(20)
def test_connect_refused_is_retried_then_raised(make_client: MakeClient, closed_port: int) -> None:
    kms = make_client(retry_policy=POLICY, base_url=f"http://127.0.0.1:{closed_port}/api/v1")
    with pytest.raises(ConnectRefusedError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.attempts == 4
    assert (err.host, err.port) == ("127.0.0.1", closed_port)
    assert err.url == f"http://127.0.0.1:{closed_port}/api/v1/kms/phala"
    assert isinstance(err.__cause__, OSError)
    assert kms.waits == BACKOFFS


# --------------------------------------------------------------------------- deadline


@pytest.mark.timeout(20)
def test_deadline_bounds_retries(make_client: MakeClient, server: FakeKMSServer) -> None:
    # Waits 0.05, 0.1, 0.2, 0.2, 0.2, 0.2 (0.95 s): the 7th attempt gets the ~0.15 s
    # left, and the next 0.2 s wait would end past the deadline, so it is not started.
    # The waits really happen here (the deadline counts them); the exact list the loop
    # asks for is checked with a frozen clock in
    # test_the_deadline_bounds_the_waits_and_shortens_attempts.
    policy = RetryPolicy(
        max_retries=100, initial_backoff=0.05, max_backoff=0.2, jitter=0.0, deadline=1.1
    )
    server.inject("kms_info", StatusFault(503), times=None)
    kms = make_client(retry_policy=policy, instant_retries=False)
    started = time.monotonic()
    with pytest.raises((ServerError, APITimeoutError)) as caught:
        kms.get_kms_info("phala")
    elapsed = time.monotonic() - started
    err = caught.value
    if isinstance(err, APITimeoutError):
        # Only on a very slow machine: the last attempt's timeout was cut to what was
        # left of the deadline and ran out (the 503 is then lost).
        assert err.timeout is not None and err.timeout < 0.2
    attempts = err.attempts
    assert 2 <= attempts <= 7
    assert server.route_counts == {"kms_info": attempts}
    # Each retry came at least its backoff after the attempt before it.
    arrivals = [r.timestamp for r in server.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    expected = [0.05, 0.1, 0.2, 0.2, 0.2, 0.2][: attempts - 1]
    assert len(gaps) == len(expected)
    assert all(gap >= wait - 0.01 for gap, wait in zip(gaps, expected, strict=True)), gaps
    assert elapsed < 1.1 + 2.0  # generous: the deadline plus scheduling slack


@pytest.mark.timeout(20)
def test_deadline_shortens_a_slow_attempt(make_client: MakeClient, server: FakeKMSServer) -> None:
    policy = RetryPolicy(max_retries=5, initial_backoff=0.05, jitter=0.0, deadline=0.5)
    server.inject("kms_info", LatencyFault(10.0), times=None)
    kms = make_client(timeout=30.0, retry_policy=policy)
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as caught:
        kms.get_kms_info("phala")
    elapsed = time.monotonic() - started
    err = caught.value
    assert err.attempts == 1
    assert err.timeout is not None and err.timeout <= 0.5
    assert kms.waits == []
    assert server.route_counts == {"kms_info": 1}
    assert elapsed < 0.5 + 2.0


@pytest.mark.timeout(20)
def test_retry_after_past_the_deadline_is_not_waited_for(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    policy = RetryPolicy(max_retries=5, deadline=2.0)
    server.inject("kms_info", StatusFault(429, retry_after=5), times=None)
    kms = make_client(retry_policy=policy)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        kms.get_kms_info("phala")
    assert caught.value.retry_after == 5.0 and caught.value.attempts == 1
    assert kms.waits == []
    assert server.route_counts == {"kms_info": 1}
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------- other routes


@pytest.mark.timeout(20)
def test_faults_on_a_glob_route_hit_only_matching_calls(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    app_id = "ab" * 20
    server.inject("/kms/*/pubkey/*", StatusFault(503), times=1)
    server.inject("/kms/*/pubkey/*", StatusFault(404, error_code="ERR-02-011"), times=1)
    kms = make_client(retry_policy=POLICY)
    with pytest.raises(NotFoundError) as caught:
        kms.get_app_env_encrypt_pubkey("phala", app_id)
    assert caught.value.attempts == 2
    key = kms.get_app_env_encrypt_pubkey("phala", app_id)
    assert key.public_key_bytes == server.app_public_key("phala", app_id)
    assert kms.next_app_ids(2).app_ids[1].nonce == 1
    assert kms.waits == BACKOFFS[:1]
    assert server.route_counts == {"app_pubkey": 3, "next_app_id": 1}
