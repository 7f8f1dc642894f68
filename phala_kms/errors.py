"""Every exception phala-kms raises, in one tree.

Catch :class:`PhalaKMSError` to catch them all. The tree separates problems found
before anything is sent (bad settings, bad arguments, a closed client), problems
where no usable HTTP response arrived (:class:`TransportError`), and problems with
a response that did arrive (:class:`APIResponseError`)::

    PhalaKMSError
    ├── ConfigurationError            settings are unusable (no API key, http:// to a remote host)
    ├── InvalidArgumentError          an argument was rejected before any request was sent
    ├── ClientStateError              client closed, bound to another event loop, or called
    │                                 from its own portal thread
    ├── SignatureVerificationError    a public key's secp256k1 signature did not verify
    ├── CallbackError                 a callback you passed (``on_progress``) raised
    ├── TransportError                no usable HTTP response (host, port)
    │   ├── ConnectError              could not open a connection
    │   │   ├── DNSError              the host name did not resolve
    │   │   ├── ConnectRefusedError   the host refused the TCP connection
    │   │   └── TLSError              TLS handshake or certificate verification failed
    │   ├── ConnectionLostError       the connection dropped before the response was complete
    │   ├── APITimeoutError           an attempt exceeded its timeout (also a builtin TimeoutError)
    │   └── PoolTimeoutError          nothing could be sent in time: no free connection within
    │                                 ``pool_timeout``, or the deadline came first (a TimeoutError)
    └── APIResponseError              a response arrived but is not a usable result
        ├── RedirectError             a 3xx (never followed: it could leak the API key)
        ├── ResponseValidationError   a 2xx body that is not JSON or does not fit the model
        └── APIStatusError            a 4xx or 5xx status
            ├── BadRequestError              400
            ├── AuthenticationError          401
            ├── PermissionDeniedError        403
            ├── NotFoundError                404
            ├── ConflictError                409
            ├── UnprocessableEntityError     422 (``validation_errors`` parsed)
            ├── RateLimitError               429 (``retry_after`` parsed)
            └── ServerError                  5xx

Every exception keeps its data in plain attributes (no aiohttp objects), pickles,
crosses threads, and chains the exception it wraps (``raise ... from err``). No
message, ``str`` or ``repr`` ever includes the API key, an env-var value or a
private key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import attrs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CallbackError",
    "ClientStateError",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "ConnectRefusedError",
    "ConnectionLostError",
    "DNSError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PhalaKMSError",
    "PoolTimeoutError",
    "RateLimitError",
    "RedirectError",
    "ResponseValidationError",
    "ServerError",
    "SignatureVerificationError",
    "TLSError",
    "TransportError",
    "UnprocessableEntityError",
    "ValidationErrorItem",
]


class PhalaKMSError(Exception):
    """Root of every exception raised by phala-kms.

    Each class takes its attributes as typed keyword-only arguments and keeps them
    as plain instance attributes. Pickling (and ``copy``) rebuilds an error from its
    ``args`` plus its ``__dict__`` without calling ``__init__``, so every subclass
    crosses thread and process boundaries unchanged.

    Attributes:
        app_id: In a fan-out, the app id (40 lowercase hex, as fetched; a malformed one
            as given) whose fetch or verification failed; ``None`` elsewhere.
        kms: In a fan-out, the ``kms`` argument of the call; ``None`` elsewhere.
    """

    app_id: str | None = None
    kms: str | None = None

    def __init__(self, message: str, *, app_id: str | None = None, kms: str | None = None) -> None:
        super().__init__(message)
        if app_id is not None:
            self.app_id = app_id
        if kms is not None:
            self.kms = kms

    @property
    def message(self) -> str:
        """The human-readable message (the first argument)."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _rebuild(cls: type[PhalaKMSError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class ConfigurationError(PhalaKMSError, ValueError):
    """The client's settings cannot work.

    Raised by ``AsyncKMSClient``/``KMSClient`` when no API key is configured
    (at the first request, before anything is sent), or at construction for a
    malformed base URL, a plain ``http://`` base URL whose host is not loopback,
    a non-positive timeout, or conflicting retry settings.

    Attributes:
        setting: The setting at fault, e.g. ``"api_key"`` or ``"base_url"``, or ``None``.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class InvalidArgumentError(PhalaKMSError, ValueError):
    """An argument was rejected before any request was sent or any work was done.

    Attributes:
        argument: The parameter's name, e.g. ``"app_id"``.
        key: For a rejected environment variable, its name (never its value).
    """

    def __init__(
        self, message: str, *, argument: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.argument = argument
        self.key = key


class ClientStateError(PhalaKMSError, RuntimeError):
    """The client cannot be used in its current state.

    Raised when a closed client is used, when an ``AsyncKMSClient`` is used from
    an event loop other than the one its connection pool was created on, and
    when a ``KMSClient`` is called from its own event-loop thread.
    """


class CallbackError(PhalaKMSError):
    """A callback passed to phala-kms raised; the batch it reported on was stopped.

    The callback's own exception is chained as ``__cause__``. It is not the failure of
    any request, so it carries no ``app_id``.

    Attributes:
        callback: The parameter the callback was passed as, e.g. ``"on_progress"``.
    """

    def __init__(self, message: str, *, callback: str = "on_progress") -> None:
        super().__init__(message)
        self.callback = callback


class SignatureVerificationError(PhalaKMSError):
    """A public key's signature did not prove it came from the trusted KMS.

    Raised for malformed hex, wrong lengths, an unrecoverable signature, a
    signer that is not the trusted one, a stale or future timestamp, a downgrade to
    the legacy signature that the caller refused, and a trust anchor (the KMS root
    key) that its sources could not establish or did not agree on.
    Verification fails closed: this is raised rather than returning on any doubt.

    Attributes:
        reason: A short machine-readable reason: ``"malformed"``, ``"high_s"``,
            ``"unrecoverable"``, ``"signer_mismatch"``, ``"stale_timestamp"``,
            ``"future_timestamp"``, ``"invalid_trusted_signer"``, ``"invalid_argument"``,
            ``"legacy_signature"`` (only the replayable legacy form was offered and
            ``require_timestamped`` was set), ``"incomplete_signature_v1"`` (a
            ``timestamp`` without ``signature_v1`` or the reverse), or, for trust
            anchors: ``"anchor_mismatch"`` (sources disagree), ``"anchor_unavailable"``
            (a source has no key), ``"malformed_anchor"`` (a source's answer cannot be
            decoded), ``"wrong_chain"`` (the RPC serves another chain) and
            ``"app_not_registered"`` (the KMS contract does not list the app).
        argument: The input at fault for ``"malformed"``/``"invalid_argument"``, or ``None``.
        signer: For ``"signer_mismatch"``, the recovered signer (``0x`` + 66 hex), or ``None``.
        age: For timestamp failures, the signature's age in seconds (negative: future).
        sources: For trust-anchor failures, the sources concerned, one line each
            (for ``"anchor_mismatch"``: every source with the key it reported).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "invalid",
        argument: str | None = None,
        signer: str | None = None,
        age: float | None = None,
        sources: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.argument = argument
        self.signer = signer
        self.age = age
        self.sources = sources


