"""Env-var encryption and verification of an app's env-encryption public key.

Everything here is pure, synchronous and free of I/O, so it is safe to call from
async code (each call is CPU-bound and takes well under a millisecond). The schemes
are the dstack KMS's, as written down in api-spec section 4.

Encryption (:func:`encrypt_env_vars`, api-spec 4.1)
    The env vars become the compact UTF-8 JSON ``{"env":[{"key":..,"value":..},...]}``.
    An ephemeral X25519 key pair is generated and the X25519 shared secret with the
    app's 32-byte public key is used directly as the AES-256-GCM key (no KDF); the IV
    is 12 random bytes and there is no associated data. The result is the lowercase
    hex of ``ephemeral_public (32) || iv (12) || ciphertext || tag (16)``, i.e.
    ``60 + len(plaintext)`` bytes, which is what the API's ``encrypted_env`` fields take.

    This gives **confidentiality only**. Anyone who knows an app_id can fetch the
    app's public key and encrypt other values to it; nothing authenticates who
    encrypted a payload.

Public-key signatures (:func:`verify_env_encrypt_public_key`, api-spec 4.2)
    The KMS signs the X25519 public key with its secp256k1 root key. The signed
    message is::

        b"dstack-env-encrypt-pubkey" + b":" + app_id (20 raw bytes)
            [+ timestamp (8-byte big-endian u64)] + public_key (32 raw bytes)

    (78 bytes in the legacy form, 86 in the timestamped ``signature_v1`` form),
    hashed with Keccak-256 (Ethereum's, not NIST SHA3-256, and without the
    Ethereum message prefix). The signature is 65 bytes ``r || s || v`` with the
    recovery id ``v`` in {0, 1} (27 and 28 are accepted too). The signer's public
    key is recovered and compared with the trusted KMS root key (``k256_pubkey``).

    A signature proves nothing without a trusted signer to compare it to, so
    :func:`verify_env_encrypt_public_key` requires one. The **legacy form carries no
    timestamp and can be replayed**: an old, genuinely signed key (for example
    one issued before a KMS key rotation) verifies forever. The timestamped form
    bounds that window with ``max_age`` and ``future_skew``.

Design choices:

* Only low-s signatures are accepted (``s <= n/2``), as the spec states; the KMS
  signs with Rust ``k256``, which (like libsecp256k1) only produces low-s. A high-s
  twin of a valid signature recovers the same key, so accepting it would not enable
  forgery, but a genuine KMS never sends one; rejecting it keeps exactly one valid
  encoding per signature. (``dstack_sdk``, via ``eth_keys``, accepts high-s.)
* Duplicate env-var names are rejected: the JSON would carry both values, and which
  one the app ends up with is not something a caller should have to guess.
* Env-var values never appear in any message, ``repr`` or exception chain.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Final, TypeAlias

import attrs
from coincurve import PublicKey
from Crypto.Hash import keccak as _keccak
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._constants import DEFAULT_MAX_AGE
from ._hex import parse_hex
from ._params import app_id_hex
from .errors import InvalidArgumentError, SignatureVerificationError
from .models import AppEnvEncryptPubKey, TrustedSigner

__all__ = [
    "DEFAULT_FUTURE_SKEW",
    "DEFAULT_MAX_AGE",
    "EnvVar",
    "EnvVarsLike",
    "app_id_to_bytes",
    "check_trusted_signer",
    "encrypt_env_plaintext",
    "encrypt_env_vars",
    "env_vars_plaintext",
    "env_encrypt_pubkey_message",
    "ethereum_address",
    "keccak256",
    "normalize_app_id",
    "recover_env_encrypt_pubkey_signer",
    "verify_app_env_encrypt_pubkey",
    "verify_env_encrypt_public_key",
]

DEFAULT_FUTURE_SKEW: Final = 60.0
"""Default tolerance for a timestamp ahead of the local clock, in seconds (api-spec 4.2)."""

_MESSAGE_PREFIX: Final = b"dstack-env-encrypt-pubkey:"
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_N: Final = _SECP256K1_N // 2
_U64_LIMIT: Final = 1 << 64
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


SignerLike: TypeAlias = str | bytes | TrustedSigner
"""What ``trusted_signer`` takes: a secp256k1 key or Ethereum address (bytes or hex),
or a :class:`~phala_kms.models.TrustedSigner` (see ``AsyncKMSClient.get_trusted_signer``)."""

EnvVarsLike: TypeAlias = Mapping[str, str] | Iterable[EnvVar | tuple[str, str]]
"""What :func:`encrypt_env_vars` takes: a mapping of name to value, or an iterable of
:class:`EnvVar` (or ``(name, value)`` pairs, e.g. ``dstack_sdk``'s ``EnvVar``), in order."""


# --------------------------------------------------------------------------- parsing


def _decode_x25519_public_key(public_key: object) -> bytes:
    raw = parse_hex(public_key, 32)
    if raw is None:
        raise InvalidArgumentError(
            "public_key must be a 32-byte X25519 public key as bytes or hex "
            "(64 hex digits, optional 0x)",
            argument="public_key",
        )
    return raw


def app_id_to_bytes(app_id: str | bytes) -> bytes:
    """Parse an app id into its 20 raw bytes.

    Args:
        app_id: 40 hex digits with optional ``0x``/``0X`` in either case, or the
            20 raw bytes.

    Returns:
        The app id as 20 bytes.

    Raises:
        InvalidArgumentError: ``app_id`` is not of that shape (``argument="app_id"``).
    """
    raw = parse_hex(app_id, 20)
    if raw is None:
        raise InvalidArgumentError(
            "app_id must be 20 bytes: 40 hex digits with optional 0x, or raw bytes",
            argument="app_id",
        )
    return raw


def normalize_app_id(app_id: str) -> str:
    """Normalise an app id to 40 lowercase hex digits without ``0x``.

    Args:
        app_id: 40 hex digits, optional ``0x``/``0X`` prefix, either case.

    Returns:
        The canonical form, e.g. ``"a1b2...(40 digits)"``, as used in URL paths.

    Raises:
        InvalidArgumentError: ``app_id`` is not a ``str`` of that shape
            (``argument="app_id"``).
    """
    return app_id_hex(app_id)


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash; **not** NIST SHA3-256, whose padding differs).

    Args:
        data: The bytes to hash.

    Returns:
        The 32-byte digest.
    """
    digest: bytes = _keccak.new(digest_bits=256, data=data).digest()
    return digest


def _u64_timestamp(timestamp: object) -> bytes | None:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return None
    if not 0 <= timestamp < _U64_LIMIT:
        return None
    return timestamp.to_bytes(8, "big")


def env_encrypt_pubkey_message(
    public_key: str | bytes, app_id: str | bytes, timestamp: int | None = None
) -> bytes:
    """Build the message the KMS signs for an env-encryption public key (api-spec 4.2).

    Args:
        public_key: The app's 32-byte X25519 public key, as bytes or hex (optional ``0x``).
        app_id: The app id, as 40 hex digits (optional ``0x``) or 20 bytes.
        timestamp: For the timestamped (``signature_v1``) form, the signing time in
            Unix seconds (a u64); ``None`` for the legacy form.

    Returns:
        ``b"dstack-env-encrypt-pubkey:" + app_id + [timestamp as 8-byte big-endian]
        + public_key``: 78 bytes (legacy) or 86 bytes (timestamped). Hash it with
        :func:`keccak256` to get what is signed.

    Raises:
        InvalidArgumentError: A malformed argument (``argument`` names it).
    """
    key = _decode_x25519_public_key(public_key)
    app = app_id_to_bytes(app_id)
    if timestamp is None:
        return _signed_message(app, None, key)
    stamp = _u64_timestamp(timestamp)
    if stamp is None:
        raise InvalidArgumentError(
            "timestamp must be an int in 0..2**64-1 (Unix seconds)", argument="timestamp"
        )
    return _signed_message(app, stamp, key)


def _signed_message(app_id: bytes, timestamp: bytes | None, public_key: bytes) -> bytes:
    """The one place the signed message is laid out (api-spec 4.2)."""
    if timestamp is None:
        return _MESSAGE_PREFIX + app_id + public_key
    return _MESSAGE_PREFIX + app_id + timestamp + public_key


def _secp256k1_public_key(value: object) -> PublicKey | None:
    """Parse a SEC1 compressed (33 B), uncompressed (65 B) or bare x||y (64 B) key."""
    raw = parse_hex(value, None)
    if raw is None:
        return None
    size = len(raw)
    if size == 64:
        raw = b"\x04" + raw
    elif not ((size == 33 and raw[0] in (2, 3)) or (size == 65 and raw[0] == 4)):
        return None
    try:
        return PublicKey(raw)
    except ValueError:
        return None


def ethereum_address(public_key: str | bytes) -> str:
    """The Ethereum address of a secp256k1 public key: ``keccak256(x || y)[12:]``.

    Args:
        public_key: A SEC1 compressed (33 bytes) or uncompressed (65 bytes) key, or
            the bare 64-byte ``x || y``; bytes or hex (optional ``0x``, either case).

    Returns:
        ``"0x"`` + 40 lowercase hex digits (not EIP-55 checksummed).

    Raises:
        InvalidArgumentError: Not a valid secp256k1 public key (``argument="public_key"``).
    """
    key = _secp256k1_public_key(public_key)
    if key is None:
        raise InvalidArgumentError(
            "public_key must be a secp256k1 public key (33, 64 or 65 bytes, bytes or hex)",
            argument="public_key",
        )
    return "0x" + keccak256(key.format(compressed=False)[1:])[12:].hex()


# --------------------------------------------------------------------------- encryption


def _invalid_env(message: str, key: str | None = None) -> InvalidArgumentError:
    return InvalidArgumentError(message, argument="env_vars", key=key)


def _show_name(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")


def _env_entries(env_vars: EnvVarsLike) -> list[dict[str, str]]:
    items: Iterable[object]
    if isinstance(env_vars, Mapping):
        items = env_vars.items()
    elif isinstance(env_vars, (str, bytes, bytearray, memoryview)):
        raise _invalid_env(
            "env_vars must be a mapping of name to value or a sequence of EnvVar, "
            f"not {type(env_vars).__name__}"
        )
    else:
        try:
            items = iter(env_vars)
        except TypeError:
            raise _invalid_env(
                "env_vars must be a mapping of name to value or a sequence of EnvVar, "
                f"not {type(env_vars).__name__}"
            ) from None
    entries: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if isinstance(item, EnvVar):
            key, value = item.key, item.value
        elif isinstance(item, tuple) and len(item) == 2:
            key, value = item
        else:
            raise _invalid_env(
                f"env var #{index} must be an EnvVar or a (name, value) pair, "
                f"not {type(item).__name__}"
            )
        if not isinstance(key, str):
            raise _invalid_env(f"env var #{index}: name must be a str, not {type(key).__name__}")
        if _ENV_NAME.fullmatch(key) is None:
            raise _invalid_env(
                f"env var #{index}: name {_show_name(key)} is not a valid environment "
                "variable name ([A-Za-z_][A-Za-z0-9_]*)",
                key=key,
            )
        if not isinstance(value, str):
            raise _invalid_env(
                f"env var {key!r}: value must be a str, not {type(value).__name__}", key=key
            )
        if key in seen:
            raise _invalid_env(f"env var {key!r} is given more than once", key=key)
        seen.add(key)
        entries.append({"key": key, "value": value})
    return entries


def _env_plaintext(env_vars: EnvVarsLike) -> bytes:
    entries = _env_entries(env_vars)
    try:
        return _JSON.encode({"env": entries}).encode("utf-8")
    except UnicodeEncodeError:
        pass
    # Name the culprit without letting the exception escape: its ``object`` holds
    # the whole plaintext. Names are ASCII, so a value is the cause.
    culprit = next(entry["key"] for entry in entries if not _utf8_encodable(entry["value"]))
    raise _invalid_env(
        f"env var {culprit!r}: value is not encodable as UTF-8 (it holds a lone surrogate)",
        key=culprit,
    )


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encrypt_env_vars(env_vars: EnvVarsLike, public_key: str | bytes) -> str:
    """Encrypt env vars to an app's X25519 public key (api-spec 4.1, the dstack scheme).

    Each call uses a fresh ephemeral key and IV, so the same input never gives the
    same output. Everything is validated before anything is encrypted.

    Args:
        env_vars: A mapping of name to value, or an iterable of :class:`EnvVar` (or of
            ``(name, value)`` pairs), kept in order. Names must match
            ``[A-Za-z_][A-Za-z0-9_]*`` and be unique; values are any ``str``.
            An empty collection is valid.
        public_key: The app's 32-byte X25519 public key (from
            ``GET /kms/{kms}/pubkey/{app_id}``), as bytes or hex with optional
            ``0x``, either case. Verify it first with
            :func:`verify_env_encrypt_public_key`.

    Returns:
        Lowercase hex (no ``0x``) of ``ephemeral_public (32) || iv (12) ||
        ciphertext || tag (16)``: ``2 * (60 + len(plaintext))`` characters, where the
        plaintext is the compact UTF-8 JSON ``{"env":[{"key":..,"value":..},...]}``.

    Raises:
        InvalidArgumentError: ``public_key`` is not 32 bytes / valid hex, or is a
            low-order point giving an all-zero shared secret
            (``argument="public_key"``); ``env_vars`` is not a collection of
            ``str`` names and values, or has an invalid or duplicate name, or a value
            that is not valid Unicode (``argument="env_vars"``, ``key`` the name).
            Messages name variables, never values.
    """
    recipient = X25519PublicKey.from_public_bytes(_decode_x25519_public_key(public_key))
    return _seal(_env_plaintext(env_vars), recipient)


def _seal(plaintext: bytes, recipient: X25519PublicKey) -> str:
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
    recipient = X25519PublicKey.from_public_bytes(_decode_x25519_public_key(public_key))
    return _seal(plaintext, recipient)


def env_vars_plaintext(env_vars: EnvVarsLike) -> bytes:
    """Check env vars and build the compact UTF-8 JSON that :func:`encrypt_env_vars` seals.

    Reads ``env_vars`` once (a generator is fine).

    Raises:
        InvalidArgumentError: As :func:`encrypt_env_vars` for ``env_vars``.
    """
    return _env_plaintext(env_vars)


# --------------------------------------------------------------------------- signatures


def _malformed(argument: str, message: str) -> SignatureVerificationError:
    return SignatureVerificationError(message, reason="malformed", argument=argument)


def _recover_signer(
    public_key: object, signature: object, app_id: object, timestamp: object
) -> PublicKey:
    key = parse_hex(public_key, 32)
    if key is None:
        raise _malformed(
            "public_key", "public_key must be 32 bytes (64 hex digits, optional 0x) or bytes"
        )
    app = parse_hex(app_id, 20)
    if app is None:
        raise _malformed("app_id", "app_id must be 20 bytes (40 hex digits, optional 0x) or bytes")
    sig = parse_hex(signature, 65)
    if sig is None:
        raise _malformed(
            "signature", "signature must be 65 bytes r||s||v (130 hex digits, optional 0x)"
        )
    stamp = None
    if timestamp is not None:
        stamp = _u64_timestamp(timestamp)
        if stamp is None:
            raise _malformed("timestamp", "timestamp must be an int in 0..2**64-1 (Unix seconds)")
    message = _signed_message(app, stamp, key)
    v = sig[64]
    if v == 27 or v == 28:
        sig = sig[:64] + bytes((v - 27,))
    elif v > 1:
        raise _malformed("signature", f"signature recovery id v must be 0, 1, 27 or 28, not {v}")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if not (0 < r < _SECP256K1_N and 0 < s < _SECP256K1_N):
        raise _malformed("signature", "signature r and s must be in 1..n-1")
    if s > _SECP256K1_HALF_N:
        raise SignatureVerificationError(
            "signature is not low-s (s > n/2); the KMS only produces low-s signatures",
            reason="high_s",
            argument="signature",
        )
    try:
        recovered: PublicKey = PublicKey.from_signature_and_message(
            sig, keccak256(message), hasher=None
        )
    except ValueError as err:
        raise SignatureVerificationError(
            "no public key can be recovered from this signature", reason="unrecoverable"
        ) from err
    return recovered


def recover_env_encrypt_pubkey_signer(
    public_key: str | bytes,
    signature: str | bytes,
    app_id: str | bytes,
    *,
    timestamp: int | None = None,
) -> str:
    """Recover who signed an env-encryption public key (api-spec 4.2).

    This alone proves nothing: compare the result with a key you trust, or use
    :func:`verify_env_encrypt_public_key`, which does that and checks freshness.

    Args:
        public_key: The app's 32-byte X25519 public key, as bytes or hex (optional ``0x``).
        signature: The 65-byte ``r || s || v`` signature, as bytes or hex (optional
            ``0x``); ``v`` is 0/1 or 27/28; ``s`` must be low (``<= n/2``).
        app_id: The app id, as 40 hex digits (optional ``0x``) or 20 bytes.
        timestamp: The signing time in Unix seconds for the timestamped
            (``signature_v1``) form, or ``None`` for the legacy form. Not checked for
            freshness here.

    Returns:
        The signer's SEC1 compressed secp256k1 public key: ``"0x"`` + 66 lowercase
        hex digits.

    Raises:
        SignatureVerificationError: ``reason="malformed"`` for bad hex, wrong
            lengths, a bad ``v``, ``r``/``s`` out of range or a bad timestamp
            (``argument`` names the input); ``reason="high_s"`` for a high-s
            signature; ``reason="unrecoverable"`` when no key can be recovered.
    """
    recovered = _recover_signer(public_key, signature, app_id, timestamp)
    return "0x" + recovered.format(compressed=True).hex()


@lru_cache(maxsize=128)
def _parse_trusted_signer(trusted_signer: str | bytes) -> tuple[bool, bytes] | None:
    """``(is_address, bytes to compare)``, or ``None`` if unusable. Cached: callers
    verify many keys against the same few signers."""
    raw = parse_hex(trusted_signer, None)
    if raw is not None and len(raw) == 20:
        return (True, raw)
    key = _secp256k1_public_key(trusted_signer)
    return None if key is None else (False, key.format(compressed=True))


def check_trusted_signer(trusted_signer: SignerLike) -> tuple[bool, bytes]:
    """Parse a trusted signer once, before any key is fetched or verified.

    Args:
        trusted_signer: A secp256k1 public key (33-byte compressed, 65-byte
            uncompressed or 64-byte ``x || y``) or a 20-byte Ethereum address, as bytes
            or hex (``0x`` optional, either case), or a
            :class:`~phala_kms.models.TrustedSigner`.

    Returns:
        ``(is_address, bytes_to_compare)``: the address, or the compressed key.

    Raises:
        SignatureVerificationError: ``reason="invalid_trusted_signer"``: missing or
            unparsable (without a trusted signer a signature proves nothing).
    """
    signer_arg: object = trusted_signer  # checked at run time, whatever the annotation
    if isinstance(signer_arg, TrustedSigner):
        signer_arg = signer_arg.k256_pubkey
    trusted = None
    if isinstance(signer_arg, (str, bytes)):
        trusted = _parse_trusted_signer(signer_arg)
    elif isinstance(signer_arg, (bytearray, memoryview)):
        trusted = _parse_trusted_signer(bytes(signer_arg))
    if trusted is None:
        raise SignatureVerificationError(
            "trusted_signer must be a secp256k1 public key (33/64/65 bytes) or a 20-byte "
            "Ethereum address, as bytes or hex; without one a signature proves nothing",
            reason="invalid_trusted_signer",
            argument="trusted_signer",
        )
    return trusted


def _finite_or_inf(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def verify_env_encrypt_public_key(
    public_key: str | bytes,
    signature: str | bytes,
    app_id: str | bytes,
    *,
    trusted_signer: SignerLike,
    timestamp: int | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    future_skew: float = DEFAULT_FUTURE_SKEW,
    now: float | None = None,
) -> None:
    """Check that an env-encryption public key was signed by the trusted KMS (api-spec 4.2).

    Returns only when the signature recovers exactly ``trusted_signer`` and, for
    the timestamped form, the timestamp is fresh. Every other outcome raises: the
    check fails closed.

    Without ``timestamp`` this checks the legacy form, which can be replayed (see
    the module docstring). Freshness, for the timestamped form only: with
    ``age = now - timestamp``, ``age > max_age`` fails (300 passes, 301 fails with
    the default) and ``age < -future_skew`` fails (60 s ahead passes, 61 fails).

    Args:
        public_key: The app's 32-byte X25519 public key, as bytes or hex (optional ``0x``).
        signature: The 65-byte ``r || s || v`` signature, as bytes or hex (optional
            ``0x``); ``v`` is 0/1 or 27/28; ``s`` must be low (``<= n/2``).
        app_id: The app id, as 40 hex digits (optional ``0x``) or 20 bytes.
        trusted_signer: The KMS root key (``k256_pubkey``): a secp256k1 public key,
            SEC1 compressed (33 bytes) or uncompressed (65 bytes) or bare ``x || y``
            (64 bytes), or a 20-byte Ethereum address; as bytes or hex with optional
            ``0x``, either case. Required.
        timestamp: The signing time in Unix seconds (u64) for the timestamped form,
            or ``None`` for the legacy form.
        max_age: The oldest accepted signature, in seconds (``math.inf`` disables it).
        future_skew: How far ahead of ``now`` a timestamp may be, in seconds.
        now: The current Unix time in seconds; defaults to ``time.time()``.

    Raises:
        SignatureVerificationError: Always, unless verified. ``reason`` is
            ``"invalid_trusted_signer"`` (missing or unparsable ``trusted_signer``),
            ``"invalid_argument"`` (``max_age``/``future_skew`` negative or NaN,
            ``now`` not finite), ``"malformed"`` (bad hex, lengths, ``v``, ``r``/``s``
            or timestamp; ``argument`` names the input), ``"high_s"``,
            ``"unrecoverable"``, ``"stale_timestamp"``, ``"future_timestamp"`` or
            ``"signer_mismatch"`` (``signer`` holds the recovered key).
    """
    trusted = check_trusted_signer(trusted_signer)
    if timestamp is not None:
        if not (_finite_or_inf(max_age) and max_age >= 0):
            raise SignatureVerificationError(
                "max_age must be a non-negative number of seconds",
                reason="invalid_argument",
                argument="max_age",
            )
        if not (_finite_or_inf(future_skew) and future_skew >= 0):
            raise SignatureVerificationError(
                "future_skew must be a non-negative number of seconds",
                reason="invalid_argument",
                argument="future_skew",
            )
        if now is None:
            now = time.time()
        elif not (_finite_or_inf(now) and math.isfinite(now)):
            raise SignatureVerificationError(
                "now must be a finite Unix time in seconds",
                reason="invalid_argument",
                argument="now",
            )
        if _u64_timestamp(timestamp) is None:
            raise _malformed("timestamp", "timestamp must be an int in 0..2**64-1 (Unix seconds)")
        age = now - timestamp
        if age > max_age:
            raise SignatureVerificationError(
                f"signature timestamp is {age:g} s old, more than max_age={max_age:g} s",
                reason="stale_timestamp",
                age=age,
            )
        if age < -future_skew:
            raise SignatureVerificationError(
                f"signature timestamp is {-age:g} s in the future, more than "
                f"future_skew={future_skew:g} s",
                reason="future_timestamp",
                age=age,
            )
    recovered = _recover_signer(public_key, signature, app_id, timestamp)
    is_address, expected = trusted
    if is_address:
        got = keccak256(recovered.format(compressed=False)[1:])[12:]
    else:
        got = recovered.format(compressed=True)
    if not hmac.compare_digest(got, expected):
        signer = "0x" + recovered.format(compressed=True).hex()
        raise SignatureVerificationError(
            f"public key was signed by {signer}, not by the trusted signer 0x{expected.hex()}",
            reason="signer_mismatch",
            signer=signer,
        )


def verify_app_env_encrypt_pubkey(
    key: AppEnvEncryptPubKey,
    app_id: str | bytes,
    *,
    trusted_signer: SignerLike,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> None:
    """Verify a key as fetched from ``GET /kms/{kms}/pubkey/{app_id}`` (api-spec 4.2).

    The timestamped ``signature_v1`` is checked (with freshness, ``max_age``) when the
    response carries it with its ``timestamp``; otherwise the legacy ``signature``.

    Args:
        key: The fetched key.
        app_id: The app id it was fetched for (40 hex digits, optional ``0x``, or 20 bytes).
        trusted_signer: As in :func:`verify_env_encrypt_public_key`.
        max_age: The oldest accepted timestamped signature, in seconds.
        now: The current Unix time in seconds; defaults to ``time.time()``.

    Raises:
        SignatureVerificationError: As :func:`verify_env_encrypt_public_key`.
    """
    if key.signature_v1 is not None and key.timestamp is not None:
        verify_env_encrypt_public_key(
            key.public_key,
            key.signature_v1,
            app_id,
            trusted_signer=trusted_signer,
            timestamp=key.timestamp,
            max_age=max_age,
            now=now,
        )
    else:
        verify_env_encrypt_public_key(
            key.public_key, key.signature, app_id, trusted_signer=trusted_signer
        )
