"""Frozen client settings, resolved once from arguments and the environment."""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._constants import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BUDGET,
    DEFAULT_RETRY_COST,
    ENV_API_KEY,
    ENV_BASE_URL,
)
from ._secrets import RedactedStr, redact_key
from ._version import __version__
from .errors import ConfigurationError

__all__ = [
    "ClientConfig",
    "RetryPolicy",
    "header_safe",
    "resolve_config",
]

USER_AGENT = f"phala-kms/{__version__}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(
    name: str, *, optional: bool = False, positive: bool = False
) -> Callable[[Any, Any, Any], None]:
    """A validator: a finite number of seconds, >= 0 (> 0 if ``positive``), or ``None``
    only where ``optional``."""
    bound = "> 0" if positive else ">= 0"

    def check(_inst: Any, _attr: Any, value: object) -> None:
        if value is None and optional:
            return
        if (
            not _is_number(value)
            or not math.isfinite(value)  # type: ignore[arg-type]
            or value < 0  # type: ignore[operator]
            or (positive and value == 0)
        ):
            raise ConfigurationError(
                f"{name} must be a finite number of seconds {bound}"
                + (" or None" if optional else "")
                + f", got {value!r}",
                setting=name,
            )

    return check


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to wait before retrying a failed request.

    Only safe failures are retried: failures to connect (but not DNS or TLS
    failures), connections lost mid-request, attempt timeouts, and statuses 408, 409
    without an ``error_code``, 429, 500, 502, 503, 504. The
    wait before retry ``n`` (1-based) is::

        min(max_backoff, initial_backoff * 2 ** (n - 1)) * (1 - jitter * U[0, 1))

    unless the response carried ``Retry-After`` (seconds or an HTTP date): then the
    wait is exactly that many seconds. A ``Retry-After`` longer than
    ``max_retry_after`` is not waited for: the error is raised at once with its
    ``retry_after`` set, so the caller can decide.

    Attributes:
        max_retries: Retries after the first attempt (0 disables retrying); a hard
            limit per call, never exceeded whatever the retry budget holds. The
            default, 5, is sized for batches: with a share ``p`` of requests failing
            at random, a call fails for good with probability ``p ** (max_retries +
            1)``, so at ``p = 0.1`` one id in a million (0.002 expected in a
            2,000-id fan-out; with 3 retries it would be 0.2). The retry budget,
            not this count, keeps an outage from multiplying the load, so the
            higher count costs a dead API no extra requests beyond the budget; what
            it costs is time: a call against a server that keeps failing gives up
            after backoffs of 0.5 + 1 + 2 + 4 + 8 = 15.5 s at most (jittered down to
            11.6 s) instead of 3.5 s. Set it lower for interactive use.
        initial_backoff: The first backoff, in seconds.
        max_backoff: The largest backoff, in seconds.
        jitter: The fraction (0..1) of each backoff that is randomised away.
        max_retry_after: The longest ``Retry-After`` honoured, in seconds.
        deadline: An overall limit in seconds for one call, attempts and waits
            together, or ``None`` for no limit. A wait that would end past the
            deadline is not started, and each attempt's timeout is shortened to
            what remains.
        retry_budget: The size of the client's retry budget, in tokens, or ``None``
            for no budget (every call gets all its ``max_retries``). One budget is
            shared by every call of a client, as the AWS SDKs' retry quota and gRPC's
            retry throttling are: each retry draws ``retry_cost`` tokens; a call that
            succeeds at its first attempt puts 1 token back, one that succeeds after
            retrying puts back the cost of its last retry (never above
            ``retry_budget``). When the budget cannot pay for a retry, the failure is
            raised at once. So a blip (say 10 % of requests failing) gets every retry
            it needs, while in an outage retries stop after ``retry_budget /
            retry_cost`` of them instead of multiplying the load. ``0`` allows no
            retries at all.
        retry_cost: Tokens one retry draws from the budget (> 0).
    """

    max_retries: int = attrs.field(default=DEFAULT_MAX_RETRIES)
    initial_backoff: float = attrs.field(default=0.5, validator=_seconds("initial_backoff"))
    max_backoff: float = attrs.field(default=8.0, validator=_seconds("max_backoff"))
    jitter: float = attrs.field(default=0.25)
    max_retry_after: float = attrs.field(default=60.0, validator=_seconds("max_retry_after"))
    deadline: float | None = attrs.field(
        default=None, validator=_seconds("deadline", optional=True, positive=True)
    )
    retry_budget: float | None = attrs.field(default=DEFAULT_RETRY_BUDGET)
    retry_cost: float = attrs.field(default=DEFAULT_RETRY_COST)

    @retry_budget.validator
    def _check_retry_budget(self, _attr: object, value: float | None) -> None:
        if value is not None and (not _is_number(value) or not 0 <= value < math.inf):
            raise ConfigurationError(
                f"retry_budget must be a finite number of tokens >= 0 or None, got {value!r}",
                setting="retry_budget",
            )

    @retry_cost.validator
    def _check_retry_cost(self, _attr: object, value: float) -> None:
        if not _is_number(value) or not 0 < value < math.inf:
            raise ConfigurationError(
                f"retry_cost must be a finite number of tokens > 0, got {value!r}",
                setting="retry_cost",
            )

    @max_retries.validator
    def _check_max_retries(self, _attr: object, value: int) -> None:
        if type(value) is not int or value < 0:
            raise ConfigurationError(
                f"max_retries must be an int >= 0, got {value!r}", setting="max_retries"
            )

    @jitter.validator
    def _check_jitter(self, _attr: object, value: float) -> None:
        if not _is_number(value) or not 0 <= value <= 1:
            raise ConfigurationError(
                f"jitter must be between 0 and 1, got {value!r}", setting="jitter"
            )


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Everything a client needs to talk to the API, validated.

    The API key is never part of ``repr``; it is held as a
    :class:`~phala_kms._secrets.RedactedStr`, whose own ``repr`` is redacted too.
    """

    base_url: str
    api_key: str | None = attrs.field(repr=False)
    api_version: str
    timeout: float
    connect_timeout: float
    retry: RetryPolicy
    max_connections: int
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    trust_env: bool = False
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    user_agent: str = USER_AGENT
    pool_timeout: float | None = None
    max_requests_per_second: float | None = None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_base_url(base_url: str) -> str:
    """Check a base URL and trim its trailing ``/``.

    Raises:
        ConfigurationError: Not an absolute ``https://`` URL (or ``http://`` to a
            loopback host), or it carries credentials, a query or a fragment.
    """
    if not isinstance(base_url, str):
        raise ConfigurationError(
            f"base_url must be a str, got {type(base_url).__name__}", setting="base_url"
        )
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    # Messages never echo the URL: a key pasted into it (user info, query, fragment)
    # must not reach a log through this error.
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "base_url must not carry credentials; pass api_key instead", setting="base_url"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment", setting="base_url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            "base_url must be an absolute https:// URL such as"
            f" {DEFAULT_BASE_URL!r} (got scheme {parts.scheme!r})",
            setting="base_url",
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"refusing plain http:// to {parts.hostname!r}: the API key would travel unencrypted;"
            " use https://, or http:// only for a loopback host such as 127.0.0.1",
            setting="base_url",
        )
    return url


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}", setting=name)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{name} must be > 0 seconds, got {value!r}", setting=name)
    return float(value)