# --------------------------------------------------------------------------- transport


class TransportError(PhalaKMSError):
    """No usable HTTP response arrived.

    Attributes:
        method: The HTTP method, e.g. ``"GET"``.
        url: The request URL (it never carries the API key, which travels in a header).
        host: The host the client tried to reach.
        port: The TCP port the client tried to reach, or ``None`` if unknown.
        attempts: How many attempts were made before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.host = host
        self.port = port
        self.attempts = attempts


class _TransportFields(TypedDict, total=False):
    """:class:`TransportError`'s keyword arguments, for subclasses that pass them on."""

    method: str | None
    url: str | None
    host: str | None
    port: int | None
    attempts: int


class ConnectError(TransportError):
    """A connection to the API could not be opened."""


class DNSError(ConnectError):
    """The API's host name did not resolve."""


class ConnectRefusedError(ConnectError):
    """The host refused the TCP connection (nothing listens on that port)."""


class TLSError(ConnectError):
    """The TLS handshake failed, e.g. the server certificate did not verify."""


class ConnectionLostError(TransportError):
    """The connection was closed or reset before the whole response arrived."""


class APITimeoutError(TransportError, TimeoutError):
    """An attempt took longer than its timeout.

    Attributes:
        timeout: The limit that was exceeded, in seconds.
    """

    def __init__(
        self, message: str, *, timeout: float | None = None, **kwargs: Unpack[_TransportFields]
    ) -> None:
        super().__init__(message, **kwargs)
        self.timeout = timeout


