"""Retry policy as small pure functions, and the one retry loop that uses them.

The decisions (:func:`is_retryable`, :func:`backoff`, :func:`retry_delay`) never
sleep, read a clock or draw a random number: callers pass ``elapsed`` and the
random draw in, so every decision can be tested as a table. :class:`Retrier` is
the loop; its clock, sleep and random source are injected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs

from ._config import RetryPolicy
from .errors import (
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ConnectError,
    ConnectionLostError,
    DNSError,
    PhalaKMSError,
    TLSError,
    TransportError,
)

__all__ = ["RETRYABLE_STATUSES", "Retrier", "backoff", "is_retryable", "retry_delay"]

T = TypeVar("T")

logger = logging.getLogger("phala_kms")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses retried on these idempotent GETs (409 is decided by its body)."""


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


SleepFn = Callable[[float], Awaitable[None]]


@attrs.define
class Retrier:
    """The one retry loop: runs attempts until one succeeds or :func:`retry_delay` gives up.

    The clock, the sleep and the random draw are injected, so the loop can be driven
    with zero waits and a frozen clock.

    Attributes:
        policy: The retry policy.
        sleep: Awaits a wait in seconds (``asyncio.sleep``).
        clock: Monotonic seconds (``time.monotonic``).
        rand: A draw from [0, 1) for jitter (``random.random``).
    """

    policy: RetryPolicy
    sleep: SleepFn = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = attrs.field(factory=lambda: random.Random().random)

    async def run(
        self,
        attempt: Callable[[int, float], Awaitable[T]],
        *,
        timeout: float,
        describe: str,
        check: Callable[[], None] | None = None,
    ) -> T:
        """Call ``attempt(number, timeout)`` for numbers 1, 2, ... until one returns.

        Args:
            attempt: One try; ``number`` counts from 1 (errors it raises carry it as
                ``attempts``), ``timeout`` is its limit in seconds: ``timeout``,
                shortened to what remains of ``policy.deadline``.
            timeout: The per-attempt limit in seconds.
            describe: What is being tried, for the retry log line (e.g. ``"GET <url>"``).
            check: Called before every attempt; raises to stop (e.g. a closed client).

        Returns:
            What the first successful attempt returned.

        Raises:
            TransportError, APIResponseError: The last attempt's error, when it is not
                retryable or the policy gives up.
        """
        policy = self.policy
        started = self.clock()
        number = 1
        while True:
            if check is not None:
                check()
            limit = timeout
            if policy.deadline is not None:
                limit = max(0.001, min(timeout, policy.deadline - (self.clock() - started)))
            try:
                return await attempt(number, limit)
            except (TransportError, APIResponseError) as err:
                delay = retry_delay(
                    err,
                    retry_number=number,
                    policy=policy,
                    elapsed=self.clock() - started,
                    rand=self.rand(),
                )
                if delay is None:
                    raise
                logger.info(
                    "retrying %s in %.2f s (retry %d of %d) after %s",
                    describe,
                    delay,
                    number,
                    policy.max_retries,
                    _short(err),
                )
            await self.sleep(delay)
            number += 1


def _short(err: PhalaKMSError) -> str:
    status = getattr(err, "status", None)
    if status:
        code = getattr(err, "error_code", None)
        return f"{type(err).__name__} {status}" + (f" {code}" if code else "")
    return type(err).__name__
