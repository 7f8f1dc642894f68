"""Retry policy as small pure functions, and the one retry loop that uses them.

The decisions (:func:`is_retryable`, :func:`backoff`, :func:`retry_delay`, and the
retry budget's :func:`budget_after_retry` / :func:`budget_after_success`) never
sleep, read a clock or draw a random number: callers pass ``elapsed``, the random
draw and the token count in, so every decision can be tested as a table.
:class:`Retrier` is the loop; its clock, sleep and random source are injected, and
its :class:`RetryBudget` is shared by every call of one client.
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
    PoolTimeoutError,
    TLSError,
    TransportError,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "Retrier",
    "RetryBudget",
    "backoff",
    "budget_after_retry",
    "budget_after_success",
    "is_retryable",
    "is_throttle",
    "retry_delay",
]

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
    itself), other statuses, redirects, bodies that do not decode, and
    :class:`~phala_kms.errors.PoolTimeoutError` (nothing was sent: the server did not fail).
    """
    if isinstance(error, APIStatusError):
        if error.status == 409:
            return error.error_code is None
        return error.status in RETRYABLE_STATUSES
    if isinstance(error, (DNSError, TLSError, PoolTimeoutError)):
        return False
    return isinstance(error, (ConnectError, ConnectionLostError, APITimeoutError))


def is_throttle(status: int, retry_after: float | None) -> bool:
    """Whether a response says the client sends too fast: a 429, or a 503 with ``Retry-After``.

    A 503 without ``Retry-After`` is an outage or a blip, which the retry budget handles;
    a throttle also slows the whole client down (see :mod:`._throttle`).
    """
    return status == 429 or (status == 503 and retry_after is not None)


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


def budget_after_retry(tokens: float, cost: float) -> float | None:
    """The tokens left after paying for one retry, or ``None`` when the budget cannot pay.

    Args:
        tokens: The tokens in the budget now.
        cost: What one retry costs (``RetryPolicy.retry_cost``, > 0).
    """
    return tokens - cost if tokens >= cost else None


def budget_after_success(tokens: float, capacity: float, *, retried_cost: float | None) -> float:
    """The tokens after a call succeeds: 1 back, or the cost of its last retry if it retried.

    Never above ``capacity`` (``RetryPolicy.retry_budget``).

    Args:
        tokens: The tokens in the budget now.
        capacity: The budget's size.
        retried_cost: What the call's last retry cost, or ``None`` when it succeeded at
            its first attempt.
    """
    refill = 1.0 if retried_cost is None else retried_cost
    return min(capacity, tokens + refill)


@attrs.define
class RetryBudget:
    """The retry budget one client's calls share (see ``RetryPolicy.retry_budget``).

    Attributes:
        capacity: The budget's size in tokens, or ``None`` for no budget.
        cost: Tokens one retry draws.
        tokens: The tokens left (starts full).
        denied: Retries refused because the budget could not pay.
    """

    capacity: float | None
    cost: float
    tokens: float = attrs.field()
    denied: int = 0

    @tokens.default
    def _full(self) -> float:
        return self.capacity or 0.0

    @classmethod
    def for_policy(cls, policy: RetryPolicy) -> RetryBudget:
        """A full budget sized by ``policy``."""
        return cls(policy.retry_budget, policy.retry_cost)

    def draw(self) -> bool:
        """Pay for one retry; ``False`` (and nothing paid) when the budget cannot."""
        if self.capacity is None:
            return True
        left = budget_after_retry(self.tokens, self.cost)
        if left is None:
            self.denied += 1
            return False
        self.tokens = left
        return True

    def refill(self, *, retried: bool) -> None:
        """A call succeeded (after retrying, if ``retried``): put tokens back."""
        if self.capacity is not None:
            self.tokens = budget_after_success(
                self.tokens, self.capacity, retried_cost=self.cost if retried else None
            )


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
        budget: The retry budget, shared by every call this retrier runs (a full one
            sized by ``policy`` by default).
    """

    policy: RetryPolicy
    sleep: SleepFn = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = attrs.field(factory=lambda: random.Random().random)
    budget: RetryBudget = attrs.field(
        default=attrs.Factory(lambda self: RetryBudget.for_policy(self.policy), takes_self=True)
    )

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
                retryable, or the policy or the retry budget gives up.
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
                result = await attempt(number, limit)
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
                if not self.budget.draw():
                    logger.info(
                        "not retrying %s after %s: the client's retry budget is spent"
                        " (too many failures lately)",
                        describe,
                        _short(err),
                    )
                    raise
                logger.info(
                    "retrying %s in %.2f s (retry %d of %d) after %s",
                    describe,
                    delay,
                    number,
                    policy.max_retries,
                    _short(err),
                )
            else:
                self.budget.refill(retried=number > 1)
                return result
            await self.sleep(delay)
            number += 1


def _short(err: PhalaKMSError) -> str:
    status = getattr(err, "status", None)
    if status:
        code = getattr(err, "error_code", None)
        return f"{type(err).__name__} {status}" + (f" {code}" if code else "")
    return type(err).__name__
