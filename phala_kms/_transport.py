"""The one place that talks HTTP: an aiohttp session, ``send()`` and exception mapping.

Only this module and :mod:`phala_kms._pool` (its connection pool) import aiohttp. It
owns (or borrows) a ``ClientSession``, sends one GET with the API key and version
headers, never follows redirects, reads the body up to ``max_response_bytes``
(reading is where aiohttp's streaming lives), and turns every aiohttp failure into
a :mod:`phala_kms.errors` exception. It hands back the raw ``(status, headers,
body)``: decoding is :mod:`phala_kms._responses`', retrying :mod:`phala_kms._retry`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import aiohttp
import attrs
from yarl import URL

from ._config import ClientConfig
from ._constants import HEADER_API_KEY, HEADER_REQUEST_ID, HEADER_VERSION, MAX_ERROR_BODY_BYTES
from ._pool import PoolSlots, close_connector_now, make_connector, pool_limit
from ._secrets import RedactedStr
from .errors import (
    APITimeoutError,
    ClientStateError,
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    ConnectRefusedError,
    DNSError,
    PhalaKMSError,
    PoolTimeoutError,
    ResponseValidationError,
    TLSError,
    TransportError,
)

__all__ = ["RawResponse", "Transport", "map_exception"]

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,)
_DNS_ERROR: type[BaseException] | None = getattr(aiohttp, "ClientConnectorDNSError", None)
_CONNECT_TIMEOUT: type[BaseException] | None = getattr(aiohttp, "ConnectionTimeoutError", None)
_TLS_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientConnectorSSLError,
    aiohttp.ClientSSLError,
    ssl.SSLError,
)
_LOST_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientOSError,
    ConnectionError,
)


def map_exception(
    exc: BaseException,
    *,
    method: str,
    url: str,
    host: str | None,
    port: int | None,
    timeout: float,
    connect_timeout: float,
    attempts: int = 1,
) -> TransportError:
    """An aiohttp/asyncio failure as the SDK's transport error: the one mapping for the
    API's requests and for those to KMS nodes and JSON-RPC endpoints (:mod:`._peer`).

    Args:
        exc: What aiohttp or asyncio raised.
        method: The request's HTTP method.
        url: The request's URL (no secrets in it).
        host: The peer's host.
        port: The peer's port.
        timeout: The attempt's limit in seconds, named by a read timeout.
        connect_timeout: The connect limit in seconds, named by a connect timeout.
        attempts: The attempt's number, carried by the error.

    Returns:
        An :class:`APITimeoutError`, :class:`DNSError`, :class:`TLSError`,
        :class:`ConnectRefusedError`, :class:`ConnectError`,
        :class:`ConnectionLostError`, or else a plain :class:`TransportError`.
    """
    where: dict[str, Any] = {
        "method": method,
        "url": url,
        "host": host,
        "port": port,
        "attempts": attempts,
    }
    target = f"{host}:{port}"
    if _CONNECT_TIMEOUT is not None and isinstance(exc, _CONNECT_TIMEOUT):
        return APITimeoutError(
            f"connecting to {target} timed out after {connect_timeout:g} s",
            timeout=connect_timeout,
            **where,
        )
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return APITimeoutError(
            f"{method} {url} timed out after {timeout:g} s", timeout=timeout, **where
        )
    if _DNS_ERROR is not None and isinstance(exc, _DNS_ERROR):
        return DNSError(f"could not resolve host {host!r}: {exc}", **where)
    if isinstance(exc, _TLS_ERRORS):
        return TLSError(f"TLS with {target} failed: {exc}", **where)
    if isinstance(exc, _CONNECT_ERRORS):
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, socket.gaierror):
            return DNSError(f"could not resolve host {host!r}: {exc}", **where)
        if isinstance(os_error, ConnectionRefusedError):
            return ConnectRefusedError(f"connection to {target} refused", **where)
        if isinstance(os_error, (asyncio.TimeoutError, TimeoutError)):
            return APITimeoutError(
                f"connecting to {target} timed out after {connect_timeout:g} s",
                timeout=connect_timeout,
                **where,
            )
        return ConnectError(f"could not connect to {target}: {exc}", **where)
    if isinstance(exc, _LOST_ERRORS):
        return ConnectionLostError(
            f"connection to {target} lost before the response was complete: {exc}", **where
        )
    return TransportError(f"{method} {url} failed: {type(exc).__name__}: {exc}", **where)


def _trace_configs(value: object) -> tuple[aiohttp.TraceConfig, ...]:
    if value is None:
        return ()
    items: tuple[object, ...] = (value,)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = tuple(value)
    if not all(isinstance(item, aiohttp.TraceConfig) for item in items):
        raise ConfigurationError(
            "trace_configs must be a sequence of aiohttp.TraceConfig"
            " (e.g. opentelemetry's create_trace_config())",
            setting="trace_configs",
        )
    return cast("tuple[aiohttp.TraceConfig, ...]", items)


_RedactedStr = RedactedStr
"""The API key as sent (now defined in :mod:`phala_kms._secrets`): its ``repr`` is
redacted, so it stays out of locals-capturing tracebacks and aiohttp's request_info."""


