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

from ._constants import DEFAULT_MAX_AGE
from ._encryption import (
    EnvVar,
    EnvVarsLike,
    encrypt_env_plaintext,
    encrypt_env_vars,
    env_vars_plaintext,
)
from ._signatures import (
    DEFAULT_FUTURE_SKEW,
    SignerLike,
    app_id_to_bytes,
    check_trusted_signer,
    env_encrypt_pubkey_message,
    ethereum_address,
    keccak256,
    normalize_app_id,
    recover_env_encrypt_pubkey_signer,
    verify_app_env_encrypt_pubkey,
    verify_env_encrypt_public_key,
)

__all__ = [
    "SignerLike",
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
