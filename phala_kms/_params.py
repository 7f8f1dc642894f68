"""Argument checks that run before any request is sent.

Each returns the value in the form the wire wants (a quoted path segment, a query
string value) or raises :class:`~phala_kms.errors.InvalidArgumentError` naming the
argument.
"""

from __future__ import annotations

from urllib.parse import quote

from ._hex import canonical_hex
from .errors import InvalidArgumentError

__all__ = [
    "app_id_hex",
    "bool_param",
    "int_param",
    "kms_segment",
    "page_params",
    "path_segment",
]

_UNSAFE_IN_SEGMENT = frozenset("/\\%?#")

MAX_SEGMENT_CHARS = 256
"""The longest id, slug or chain name accepted, in characters."""


def app_id_hex(app_id: object, argument: str = "app_id") -> str:
    """Normalise an app id to 40 lowercase hex characters without ``0x``.

    Args:
        app_id: 40 hex characters (20 bytes), optionally prefixed with ``0x``, either case.
        argument: The parameter name used in the error.

    Raises:
        InvalidArgumentError: Not a str of 40 hex characters after an optional ``0x``.
    """
    if not isinstance(app_id, str):
        raise InvalidArgumentError(
            f"{argument} must be a str of 40 hex characters, got {type(app_id).__name__}",
            argument=argument,
        )
    text = canonical_hex(app_id, 20)
    if text is None:
        shown = app_id if len(app_id) <= 80 else app_id[:77] + "..."
        raise InvalidArgumentError(
            f"{argument} must be 40 hex characters (20 bytes), optionally prefixed with 0x;"
            f" got {shown!r}",
            argument=argument,
        )
    return text


def path_segment(value: object, argument: str) -> str:
    """Check a KMS id, slug, type or chain name and percent-quote it as one path segment.

    Characters that could change the path where a server percent-decodes it before
    routing (``/ \\ % ? #`` and control characters) are refused; every other
    character outside ``A-Z a-z 0-9 - . _ ~`` is percent-quoted.

    Raises:
        InvalidArgumentError: Not a str, empty or blank, ``.`` or ``..``, holding
            ``/ \\ % ? #`` or a control character, longer than 256 characters, or not
            encodable as UTF-8.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{argument} must be a str, got {type(value).__name__}", argument=argument
        )
    if not value.strip():
        raise InvalidArgumentError(f"{argument} must not be empty", argument=argument)
    if value in (".", ".."):
        raise InvalidArgumentError(f"{argument} must not be {value!r}", argument=argument)
    bad = _UNSAFE_IN_SEGMENT.intersection(value)
    if bad or not value.isprintable():
        shown = "".join(sorted(bad)) if bad else "a control character"
        raise InvalidArgumentError(
            f"{argument} must not contain {shown!r}: some servers decode the path before"
            " routing, so such a value could reach another endpoint",
            argument=argument,
        )
    if len(value) > MAX_SEGMENT_CHARS:
        raise InvalidArgumentError(
            f"{argument} is {len(value)} characters; at most {MAX_SEGMENT_CHARS} are accepted",
            argument=argument,
        )
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # a lone surrogate: not encodable as UTF-8
        raise InvalidArgumentError(
            f"{argument} must be valid Unicode text (it holds a lone surrogate)",
            argument=argument,
        ) from None


RESERVED_KMS_SEGMENTS = frozenset({"on-chain"})
"""Ids the API's own routes shadow: ``/kms/on-chain/...`` is the on-chain detail route."""


def kms_segment(value: object, argument: str) -> str:
    """:func:`path_segment` for a KMS id or slug directly under ``/kms/``.

    Raises:
        InvalidArgumentError: As :func:`path_segment`, or the value is ``"on-chain"``,
            which the API routes to its on-chain detail endpoint instead.
    """
    segment = path_segment(value, argument)
    if segment in RESERVED_KMS_SEGMENTS:
        raise InvalidArgumentError(
            f"{argument} {value!r} names an API route, not a KMS;"
            " use get_kms_on_chain_detail(chain) for on-chain KMS",
            argument=argument,
        )
    return segment


def int_param(value: object, argument: str, low: int, high: int | None = None) -> str:
    """Check an integer query parameter and return it as a string.

    Raises:
        InvalidArgumentError: Not an int (bools are refused) or outside ``low..high``.
    """
    if type(value) is not int:
        raise InvalidArgumentError(
            f"{argument} must be an int, got {type(value).__name__}", argument=argument
        )
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{argument} must be {bounds}, got {value}", argument=argument)
    return str(value)


def bool_param(value: object, argument: str) -> str | None:
    """Check an optional boolean query parameter; ``None`` means "omit it".

    Raises:
        InvalidArgumentError: Not ``True``, ``False`` or ``None``.
    """
    if value is None:
        return None
    if type(value) is not bool:
        raise InvalidArgumentError(
            f"{argument} must be True, False or None, got {type(value).__name__}",
            argument=argument,
        )
    return "true" if value else "false"


def page_params(page: int, page_size: int, is_onchain: bool | None) -> dict[str, str]:
    """Check the paging arguments of ``GET /kms`` and return its query.

    Raises:
        InvalidArgumentError: ``page`` < 1, ``page_size`` outside 1..100, or a
            non-bool ``is_onchain``.
    """
    params = {
        "page": int_param(page, "page", 1),
        "page_size": int_param(page_size, "page_size", 1, 100),
    }
    onchain = bool_param(is_onchain, "is_onchain")
    if onchain is not None:
        params["is_onchain"] = onchain
    return params
