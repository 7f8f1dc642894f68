"""Retry timing as pure functions: tables of cases with a frozen clock and fixed draws."""

from __future__ import annotations

import email.utils

import pytest

from phala_kms import RetryPolicy
from phala_kms._retry import backoff, is_retryable, parse_retry_after, retry_delay
from phala_kms.errors import (
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    ConnectionLostError,
    ConnectRefusedError,
    DNSError,
    NotFoundError,
    RateLimitError,
    RedirectError,
    ResponseValidationError,
    ServerError,
    TLSError,
)

NOW = 1_800_000_000.0  # a frozen clock: 2027-01-15T08:00:00Z


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


def status_error(cls: type[APIStatusError], status: int, **kw: object) -> APIStatusError:
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


POLICY = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=4.0, jitter=0.25)


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
    assert backoff(retry_number, POLICY, rand=rand) == pytest.approx(expected)


def test_backoff_without_jitter_is_deterministic() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.0)
    assert [backoff(n, policy, rand=0.9) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


UNAVAILABLE = status_error(ServerError, 503)


@pytest.mark.parametrize(
    ("error", "retry_number", "policy", "elapsed", "expected"),
    [
        # plain backoff
        (UNAVAILABLE, 1, POLICY, 0.0, 0.5),
        (UNAVAILABLE, 3, POLICY, 0.0, 2.0),
        # retries used up
        (UNAVAILABLE, 6, POLICY, 0.0, None),
        (UNAVAILABLE, 1, RetryPolicy(max_retries=0), 0.0, None),
        # not retryable at all
        (status_error(NotFoundError, 404), 1, POLICY, 0.0, None),
        # Retry-After wins over backoff, exactly
        (status_error(RateLimitError, 429, retry_after=7.0), 1, POLICY, 0.0, 7.0),
        (status_error(RateLimitError, 429, retry_after=0.0), 4, POLICY, 0.0, 0.0),
        # Retry-After above the cap: give up and let the caller see retry_after
        (status_error(RateLimitError, 429, retry_after=61.0), 1, POLICY, 0.0, None),
        (status_error(RateLimitError, 429, retry_after=60.0), 1, POLICY, 0.0, 60.0),
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
    from phala_kms import ConfigurationError

    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