def _rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of requests per second, got {value!r}", setting=name
        )
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{name} must be > 0, got {value!r}", setting=name)
    return float(value)


def header_safe(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header value: printable ASCII only."""
    return value.isascii() and value.isprintable()


def _ssl_context(value: object) -> ssl.SSLContext | None:
    if value is None or isinstance(value, ssl.SSLContext):
        return value
    raise ConfigurationError(
        "ssl_context must be an ssl.SSLContext (e.g. ssl.create_default_context(cafile=...))",
        setting="ssl_context",
    )


def resolve_config(
    *,
    api_key: str | None,
    base_url: str | None,
    api_version: str | None,
    timeout: float,
    connect_timeout: float,
    max_retries: int,
    retry_policy: RetryPolicy | None,
    max_connections: int,
    ssl_context: ssl.SSLContext | None = None,
    trust_env: bool = False,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    pool_timeout: float | None = None,
    max_requests_per_second: float | None = None,
) -> ClientConfig:
    """Merge arguments with ``PHALA_CLOUD_API_KEY``/``PHALA_CLOUD_API_PREFIX`` and validate.

    A missing API key is not an error here: it is raised at the first request, so
    that a client can be built before the key is known (e.g. in tests).

    The key is wrapped in a :class:`~phala_kms._secrets.RedactedStr` as soon as it is
    read, from the argument or ``PHALA_CLOUD_API_KEY``, so no frame local holds it in
    plain text (tracebacks that capture locals print their ``repr``).

    Raises:
        ConfigurationError: Any setting is unusable.
    """
    api_key = redact_key(api_key)
    if api_key is None:
        api_key = redact_key(os.environ.get(ENV_API_KEY) or None)
    if api_key is not None:
        if not isinstance(api_key, str):
            raise ConfigurationError("api_key must be a str", setting="api_key")
        api_key = RedactedStr(api_key.strip()) or None
        if api_key is not None and not header_safe(api_key):
            raise ConfigurationError(
                "api_key must be printable ASCII (it is sent as the X-API-Key header);"
                " check for a stray newline or quote",
                setting="api_key",
            )
    if base_url is None:
        base_url = os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    if api_version is None:
        api_version = DEFAULT_API_VERSION
    if not isinstance(api_version, str) or not api_version.strip():
        raise ConfigurationError(
            f"api_version must be a non-empty str, got {api_version!r}", setting="api_version"
        )
    if not header_safe(api_version.strip()):
        raise ConfigurationError(
            f"api_version must be printable ASCII like '2026-06-23', got {api_version!r}",
            setting="api_version",
        )
    if retry_policy is None:
        retry_policy = RetryPolicy(max_retries=max_retries)
    elif max_retries != RetryPolicy().max_retries and max_retries != retry_policy.max_retries:
        raise ConfigurationError(
            "pass either max_retries or retry_policy, not both (set retry_policy.max_retries)",
            setting="retry_policy",
        )
    if type(max_connections) is not int or max_connections < 1:
        raise ConfigurationError(
            f"max_connections must be an int >= 1, got {max_connections!r}",
            setting="max_connections",
        )
    if type(max_response_bytes) is not int or max_response_bytes < 1:
        raise ConfigurationError(
            f"max_response_bytes must be an int >= 1, got {max_response_bytes!r}",
            setting="max_response_bytes",
        )
    return ClientConfig(
        base_url=normalize_base_url(base_url),
        api_key=api_key,
        api_version=api_version.strip(),
        timeout=_positive("timeout", timeout),
        connect_timeout=_positive("connect_timeout", connect_timeout),
        retry=retry_policy,
        max_connections=max_connections,
        ssl_context=_ssl_context(ssl_context),
        trust_env=bool(trust_env),
        max_response_bytes=max_response_bytes,
        pool_timeout=None if pool_timeout is None else _positive("pool_timeout", pool_timeout),
        max_requests_per_second=(
            None
            if max_requests_per_second is None
            else _rate("max_requests_per_second", max_requests_per_second)
        ),
    )