class PoolTimeoutError(TransportError, TimeoutError):
    """Nothing could be sent in time, so nothing was sent.

    Raised when no connection of the pool became free within ``pool_timeout``, or when
    the call's ``RetryPolicy.deadline`` would pass first while waiting for a connection,
    for the server's ``Retry-After`` or for the client's rate limit. The server did not
    fail, so it is never retried. Also a builtin ``TimeoutError``; not an
    :class:`APITimeoutError` (which means a request that was sent took too long).

    Attributes:
        pool_timeout: The ``pool_timeout`` that ran out, in seconds, or ``None`` when
            the deadline did.
    """

    def __init__(
        self,
        message: str,
        *,
        pool_timeout: float | None = None,
        **kwargs: Unpack[_TransportFields],
    ) -> None:
        super().__init__(message, **kwargs)
        self.pool_timeout = pool_timeout


# --------------------------------------------------------------------------- responses


class APIResponseError(PhalaKMSError):
    """A response arrived, but it is not a usable result.

    Attributes:
        status: The HTTP status code.
        method: The HTTP method, e.g. ``"GET"``.
        url: The request URL.
        request_id: The request id: the body's ``request_id`` when present, else
            the ``X-Request-ID`` response header, else ``None``; at most 1 KiB
            (a longer one is cut and ends in ``…``).
        body: The raw response body decoded as UTF-8 (invalid bytes replaced),
            truncated to 64 KiB (an error body is never read past 64 KiB).
        attempts: How many attempts were made, including the one that gave this response.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        method: str | None = None,
        url: str | None = None,
        request_id: str | None = None,
        body: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url
        self.request_id = request_id
        self.body = body
        self.attempts = attempts


class _ResponseFields(TypedDict, total=False):
    """:class:`APIResponseError`'s keyword arguments, for subclasses that pass them on."""

    status: int
    method: str | None
    url: str | None
    request_id: str | None
    body: str
    attempts: int


class RedirectError(APIResponseError):
    """The API answered with a 3xx redirect, which phala-kms never follows.

    Following a redirect could send the ``X-API-Key`` header to another host.

    Attributes:
        location: The ``Location`` header, or ``None``.
    """

    def __init__(
        self, message: str, *, location: str | None = None, **kwargs: Unpack[_ResponseFields]
    ) -> None:
        super().__init__(message, **kwargs)
        self.location = location


