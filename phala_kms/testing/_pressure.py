"""Server-wide pressure for the fake: a rate limit (a token bucket) and an outage switch.

Unlike the faults of :mod:`._faults`, which answer the next ``times`` matching
requests, these hold for every API request while they are on, and keep state (the
bucket's tokens). :class:`FakeKMSServer <phala_kms.testing.FakeKMSServer>` exposes
them as its :attr:`~phala_kms.testing.FakeKMSServer.rate_limit` and
:attr:`~phala_kms.testing.FakeKMSServer.outage` properties.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from aiohttp import web

from .._constants import HEADER_REQUEST_ID
from ._catalogue import JSON_CONTENT_TYPE, dumps
from ._faults import RetryAfter, _phrase, _retry_after_header, _retry_headers, error_body

__all__ = ["Outage", "Pressure", "RateLimit"]


@dataclass(frozen=True)
class RateLimit:
    """Answer 429 once a token bucket of ``burst`` requests, refilled at ``rate`` per
    second, is empty: what a real API's rate limit does.

    The bucket is shared by every API request (all routes, the way a quota per API key
    is) and starts full. A refused request takes no token. The body is the API's
    structured error, ``{"error_code": "ERR-05-002", "message": ..., "request_id":
    ..., "details": [{"field": "rate_limit", ...}], "suggestions": [...], "links":
    []}``.

    Attributes:
        rate: Requests per second the bucket refills (> 0).
        burst: The bucket's size: requests that may arrive at once (>= 1).
        retry_after: The ``Retry-After`` sent, in seconds (>= 0), or ``None`` for no
            header.
        http_date: Send ``Retry-After`` as an HTTP date (now + ``retry_after``,
            rounded up to a whole second) instead of as seconds.
        status: The status of a refusal (default 429).
        error_code: The structured ``error_code`` (default ``"ERR-05-002"``).
    """

    rate: float
    burst: int = 1
    retry_after: float | None = 1.0
    http_date: bool = False
    status: int = 429
    error_code: str = "ERR-05-002"

    def __post_init__(self) -> None:
        """Reject a non-positive rate, a burst below 1 or a negative ``retry_after``."""
        if not (isinstance(self.rate, (int, float)) and 0 < self.rate < math.inf):
            raise ValueError(f"RateLimit rate must be > 0 requests per second, got {self.rate!r}")
        if not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"RateLimit burst must be an int >= 1, got {self.burst!r}")
        if self.retry_after is not None and not 0 <= self.retry_after < math.inf:
            raise ValueError(f"RateLimit retry_after must be >= 0 s, got {self.retry_after!r}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"RateLimit status must be in 400..599, got {self.status}")


@dataclass(frozen=True)
class Outage:
    """Answer every API request (or a random ``fraction`` of them) with ``status`` (503
    by default) while it is on.

    Attributes:
        fraction: The share of requests refused, 0 < fraction <= 1 (default 1: all;
            ``0.1`` is a brown-out in which 10 % of requests fail at random).
        seed: Seeds the random draw for a ``fraction`` below 1 (``None``: unseeded).
        status: The status, 500..599.
        retry_after: A ``Retry-After`` to send (seconds, or an aware ``datetime`` sent
            as an HTTP date), or ``None`` (default: an outage rarely says when it ends).
        error_code: With one, the body is the API's structured error; without (the
            default), ``{"detail": "Service Unavailable"}``.
        message: The error message; the status phrase by default.
    """

    fraction: float = 1.0
    seed: int | None = None
    status: int = 503
    retry_after: RetryAfter | None = None
    error_code: str | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        """Reject a fraction outside (0, 1], a status outside 500..599 or a naive
        ``retry_after`` datetime."""
        if not 0 < self.fraction <= 1:
            raise ValueError(f"Outage fraction must be in (0, 1], got {self.fraction!r}")
        if not 500 <= self.status <= 599:
            raise ValueError(f"Outage status must be in 500..599, got {self.status}")
        if self.retry_after is not None:
            _retry_after_header(self.retry_after)


class Pressure:
    """The fake's current rate limit and outage, and what they refused; thread-safe.

    Args:
        clock: Monotonic seconds, for the bucket.
        wall: Unix seconds, for an HTTP-date ``Retry-After``.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._wall = wall
        self._limit: RateLimit | None = None
        self._outage: Outage | None = None
        self._random = random.Random()
        self._tokens = 0.0
        self._filled_at = 0.0
        self.rate_limited = 0
        self.outage_refused = 0

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate limit in force, or ``None``."""
        return self._limit

    @rate_limit.setter
    def rate_limit(self, value: RateLimit | None) -> None:
        if value is not None and not isinstance(value, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, got {value!r}")
        with self._lock:
            self._limit = value
            if value is not None:  # a new limit starts with a full bucket
                self._tokens = float(value.burst)
                self._filled_at = self._clock()

    @property
    def outage(self) -> Outage | None:
        """The outage in force, or ``None``."""
        return self._outage

    @outage.setter
    def outage(self, value: Outage | bool | None) -> None:
        if value is True:
            value = Outage()
        elif value is False:
            value = None
        if value is not None and not isinstance(value, Outage):
            raise TypeError(f"outage must be an Outage, True, False or None, got {value!r}")
        with self._lock:
            self._outage = value
            self._random = random.Random(None if value is None else value.seed)

    def clear(self) -> None:
        """Lift the rate limit and end the outage; zero the counts."""
        with self._lock:
            self._limit = None
            self._outage = None
            self.rate_limited = 0
            self.outage_refused = 0

    def answer(self, request_id: str) -> web.Response | None:
        """The refusal for the request arriving now, or ``None`` to serve it."""
        outage = self._outage
        if outage is not None:
            with self._lock:
                hit = outage.fraction >= 1.0 or self._random.random() < outage.fraction
                if hit:
                    self.outage_refused += 1
            if hit:
                return _outage_response(outage, request_id)
        limit = self._limit
        if limit is None:
            return None
        with self._lock:
            now = self._clock()
            self._tokens = min(
                float(limit.burst), self._tokens + (now - self._filled_at) * limit.rate
            )
            self._filled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            self.rate_limited += 1
        return self._limited_response(limit, request_id)

    def _limited_response(self, limit: RateLimit, request_id: str) -> web.Response:
        headers = {HEADER_REQUEST_ID: request_id}
        if limit.retry_after is not None:
            if limit.http_date:
                when = math.ceil(self._wall() + limit.retry_after)
                headers["Retry-After"] = formatdate(when, usegmt=True)
            else:
                headers["Retry-After"] = f"{limit.retry_after:g}"
        rate = f"{limit.rate:g}"
        body = {
            "error_code": limit.error_code,
            "message": f"Rate limit exceeded: at most {rate} requests per second"
            f" (bursts of {limit.burst})",
            "request_id": request_id,
            "details": [{"field": "rate_limit", "value": limit.rate, "message": None}],
            "suggestions": ["Retry after the number of seconds in the Retry-After header"],
            "links": [],
        }
        return web.Response(
            status=limit.status, text=dumps(body), content_type=JSON_CONTENT_TYPE, headers=headers
        )


def _outage_response(outage: Outage, request_id: str) -> web.Response:
    headers = _retry_headers(request_id, outage.retry_after, None)
    message = outage.message or _phrase(outage.status)
    body = error_body(message, outage.error_code, request_id)
    return web.Response(
        status=outage.status, text=dumps(body), content_type=JSON_CONTENT_TYPE, headers=headers
    )
