"""Wrappers that keep secrets out of ``repr``, and so out of locals-capturing tracebacks.

Sentry, ``rich`` and ``pytest --showlocals`` print the ``repr`` of every local variable
of every frame of a traceback. A secret bound to a local as a plain ``str`` (the API
key) or held in a plain container (env-var values) would be printed in full. These
types behave exactly like the value they wrap, except that their ``repr`` says
``<redacted>``.

The lowest module of the package: it imports nothing from phala_kms, so
:mod:`phala_kms._config`, the transport and the encryptor can all use it.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

__all__ = ["REDACTED", "Hidden", "RedactedBytes", "RedactedStr", "redact_key"]

T = TypeVar("T")

REDACTED = "<redacted>"
"""What every wrapper's ``repr`` shows instead of the secret."""


class RedactedStr(str):
    """A ``str`` whose ``repr`` is ``'<redacted>'``; its value (and so an HTTP header
    built from it) is unchanged.

    Every ``str`` operation (``strip()``, slicing, ``+``) returns a plain ``str``:
    wrap the result again before binding it to a local.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{REDACTED}'"


class RedactedBytes(bytes):
    """A ``bytes`` whose ``repr`` is ``b'<redacted>'`` (an env-var plaintext)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"b'{REDACTED}'"


class Hidden(Generic[T]):
    """Any value (e.g. a caller's mapping of env vars) behind a redacted ``repr``.

    Attributes:
        value: The wrapped value.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{REDACTED}>"


class _NotAStr:
    """A non-``str`` API key, kept out of ``repr`` until configuration rejects it."""

    __slots__ = ("type_name",)

    def __init__(self, value: object) -> None:
        self.type_name = type(value).__name__

    def __repr__(self) -> str:
        return f"<{REDACTED} {self.type_name}>"


def redact_key(value: object) -> str | None:
    """Wrap an API key as soon as it is read, so no frame local holds it in plain.

    Args:
        value: The key as given (or read from the environment), or ``None``.

    Returns:
        ``None`` for ``None``; a :class:`RedactedStr` for a ``str``; for anything else
        an opaque placeholder that is not a ``str`` (so it is still rejected as one),
        which names only the type.
    """
    if value is None or isinstance(value, RedactedStr):
        return value
    if isinstance(value, str):
        return RedactedStr(value)
    # Not a str at run time, so the configuration's type check still rejects it.
    return cast("str", _NotAStr(value))