def _reap_abandoned(
    session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop, what: str
) -> None:
    """Run when a client is garbage-collected unclosed: one ResourceWarning that names
    phala_kms, then a quiet close (so aiohttp's own "Unclosed client session" and
    "Unclosed connector" warnings and asyncio error logs never fire). Closes first, so
    a warning filter that turns the warning into an error cannot keep sockets open."""
    try:
        close_connector_now(session, loop)
    finally:
        warnings.warn(
            f"unclosed {what}; use `async with` or `await client.aclose()`"
            " (phala_kms closed its connection pool)",
            ResourceWarning,
            stacklevel=2,
        )


def _redact_request_info(exc: BaseException) -> None:
    """Drop the request headers (which hold the API key) from an aiohttp error we chain."""
    info = getattr(exc, "request_info", None)
    if isinstance(info, aiohttp.RequestInfo) and HEADER_API_KEY in info.headers:
        from multidict import CIMultiDict, CIMultiDictProxy

        headers = CIMultiDict(info.headers)
        headers[HEADER_API_KEY] = "<redacted>"
        with contextlib.suppress(AttributeError):  # read-only in some aiohttp version
            exc.request_info = info._replace(headers=CIMultiDictProxy(headers))  # type: ignore[attr-defined]


@attrs.frozen
class RawResponse:
    """A complete response: what :mod:`phala_kms._responses` decodes.

    Attributes:
        status: The HTTP status code.
        headers: The response headers (case-insensitive).
        body: The body, at most ``max_response_bytes`` (an error body is cut there).
        url: The request URL.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


class Transport:
    """Sends GET requests to the API and hands back the raw responses.

    Args:
        config: The validated client settings.
        session: A caller-owned ``aiohttp.ClientSession`` to use, or ``None`` to
            create (and later close) one on first use.
        trace_configs: ``aiohttp.TraceConfig`` objects for the session this transport
            creates (ignored with ``session``).
        owner: The name of the client class, for the warning about a client
            garbage-collected unclosed.

    Raises:
        ConfigurationError: An item of ``trace_configs`` is not an ``aiohttp.TraceConfig``.
    """

    def __init__(
        self,
        config: ClientConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        trace_configs: Iterable[aiohttp.TraceConfig] | None = None,
        owner: str = "AsyncKMSClient",
    ) -> None:
        self._config = config
        self._session = session
        self._owns_session = session is None
        self._trace_configs = _trace_configs(trace_configs)
        self._owner = owner
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._base = config.base_url
        host = URL(config.base_url)
        self._host = host.host
        self._port = host.port
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout, sock_connect=config.connect_timeout
        )
        self._headers_by_version: dict[str, dict[str, str]] = {}
        self._session_headers: dict[str, str] | None = None  # the owned session's defaults
        self.pool_limit = pool_limit(config.max_connections, session)
        """How many requests may hold a connection at once: ``max_connections``, or
        less when a caller's session has a smaller connector limit."""
        self._slots = PoolSlots(self.pool_limit)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def headers(self, version: str) -> dict[str, str]:
        """The request headers for ``X-Phala-Version: version`` (built once per version).

        Raises:
            ConfigurationError: No API key is configured.
        """
        headers = self._headers_by_version.get(version)
        if headers is None:
            if self._config.api_key is None:
                raise ConfigurationError(
                    "no API key: pass api_key=... or set the PHALA_CLOUD_API_KEY"
                    " environment variable",
                    setting="api_key",
                )
            headers = {
                HEADER_API_KEY: RedactedStr(self._config.api_key),
                HEADER_VERSION: version,
                "User-Agent": self._config.user_agent,
                "Accept": "application/json",
            }
            self._headers_by_version[version] = headers
        return headers

    def check_open(self) -> None:
        """Raise if the client is closed.

        Raises:
            ClientStateError: :meth:`aclose` was called.
        """
        if self._closed:
            raise ClientStateError("this client is closed; create a new one")

    def _bind_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientStateError("this client is closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise ClientStateError(
                "this AsyncKMSClient's connection pool belongs to another event loop"
                " (e.g. an earlier asyncio.run()); create the client inside the loop that uses"
                " it (async with AsyncKMSClient(...) as client:), or use KMSClient from sync code"
            )
        if self._session is None:
            config = self._config
            # The headers of the client's own version are set once, on the session:
            # a request that sends exactly those passes none (see _send_held).
            if config.api_key is not None:
                self._session_headers = self.headers(config.api_version)
            self._session = aiohttp.ClientSession(
                connector=make_connector(config.max_connections, config.ssl_context),
                headers=self._session_headers,
                timeout=self._timeout,
                raise_for_status=False,
                trust_env=self._config.trust_env,
                trace_configs=list(self._trace_configs) or None,
            )
            # Garbage-collected unclosed: warn once, naming this SDK, and close quietly.
            # The finalizer holds the session, so the garbage collector cannot reach
            # (and finalize) the session before the finalizer has closed it.
            self._finalizer = weakref.finalize(
                self,
                _reap_abandoned,
                self._session,
                loop,
                f"phala_kms.{self._owner} for {self._base}",
            )
            self._finalizer.atexit = False  # at interpreter exit a pool dies with the process
        return self._session

    async def aclose(self) -> None:
        """Close the owned session (a caller-provided one is left open). Idempotent.

        Works from any event loop: when the session's own loop is closed (an earlier
        ``asyncio.run()``), its sockets are closed directly; when that loop runs in
        another thread, the close is handed to it.
        """
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if self._finalizer is not None:
            self._finalizer.detach()
        if session is None or not self._owns_session:
            return
        loop = self._loop
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is not None and loop is not current and close_connector_now(session, loop):
            return
        await session.close()

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str, attempts: int) -> bytes:
        """Read the body: a success body up to ``max_response_bytes``, an error body
        (status >= 300) up to ``MAX_ERROR_BODY_BYTES`` (64 KiB), after decompression.

        An error status's body is cut at its limit and the rest is never downloaded
        (the connection is then closed, not reused); its status still decides the
        error. A larger success body is a ResponseValidationError.
        """
        limit = self._config.max_response_bytes
        if resp.status >= 300:
            limit = min(limit, MAX_ERROR_BODY_BYTES)
        length = resp.content_length
        compressed = "Content-Encoding" in resp.headers
        if length is not None and length <= limit and not compressed:
            return await resp.read()  # the common case: small, plain, length known
        if length is None or compressed or resp.status >= 300:
            # Count what aiohttp hands over, i.e. decompressed bytes (a small gzip body
            # can inflate to gigabytes).
            chunks = []
            size = 0
            async for chunk in resp.content.iter_chunked(min(limit + 1, 256 * 1024)):
                size += len(chunk)
                if size > limit:
                    if resp.status >= 300:
                        chunks.append(chunk[: len(chunk) - (size - limit)])
                        return b"".join(chunks)
                    chunks.clear()  # the error's traceback keeps this frame: not the body
                    del chunk
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        raise ResponseValidationError(
            f"{resp.status}: response body exceeds the {limit}-byte limit [GET {url}]",
            status=resp.status,
            method="GET",
            url=url,
            request_id=resp.headers.get(HEADER_REQUEST_ID),
            body="",
            attempts=attempts,
        )

    async def send(
        self,
        path: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout: float,
        attempts: int = 1,
        deadline: float | None = None,
        before_send: Callable[[float | None], Awaitable[object]] | None = None,
    ) -> RawResponse:
        """Send one GET to ``base_url + path`` and read the whole response.

        The request first waits for a connection slot (at most ``pool_timeout``, and
        not past ``deadline``); ``timeout`` starts only once it holds one, so a request
        queued behind a full pool is never timed out before it is sent.

        Args:
            path: The path below the base URL, already quoted, starting with ``/``.
            headers: From :meth:`headers`.
            params: Query parameters, already validated and stringified.
            timeout: This attempt's limit once it holds a connection slot, in seconds.
            attempts: This attempt's number (from 1), carried by any error raised.
            deadline: A ``time.monotonic()`` moment that neither the wait for a slot
                nor the request may pass, or ``None``.
            before_send: Awaited with ``deadline`` once the slot is held, right before
                the request (the client's rate limiting); its wait is not part of
                ``timeout``.

        Returns:
            The raw response, redirects and error statuses included.

        Raises:
            ClientStateError: The client is closed (also while the request was in
                flight) or bound to another event loop.
            PoolTimeoutError: No slot came free in time (or ``before_send`` gave up);
                nothing was sent.
            TransportError: No usable response.
            ResponseValidationError: A 2xx body over ``max_response_bytes``.
        """
        session = self._bind_session()
        if not self._slots.try_acquire():  # the common case takes a free slot without a wait
            await self._acquire_slot(path, deadline, attempts)
        try:
            if before_send is not None:
                await before_send(deadline)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    raise PoolTimeoutError(
                        f"the call's deadline passed while GET {self._base + path} waited"
                        " for a connection or the rate limit; it was not sent",
                        method="GET",
                        url=self._base + path,
                        host=self._host,
                        port=self._port,
                        attempts=attempts,
                    )
                timeout = min(timeout, left)
            return await self._send_held(
                session, path, headers=headers, params=params, timeout=timeout, attempts=attempts
            )
        finally:
            self._slots.release()

    async def _acquire_slot(self, path: str, deadline: float | None, attempts: int) -> None:
        limit = self._config.pool_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            limit = left if limit is None or left < limit else limit
        try:
            await self._slots.acquire(limit)
        except asyncio.TimeoutError:
            waited = (
                f"pool_timeout={self._config.pool_timeout:g} s"
                if limit == self._config.pool_timeout
                else "the call's deadline"
            )
            raise PoolTimeoutError(
                f"no connection to {self._host}:{self._port} came free within {waited}"
                f" ({self.pool_limit} in use); GET {self._base + path} was not sent",
                pool_timeout=self._config.pool_timeout
                if limit == self._config.pool_timeout
                else None,
                method="GET",
                url=self._base + path,
                host=self._host,
                port=self._port,
                attempts=attempts,
            ) from None

    async def _send_held(
        self,
        session: aiohttp.ClientSession,
        path: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout: float,
        attempts: int,
    ) -> RawResponse:
        """:meth:`send`, once a connection slot is held."""
        url = self._base + path
        request_timeout = (
            self._timeout
            if timeout == self._config.timeout
            else aiohttp.ClientTimeout(total=timeout, sock_connect=self._config.connect_timeout)
        )
        try:
            async with session.get(
                url,
                params=params,
                headers=None if headers is self._session_headers else headers,
                allow_redirects=False,
                raise_for_status=False,  # even on a caller's session: statuses are ours to map
                timeout=request_timeout,
            ) as resp:
                body = await self._read_body(resp, url, attempts)
                return RawResponse(resp.status, resp.headers, body, url)
        except PhalaKMSError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            _redact_request_info(exc)
            if self._closed:  # aclose() ran while this request was in flight
                raise ClientStateError(
                    f"the client was closed while GET {url} was in flight"
                ) from exc
            raise map_exception(
                exc,
                method="GET",
                url=url,
                host=self._host,
                port=self._port,
                timeout=timeout,
                connect_timeout=self._config.connect_timeout,
                attempts=attempts,
            ) from exc
