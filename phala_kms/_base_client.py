"""The shared core of the async client: settings, lifecycle, and the one GET with retries."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from ._config import ClientConfig, RetryPolicy, header_safe, resolve_config
from ._constants import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    HEADER_REQUEST_ID,
    MAX_ERROR_FIELD_CHARS,
)
from ._responses import clip, decode_response
from ._retry import Retrier
from ._secrets import redact_key
from ._throttle import Throttle
from ._transport import RawResponse, Transport
from .errors import APIStatusError, ConfigurationError, InvalidArgumentError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BaseKMSClient"]

T = TypeVar("T")
Self = TypeVar("Self", bound="BaseKMSClient")

logger = logging.getLogger("phala_kms")


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
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        pool_timeout: float | None = None,
        max_requests_per_second: float | None = None,
    ) -> None:
        api_key = redact_key(api_key)  # first: no frame local may hold the key in plain
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
            pool_timeout=pool_timeout,
            max_requests_per_second=max_requests_per_second,
        )
        if session is not None and ssl_context is not None:
            raise ConfigurationError(
                "ssl_context applies to the client's own session; with session=..., set TLS"
                " on that session's connector (aiohttp.TCPConnector(ssl=...))",
                setting="ssl_context",
            )
        if session is not None and trace_configs is not None:
            raise ConfigurationError(
                "trace_configs applies to the client's own session; with session=..., pass"
                " them to that session (aiohttp.ClientSession(trace_configs=[...]))",
                setting="trace_configs",
            )
        self._transport = Transport(
            self._config, session, trace_configs=trace_configs, owner=type(self).__name__
        )
        self._pool_limit = self._transport.pool_limit
        self._retrier = Retrier(self._config.retry)
        self._throttle = Throttle(max_requests_per_second=self._config.max_requests_per_second)
        self._kms_segments: dict[str, str] = {}  # kms argument -> checked path segment

    @property
    def config(self) -> ClientConfig:
        """The resolved, frozen settings (the API key is hidden from its repr)."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called (``False`` for a client whose
        construction failed)."""
        transport = getattr(self, "_transport", None)
        return transport is not None and transport.closed

    def __repr__(self) -> str:
        config = getattr(self, "_config", None)
        if config is None or getattr(self, "_transport", None) is None:
            # construction failed (or is under way): a traceback that captures locals
            # shows this object, so its repr must work
            return f"<{type(self).__name__} (not initialised)>"
        state = "closed" if self.closed else "open"
        return (
            f"<{type(self).__name__} base_url={config.base_url!r} "
            f"api_version={config.api_version!r} {state}>"
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
        client afterwards raises :class:`~phala_kms.errors.ClientStateError`. It may be
        awaited on any event loop: when the pool's own loop is already closed (an
        earlier ``asyncio.run()``), its sockets are closed directly.
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

        Each attempt is logged at DEBUG on the ``phala_kms`` logger (see
        :func:`_log_attempt`); each retry at INFO by the retry loop.

        Raises:
            ConfigurationError: No API key is configured.
            ClientStateError: The client is closed or bound to another event loop.
            TransportError: No usable response (after retries where allowed).
            APIResponseError: A redirect, an error status, or an undecodable body.
        """
        transport = self._transport
        headers = transport.headers(version)
        throttle = self._throttle
        policy = self._config.retry
        deadline = None if policy.deadline is None else time.monotonic() + policy.deadline

        async def attempt(number: int, timeout: float) -> T:
            started = time.perf_counter()
            status: int | None = None
            request_id: str | None = None
            error: str | None = None
            raw: RawResponse | None = None
            sent_at = 0.0

            async def pace(deadline: float | None) -> None:
                # Once a connection slot is held: the Retry-After gate, the pacing.
                nonlocal sent_at
                sent_at = await throttle.pace(deadline)

            try:
                raw = await transport.send(
                    path,
                    headers=headers,
                    params=params,
                    timeout=timeout,
                    attempts=number,
                    deadline=deadline,
                    before_send=pace,
                )
                status = raw.status
                request_id = raw.headers.get(HEADER_REQUEST_ID)
                result = decode_response(
                    status=raw.status,
                    headers=raw.headers,
                    body=raw.body,
                    method="GET",
                    url=raw.url,
                    now=time.time(),
                    model=model,
                    attempts=number,
                )
                throttle.on_success(sent_at)
                return result
            except BaseException as exc:
                if isinstance(exc, APIStatusError):
                    throttle.on_refused(
                        sent_at, exc.status, exc.retry_after, policy.max_retry_after
                    )
                error = type(exc).__name__
                request_id = getattr(exc, "request_id", None) or request_id
                raw = None  # the error's traceback keeps this frame: not the body with it
                raise
            finally:
                if logger.isEnabledFor(logging.DEBUG):
                    elapsed = time.perf_counter() - started
                    _log_attempt(path, status, error, elapsed, number, request_id)

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


def _log_attempt(
    path: str,
    status: int | None,
    error: str | None,
    elapsed: float,
    attempt: int,
    request_id: str | None,
) -> None:
    """Log one attempt at DEBUG on ``phala_kms``.

    The message reads ``GET /kms/phala -> 503 ServerError in 12.3 ms (attempt 1,
    request_id=...)``; the same facts are on the record as ``http_method``,
    ``http_path``, ``http_status`` (``None`` without a response), ``error_type``
    (``None`` on success), ``elapsed_ms``, ``attempt`` and ``request_id``. The path is
    below the base URL and carries no query string; the API key is never logged.
    """
    if request_id is not None:
        request_id = clip(request_id, MAX_ERROR_FIELD_CHARS)
    outcome = " ".join(str(part) for part in (status, error) if part is not None)
    elapsed_ms = round(elapsed * 1000.0, 3)
    logger.debug(
        "GET %s -> %s in %.1f ms (attempt %d, request_id=%s)",
        path,
        outcome,
        elapsed_ms,
        attempt,
        request_id,
        extra={
            "http_method": "GET",
            "http_path": path,
            "http_status": status,
            "error_type": error,
            "elapsed_ms": elapsed_ms,
            "attempt": attempt,
            "request_id": request_id,
        },
    )
