"""HTTP to parties other than the Cloud API: KMS nodes (pRPC) and EVM JSON-RPC endpoints.

The API's transport (:mod:`phala_kms._transport`) sends the API key; this one never
does. It POSTs one JSON body per request, never follows redirects, reads at most
``max_response_bytes``, verifies TLS (the system trust store, or the
``ssl.SSLContext`` the caller gives: there is no way to switch verification off), and
refuses a plain ``http://`` URL unless its host is loopback (the base URL's rule,
:func:`phala_kms._config.normalize_base_url`). Responses are decoded by
:func:`phala_kms._responses.decode_response`, like the API's. No retries: every
caller is a verification step that should fail closed, not wait.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from ._config import ClientConfig, normalize_base_url
from ._responses import decode_response
from ._transport import map_exception
from .errors import (
    ConfigurationError,
    InvalidArgumentError,
    PhalaKMSError,
    ResponseValidationError,
)

__all__ = ["PeerClient", "check_peer_url"]

T = TypeVar("T")


def check_peer_url(url: object, argument: str) -> str:
    """Check a KMS node or JSON-RPC URL with the base URL's rule and trim its ``/``.

    Args:
        url: An absolute ``https://`` URL, or ``http://`` to a loopback host.
        argument: The parameter name for the error (``"node_url"``, ``"rpc_url"``).

    Returns:
        The URL without a trailing ``/``.

    Raises:
        InvalidArgumentError: Not such a URL, or it carries credentials, a query or a
            fragment (``argument`` names the parameter).
    """
    try:
        return normalize_base_url(url)  # type: ignore[arg-type]  # checked at run time
    except ConfigurationError as err:  # its message speaks of the API key: say why here
        raise InvalidArgumentError(
            f"{argument} must be an absolute https:// URL (plain http:// only to a loopback"
            " host such as 127.0.0.1) without user info, query or fragment: its answer"
            " decides which key is trusted, so it must not be tamperable in transit",
            argument=argument,
        ) from err


class PeerClient:
    """One short-lived aiohttp session for POSTing JSON to KMS nodes and JSON-RPC URLs.

    Args:
        config: The client's settings: ``timeout``, ``connect_timeout``,
            ``max_response_bytes``, ``trust_env``, ``user_agent`` (never its API key).
        ssl_context: The TLS trust to use; ``None`` uses the client's ``ssl_context``,
            else the system trust store. Certificates and host names are always checked.
    """

    def __init__(self, config: ClientConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise InvalidArgumentError(
                "ssl_context must be an ssl.SSLContext (e.g. ssl.create_default_context("
                "cafile=...))",
                argument="ssl_context",
            )
        self._config = config
        self._ssl: ssl.SSLContext | bool = ssl_context or config.ssl_context or True
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
                timeout=aiohttp.ClientTimeout(
                    total=self._config.timeout, sock_connect=self._config.connect_timeout
                ),
                trust_env=self._config.trust_env,
            )
        return self._session

    async def post_json(self, url: str, body: Any, model: type[T]) -> T:
        """POST ``body`` as JSON to ``url`` and decode the answer into ``model``.

        Args:
            url: The full URL (already checked with :func:`check_peer_url`).
            body: A JSON-serialisable value.
            model: The model a 2xx JSON body is decoded into.

        Returns:
            The decoded model.

        Raises:
            TransportError: No usable response (``ConnectRefusedError``, ``DNSError``,
                ``TLSError``, ``APITimeoutError``, ``ConnectionLostError``, ...).
            RedirectError: A 3xx (never followed).
            APIStatusError: A 4xx or 5xx.
            ResponseValidationError: A 2xx body that is not JSON, is larger than
                ``max_response_bytes``, or does not fit ``model``.
        """
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": self._config.user_agent,
        }
        try:
            async with self._open().post(
                url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                raw = await self._read(resp, url)
                status, resp_headers = resp.status, resp.headers
        except PhalaKMSError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            parsed = URL(url)
            raise map_exception(
                exc,
                method="POST",
                url=url,
                host=parsed.host,
                port=parsed.port,
                timeout=self._config.timeout,
                connect_timeout=self._config.connect_timeout,
            ) from exc
        return decode_response(
            status=status,
            headers=resp_headers,
            body=raw,
            method="POST",
            url=url,
            now=time.time(),
            model=model,
        )

    async def _read(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self._config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > limit:
                if resp.status >= 300:  # an error body is cut, its status decides
                    chunks.append(chunk[: len(chunk) - (size - limit)])
                    break
                raise ResponseValidationError(
                    f"{resp.status}: response body exceeds the {limit}-byte limit [POST {url}]",
                    status=resp.status,
                    method="POST",
                    url=url,
                )
            chunks.append(chunk)
        return b"".join(chunks)
