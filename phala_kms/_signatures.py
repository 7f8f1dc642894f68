"""KMS signatures over env-encryption public keys: the message, recovery, verification.

The scheme (api-spec 4.2) is described in :mod:`phala_kms.crypto`, which re-exports
the public names defined here.
"""

from __future__ import annotations

import hmac
import math
import time
from functools import lru_cache
from typing import Final, TypeAlias, cast

from coincurve import PublicKey
from Crypto.Hash import keccak as _keccak

from ._constants import DEFAULT_MAX_AGE
from ._hex import parse_hex
from ._params import app_id_hex
from .errors import InvalidArgumentError, SignatureVerificationError
from .models import AppEnvEncryptPubKey, TrustedSigner, VerifiedAppEnvEncryptPubKey

DEFAULT_FUTURE_SKEW: Final = 60.0
"""Default tolerance for a timestamp ahead of the local clock, in seconds (api-spec 4.2)."""

_MESSAGE_PREFIX: Final = b"dstack-env-encrypt-pubkey:"
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_N: Final = _SECP256K1_N // 2
_U64_LIMIT: Final = 1 << 64


SignerLike: TypeAlias = str | bytes | TrustedSigner
"""What ``trusted_signer`` takes: a secp256k1 key or Ethereum address (bytes or hex),
or a :class:`~phala_kms.models.TrustedSigner` (see ``AsyncKMSClient.get_trusted_signer``)."""

# --------------------------------------------------------------------------- parsing


def decode_x25519_public_key(public_key: object) -> bytes:
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
    key = decode_x25519_public_key(public_key)
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
) -> str:
    """Check that an env-encryption public key was signed by the trusted KMS (api-spec 4.2).

    Returns only when the signature recovers exactly ``trusted_signer`` and, for
    the timestamped form, the timestamp is fresh. Every other outcome raises: the
    check fails closed. The return value is the recovered signer (``"0x"`` + 66
    lowercase hex, SEC1 compressed), which matched ``trusted_signer``.

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
    return "0x" + recovered.format(compressed=True).hex()


def verify_app_env_encrypt_pubkey(
    key: AppEnvEncryptPubKey,
    app_id: str | bytes,
    *,
    trusted_signer: SignerLike,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
    require_timestamped: bool = False,
) -> VerifiedAppEnvEncryptPubKey:
    """Verify a key as fetched from ``GET /kms/{kms}/pubkey/{app_id}`` or a KMS node's
    ``GetAppEnvEncryptPubKey`` (api-spec 4.2), and say exactly what was verified.

    No downgrade: when the response carries ``signature_v1`` with its ``timestamp``,
    only that is checked (with freshness, ``max_age``); if it fails, the legacy
    ``signature`` is **not** tried. A half-present pair (a ``timestamp`` without
    ``signature_v1``, or the reverse) fails closed. The legacy ``signature`` alone is
    accepted unless ``require_timestamped``; its result then has no ``timestamp``,
    since nothing signed one.

    Args:
        key: The fetched key.
        app_id: The app id it was fetched for (40 hex digits, optional ``0x``, or 20 bytes).
        trusted_signer: As in :func:`verify_env_encrypt_public_key`.
        max_age: The oldest accepted timestamped signature, in seconds.
        now: The current Unix time in seconds; defaults to ``time.time()``.
        require_timestamped: Refuse a key offering only the legacy (replayable) signature.

    Returns:
        A :class:`~phala_kms.models.VerifiedAppEnvEncryptPubKey`: the key, the app id,
        ``scheme`` (``"signature_v1"`` or ``"signature"``), the verified signature, the
        recovered ``signer``, and the signed ``timestamp`` (``signature_v1`` only).

    Raises:
        SignatureVerificationError: As :func:`verify_env_encrypt_public_key`; also
            ``reason="incomplete_signature_v1"`` for a half-present pair and
            ``reason="legacy_signature"`` for a legacy-only key under
            ``require_timestamped``.
    """
    if (key.signature_v1 is None) != (key.timestamp is None):
        present = "timestamp" if key.signature_v1 is None else "signature_v1"
        raise SignatureVerificationError(
            f"the key carries {present} without its pair: a timestamped signature must come"
            " with both signature_v1 and timestamp, so it is refused rather than downgraded",
            reason="incomplete_signature_v1",
            argument=present,
        )
    timestamp = key.timestamp
    if key.signature_v1 is not None and timestamp is not None:
        scheme, signature = "signature_v1", key.signature_v1
    elif require_timestamped:
        raise SignatureVerificationError(
            "the key offers only the legacy signature, which has no timestamp and can be"
            " replayed; require_timestamped refuses it",
            reason="legacy_signature",
        )
    else:
        scheme, signature = "signature", key.signature
    signer = verify_env_encrypt_public_key(
        key.public_key,
        signature,
        app_id,
        trusted_signer=trusted_signer,
        timestamp=timestamp,
        max_age=max_age,
        now=now,
    )
    return VerifiedAppEnvEncryptPubKey(  # the inputs parsed above, in canonical form
        public_key=cast(bytes, parse_hex(key.public_key, 32)).hex(),
        app_id=app_id_to_bytes(app_id).hex(),
        scheme=scheme,
        signature=cast(bytes, parse_hex(signature, 65)).hex(),
        signer=signer,
        timestamp=timestamp,
    )