class ResponseValidationError(APIResponseError):
    """A successful response whose body is not JSON or does not fit the expected model.

    Attributes:
        model: The name of the model the body was decoded into, e.g. ``"KMSInfo"``.
        problems: One line per problem found, e.g.
            ``"expected a string, got integer @ $.items[0].url"``.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        problems: tuple[str, ...] = (),
        **kwargs: Unpack[_ResponseFields],
    ) -> None:
        super().__init__(message, **kwargs)
        self.model = model
        self.problems = problems


def _to_loc(loc: Iterable[str | int]) -> tuple[str | int, ...]:
    return tuple(loc)


@attrs.frozen
class ValidationErrorItem:
    """One entry of a FastAPI 422 ``detail`` list.

    Compared by value; not hashable (``input`` and ``ctx`` may hold dicts and lists).

    Attributes:
        loc: Where the problem is, e.g. ``("query", "page_size")``.
        msg: What is wrong.
        type: The validator's error type, e.g. ``"less_than_equal"``.
        input: The rejected input as the server echoed it, or ``None``.
        ctx: The validator's context, e.g. ``{"le": 100}``, or ``None``.
    """

    loc: tuple[str | int, ...] = attrs.field(converter=_to_loc)
    msg: str
    type: str
    input: Any = attrs.field(default=None, repr=False)
    ctx: Mapping[str, Any] | None = attrs.field(default=None, repr=False)

    __hash__ = None  # type: ignore[assignment]


class APIStatusError(APIResponseError):
    """The API answered with a 4xx or 5xx status.

    The body is read in any of the API's forms: ``{"detail": "..."}``, FastAPI's
    422 ``{"detail": [...]}``, the structured ``{"error_code", "message",
    "request_id", "details", "suggestions", "links"}`` (top level or nested under
    ``detail``), ``{"message": "..."}``, or HTML/plain text from a proxy.

    ``str(err)`` (and ``err.message``) is a full, readable sentence: status, the
    server's message, error code, request id, method and URL; at most 1 KiB (the
    server's message is cut first, so the URL stays). Every text attribute is bounded
    too, whatever the server sent.

    Attributes:
        server_message: The server's own message alone, e.g. ``"KMS not found"`` (for
            a 422, a summary of the validation errors; for HTML, its title), or ``None``;
            at most 1 KiB, a longer one cut and ending in ``…``.
        error_code: The structured error code, e.g. ``"ERR-02-011"``, or ``None``; at
            most 1 KiB.
        details: The structured ``details`` list as sent, e.g.
            ``({"field": "kms_id", "value": ..., "message": None},)``.
        suggestions: The structured ``suggestions``, e.g. ``("List available KMS with GET /kms",)``.
        links: The structured ``links`` as ``({"url": ..., "label": ...},)``.
        retry_after: The wait the server asked for, in seconds, from ``Retry-After``, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        server_message: str | None = None,
        error_code: str | None = None,
        details: tuple[Any, ...] = (),
        suggestions: tuple[str, ...] = (),
        links: tuple[Mapping[str, Any], ...] = (),
        retry_after: float | None = None,
        **kwargs: Unpack[_ResponseFields],
    ) -> None:
        super().__init__(message, **kwargs)
        self.server_message = server_message
        self.error_code = error_code
        self.details = details
        self.suggestions = suggestions
        self.links = links
        self.retry_after = retry_after


class _StatusFields(_ResponseFields, total=False):
    """:class:`APIStatusError`'s keyword arguments, for subclasses that pass them on."""

    server_message: str | None
    error_code: str | None
    details: tuple[Any, ...]
    suggestions: tuple[str, ...]
    links: tuple[Mapping[str, Any], ...]
    retry_after: float | None


class BadRequestError(APIStatusError):
    """400: the request was malformed, e.g. an unsupported chain name."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class PermissionDeniedError(APIStatusError):
    """403: the API key is not allowed to do this."""


class NotFoundError(APIStatusError):
    """404: no such KMS, contract, chain or app (``error_code`` ``ERR-02-011`` for a KMS)."""


class ConflictError(APIStatusError):
    """409: a conflict. Retried only when the body has no ``error_code`` (then it is transient)."""


class UnprocessableEntityError(APIStatusError):
    """422: the server's validation rejected a parameter.

    Attributes:
        validation_errors: The parsed FastAPI ``detail`` list.
    """

    def __init__(
        self,
        message: str,
        *,
        validation_errors: tuple[ValidationErrorItem, ...] = (),
        **kwargs: Unpack[_StatusFields],
    ) -> None:
        super().__init__(message, **kwargs)
        self.validation_errors = validation_errors


class RateLimitError(APIStatusError):
    """429: too many requests (``error_code`` ``ERR-05-002``); see ``retry_after``."""


class ServerError(APIStatusError):
    """5xx: the server or a gateway in front of it failed."""
