"""The shared core of the async client: settings, lifecycle, and the one GET with retries."""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from ._config import ClientConfig, RetryPolicy, header_safe, resolve_config
from ._constants import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
)
from ._responses import decode_response
from ._retry import Retrier
from ._transport import Transport
from .errors import ConfigurationError, InvalidArgumentError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BaseKMSClient"]

T = TypeVar("T")
Self = TypeVar("Self", bound="BaseKMSClient")


class BaseKMSClient:
    """Settings, the connection pool's lifecycle and the retried GET behind every endpoint.

    Not used directly: :class:`~phala_kms.AsyncKMSClient` documents the arguments.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        api_version: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._config = resolve_config(
            api_key=api_key,
            base_url=base_url,
            api_version=api_version,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            max_connections=max_connections,
            ssl_context=ssl_context,
            trust_env=trust_env,
            max_response_bytes=max_response_bytes,
        )
        if session is not None and ssl_context is not None:
            raise ConfigurationError(
                "ssl_context applies to the client's own session; with session=..., set TLS"
                " on that session's connector (aiohttp.TCPConnector(ssl=...))",
                setting="ssl_context",
            )
        if session is not None:
            limit = getattr(session.connector, "limit", 0) or self._config.max_connections
            self._pool_limit = min(limit, self._config.max_connections)
        else:
            self._pool_limit = self._config.max_connections
        self._transport = Transport(self._config, session)
        self._retrier = Retrier(self._config.retry)

    @property
    def config(self) -> ClientConfig:
        """The resolved, frozen settings (the API key is hidden from its repr)."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._transport.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<{type(self).__name__} base_url={self._config.base_url!r} "
            f"api_version={self._config.api_version!r} {state}>"
        )

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connection pool. Idempotent.

        A session passed in as ``session=`` is left open for its owner. Using the
        client afterwards raises :class:`~phala_kms.errors.ClientStateError`.
        """
        await self._transport.aclose()

    async def _get(
        self,
        path: str,
        model: type[T],
        *,
        version: str,
        params: Mapping[str, str] | None = None,
    ) -> T:
        """GET ``base_url + path`` and decode the body into ``model``, with retries.

        Raises:
            ConfigurationError: No API key is configured.
            ClientStateError: The client is closed or bound to another event loop.
            TransportError: No usable response (after retries where allowed).
            APIResponseError: A redirect, an error status, or an undecodable body.
        """
        transport = self._transport
        headers = transport.headers(version)

        async def attempt(number: int, timeout: float) -> T:
            raw = await transport.send(
                path, headers=headers, params=params, timeout=timeout, attempts=number
            )
            return decode_response(
                status=raw.status,
                headers=raw.headers,
                body=raw.body,
                method="GET",
                url=raw.url,
                now=time.time(),
                model=model,
                attempts=number,
            )

        return await self._retrier.run(
            attempt,
            timeout=self._config.timeout,
            describe=f"GET {self._config.base_url}{path}",
            check=transport.check_open,
        )

    def _version(self, override: str | None, pinned: str | None = None) -> str:
        if override is not None:
            text = override.strip() if isinstance(override, str) else ""
            # It becomes a header value: printable ASCII only (aiohttp would raise a bare
            # ValueError for a control character, and non-ASCII is not portable).
            if not text or not header_safe(text):
                raise InvalidArgumentError(
                    "api_version must be a non-empty str of printable ASCII like '2026-06-23'",
                    argument="api_version",
                )
            return text
        return pinned or self._config.api_version
