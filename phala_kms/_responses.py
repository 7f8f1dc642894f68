"""Pure functions that turn a response (status, headers, body) into a model or our exception.

No I/O and no aiohttp types: the transport hands over plain values, so every body
form of the API can be tested directly. A 2xx body becomes a model (or a
:class:`~phala_kms.errors.ResponseValidationError`), a 3xx a
:class:`~phala_kms.errors.RedirectError`, a 4xx/5xx its
:class:`~phala_kms.errors.APIStatusError` subclass with ``Retry-After`` read.
"""

from __future__ import annotations

import email.utils
import html
import json
import math
import re
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, TypeVar

from ._constants import (
    HEADER_REQUEST_ID,
    MAX_ERROR_BODY_BYTES,
    MAX_ERROR_BODY_CHARS,
    MAX_ERROR_FIELD_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
)
from ._convert import DecodeError, structure
from .errors import (
    APIResponseError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    ResponseValidationError,
    ServerError,
    UnprocessableEntityError,
    ValidationErrorItem,
)

__all__ = [
    "MAX_ERROR_BODY_CHARS",
    "clip",
    "decode_body_text",
    "decode_response",
    "make_redirect_error",
    "make_status_error",
    "parse_retry_after",
]

T = TypeVar("T")

_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_TAG = re.compile(r"<[^<>]{0,256}>")
_SPACE = re.compile(r"\s+")
_SCAN_CHARS = 4096
"""Only this much of an HTML/text body is searched for a message (gateway pages are tiny;
a hostile body must not make the parse slow)."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _clip_or_none(text: str | None) -> str | None:
    return None if text is None else clip(text, MAX_ERROR_FIELD_CHARS)


def decode_body_text(body: bytes) -> str:
    """The body as text for an exception: UTF-8 with replacement, at most 64 KiB of characters."""
    return body[: MAX_ERROR_BODY_CHARS * 4].decode("utf-8", "replace")[:MAX_ERROR_BODY_CHARS]


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Read a ``Retry-After`` header.

    Args:
        value: The header as sent: delay-seconds (``"120"``, also ``"1.5"``) or an
            HTTP date (``"Wed, 21 Oct 2026 07:28:00 GMT"``), or ``None``.
        now: The current Unix time in seconds, for the HTTP-date form.

    Returns:
        The wait in seconds (never negative: a date in the past gives 0.0), or
        ``None`` when the header is absent or unreadable.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        return None
    return max(0.0, when.timestamp() - now)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _element_text(text: str, lowered: str, tag: str) -> str | None:
    """The text inside the first ``<tag ...>...</tag>``, found with linear scans."""
    start = lowered.find(f"<{tag}")
    if start < 0:
        return None
    opened = lowered.find(">", start)
    end = lowered.find(f"</{tag}>", opened)
    if opened < 0 or end < 0:
        return None
    return text[opened + 1 : end]


def _text_message(text: str) -> str | None:
    """A one-line message from an HTML or plain-text body (its title or first heading)."""
    text = text[:_SCAN_CHARS]
    lowered = text.lower()
    for tag in ("title", "h1"):
        inner = _element_text(text, lowered, tag)
        if inner is not None:
            found = _SPACE.sub(" ", html.unescape(_TAG.sub("", inner))).strip()
            if found:
                return found[:200]
    plain = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()
    return plain[:200] or None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else ()


def _validation_items(detail: list[Any]) -> tuple[ValidationErrorItem, ...]:
    items = []
    for entry in detail:
        if not isinstance(entry, Mapping):
            continue
        loc = entry.get("loc")
        items.append(
            ValidationErrorItem(
                loc=[p for p in loc if isinstance(p, (str, int))] if isinstance(loc, list) else (),
                msg=str(entry.get("msg", "")),
                type=str(entry.get("type", "")),
                input=entry.get("input"),
                ctx=entry.get("ctx") if isinstance(entry.get("ctx"), Mapping) else None,
            )
        )
    return tuple(items)


def _validation_summary(items: tuple[ValidationErrorItem, ...]) -> str | None:
    parts = []
    for item in items[:5]:
        where = ".".join(str(p) for p in item.loc[1:] or item.loc)
        parts.append(f"{where}: {item.msg}" if where else item.msg)
    if len(items) > 5:
        parts.append(f"and {len(items) - 5} more")
    return "; ".join(parts) or None


def make_status_error(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str,
    url: str,
    now: float,
    attempts: int = 1,
) -> APIStatusError:
    """Build the exception for a 4xx/5xx response.

    Reads every body form of the API (spec section 3): ``{"detail": "..."}``,
    FastAPI's ``{"detail": [...]}``, the structured form at the top level or nested
    under ``detail``, ``{"message": "..."}``, and HTML or plain text.

    Everything kept is bounded, whatever the server sent: only the first
    ``MAX_ERROR_BODY_BYTES`` (64 KiB) of ``body`` are read (a longer JSON body is then
    read as text), ``body`` keeps at most 64 KiB of characters, ``server_message``,
    ``error_code``, ``request_id`` and each suggestion at most
    ``MAX_ERROR_FIELD_CHARS`` (1 KiB), and the message (``str(err)``) at most
    ``MAX_ERROR_MESSAGE_CHARS`` (1 KiB); a cut value ends in ``…``.

    Args:
        status: The HTTP status code (400..599).
        headers: The response headers (case-insensitive mapping).
        body: The raw response body (bytes past the first 64 KiB are ignored).
        method: The request method.
        url: The request URL.
        now: The current Unix time in seconds (for an HTTP-date ``Retry-After``).
        attempts: How many attempts were made.

    Returns:
        An instance of the :class:`~phala_kms.errors.APIStatusError` subclass for ``status``.
    """
    body = body[:MAX_ERROR_BODY_BYTES]
    text = decode_body_text(body)
    message: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    details: tuple[Any, ...] = ()
    suggestions: tuple[str, ...] = ()
    links: tuple[Any, ...] = ()
    validation: tuple[ValidationErrorItem, ...] = ()

    try:
        data: Any = json.loads(body) if body else None
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
        data = None
        message = _text_message(text)
    if isinstance(data, Mapping):
        structured: Mapping[str, Any] = data
        detail = data.get("detail")
        if isinstance(detail, Mapping):
            structured = detail
        elif isinstance(detail, str):
            message = detail
        elif isinstance(detail, list):
            validation = _validation_items(detail)
            message = _validation_summary(validation)
        error_code = _str_or_none(structured.get("error_code"))
        request_id = _str_or_none(structured.get("request_id"))
        message = _str_or_none(structured.get("message")) or message
        details = _tuple(structured.get("details"))
        suggestions = tuple(s for s in _tuple(structured.get("suggestions")) if isinstance(s, str))
        links = tuple(x for x in _tuple(structured.get("links")) if isinstance(x, Mapping))
    elif data is not None and message is None:
        message = _text_message(text)

    request_id = _clip_or_none(request_id or headers.get(HEADER_REQUEST_ID) or None)
    message = _clip_or_none(message)
    error_code = _clip_or_none(error_code)
    suggestions = tuple(clip(s, MAX_ERROR_FIELD_CHARS) for s in suggestions)
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    head = f"{status} {_reason(status)}"
    facts = [f"error_code={error_code}"] if error_code else []
    if request_id:
        facts.append(f"request_id={request_id}")
    if retry_after is not None:
        facts.append(f"retry_after={retry_after:g}s")
    tail = f" ({', '.join(facts)})" if facts else ""
    tail += f" [{method} {url}]"
    if suggestions:
        tail += f" Suggestion: {clip(suggestions[0], 200)}"
    if message:
        # The server's message gets what the status, facts and URL leave of the cap.
        room = max(MAX_ERROR_MESSAGE_CHARS - len(head) - 2 - len(tail), 80)
        head += f": {clip(message, room)}"
    full = clip(head + tail, MAX_ERROR_MESSAGE_CHARS)

    cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIStatusError)
    extra: dict[str, Any] = {}
    if cls is UnprocessableEntityError:
        extra["validation_errors"] = validation
    return cls(
        full,
        status=status,
        method=method,
        url=url,
        request_id=request_id,
        body=text,
        attempts=attempts,
        server_message=message,
        error_code=error_code,
        details=details,
        suggestions=suggestions,
        links=links,
        retry_after=retry_after,
        **extra,
    )


def make_redirect_error(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str,
    url: str,
    attempts: int = 1,
) -> RedirectError:
    """Build the exception for a 3xx response, which is never followed."""
    location = _clip_or_none(headers.get("Location"))
    return RedirectError(
        clip(
            f"{status} {_reason(status)}: the API redirected to {location or '(no Location)'};"
            f" redirects are never followed because they could send the API key elsewhere."
            f" Check base_url. [{method} {url}]",
            MAX_ERROR_MESSAGE_CHARS,
        ),
        status=status,
        method=method,
        url=url,
        request_id=_clip_or_none(headers.get(HEADER_REQUEST_ID) or None),
        body=decode_body_text(body[:MAX_ERROR_BODY_BYTES]),
        location=location,
        attempts=attempts,
    )


def decode_response(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str,
    url: str,
    now: float,
    model: type[T],
    attempts: int = 1,
) -> T:
    """Turn a complete response into ``model`` or the exception it stands for.

    Args:
        status: The HTTP status code.
        headers: The response headers (case-insensitive mapping).
        body: The raw response body (already size-limited by the transport).
        method: The request method.
        url: The request URL.
        now: The current Unix time in seconds (for an HTTP-date ``Retry-After``).
        model: The model a 2xx JSON body is decoded into.
        attempts: How many attempts were made, this one included.

    Returns:
        The decoded model.

    Raises:
        ResponseValidationError: A 2xx body that is not JSON or does not fit ``model``.
        RedirectError: A 3xx.
        APIStatusError: A 4xx or 5xx (its subclass for the status).
    """
    # The error is built first and the body dropped before raising: the traceback keeps
    # this frame (and the caller's) alive as long as the error lives, and with them the
    # body (up to max_response_bytes for a 2xx) and its parsed JSON.
    error: APIResponseError
    cause: BaseException | None = None
    if 300 <= status < 400:
        error = make_redirect_error(
            status=status, headers=headers, body=body, method=method, url=url, attempts=attempts
        )
    elif not 200 <= status < 300:
        error = make_status_error(
            status=status,
            headers=headers,
            body=body,
            method=method,
            url=url,
            now=now,
            attempts=attempts,
        )
    else:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
            if isinstance(exc, json.JSONDecodeError):
                exc.doc = ""  # it held the whole body as text
            error = ResponseValidationError(
                clip(
                    f"{status}: response body is not JSON ({exc}) [{method} {url}]",
                    MAX_ERROR_MESSAGE_CHARS,
                ),
                status=status,
                method=method,
                url=url,
                request_id=_clip_or_none(headers.get(HEADER_REQUEST_ID)),
                body=decode_body_text(body),
                model=getattr(model, "__name__", str(model)),
                problems=(f"not JSON: {exc}",),
                attempts=attempts,
            )
            cause = exc
        else:
            try:
                return structure(data, model)
            except DecodeError as exc:
                _forget_frames(exc)  # the converter's frames hold the parsed body
                problems = tuple(
                    clip(p, MAX_ERROR_FIELD_CHARS) for p in exc.problems[:_MAX_PROBLEMS]
                )
                if len(exc.problems) > _MAX_PROBLEMS:
                    problems += (f"and {len(exc.problems) - _MAX_PROBLEMS} more",)
                error = ResponseValidationError(
                    clip(f"{status}: {exc} [{method} {url}]", MAX_ERROR_MESSAGE_CHARS),
                    status=status,
                    method=method,
                    url=url,
                    request_id=_clip_or_none(headers.get(HEADER_REQUEST_ID)),
                    body=decode_body_text(body),
                    model=exc.model,
                    problems=problems,
                    attempts=attempts,
                )
                cause = exc
            finally:
                del data
    del body
    if cause is None:
        raise error
    raise error from cause


_MAX_PROBLEMS = 50
"""The most ``problems`` kept on a ResponseValidationError (then "and N more")."""


def _forget_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in ``exc``'s traceback and chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        for inner in getattr(exc, "exceptions", ()):  # an ExceptionGroup's members
            _forget_frames(inner)
        exc = exc.__cause__ or exc.__context__
