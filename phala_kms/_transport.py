"""The one place that talks HTTP: an aiohttp session, the retry loop, and error mapping.

Only this module imports aiohttp. It owns (or borrows) a ``ClientSession``, sends
GETs with the API key and version headers, never follows redirects, turns every
aiohttp failure into a :mod:`phala_kms.errors` exception, and retries per the
:class:`~phala_kms._config.RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from ._config import ClientConfig
from ._convert import DecodeError, structure
from ._errors_parse import decode_body_text, make_redirect_error, make_status_error
from ._retry import retry_delay
from .errors import (
    APIResponseError,
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

__all__ = ["Transport"]

T = TypeVar("T")

logger = logging.getLogger("phala_kms")
_sleep = asyncio.sleep  # the retry wait; tests replace it to record delays without waiting

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
    if isinstance(info, aiohttp.RequestInfo) and "X-API-Key" in info.headers:
        from multidict import CIMultiDict, CIMultiDictProxy

        headers = CIMultiDict(info.headers)
        headers["X-API-Key"] = "<redacted>"
        with contextlib.suppress(AttributeError):  # read-only in some aiohttp version
            exc.request_info = info._replace(headers=CIMultiDictProxy(headers))  # type: ignore[attr-defined]


class Transport:
    """Sends GET requests to the API and decodes their bodies into models.

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
        self._random = random.Random()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def _headers(self, version: str) -> dict[str, str]:
        headers = self._headers_by_version.get(version)
        if headers is None:
            if self._config.api_key is None:
                raise ConfigurationError(
                    "no API key: pass api_key=... or set the PHALA_CLOUD_API_KEY"
                    " environment variable",
                    setting="api_key",
                )
            headers = {
                "X-API-Key": _RedactedStr(self._config.api_key),
                "X-Phala-Version": version,
                "User-Agent": self._config.user_agent,
                "Accept": "application/json",
            }
            self._headers_by_version[version] = headers
        return headers

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

    def _map_exception(self, exc: BaseException, *, url: str, timeout: float) -> PhalaKMSError:
        """Turn an aiohttp/asyncio failure into our transport error."""
        where: dict[str, Any] = {
            "method": "GET",
            "url": url,
            "host": self._host,
            "port": self._port,
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

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
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
            request_id=resp.headers.get("X-Request-ID"),
            body="",
        )

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        timeout: float,
        model: type[T],
    ) -> T:
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
                status = resp.status
                body = await self._read_body(resp, url)
                resp_headers = resp.headers
        except PhalaKMSError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            _redact_request_info(exc)
            if self._closed:  # aclose() ran while this request was in flight
                raise ClientStateError(
                    f"the client was closed while GET {url} was in flight"
                ) from exc
            raise self._map_exception(exc, url=url, timeout=timeout) from exc
        if 200 <= status < 300:
            return self._decode(status, resp_headers, body, url, model)
        if 300 <= status < 400:
            raise make_redirect_error(
                status=status, headers=resp_headers, body=body, method="GET", url=url
            )
        raise make_status_error(
            status=status,
            headers=resp_headers,
            body=body,
            method="GET",
            url=url,
            now=time.time(),
        )

    @staticmethod
    def _decode(
        status: int, headers: Mapping[str, str], body: bytes, url: str, model: type[T]
    ) -> T:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
            raise ResponseValidationError(
                f"{status}: response body is not JSON ({exc}) [GET {url}]",
                status=status,
                method="GET",
                url=url,
                request_id=headers.get("X-Request-ID"),
                body=decode_body_text(body),
                model=getattr(model, "__name__", str(model)),
                problems=(f"not JSON: {exc}",),
            ) from exc
        try:
            return structure(data, model)
        except DecodeError as exc:
            raise ResponseValidationError(
                f"{status}: {exc} [GET {url}]",
                status=status,
                method="GET",
                url=url,
                request_id=headers.get("X-Request-ID"),
                body=decode_body_text(body),
                model=exc.model,
                problems=exc.problems,
            ) from exc

    async def get(
        self,
        path: str,
        model: type[T],
        *,
        version: str,
        params: Mapping[str, str] | None = None,
    ) -> T:
        """GET ``base_url + path`` and decode the JSON body into ``model``, with retries.

        Args:
            path: The path below the base URL, already quoted, starting with ``/``.
            model: The model to decode the body into.
            version: The ``X-Phala-Version`` to send.
            params: Query parameters, already validated and stringified.

        Raises:
            ConfigurationError: No API key is configured.
            ClientStateError: The client is closed or bound to another event loop.
            TransportError: No usable response (after retries where allowed).
            APIResponseError: A redirect, an error status, or an undecodable body.
        """
        headers = self._headers(version)
        session = self._bind_session()
        url = self._base + path
        policy = self._config.retry
        started = time.monotonic()
        retry_number = 0
        while True:
            if self._closed:  # aclose() ran during the retry wait
                raise ClientStateError(f"the client was closed while GET {url} was retrying")
            timeout = self._config.timeout
            if policy.deadline is not None:
                remaining = policy.deadline - (time.monotonic() - started)
                timeout = max(0.001, min(timeout, remaining))
            try:
                return await self._attempt(session, url, params, headers, timeout, model)
            except (TransportError, APIResponseError) as err:
                err.attempts = retry_number + 1
                retry_number += 1
                delay = retry_delay(
                    err,
                    retry_number=retry_number,
                    policy=policy,
                    elapsed=time.monotonic() - started,
                    rand=self._random.random(),
                )
                if delay is None:
                    raise
                logger.info(
                    "retrying GET %s in %.2f s (retry %d of %d) after %s",
                    url,
                    delay,
                    retry_number,
                    policy.max_retries,
                    _short(err),
                )
            await _sleep(delay)


def _short(err: PhalaKMSError) -> str:
    status = getattr(err, "status", None)
    if status:
        code = getattr(err, "error_code", None)
        return f"{type(err).__name__} {status}" + (f" {code}" if code else "")
    return type(err).__name__
