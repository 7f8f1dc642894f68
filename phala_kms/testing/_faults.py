"""Faults the fake can inject into its responses, and how each is produced.

A fault is a small frozen dataclass that says *what* goes wrong; :meth:`FakeKMSServer.inject
<phala_kms.testing.FakeKMSServer.inject>` says *where* (a route name, ``"*"`` or a path
glob) and *how often* (``times``), as an :class:`~phala_kms.testing.Injection`.
Everything that talks to aiohttp lives in :func:`respond`, so the fault classes stay
plain data.
"""

from __future__ import annotations

import asyncio
import http
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, get_args

from aiohttp import web

from .._constants import HEADER_REQUEST_ID
from ._catalogue import JSON_CONTENT_TYPE, dumps

__all__ = [
    "FAULT_TYPES",
    "DropConnectionFault",
    "Fault",
    "GatewayHTMLFault",
    "HugeBodyFault",
    "LatencyFault",
    "NonJSONFault",
    "RedirectFault",
    "ResetMidBodyFault",
    "RetryAfter",
    "StatusFault",
    "TruncatedJSONFault",
    "error_body",
    "WrongShapeFault",
    "respond",
]

RetryAfter = int | float | str | datetime
"""A ``Retry-After`` value: seconds (``int``/``float``), an aware ``datetime`` (sent as
an HTTP date), or a ``str`` sent verbatim (to test malformed values)."""

_CHUNK = 64 * 1024


def _check_status(
    status: int, low: int, high: int, what: str, retry_after: RetryAfter | None = None
) -> None:
    if not low <= status <= high:
        raise ValueError(f"{what} status must be in {low}..{high}, got {status}")
    if retry_after is not None:
        _retry_after_header(retry_after)  # raises for a naive datetime or a bool


def _check_fraction(fraction: float, what: str) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"{what} fraction must be in [0, 1)")


def _retry_after_header(value: RetryAfter) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("retry_after datetime must be timezone-aware")
        return format_datetime(value.astimezone(timezone.utc), usegmt=True)
    if isinstance(value, bool):
        raise TypeError("retry_after must be seconds, a datetime or a str")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@dataclass(frozen=True)
