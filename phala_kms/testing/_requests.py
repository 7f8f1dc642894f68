"""The fake's request log: what arrived (secrets redacted), per-route counts, and how
many requests were being handled at once."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._constants import HEADER_API_KEY, HEADER_VERSION

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["REDACTED", "RecordedRequest", "RequestLog"]

REDACTED = "[redacted]"
"""What the request log shows instead of a secret header's value."""

_SECRET_HEADERS = frozenset(
    {HEADER_API_KEY.lower(), "authorization", "cookie", "proxy-authorization"}
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as its request log keeps it.

    Attributes:
        method: the HTTP method, e.g. ``"GET"``.
        path: the request path, e.g. ``"/api/v1/kms/phala/pubkey/ab..."``.
        route: the route name (one of :data:`ROUTE_NAMES`), ``"not_found"`` for an
            unknown path, or ``"method_not_allowed"``.
        query: the query parameters (the last value of a repeated name).
        headers: the request headers; ``X-API-Key``, ``Authorization``, ``Cookie`` and
            ``Proxy-Authorization`` values are replaced by :data:`REDACTED`.
        phala_version: the ``X-Phala-Version`` header as sent, or ``None``.
        request_id: the ``X-Request-ID`` the response carried.
        timestamp: when it arrived, Unix seconds (``time.time()``).
    """

    method: str
    path: str
    route: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    phala_version: str | None
    request_id: str
    timestamp: float


class RequestLog:
    """The bounded log of requests, their counts per route, and the in-flight gauge.

    :meth:`begin` and :meth:`end` bracket the handling of each request and run on the
    server's event loop; everything else is safe to call from any thread.
    """

    def __init__(self, size: int) -> None:
        """Keep the newest ``size`` requests (oldest dropped first)."""
        self._lock = threading.Lock()
        self._entries: deque[RecordedRequest] = deque(maxlen=size)
        self._route_counts: dict[str, int] = {}
        self._in_flight = 0
        self._peak = 0
        self._seq = 0

    def begin(self) -> str:
        """Count a request as in flight and return its new ``X-Request-ID``."""
        self._in_flight += 1
        if self._in_flight > self._peak:
            self._peak = self._in_flight
        self._seq += 1
        return f"req_fake{self._seq:08x}"

    def end(self) -> None:
        """Count a request begun with :meth:`begin` as no longer in flight."""
        self._in_flight -= 1

    def record(self, request: web.BaseRequest, route: str, request_id: str) -> None:
        """Log ``request`` (secret headers redacted) and count it for ``route``."""
        headers = {
            name: REDACTED if name.lower() in _SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            route=route,
            query=dict(request.query.items()),
            headers=headers,
            phala_version=request.headers.get(HEADER_VERSION),
            request_id=request_id,
            timestamp=time.time(),
        )
        with self._lock:
            self._entries.append(entry)
            self._route_counts[route] = self._route_counts.get(route, 0) + 1

    def clear(self) -> None:
        """Forget the logged requests and the counts; the peak restarts from now."""
        with self._lock:
            self._entries.clear()
            self._route_counts.clear()
            self._peak = self._in_flight

    @property
    def entries(self) -> list[RecordedRequest]:
        """The logged requests, oldest first."""
        with self._lock:
            return list(self._entries)

    @property
    def route_counts(self) -> dict[str, int]:
        """How many requests each route received."""
        with self._lock:
            return dict(self._route_counts)

    @property
    def total(self) -> int:
        """How many requests arrived in all."""
        with self._lock:
            return sum(self._route_counts.values())

    @property
    def in_flight(self) -> int:
        """Requests begun and not yet ended."""
        return self._in_flight

    @property
    def peak(self) -> int:
        """The most requests in flight at the same time."""
        return self._peak
