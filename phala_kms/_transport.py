"""The one place that talks HTTP: an aiohttp session, ``send()`` and exception mapping.

Only this module imports aiohttp. It owns (or borrows) a ``ClientSession``, sends
one GET with the API key and version headers, never follows redirects, reads the
body up to ``max_response_bytes`` (reading is where aiohttp's streaming lives), and
turns every aiohttp failure into a :mod:`phala_kms.errors` exception. It hands back
the raw ``(status, headers, body)``: decoding is :mod:`phala_kms._responses`',
retrying :mod:`phala_kms._retry`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs
from yarl import URL

from ._config import ClientConfig
from ._constants import HEADER_API_KEY, HEADER_REQUEST_ID, HEADER_VERSION
from .errors import (
    APITimeoutError,
    ClientStateError,
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    ConnectRefusedError,
    DNSError,
    PhalaKMSError,
    ResponseValidationError,
    TLSError,
    TransportError,
)

__all__ = ["RawResponse", "Transport"]

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


class _RedactedStr(str):
    """The API key as sent: its ``repr`` is redacted, so it stays out of tracebacks that
    capture local variables (Sentry, rich, pytest --showlocals) and out of aiohttp's
    request_info reprs. Its value, and so the header on the wire, is unchanged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


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
    """

    def __init__(self, config: ClientConfig, session: aiohttp.ClientSession | None = None) -> None:
        self._config = config
        self._session = session
        self._owns_session = session is None
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
                HEADER_API_KEY: _RedactedStr(self._config.api_key),
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
            connector = aiohttp.TCPConnector(
                limit=self._config.max_connections,
                ttl_dns_cache=300,
                ssl=self._config.ssl_context if self._config.ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                raise_for_status=False,
                trust_env=self._config.trust_env,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the owned session (a caller-provided one is left open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _map_exception(
        self, exc: BaseException, *, url: str, timeout: float, attempts: int
    ) -> PhalaKMSError:
        """Turn an aiohttp/asyncio failure into our transport error."""
        where: dict[str, Any] = {
            "method": "GET",
            "url": url,
            "host": self._host,
            "port": self._port,
            "attempts": attempts,
        }
        target = f"{self._host}:{self._port}"
        if _CONNECT_TIMEOUT is not None and isinstance(exc, _CONNECT_TIMEOUT):
            return APITimeoutError(
                f"connecting to {target} timed out after {self._config.connect_timeout:g} s",
                timeout=self._config.connect_timeout,
                **where,
            )
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
            return APITimeoutError(
                f"GET {url} timed out after {timeout:g} s", timeout=timeout, **where
            )
        if _DNS_ERROR is not None and isinstance(exc, _DNS_ERROR):
            return DNSError(f"could not resolve host {self._host!r}: {exc}", **where)
        if isinstance(exc, _TLS_ERRORS):
            return TLSError(f"TLS with {target} failed: {exc}", **where)
        if isinstance(exc, _CONNECT_ERRORS):
            os_error = getattr(exc, "os_error", None)
            if isinstance(os_error, socket.gaierror):
                return DNSError(f"could not resolve host {self._host!r}: {exc}", **where)
            if isinstance(os_error, ConnectionRefusedError):
                return ConnectRefusedError(f"connection to {target} refused", **where)
            if isinstance(os_error, (asyncio.TimeoutError, TimeoutError)):
                return APITimeoutError(
                    f"connecting to {target} timed out after {self._config.connect_timeout:g} s",
                    timeout=self._config.connect_timeout,
                    **where,
                )
            return ConnectError(f"could not connect to {target}: {exc}", **where)
        if isinstance(exc, _LOST_ERRORS):
            return ConnectionLostError(
                f"connection to {target} lost before the response was complete: {exc}", **where
            )
        return TransportError(f"GET {url} failed: {type(exc).__name__}: {exc}", **where)

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str, attempts: int) -> bytes:
        """Read the body, at most ``max_response_bytes`` after decompression.

        An error status's body is cut at the limit (its status still decides the error);
        a larger success body is a ResponseValidationError.
        """
        limit = self._config.max_response_bytes
        length = resp.content_length
        compressed = "Content-Encoding" in resp.headers
        if length is not None and length <= limit and not compressed:
            return await resp.read()  # the common case: small, plain, length known
        if length is None or compressed or resp.status >= 300:
            # Count what aiohttp hands over, i.e. decompressed bytes (a small gzip body
            # can inflate to gigabytes).
            chunks = []
            size = 0
            async for chunk in resp.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > limit:
                    if resp.status >= 300:
                        chunks.append(chunk[: len(chunk) - (size - limit)])
                        return b"".join(chunks)
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
    ) -> RawResponse:
        """Send one GET to ``base_url + path`` and read the whole response.

        Args:
            path: The path below the base URL, already quoted, starting with ``/``.
            headers: From :meth:`headers`.
            params: Query parameters, already validated and stringified.
            timeout: This attempt's limit, in seconds.
            attempts: This attempt's number (from 1), carried by any error raised.

        Returns:
            The raw response, redirects and error statuses included.

        Raises:
            ClientStateError: The client is closed (also while the request was in
                flight) or bound to another event loop.
            TransportError: No usable response.
            ResponseValidationError: A 2xx body over ``max_response_bytes``.
        """
        session = self._bind_session()
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
                headers=headers,
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
            raise self._map_exception(exc, url=url, timeout=timeout, attempts=attempts) from exc
