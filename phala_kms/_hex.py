"""The one strict hex/bytes parser every module uses.

Accepts bytes-like values, or text of hex digits in either case with an optional
``0x``/``0X`` prefix. Whitespace, signs, underscores and odd lengths are refused
(``bytes.fromhex`` alone would skip whitespace).
"""

from __future__ import annotations

__all__ = ["HEX_DIGITS", "canonical_hex", "parse_hex"]

HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _strip_prefix(text: str) -> str:
    return text[2:] if text[:2] in ("0x", "0X") else text


def canonical_hex(value: object, size: int | None = None) -> str | None:
    """Hex text in its canonical form: lowercase, no ``0x``.

    Args:
        value: A ``str`` of hex digits (optional ``0x``/``0X``, either case).
        size: The exact length in bytes required, or ``None`` for any even length.

    Returns:
        The canonical text, or ``None`` (never raises) when ``value`` is not a ``str``
        of that shape.
    """
    if not isinstance(value, str):
        return None
    text = _strip_prefix(value)
    if len(text) % 2 or (size is not None and len(text) != 2 * size):
        return None
    if not HEX_DIGITS.issuperset(text):
        return None
    return text.lower()


def parse_hex(value: object, size: int | None = None) -> bytes | None:
    """Bytes-like or hex text to ``bytes``.

    Args:
        value: ``bytes``, ``bytearray`` or ``memoryview``, or hex text as
            :func:`canonical_hex` accepts.
        size: The exact length in bytes required, or ``None`` for any length.

    Returns:
        The bytes, or ``None`` (never raises) when ``value`` is not of that shape.
    """
    if isinstance(value, str):
        text = canonical_hex(value, size)
        return None if text is None else bytes.fromhex(text)
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, (bytearray, memoryview)):
        raw = bytes(value)
    else:
        return None
    return raw if size is None or len(raw) == size else None
