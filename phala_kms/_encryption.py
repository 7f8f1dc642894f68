"""Env-var encryption for a CVM (api-spec 4.1): checks, the plaintext, the ECIES seal.

The scheme is described in :mod:`phala_kms.crypto`, which re-exports the public names
defined here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias, cast

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._secrets import Hidden, RedactedBytes
from ._signatures import decode_x25519_public_key
from .errors import InvalidArgumentError
from .tee import check_allowed_envs, env_limit_problem

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_REDACTED: Final = "<redacted>"


def _redact(_: object) -> str:
    return _REDACTED


@attrs.frozen
class EnvVar:
    """One environment variable to encrypt.

    The value is secret: ``repr(EnvVar("FOO", "bar"))`` is
    ``EnvVar(key='FOO', value=<redacted>)``. Names and values are checked by
    :func:`encrypt_env_vars`, not here.

    Attributes:
        key: The variable's name, matching ``[A-Za-z_][A-Za-z0-9_]*``.
        value: The variable's value (any ``str`` encodable as UTF-8).
    """

    key: str
    value: str = attrs.field(repr=_redact)


EnvVarsLike: TypeAlias = Mapping[str, str] | Iterable[EnvVar | tuple[str, str]]
"""What :func:`encrypt_env_vars` takes: a mapping of name to value, or an iterable of
:class:`EnvVar` (or ``(name, value)`` pairs, e.g. ``dstack_sdk``'s ``EnvVar``), in order."""


# --------------------------------------------------------------------------- encryption


def _invalid_env(message: str, key: str | None = None) -> InvalidArgumentError:
    return InvalidArgumentError(message, argument="env_vars", key=key)


def _show_name(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")


_Problem: TypeAlias = tuple[str, str | None]
"""A rejected env var: ``(message, name or None)``; messages name variables, never values."""

_NOT_ENV_VARS: Final = "env_vars must be a mapping of name to value or a sequence of EnvVar, not "


def _env_entries(env_vars: EnvVarsLike) -> tuple[list[dict[str, str]], _Problem | None]:
    """Read and check env vars: ``(entries, None)``, or ``([], problem)``.

    Never raises for a bad entry: the caller raises once this frame, whose locals hold
    values, is gone, so a traceback that captures locals cannot print them.
    """
    items: Iterable[object]
    if isinstance(env_vars, Mapping):
        items = env_vars.items()
    elif isinstance(env_vars, (str, bytes, bytearray, memoryview)):
        return [], (_NOT_ENV_VARS + type(env_vars).__name__, None)
    else:
        try:
            items = iter(env_vars)
        except TypeError:
            return [], (_NOT_ENV_VARS + type(env_vars).__name__, None)
    entries: list[dict[str, str]] = []
    seen: set[str] = set()
    key: object
    value: object
    # whatever the annotations say, anything may come in
    for index, item in enumerate(cast("Iterable[object]", items)):
        if isinstance(item, EnvVar):
            key, value = item.key, item.value
        elif isinstance(item, tuple) and len(item) == 2:
            key, value = item
        else:
            return [], (
                f"env var #{index} must be an EnvVar or a (name, value) pair, "
                f"not {type(item).__name__}",
                None,
            )
        if not isinstance(key, str):
            return [], (f"env var #{index}: name must be a str, not {type(key).__name__}", None)
        if _ENV_NAME.fullmatch(key) is None:
            return [], (
                f"env var #{index}: name {_show_name(key)} is not a valid environment "
                "variable name ([A-Za-z_][A-Za-z0-9_]*)",
                key,
            )
        if not isinstance(value, str):
            return [], (f"env var {key!r}: value must be a str, not {type(value).__name__}", key)
        if key in seen:
            return [], (f"env var {key!r} is given more than once", key)
        seen.add(key)
        entries.append({"key": key, "value": value})
    return entries, None


def _encode_env(entries: list[dict[str, str]]) -> tuple[RedactedBytes, _Problem | None]:
    """The compact UTF-8 JSON of checked entries, or ``(b"", problem)`` (never raises
    for a value: a UnicodeEncodeError's ``object`` would hold the whole plaintext)."""
    try:
        return RedactedBytes(_JSON.encode({"env": entries}).encode("utf-8")), None
    except UnicodeEncodeError:
        pass
    # Names are ASCII, so a value (with a lone surrogate) is the cause.
    culprit = next(entry["key"] for entry in entries if not _utf8_encodable(entry["value"]))
    return RedactedBytes(), (
        f"env var {culprit!r}: value is not encodable as UTF-8 (it holds a lone surrogate)",
        culprit,
    )


def _env_plaintext(
    hidden: Hidden[EnvVarsLike],
    allowed_envs: Iterable[str] | None = None,
    allow_empty: bool = False,
) -> RedactedBytes:
    """Check env vars (names, values, and what the TEE accepts: :mod:`phala_kms.tee`)
    and build their plaintext.

    Every local of this frame is redacted when it raises: the env vars are behind
    ``hidden``, the plaintext is :class:`RedactedBytes`, and the entries are deleted.

    Raises:
        InvalidArgumentError: A rejected env var (``argument="env_vars"``, ``key`` the
            name), or a malformed ``allowed_envs`` (``argument="allowed_envs"``).
    """
    allowed = check_allowed_envs(allowed_envs)
    entries, problem = _env_entries(hidden.value)
    if problem is None:
        problem = env_limit_problem(entries, allowed_envs=allowed, allow_empty=allow_empty)
    plaintext = RedactedBytes()
    if problem is None:
        plaintext, problem = _encode_env(entries)
    del entries
    if problem is not None:
        raise _invalid_env(*problem)
    return plaintext


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encrypt_env_vars(
    env_vars: EnvVarsLike,
    public_key: str | bytes,
    *,
    allowed_envs: Iterable[str] | None = None,
    allow_empty: bool = False,
) -> str:
    """Encrypt env vars to an app's X25519 public key (api-spec 4.1, the dstack scheme).

    Each call uses a fresh ephemeral key and IV, so the same input never gives the
    same output. Everything is validated before anything is encrypted, including
    what the TEE accepts at boot (:mod:`phala_kms.tee`: at most 1,024 variables,
    names <= 255 bytes, values <= 128 KiB, names + values <= 1 MiB).

    Args:
        env_vars: A mapping of name to value, or an iterable of :class:`EnvVar` (or of
            ``(name, value)`` pairs), kept in order. Names must match
            ``[A-Za-z_][A-Za-z0-9_]*`` and be unique; values are any ``str``.
            An empty collection is refused unless ``allow_empty``.
        public_key: The app's 32-byte X25519 public key (from
            ``GET /kms/{kms}/pubkey/{app_id}``), as bytes or hex with optional
            ``0x``, either case. Verify it first with
            :func:`verify_env_encrypt_public_key`.
        allowed_envs: The app compose's ``allowed_envs`` (see
            :func:`phala_kms.tee.allowed_envs_from_app_compose`): a name outside it
            is refused, since the TEE would silently drop it. ``None`` skips the check.
        allow_empty: Accept an empty set (the CVM boots with no environment).

    Returns:
        Lowercase hex (no ``0x``) of ``ephemeral_public (32) || iv (12) ||
        ciphertext || tag (16)``: ``2 * (60 + len(plaintext))`` characters, where the
        plaintext is the compact UTF-8 JSON ``{"env":[{"key":..,"value":..},...]}``.

    Raises:
        InvalidArgumentError: ``public_key`` is not 32 bytes / valid hex, or is a
            low-order point giving an all-zero shared secret
            (``argument="public_key"``); ``env_vars`` is not a collection of
            ``str`` names and values, or has an invalid or duplicate name, or a value
            that is not valid Unicode, or is empty (without ``allow_empty``), or
            exceeds a TEE limit, or names a variable outside ``allowed_envs``
            (``argument="env_vars"``, ``key`` the name); ``allowed_envs`` is not an
            iterable of names (``argument="allowed_envs"``).
            Messages name variables, never values, and no frame of this module
            holds a value in a way a traceback that captures locals prints.
    """
    hidden = Hidden(env_vars)  # first: the values leave this frame's locals
    del env_vars
    recipient = X25519PublicKey.from_public_bytes(decode_x25519_public_key(public_key))
    return _seal(_env_plaintext(hidden, allowed_envs, allow_empty), recipient)


def _seal(plaintext: RedactedBytes, recipient: X25519PublicKey) -> str:
    """ECIES-seal an already-built plaintext (see :func:`encrypt_env_vars`)."""
    ephemeral = X25519PrivateKey.generate()
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        raise InvalidArgumentError(
            "public_key is a low-order X25519 point (the shared secret would be all zeros)",
            argument="public_key",
        ) from None
    iv = os.urandom(12)
    sealed = AESGCM(shared).encrypt(iv, plaintext, None)
    return (ephemeral.public_key().public_bytes_raw() + iv + sealed).hex()


def encrypt_env_plaintext(plaintext: bytes, public_key: str | bytes) -> str:
    """Encrypt a plaintext already built by :func:`env_vars_plaintext` (same output as
    :func:`encrypt_env_vars`); lets a caller check env vars, do I/O, then encrypt
    exactly what it checked.

    Raises:
        InvalidArgumentError: As :func:`encrypt_env_vars` for ``public_key``.
    """
    if not isinstance(plaintext, RedactedBytes):
        plaintext = RedactedBytes(plaintext)  # first: out of this frame's printed locals
    recipient = X25519PublicKey.from_public_bytes(decode_x25519_public_key(public_key))
    return _seal(plaintext, recipient)


def env_vars_plaintext(
    env_vars: EnvVarsLike,
    *,
    allowed_envs: Iterable[str] | None = None,
    allow_empty: bool = False,
) -> bytes:
    """Check env vars and build the compact UTF-8 JSON that :func:`encrypt_env_vars` seals.

    Reads ``env_vars`` once (a generator is fine). ``allowed_envs`` and
    ``allow_empty`` are as in :func:`encrypt_env_vars`.

    Returns:
        The plaintext, as a ``bytes`` whose ``repr`` is ``b'<redacted>'``.

    Raises:
        InvalidArgumentError: As :func:`encrypt_env_vars` for ``env_vars``.
    """
    hidden = Hidden(env_vars)  # first: the values leave this frame's locals
    del env_vars
    return _env_plaintext(hidden, allowed_envs, allow_empty)