class StatusFault:
    """Answer with ``status`` instead of the real response.

    The body is, unless ``body`` is given: with ``error_code``, the structured error
    ``{"error_code", "message", "request_id", "details": [], "suggestions": [],
    "links": []}`` (under ``"detail"`` when ``nested``); without, ``{"detail": message}``.
    ``request_id`` matches the ``X-Request-ID`` header.

    Attributes:
        status: the HTTP status, 200..599 (e.g. 408, 409, 429, 500, 503).
        error_code: e.g. ``"ERR-05-002"`` (rate limited). A 409 without one is transient.
        message: the error message; defaults to the status phrase.
        retry_after: adds a ``Retry-After`` header (see :data:`RetryAfter`).
        nested: put the structured body under ``"detail"``.
        body: a body to send instead: ``bytes`` or ``str`` sent raw, anything else as JSON.
        content_type: the ``Content-Type`` for a raw ``body`` (default
            ``application/octet-stream`` for bytes, ``text/plain`` for str).
        headers: extra response headers.
    """

    status: int
    error_code: str | None = None
    message: str | None = None
    retry_after: RetryAfter | None = None
    nested: bool = False
    body: Any = None
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Reject a status outside 200..599 or a naive ``retry_after`` datetime."""
        _check_status(self.status, 200, 599, "StatusFault", self.retry_after)


@dataclass(frozen=True)
class LatencyFault:
    """Wait ``seconds`` before answering; the answer is the real response (or the
    response of another fault injected on the same request).

    Attributes:
        seconds: the added latency, in seconds (>= 0).
    """

    seconds: float

    def __post_init__(self) -> None:
        """Reject a negative delay."""
        if self.seconds < 0:
            raise ValueError("LatencyFault seconds must be >= 0")


@dataclass(frozen=True)
class GatewayHTMLFault:
    """Answer like a proxy in front of the API: an HTML error page (``text/html``).

    Attributes:
        status: the gateway status, 400..599 (502, 503, 504 are the usual ones).
        retry_after: adds a ``Retry-After`` header (see :data:`RetryAfter`).
        body: the HTML to send; defaults to a small nginx-like error page.
    """

    status: int = 502
    retry_after: RetryAfter | None = None
    body: str | None = None

    def __post_init__(self) -> None:
        """Reject a status outside 400..599 or a naive ``retry_after`` datetime."""
        _check_status(self.status, 400, 599, "GatewayHTMLFault", self.retry_after)


@dataclass(frozen=True)
class TruncatedJSONFault:
    """Answer with the real status and the real JSON body cut short (a complete HTTP
    message whose ``Content-Length`` matches the cut body, so only JSON parsing fails).

    Attributes:
        fraction: how much of the real body to keep, 0 <= fraction < 1.
    """

    fraction: float = 0.5

    def __post_init__(self) -> None:
        """Reject a fraction outside [0, 1)."""
        _check_fraction(self.fraction, "TruncatedJSONFault")


@dataclass(frozen=True)
class NonJSONFault:
    """Answer with a body that is not JSON at all.

    Attributes:
        body: the text sent.
        status: the HTTP status (default 200).
        content_type: the ``Content-Type`` header.
    """

    body: str = "OK"
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"

    def __post_init__(self) -> None:
        """Reject a status outside 200..599."""
        _check_status(self.status, 200, 599, "NonJSONFault")


def _unexpected_shape() -> Any:
    return {"unexpected": True, "items": "not a list"}


@dataclass(frozen=True)
class WrongShapeFault:
    """Answer 200 with valid JSON that fits no response model.

    Attributes:
        body: the JSON value sent (default ``{"unexpected": true, "items": "not a list"}``).
        status: the HTTP status (default 200).
    """

    body: Any = field(default_factory=_unexpected_shape)
    status: int = 200

    def __post_init__(self) -> None:
        """Reject a status outside 200..599."""
        _check_status(self.status, 200, 599, "WrongShapeFault")


@dataclass(frozen=True)
class DropConnectionFault:
    """Close the connection before sending any response byte.

    aiohttp's client silently retries an idempotent request once when the server
    disconnects: inject with ``times=2`` (or more) to make one client call see it.

    Attributes:
        rst: abort with a TCP RST (``SO_LINGER`` 0) instead of a FIN.
    """

    rst: bool = False


@dataclass(frozen=True)
class ResetMidBodyFault:
    """Send the real status, headers and ``Content-Length``, then part of the body,
    then close the connection.

    Attributes:
        fraction: how much of the body to send before closing, 0 <= fraction < 1.
        rst: abort with a TCP RST (``SO_LINGER`` 0) instead of a FIN; the client then
            may see a connection reset rather than a short body.
    """

    fraction: float = 0.5
    rst: bool = False

    def __post_init__(self) -> None:
        """Reject a fraction outside [0, 1)."""
        _check_fraction(self.fraction, "ResetMidBodyFault")


@dataclass(frozen=True)
class RedirectFault:
    """Answer with a redirect to another host (a client must never follow it).

    Attributes:
        status: the redirect status, 300..399.
        location: the ``Location`` header; defaults to the same path and query on
            ``http://redirect-target.invalid`` (a name that never resolves).
    """

    status: int = 307
    location: str | None = None

    def __post_init__(self) -> None:
        """Reject a status outside 300..399."""
        _check_status(self.status, 300, 399, "RedirectFault")


@dataclass(frozen=True)
class HugeBodyFault:
    """Answer with a huge, valid JSON body ``{"padding": "xxx..."}`` of exactly ``size``
    bytes, streamed in 64 KiB chunks.

    Attributes:
        size: the body size in bytes (>= 16; default 16 MiB).
        status: the HTTP status (default 200).
        chunked: send it chunked, without ``Content-Length``, so a client cannot refuse
            it from the headers alone.
    """

    size: int = 16 * 1024 * 1024
    status: int = 200
    chunked: bool = False

    def __post_init__(self) -> None:
        """Reject a size below 16 bytes or a status outside 200..599."""
        if self.size < 16:
            raise ValueError("HugeBodyFault size must be >= 16")
        _check_status(self.status, 200, 599, "HugeBodyFault")


Fault = (
    StatusFault
    | LatencyFault
    | GatewayHTMLFault
    | TruncatedJSONFault
    | NonJSONFault
    | WrongShapeFault
    | DropConnectionFault
    | ResetMidBodyFault
    | RedirectFault
    | HugeBodyFault
)
"""Any fault :meth:`FakeKMSServer.inject <phala_kms.testing.FakeKMSServer.inject>` accepts."""

FAULT_TYPES: tuple[type, ...] = get_args(Fault)
"""The fault classes, for ``isinstance`` checks."""


_DEFAULT_GATEWAY_HTML = (
    "<!DOCTYPE html>\n<html>\n<head><title>{status} {phrase}</title></head>\n"
    "<body>\n<h1>{status} {phrase}</h1>\n"
    "<p>The upstream service did not answer in time. Please try again.</p>\n"
    "<hr><address>fake-edge-proxy</address>\n</body>\n</html>\n"
)


def _retry_headers(
    request_id: str, retry_after: RetryAfter | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    headers = {HEADER_REQUEST_ID: request_id}
    if extra:
        headers.update(extra)
    if retry_after is not None:
        headers["Retry-After"] = _retry_after_header(retry_after)
    return headers


def error_body(message: str, error_code: str | None, request_id: str) -> dict[str, Any]:
    """The API's error body: ``{"detail": message}`` without an ``error_code``, else the
    structured ``{error_code, message, request_id, details, suggestions, links}``."""
    if error_code is None:
        return {"detail": message}
    return {
        "error_code": error_code,
        "message": message,
        "request_id": request_id,
        "details": [],
        "suggestions": [],
        "links": [],
    }


def _status_response(fault: StatusFault, request_id: str) -> web.Response:
    headers = _retry_headers(request_id, fault.retry_after, fault.headers)
    message = fault.message if fault.message is not None else _phrase(fault.status)
    body = fault.body
    if isinstance(body, bytes):
        ctype = fault.content_type or "application/octet-stream"
        return web.Response(status=fault.status, body=body, content_type=ctype, headers=headers)
    if isinstance(body, str):
        ctype = fault.content_type or "text/plain"
        return web.Response(status=fault.status, text=body, content_type=ctype, headers=headers)
    if body is None:
        body = error_body(message, fault.error_code, request_id)
        if fault.nested and fault.error_code is not None:
            body = {"detail": body}
    return web.Response(
        status=fault.status, text=dumps(body), content_type=JSON_CONTENT_TYPE, headers=headers
    )


def _close(request: web.BaseRequest, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def _partial_body(
    request: web.BaseRequest, real: web.Response, fault: ResetMidBodyFault
) -> web.StreamResponse:
    body = real.body if isinstance(real.body, bytes) else b""
    resp = web.StreamResponse(status=real.status, headers=real.headers)
    resp.content_length = len(body)
    try:
        await resp.prepare(request)
        await resp.write(body[: int(len(body) * fault.fraction)])
        if fault.rst:
            # Let the headers and partial body reach the client before the RST.
            await asyncio.sleep(0.02)
    except ConnectionError:
        return resp
    _close(request, fault.rst)
    return resp


async def _huge_body(
    request: web.BaseRequest, fault: HugeBodyFault, request_id: str
) -> web.StreamResponse:
    resp = web.StreamResponse(status=fault.status, headers={HEADER_REQUEST_ID: request_id})
    resp.content_type = JSON_CONTENT_TYPE
    if fault.chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = fault.size
    head, tail = b'{"padding":"', b'"}'
    remaining = fault.size - len(head) - len(tail)
    chunk = b"x" * _CHUNK
    try:
        await resp.prepare(request)
        await resp.write(head)
        while remaining > 0:
            step = min(remaining, _CHUNK)
            await resp.write(chunk[:step])
            remaining -= step
        await resp.write(tail)
    except ConnectionError:
        pass
    return resp


async def respond(
    fault: Fault,
    request: web.BaseRequest,
    real: Callable[[], Awaitable[web.StreamResponse]],
    request_id: str,
) -> web.StreamResponse:
    """Produce the response ``fault`` asks for (every fault but :class:`LatencyFault`).

    Args:
        fault: the fault to produce.
        request: the request being answered.
        real: produces the real response (for faults that mangle it).
        request_id: the value of the ``X-Request-ID`` header.
    """
    if isinstance(fault, StatusFault):
        return _status_response(fault, request_id)
    if isinstance(fault, GatewayHTMLFault):
        html = fault.body
        if html is None:
            html = _DEFAULT_GATEWAY_HTML.format(status=fault.status, phrase=_phrase(fault.status))
        headers = _retry_headers(request_id, fault.retry_after)
        return web.Response(
            status=fault.status, text=html, content_type="text/html", headers=headers
        )
    if isinstance(fault, NonJSONFault):
        return web.Response(
            status=fault.status,
            body=fault.body.encode(),
            headers={"Content-Type": fault.content_type, HEADER_REQUEST_ID: request_id},
        )
    if isinstance(fault, WrongShapeFault):
        return web.Response(
            status=fault.status,
            text=dumps(fault.body),
            content_type=JSON_CONTENT_TYPE,
            headers={HEADER_REQUEST_ID: request_id},
        )
    if isinstance(fault, RedirectFault):
        location = fault.location or "http://redirect-target.invalid" + request.path_qs
        return web.Response(
            status=fault.status,
            headers={"Location": location, HEADER_REQUEST_ID: request_id},
        )
    if isinstance(fault, DropConnectionFault):
        _close(request, fault.rst)
        # aiohttp finds the transport closed and quietly writes nothing.
        return web.Response(status=500)
    if isinstance(fault, HugeBodyFault):
        return await _huge_body(request, fault, request_id)
    real_response = await real()
    if not isinstance(real_response, web.Response):  # pragma: no cover - handlers build Responses
        return real_response
    real_response.headers[HEADER_REQUEST_ID] = request_id
    if isinstance(fault, TruncatedJSONFault):
        body = real_response.body if isinstance(real_response.body, bytes) else b""
        return web.Response(
            status=real_response.status,
            body=body[: int(len(body) * fault.fraction)],
            headers={"Content-Type": JSON_CONTENT_TYPE, HEADER_REQUEST_ID: request_id},
        )
    if isinstance(fault, ResetMidBodyFault):
        return await _partial_body(request, real_response, fault)
    raise TypeError(f"not a fault: {fault!r}")  # pragma: no cover - LatencyFault handled upstream
