"""Property tests for phala_kms.crypto: only our exceptions, round trips, fail-closed."""

from __future__ import annotations

from typing import Any

from coincurve import PrivateKey
from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms.crypto import (
    EnvVar,
    encrypt_env_vars,
    normalize_app_id,
    recover_env_encrypt_pubkey_signer,
    verify_env_encrypt_public_key,
)
from phala_kms.errors import InvalidArgumentError, SignatureVerificationError
from phala_kms.testing._decrypt import decrypt_env_vars

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
RECIPIENT = X25519PrivateKey.generate()
RECIPIENT_PUB = RECIPIENT.public_key().public_bytes_raw()
SIGNER = PrivateKey()
SIGNER_HEX = "0x" + SIGNER.public_key.format(compressed=True).hex()

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hex_text(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(lambda b: b.hex())


def near(size: int) -> st.SearchStrategy[Any]:
    """Right-ish and wrong inputs for a field of ``size`` bytes."""
    return st.one_of(
        st.binary(max_size=2 * size + 2),
        st.binary(min_size=size, max_size=size),
        st.text(max_size=2 * size + 4),
        st.text(alphabet="0123456789abcdefABCDEFx \n", max_size=2 * size + 4),
        hex_text(size),
        hex_text(size).map(lambda h: "0x" + h),
        st.none(),
        st.integers(),
        st.floats(),
        st.lists(st.integers(0, 255), max_size=4),
    )


anything_timestamp = st.one_of(
    st.none(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=5)
)
numbers = st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70), st.none())


@FAST
@given(pk=near(32), sig=near(65), app=near(20), ts=anything_timestamp)
def test_recover_raises_only_signature_errors(pk: Any, sig: Any, app: Any, ts: Any) -> None:
    try:
        got = recover_env_encrypt_pubkey_signer(pk, sig, app, timestamp=ts)
    except SignatureVerificationError:
        return
    assert got.startswith("0x")
    assert len(got) == 68


@FAST
@given(
    pk=near(32),
    sig=near(65),
    app=near(20),
    signer=st.one_of(st.just(SIGNER_HEX), near(33), near(20), near(65)),
    ts=anything_timestamp,
    max_age=numbers,
    skew=numbers,
    now=numbers,
)
def test_verify_of_junk_always_raises_a_signature_error(
    pk: Any, sig: Any, app: Any, signer: Any, ts: Any, max_age: Any, skew: Any, now: Any
) -> None:
    # Junk cannot carry a genuine signature, so verification must never pass.
    try:
        verify_env_encrypt_public_key(
            pk,
            sig,
            app,
            trusted_signer=signer,
            timestamp=ts,
            max_age=max_age,
            future_skew=skew,
            now=now,
        )
    except SignatureVerificationError:
        return
    raise AssertionError("verification of junk passed")


@FAST
@given(
    env=st.one_of(
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers()), st.one_of(st.text(), st.binary())
        ),
        st.lists(st.tuples(st.text(max_size=8), st.text())),
        st.lists(st.builds(EnvVar, st.text(max_size=8), st.text())),
        st.lists(st.one_of(st.text(), st.integers(), st.none())),
        st.text(),
        st.none(),
        st.integers(),
    ),
    key=st.one_of(near(32), st.just(RECIPIENT_PUB)),
)
def test_encrypt_raises_only_invalid_argument(env: Any, key: Any) -> None:
    try:
        payload = encrypt_env_vars(env, key)
    except InvalidArgumentError:
        return
    assert bytes.fromhex(payload)  # it produced a payload: it must be well formed


@FAST
@given(app=st.one_of(st.text(max_size=44), st.binary(max_size=22), st.none(), st.integers()))
def test_normalize_app_id_raises_only_invalid_argument(app: Any) -> None:
    try:
        got = normalize_app_id(app)
    except InvalidArgumentError:
        return
    assert len(got) == 40
    assert bytes.fromhex(got)


env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
env_value = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@FAST
@given(env=st.dictionaries(env_name, env_value, max_size=12))
def test_round_trip_for_any_valid_env(env: dict[str, str]) -> None:
    payload = encrypt_env_vars(env, RECIPIENT_PUB)
    assert decrypt_env_vars(payload, RECIPIENT) == [EnvVar(k, v) for k, v in env.items()]
    # And with a decryption written from the spec alone:
    blob = bytes.fromhex(payload)
    shared = RECIPIENT.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
    plaintext = AESGCM(shared).decrypt(blob[32:44], blob[44:], None)
    assert len(blob) == 60 + len(plaintext)


def _keccak(data: bytes) -> bytes:
    return bytes(keccak.new(digest_bits=256, data=data).digest())


@SLOW
@given(
    secret=st.integers(min_value=1, max_value=N - 1),
    pk=st.binary(min_size=32, max_size=32),
    app=st.binary(min_size=20, max_size=20),
    ts=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_any_signer_is_recovered(secret: int, pk: bytes, app: bytes, ts: int | None) -> None:
    signer = PrivateKey(secret.to_bytes(32, "big"))
    stamp = b"" if ts is None else ts.to_bytes(8, "big")
    message = b"dstack-env-encrypt-pubkey:" + app + stamp + pk
    sig = signer.sign_recoverable(_keccak(message), hasher=None)
    expected = "0x" + signer.public_key.format(compressed=True).hex()
    assert recover_env_encrypt_pubkey_signer(pk, sig, app, timestamp=ts) == expected
    verify_env_encrypt_public_key(pk, sig, app, trusted_signer=expected, timestamp=ts, now=ts)


@SLOW
@given(
    pk=st.binary(min_size=32, max_size=32),
    app=st.binary(min_size=20, max_size=20),
    which=st.sampled_from(["pk", "app", "sig"]),
    bit=st.integers(min_value=0, max_value=8 * 64 - 1),
)
def test_any_single_bit_flip_fails_verification(
    pk: bytes, app: bytes, which: str, bit: int
) -> None:
    sig = SIGNER.sign_recoverable(_keccak(b"dstack-env-encrypt-pubkey:" + app + pk), hasher=None)
    verify_env_encrypt_public_key(pk, sig, app, trusted_signer=SIGNER_HEX)
    fields = {"pk": bytearray(pk), "app": bytearray(app), "sig": bytearray(sig)}
    target = fields[which]
    index = (bit // 8) % len(target)
    target[index] ^= 1 << (bit % 8)
    try:
        verify_env_encrypt_public_key(
            bytes(fields["pk"]),
            bytes(fields["sig"]),
            bytes(fields["app"]),
            trusted_signer=SIGNER_HEX,
        )
    except SignatureVerificationError:
        return
    raise AssertionError(f"verification passed after flipping a bit of {which}")
