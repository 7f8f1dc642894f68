"""Decrypt env vars the way the dstack TEE does, for tests (api-spec 4.1).

The SDK itself never needs this: only the TEE holds an app's X25519 private key.
It is here so that tests (ours and users') can open what
:func:`phala_kms.crypto.encrypt_env_vars` produced.
"""

from __future__ import annotations

import json
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._hex import parse_hex
from ..crypto import EnvVar
from ..errors import InvalidArgumentError

__all__ = ["decrypt_env_vars"]

_MIN_SIZE: Final = 32 + 12 + 16


def _private_key(private_key: object) -> X25519PrivateKey:
    if isinstance(private_key, X25519PrivateKey):
        return private_key
    raw = parse_hex(private_key, 32)
    if raw is None:
        raise InvalidArgumentError(
            "private_key must be a 32-byte X25519 private key as bytes or hex (optional 0x)",
            argument="private_key",
        )
    return X25519PrivateKey.from_private_bytes(raw)


def _bad_plaintext(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"decrypted plaintext is not the env JSON: {what}", argument="ciphertext"
    )


def _parse_json(plaintext: bytes) -> object:
    # The decode/JSON errors hold the plaintext in their attributes, so none of them
    # may escape, not even as ``__context__``: raise outside the ``except`` block.
    try:
        return json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        pass
    raise _bad_plaintext("not UTF-8 JSON")


def decrypt_env_vars(
    ciphertext: str | bytes, private_key: str | bytes | X25519PrivateKey
) -> list[EnvVar]:
    """Open a payload made by :func:`phala_kms.crypto.encrypt_env_vars`.

    Splits ``ephemeral_public (32) || iv (12) || ciphertext || tag (16)``, derives
    the AES-256-GCM key as the raw X25519 shared secret (no KDF), opens it with no
    associated data and parses the JSON ``{"env":[{"key":..,"value":..},...]}``
    (any JSON formatting is accepted, as in the TEE).

    Args:
        ciphertext: The payload, as lowercase or uppercase hex (optional ``0x``) or bytes.
        private_key: The app's X25519 private key: 32 bytes, its hex (optional
            ``0x``), or a ``cryptography`` ``X25519PrivateKey``.

    Returns:
        The env vars, in the order they were encrypted.

    Raises:
        InvalidArgumentError: ``private_key`` is malformed (``argument="private_key"``);
            ``ciphertext`` is malformed or shorter than 60 bytes, fails
            authentication (wrong key or tampered), has a low-order ephemeral key,
            or does not hold the env JSON (``argument="ciphertext"``). Messages never
            include the plaintext or the key.
    """
    key = _private_key(private_key)
    blob = parse_hex(ciphertext, None)
    if blob is None or len(blob) < _MIN_SIZE:
        raise InvalidArgumentError(
            f"ciphertext must be at least {_MIN_SIZE} bytes, as bytes or hex (optional 0x)",
            argument="ciphertext",
        )
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
    except ValueError:
        raise InvalidArgumentError(
            "ciphertext's ephemeral public key is a low-order X25519 point",
            argument="ciphertext",
        ) from None
    try:
        plaintext = AESGCM(shared).decrypt(blob[32:44], blob[44:], None)
    except InvalidTag:
        raise InvalidArgumentError(
            "ciphertext failed authentication: wrong private key, or it was altered",
            argument="ciphertext",
        ) from None
    document = _parse_json(plaintext)
    if not isinstance(document, dict) or not isinstance(document.get("env"), list):
        raise _bad_plaintext('no "env" list')
    env_vars: list[EnvVar] = []
    for entry in document["env"]:
        if not isinstance(entry, dict):
            raise _bad_plaintext("an entry is not an object")
        name, value = entry.get("key"), entry.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise _bad_plaintext('an entry lacks a string "key" or "value"')
        env_vars.append(EnvVar(name, value))
    return env_vars
