"""Retry policy as small pure functions; the transport runs the one loop that uses them.

Nothing here sleeps, reads a clock or draws a random number: callers pass ``now``
and the random draw in, so every decision can be tested as a table.
"""

from __future__ import annotations

import email.utils
import math

from ._config import RetryPolicy
from .errors import (
    APIStatusError,
    APITimeoutError,
    ConnectError,
    ConnectionLostError,
    DNSError,
    PhalaKMSError,
    TLSError,
)

__all__ = ["is_retryable", "parse_retry_after", "retry_delay"]

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses retried on these idempotent GETs (409 is decided by its body)."""


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Read a ``Retry-After`` header.

    Args:
        value: The header as sent: delay-seconds (``"120"``, also ``"1.5"``) or an
            HTTP date (``"Wed, 21 Oct 2026 07:28:00 GMT"``), or ``None``.
        now: The current Unix time in seconds, for the HTTP-date form.

    Returns:
        The wait in seconds (never negative: a date in the past gives 0.0), or
        ``None`` when the header is absent or unreadable.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        return None
    return max(0.0, when.timestamp() - now)


def is_retryable(error: PhalaKMSError) -> bool:
    """Whether a failed attempt may be retried.

    Retried: failures to connect (refused, unreachable, reset), a connection lost
    mid-request, attempt timeouts, and statuses 408, 429, 500, 502, 503, 504, and 409
    without an ``error_code`` (a 409 with one is a deterministic business error).
    Never retried: DNS and TLS failures (a wrong host name or certificate does not fix
    itself), other statuses, redirects, and bodies that do not decode.
    """
    if isinstance(error, APIStatusError):
        if error.status == 409:
            return error.error_code is None
        return error.status in RETRYABLE_STATUSES
    if isinstance(error, (DNSError, TLSError)):
        return False
    return isinstance(error, (ConnectError, ConnectionLostError, APITimeoutError))


def backoff(retry_number: int, policy: RetryPolicy, *, rand: float) -> float:
    """The jittered exponential backoff before retry ``retry_number`` (1-based), in seconds.

    ``min(max_backoff, initial_backoff * 2 ** (retry_number - 1)) * (1 - jitter * rand)``
    with ``rand`` drawn from [0, 1).
    """
    exponent = min(retry_number - 1, 62)
    base = min(policy.max_backoff, policy.initial_backoff * (2.0**exponent))
    return base * (1.0 - policy.jitter * rand)


def retry_delay(
    error: PhalaKMSError,
    *,
    retry_number: int,
    policy: RetryPolicy,
    elapsed: float,
    rand: float,
) -> float | None:
    """How long to wait before retry ``retry_number``, or ``None`` to give up.

    Args:
        error: The failure of the attempt just made.
        retry_number: 1 for the first retry, 2 for the second, ...
        policy: The retry policy.
        elapsed: Seconds since the call started (attempts and waits so far).
        rand: A random draw from [0, 1) for jitter.

    Returns:
        The wait in seconds, or ``None`` when the error is not retryable, the
        retries are used up, the server's ``Retry-After`` exceeds
        ``policy.max_retry_after``, or the wait would end past ``policy.deadline``.
    """
    if retry_number > policy.max_retries or not is_retryable(error):
        return None
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        delay = float(retry_after)
    else:
        delay = backoff(retry_number, policy, rand=rand)
    if policy.deadline is not None and elapsed + delay >= policy.deadline:
        return None
    return delay
