"""Recovering and verifying the KMS signature on an env-encryption public key (api-spec 4.2),
and the hashing, message and address helpers it rests on.

Test vectors are made here: messages are assembled by hand from the spec, hashed
with pycryptodome's Keccak-256 and signed with coincurve, without phala_kms's
helpers. ``dstack_sdk`` (eth_keys underneath) is the differential oracle. Properties:
junk never verifies and raises only ``SignatureVerificationError``, any signer is
recovered, and any single flipped bit fails verification.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from typing import Any

import pytest
from coincurve import PrivateKey, PublicKey
from Crypto.Hash import keccak
from dstack_sdk.verify_env_encrypt_public_key import (
    verify_env_encrypt_public_key as dstack_verify,
)
from dstack_sdk.verify_env_encrypt_public_key import (
    verify_env_encrypt_public_key_legacy as dstack_verify_legacy,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms import AppEnvEncryptPubKey, TrustedSigner
from phala_kms.crypto import (
    env_encrypt_pubkey_message,
    ethereum_address,
    keccak256,
    recover_env_encrypt_pubkey_signer,
    verify_app_env_encrypt_pubkey,
    verify_env_encrypt_public_key,
)
from phala_kms.errors import InvalidArgumentError, SignatureVerificationError

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
T0 = 1_750_000_000


def keccak_256(data: bytes) -> bytes:
    return bytes(keccak.new(digest_bits=256, data=data).digest())


def spec_message(app_id: bytes, public_key: bytes, timestamp: int | None = None) -> bytes:
    stamp = b"" if timestamp is None else timestamp.to_bytes(8, "big")
    return b"dstack-env-encrypt-pubkey" + b":" + app_id + stamp + public_key


def sign(signer: PrivateKey, message: bytes) -> bytes:
    signature = bytes(signer.sign_recoverable(keccak_256(message), hasher=None))
    assert len(signature) == 65
    assert signature[64] in (0, 1)
    return signature


def eth_address(signer: PrivateKey) -> bytes:
    return keccak_256(signer.public_key.format(compressed=False)[1:])[12:]


def with_v(signature: bytes, v: int) -> bytes:
    return signature[:64] + bytes((v,))


class Vector:
    """A KMS signing key, an app, its X25519 key, and both signature forms."""

    def __init__(self, seed: int | None = None) -> None:
        self.signer = PrivateKey(os.urandom(32) if seed is None else seed.to_bytes(32, "big"))
        self.app_id = os.urandom(20)
        self.public_key = os.urandom(32)
        self.timestamp = T0
        self.legacy = sign(self.signer, spec_message(self.app_id, self.public_key))
        self.stamped = sign(self.signer, spec_message(self.app_id, self.public_key, T0))
        self.compressed = self.signer.public_key.format(compressed=True)
        self.uncompressed = self.signer.public_key.format(compressed=False)

    @property
    def signer_hex(self) -> str:
        return "0x" + self.compressed.hex()


@pytest.fixture
def vec() -> Vector:
    return Vector()


def verify_legacy(vec: Vector, **kwargs: Any) -> None:
    kwargs.setdefault("trusted_signer", vec.signer_hex)
    verify_env_encrypt_public_key(vec.public_key, vec.legacy, vec.app_id, **kwargs)


def verify_stamped(vec: Vector, **kwargs: Any) -> None:
    kwargs.setdefault("trusted_signer", vec.signer_hex)
    kwargs.setdefault("timestamp", vec.timestamp)
    kwargs.setdefault("now", vec.timestamp)
    verify_env_encrypt_public_key(vec.public_key, vec.stamped, vec.app_id, **kwargs)


# --------------------------------------------------------------------------- recover


def test_recover_legacy_and_timestamped(vec: Vector) -> None:
    assert recover_env_encrypt_pubkey_signer(vec.public_key, vec.legacy, vec.app_id) == (
        vec.signer_hex
    )
    assert (
        recover_env_encrypt_pubkey_signer(
            vec.public_key, vec.stamped, vec.app_id, timestamp=vec.timestamp
        )
        == vec.signer_hex
    )


def test_recover_returns_lowercase_0x_compressed_hex(vec: Vector) -> None:
    got = recover_env_encrypt_pubkey_signer(vec.public_key, vec.legacy, vec.app_id)
    assert got.startswith("0x")
    assert len(got) == 2 + 66
    assert got[2:4] in ("02", "03")
    assert got == got.lower()


@pytest.mark.parametrize("offset", [0, 27])
def test_recover_accepts_v_0_1_and_27_28(vec: Vector, offset: int) -> None:
    signature = with_v(vec.legacy, vec.legacy[64] + offset)
    assert recover_env_encrypt_pubkey_signer(vec.public_key, signature, vec.app_id) == (
        vec.signer_hex
    )


def test_recover_covers_both_recovery_ids() -> None:
    seen = set()
    for seed in range(1, 40):
        vec = Vector(seed)
        seen.add(vec.legacy[64])
        assert recover_env_encrypt_pubkey_signer(vec.public_key, vec.legacy, vec.app_id) == (
            vec.signer_hex
        )
        got = recover_env_encrypt_pubkey_signer(
            vec.public_key.hex(), with_v(vec.legacy, vec.legacy[64] + 27).hex(), vec.app_id.hex()
        )
        assert got == vec.signer_hex
    assert seen == {0, 1}


def test_recover_flipping_v_gives_another_key(vec: Vector) -> None:
    flipped = with_v(vec.legacy, vec.legacy[64] ^ 1)
    try:
        got = recover_env_encrypt_pubkey_signer(vec.public_key, flipped, vec.app_id)
    except SignatureVerificationError:
        return
    assert got != vec.signer_hex


def test_recover_input_forms(vec: Vector) -> None:
    for pk, sig, app in [
        (vec.public_key.hex(), vec.legacy.hex(), vec.app_id.hex()),
        ("0x" + vec.public_key.hex(), "0x" + vec.legacy.hex(), "0x" + vec.app_id.hex()),
        (vec.public_key.hex().upper(), vec.legacy.hex().upper(), vec.app_id.hex().upper()),
        ("0X" + vec.public_key.hex(), "0X" + vec.legacy.hex(), "0X" + vec.app_id.hex()),
        (bytearray(vec.public_key), memoryview(vec.legacy), bytearray(vec.app_id)),
    ]:
        assert recover_env_encrypt_pubkey_signer(pk, sig, app) == vec.signer_hex  # type: ignore[arg-type]


def test_legacy_and_timestamped_forms_do_not_cross(vec: Vector) -> None:
    assert (
        recover_env_encrypt_pubkey_signer(vec.public_key, vec.legacy, vec.app_id, timestamp=T0)
        != vec.signer_hex
    )
    assert recover_env_encrypt_pubkey_signer(vec.public_key, vec.stamped, vec.app_id) != (
        vec.signer_hex
    )


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("public_key", b"\x01" * 31),
        ("public_key", b"\x01" * 33),
        ("public_key", "ab" * 31),
        ("public_key", "zz" * 32),
        ("public_key", "ab" * 31 + " a"),
        ("public_key", None),
        ("app_id", b"\x01" * 19),
        ("app_id", b"\x01" * 21),
        ("app_id", "0x" + "ab" * 19),
        ("app_id", "not hex at all"),
        ("app_id", 7),
        ("signature", b"\x01" * 64),
        ("signature", b"\x01" * 66),
        ("signature", "ab" * 64),
        ("signature", "0x" + "gg" * 65),
        ("signature", "ab" * 64 + "\t\t"),
        ("signature", ""),
        ("signature", None),
        ("timestamp", -1),
        ("timestamp", 2**64),
        ("timestamp", 1.5),
        ("timestamp", True),
        ("timestamp", "1750000000"),
    ],
)
def test_recover_rejects_malformed_input(vec: Vector, argument: str, value: Any) -> None:
    args: dict[str, Any] = {
        "public_key": vec.public_key,
        "signature": vec.legacy,
        "app_id": vec.app_id,
    }
    kwargs: dict[str, Any] = {}
    if argument == "timestamp":
        kwargs["timestamp"] = value
    else:
        args[argument] = value
    with pytest.raises(SignatureVerificationError) as info:
        recover_env_encrypt_pubkey_signer(**args, **kwargs)
    assert info.value.reason == "malformed"
    assert vars(info.value)["argument"] == argument


@pytest.mark.parametrize("v", [2, 3, 4, 26, 29, 30, 127, 255])
def test_recover_rejects_bad_recovery_ids(vec: Vector, v: int) -> None:
    with pytest.raises(SignatureVerificationError, match="recovery id") as info:
        recover_env_encrypt_pubkey_signer(vec.public_key, with_v(vec.legacy, v), vec.app_id)
    assert info.value.reason == "malformed"


def test_high_s_twin_is_rejected(vec: Vector) -> None:
    r, s, v = vec.legacy[:32], int.from_bytes(vec.legacy[32:64], "big"), vec.legacy[64]
    assert s <= N // 2  # coincurve (libsecp256k1) signs low-s
    twin = r + (N - s).to_bytes(32, "big") + bytes((v ^ 1,))
    digest = keccak_256(spec_message(vec.app_id, vec.public_key))
    # The twin is a valid signature by the same key; libsecp256k1 recovers it...
    assert PublicKey.from_signature_and_message(twin, digest, hasher=None) == vec.signer.public_key
    # ...but the KMS never produces it, and phala_kms accepts low-s only.
    with pytest.raises(SignatureVerificationError) as info:
        recover_env_encrypt_pubkey_signer(vec.public_key, twin, vec.app_id)
    assert info.value.reason == "high_s"
    with pytest.raises(SignatureVerificationError):
        verify_env_encrypt_public_key(
            vec.public_key, twin, vec.app_id, trusted_signer=vec.signer_hex
        )


def test_s_exactly_half_n_is_low_and_half_n_plus_one_is_high(vec: Vector) -> None:
    r = vec.legacy[:32]
    low = r + (N // 2).to_bytes(32, "big") + b"\x00"
    # r comes from a real signature, so it is a valid x: this low-s one recovers.
    assert recover_env_encrypt_pubkey_signer(vec.public_key, low, vec.app_id).startswith("0x")
    high = r + (N // 2 + 1).to_bytes(32, "big") + b"\x00"
    with pytest.raises(SignatureVerificationError) as info:
        recover_env_encrypt_pubkey_signer(vec.public_key, high, vec.app_id)
    assert info.value.reason == "high_s"


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (N, 1), (1, N), (2**256 - 1, 1)],
)
def test_out_of_range_r_or_s_is_rejected(vec: Vector, r: int, s: int) -> None:
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x00"
    with pytest.raises(SignatureVerificationError) as info:
        recover_env_encrypt_pubkey_signer(vec.public_key, sig, vec.app_id)
    assert info.value.reason in ("malformed", "high_s")


def test_unrecoverable_signature(vec: Vector) -> None:
    # Find an r that is no point's x coordinate: libsecp256k1 cannot recover from it.
    digest = keccak_256(spec_message(vec.app_id, vec.public_key))
    for r in range(1, 200):
        sig = r.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x00"
        try:
            PublicKey.from_signature_and_message(sig, digest, hasher=None)
        except ValueError:
            break
    else:  # pragma: no cover
        pytest.fail("no unrecoverable r found")
    with pytest.raises(SignatureVerificationError) as info:
        recover_env_encrypt_pubkey_signer(vec.public_key, sig, vec.app_id)
    assert info.value.reason == "unrecoverable"


# --------------------------------------------------------------------------- verify


def trusted_forms(vec: Vector) -> list[str | bytes]:
    compressed = vec.compressed.hex()
    uncompressed = vec.uncompressed.hex()
    address = eth_address(vec.signer).hex()
    return [
        compressed,
        "0x" + compressed,
        compressed.upper(),
        "0X" + compressed.upper(),
        uncompressed,
        "0x" + uncompressed.upper(),
        uncompressed[2:],  # bare x || y
        "0x" + uncompressed[2:],
        address,
        "0x" + address,
        "0x" + address.upper(),
        vec.compressed,
        vec.uncompressed,
        vec.uncompressed[1:],
        eth_address(vec.signer),
    ]


def test_verify_accepts_every_trusted_signer_form(vec: Vector) -> None:
    for form in trusted_forms(vec):
        verify_legacy(vec, trusted_signer=form)
        verify_stamped(vec, trusted_signer=form)
        for offset in (0, 27):
            verify_env_encrypt_public_key(
                vec.public_key,
                with_v(vec.legacy, vec.legacy[64] + offset),
                vec.app_id,
                trusted_signer=form,
            )


def test_verify_accepts_a_bytearray_trusted_signer(vec: Vector) -> None:
    verify_legacy(vec, trusted_signer=bytearray(vec.compressed))


def test_verify_other_signer_is_a_mismatch_in_every_form(vec: Vector) -> None:
    other = Vector()
    for form in trusted_forms(other):
        with pytest.raises(SignatureVerificationError) as info:
            verify_legacy(vec, trusted_signer=form)
        assert info.value.reason == "signer_mismatch"
        assert vars(info.value)["signer"] == vec.signer_hex
        with pytest.raises(SignatureVerificationError) as info:
            verify_stamped(vec, trusted_signer=form)
        assert info.value.reason == "signer_mismatch"


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x80
    return bytes(out)


@pytest.mark.parametrize("index", [0, 13, 31])
def test_verify_tampered_public_key_fails(vec: Vector, index: int) -> None:
    with pytest.raises(SignatureVerificationError):
        verify_env_encrypt_public_key(
            _flip(vec.public_key, index), vec.legacy, vec.app_id, trusted_signer=vec.signer_hex
        )
    with pytest.raises(SignatureVerificationError):
        verify_env_encrypt_public_key(
            _flip(vec.public_key, index),
            vec.stamped,
            vec.app_id,
            trusted_signer=vec.signer_hex,
            timestamp=T0,
            now=T0,
        )


@pytest.mark.parametrize("index", [0, 19])
def test_verify_tampered_app_id_fails(vec: Vector, index: int) -> None:
    with pytest.raises(SignatureVerificationError):
        verify_env_encrypt_public_key(
            vec.public_key, vec.legacy, _flip(vec.app_id, index), trusted_signer=vec.signer_hex
        )


@pytest.mark.parametrize("delta", [-1, 1, 2**32])
def test_verify_tampered_timestamp_fails(vec: Vector, delta: int) -> None:
    with pytest.raises(SignatureVerificationError) as info:
        verify_stamped(vec, timestamp=T0 + delta, now=T0 + delta)
    assert info.value.reason in ("signer_mismatch", "unrecoverable")


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_verify_tampered_signature_fails(vec: Vector, index: int) -> None:
    with pytest.raises(SignatureVerificationError):
        verify_env_encrypt_public_key(
            vec.public_key, _flip(vec.legacy, index), vec.app_id, trusted_signer=vec.signer_hex
        )


def test_verify_string_app_id_forms(vec: Vector) -> None:
    for app in (vec.app_id.hex(), "0x" + vec.app_id.hex().upper()):
        verify_env_encrypt_public_key(
            vec.public_key.hex(), vec.legacy.hex(), app, trusted_signer=vec.signer_hex
        )


# --------------------------------------------------------------------------- freshness


@pytest.mark.parametrize(
    ("age", "ok"),
    [(0, True), (299, True), (300, True), (300.5, False), (301, False), (10**9, False)],
)
def test_max_age_boundary(vec: Vector, age: float, ok: bool) -> None:
    if ok:
        verify_stamped(vec, now=T0 + age)
    else:
        with pytest.raises(SignatureVerificationError) as info:
            verify_stamped(vec, now=T0 + age)
        assert info.value.reason == "stale_timestamp"


@pytest.mark.parametrize(
    ("ahead", "ok"), [(1, True), (59, True), (60, True), (60.5, False), (61, False)]
)
def test_future_skew_boundary(vec: Vector, ahead: float, ok: bool) -> None:
    if ok:
        verify_stamped(vec, now=T0 - ahead)
    else:
        with pytest.raises(SignatureVerificationError) as info:
            verify_stamped(vec, now=T0 - ahead)
        assert info.value.reason == "future_timestamp"


def test_custom_max_age_and_future_skew(vec: Vector) -> None:
    verify_stamped(vec, now=T0 + 10, max_age=10)
    with pytest.raises(SignatureVerificationError, match="old"):
        verify_stamped(vec, now=T0 + 11, max_age=10)
    verify_stamped(vec, now=T0 - 5, future_skew=5)
    with pytest.raises(SignatureVerificationError, match="future"):
        verify_stamped(vec, now=T0 - 6, future_skew=5)
    verify_stamped(vec, now=T0 + 10**6, max_age=math.inf)
    verify_stamped(vec, now=T0, max_age=0, future_skew=0)
    with pytest.raises(SignatureVerificationError):
        verify_stamped(vec, now=T0 - 1, future_skew=0)


def test_freshness_defaults_to_the_real_clock() -> None:
    vec = Vector()
    stamp = int(time.time())
    signature = sign(vec.signer, spec_message(vec.app_id, vec.public_key, stamp))
    verify_env_encrypt_public_key(
        vec.public_key, signature, vec.app_id, trusted_signer=vec.signer_hex, timestamp=stamp
    )
    old = stamp - 3600
    signature = sign(vec.signer, spec_message(vec.app_id, vec.public_key, old))
    with pytest.raises(SignatureVerificationError) as info:
        verify_env_encrypt_public_key(
            vec.public_key, signature, vec.app_id, trusted_signer=vec.signer_hex, timestamp=old
        )
    assert info.value.reason == "stale_timestamp"


def test_legacy_form_has_no_freshness(vec: Vector) -> None:
    # A legacy signature verifies whatever the clock says: it can be replayed.
    verify_legacy(vec, now=T0 + 10**9, max_age=0)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("max_age", math.nan),
        ("max_age", -1),
        ("max_age", "300"),
        ("max_age", None),
        ("future_skew", math.nan),
        ("future_skew", -0.5),
        ("future_skew", None),
        ("now", math.nan),
        ("now", math.inf),
        ("now", -math.inf),
        ("now", "now"),
        ("now", True),
    ],
)
def test_bad_freshness_settings_fail_closed(vec: Vector, argument: str, value: Any) -> None:
    with pytest.raises(SignatureVerificationError) as info:
        verify_stamped(vec, **{argument: value})
    assert info.value.reason == "invalid_argument"
    assert vars(info.value)["argument"] == argument


# --------------------------------------------------------------------------- fail closed


def test_trusted_signer_is_required(vec: Vector) -> None:
    with pytest.raises(TypeError):
        verify_env_encrypt_public_key(vec.public_key, vec.legacy, vec.app_id)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "0x",
        None,
        b"",
        "garbage",
        "0x" + "00" * 33,  # right length, not a point
        "02" + "00" * 32,  # x = 0 is not on the curve
        "02" + "ff" * 32,  # x >= p
        "04" + "00" * 64,
        "06" + "11" * 64,  # hybrid encoding is refused
        "05" + "11" * 32,
        "00" * 19,
        "00" * 21,
        "00" * 32,
        "zz" * 33,
        " 02" + "11" * 32,
        0,
        1,
        ["02" + "11" * 32],
        object(),
    ],
)
def test_unusable_trusted_signer_fails_closed(vec: Vector, garbage: Any) -> None:
    for verify in (verify_legacy, verify_stamped):
        with pytest.raises(SignatureVerificationError) as info:
            verify(vec, trusted_signer=garbage)
        assert info.value.reason == "invalid_trusted_signer"


def test_zero_address_trusted_signer_does_not_match(vec: Vector) -> None:
    with pytest.raises(SignatureVerificationError) as info:
        verify_legacy(vec, trusted_signer="0x" + "00" * 20)
    assert info.value.reason == "signer_mismatch"


def test_signature_errors_are_phala_kms_errors_and_pickle(vec: Vector) -> None:
    import pickle

    from phala_kms.errors import PhalaKMSError

    with pytest.raises(SignatureVerificationError) as info:
        verify_legacy(vec, trusted_signer=Vector().signer_hex)
    assert isinstance(info.value, PhalaKMSError)
    clone = pickle.loads(pickle.dumps(info.value))
    assert clone.reason == "signer_mismatch"
    assert vars(clone)["signer"] == vec.signer_hex


# --------------------------------------------------------------------------- dstack oracle


def test_differential_against_dstack_sdk() -> None:
    for _ in range(40):
        vec = Vector()
        stamp = int(time.time())
        stamped = sign(vec.signer, spec_message(vec.app_id, vec.public_key, stamp))
        app_hex = "0x" + vec.app_id.hex()

        theirs = dstack_verify(vec.public_key, stamped, app_hex, stamp)
        ours = recover_env_encrypt_pubkey_signer(vec.public_key, stamped, app_hex, timestamp=stamp)
        assert theirs == ours == vec.signer_hex
        verify_env_encrypt_public_key(
            vec.public_key, stamped, app_hex, trusted_signer=theirs, timestamp=stamp
        )

        with pytest.warns(DeprecationWarning, match="deprecated"):
            theirs_legacy = dstack_verify_legacy(vec.public_key, vec.legacy, app_hex)
        assert theirs_legacy == recover_env_encrypt_pubkey_signer(
            vec.public_key, vec.legacy, app_hex
        )
        assert theirs_legacy == vec.signer_hex


def test_differential_against_dstack_sdk_on_random_signatures() -> None:
    # Random low-s (r, s, v): both recover the same key, or both fail.
    agreed = 0
    for _ in range(60):
        public_key, app_id = os.urandom(32), os.urandom(20)
        r = int.from_bytes(os.urandom(32), "big") % N or 1
        s = int.from_bytes(os.urandom(32), "big") % (N // 2) or 1
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((os.urandom(1)[0] & 1,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = dstack_verify_legacy(public_key, sig, app_id.hex())
        try:
            ours: str | None = recover_env_encrypt_pubkey_signer(public_key, sig, app_id)
        except SignatureVerificationError:
            ours = None
        assert ours == theirs
        agreed += ours is not None
    assert agreed > 0


# --------------------------------------------------------------------------- keccak


def test_keccak256_known_answer_for_empty_input() -> None:
    expected = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() == expected
    assert keccak256(b"") != hashlib.sha3_256(b"").digest()


def test_keccak256_known_answer_for_abc() -> None:
    # Keccak-256("abc"), the original (pre-NIST) padding.
    expected = "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    assert keccak256(b"abc").hex() == expected


MESSAGE_APP_ID = "0123456789abcdef0123456789abcdef01234567"


def test_env_encrypt_pubkey_message_matches_the_spec() -> None:
    key = bytes(range(32))
    app = bytes.fromhex(MESSAGE_APP_ID)
    legacy = b"dstack-env-encrypt-pubkey" + b":" + app + key
    stamped = b"dstack-env-encrypt-pubkey" + b":" + app + bytes.fromhex("0000000067890abc") + key
    assert env_encrypt_pubkey_message(key.hex(), "0x" + MESSAGE_APP_ID) == legacy
    assert env_encrypt_pubkey_message(key, app, 0x67890ABC) == stamped
    assert len(legacy) == 78
    assert len(stamped) == 86


@pytest.mark.parametrize("timestamp", [-1, 2**64, True, 1.0, "1700000000"])
def test_env_encrypt_pubkey_message_rejects_bad_timestamps(timestamp: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        env_encrypt_pubkey_message(bytes(32), MESSAGE_APP_ID, timestamp)
    assert info.value.argument == "timestamp"


def test_env_encrypt_pubkey_message_accepts_u64_bounds() -> None:
    assert env_encrypt_pubkey_message(bytes(32), MESSAGE_APP_ID, 0)[46:54] == bytes(8)
    assert env_encrypt_pubkey_message(bytes(32), MESSAGE_APP_ID, 2**64 - 1)[46:54] == b"\xff" * 8


# The secp256k1 key with private scalar 1 is the generator; its Ethereum address is
# well known.
GENERATOR_COMPRESSED = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
GENERATOR_XY = (
    "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
)
GENERATOR_ADDRESS = "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"


@pytest.mark.parametrize(
    "form",
    [
        GENERATOR_COMPRESSED,
        "0x" + GENERATOR_COMPRESSED.upper(),
        "04" + GENERATOR_XY,
        GENERATOR_XY,
        bytes.fromhex("04" + GENERATOR_XY),
        bytes.fromhex(GENERATOR_COMPRESSED),
    ],
)
def test_ethereum_address_known_answer(form: str | bytes) -> None:
    assert ethereum_address(form) == GENERATOR_ADDRESS


def test_ethereum_address_matches_pycryptodome_keccak() -> None:
    xy = bytes.fromhex(GENERATOR_XY)
    digest = keccak.new(digest_bits=256, data=xy).digest()
    assert ethereum_address(GENERATOR_COMPRESSED) == "0x" + digest[12:].hex()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "02" + "00" * 32,  # x = 0 is not on the curve
        "05" + GENERATOR_COMPRESSED[2:],
        "04" + GENERATOR_COMPRESSED[2:],
        "02" + GENERATOR_XY,  # 65 bytes with a compressed prefix
        GENERATOR_ADDRESS,
        None,
    ],
)
def test_ethereum_address_rejects(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ethereum_address(bad)
    assert info.value.argument == "public_key"


# --------------------------------------------------------------------------- fetched keys


def fetched(vec: Vector, *, stamped: bool) -> AppEnvEncryptPubKey:
    """The key as ``GET /kms/{kms}/pubkey/{app_id}`` would return it."""
    return AppEnvEncryptPubKey(
        public_key=vec.public_key.hex(),
        signature=vec.legacy.hex(),
        timestamp=vec.timestamp if stamped else None,
        signature_v1=vec.stamped.hex() if stamped else None,
    )


def test_verify_app_env_encrypt_pubkey_checks_the_legacy_signature(vec: Vector) -> None:
    key = fetched(vec, stamped=False)
    verify_app_env_encrypt_pubkey(key, vec.app_id.hex(), trusted_signer=vec.signer_hex)
    verify_app_env_encrypt_pubkey(key, vec.app_id, trusted_signer=vec.signer_hex, now=T0 + 10**9)
    with pytest.raises(SignatureVerificationError) as caught:
        verify_app_env_encrypt_pubkey(key, vec.app_id, trusted_signer=Vector().signer_hex)
    assert caught.value.reason == "signer_mismatch"
    with pytest.raises(SignatureVerificationError):
        verify_app_env_encrypt_pubkey(key, os.urandom(20), trusted_signer=vec.signer_hex)


def test_verify_app_env_encrypt_pubkey_prefers_the_timestamped_signature(vec: Vector) -> None:
    key = fetched(vec, stamped=True)
    verify_app_env_encrypt_pubkey(key, vec.app_id, trusted_signer=vec.signer_hex, now=T0 + 300)
    with pytest.raises(SignatureVerificationError) as caught:
        verify_app_env_encrypt_pubkey(key, vec.app_id, trusted_signer=vec.signer_hex, now=T0 + 301)
    assert caught.value.reason == "stale_timestamp"
    verify_app_env_encrypt_pubkey(
        key, vec.app_id, trusted_signer=vec.signer_hex, max_age=10**6, now=T0 + 301
    )
    # A timestamped signature that does not verify is not rescued by the legacy one.
    broken = AppEnvEncryptPubKey(
        public_key=key.public_key,
        signature=key.signature,
        timestamp=key.timestamp,
        signature_v1=vec.legacy.hex(),
    )
    with pytest.raises(SignatureVerificationError):
        verify_app_env_encrypt_pubkey(broken, vec.app_id, trusted_signer=vec.signer_hex, now=T0)


def test_verify_app_env_encrypt_pubkey_uses_the_real_clock_by_default() -> None:
    vec = Vector()
    stamp = int(time.time())
    key = AppEnvEncryptPubKey(
        public_key=vec.public_key.hex(),
        signature=vec.legacy.hex(),
        timestamp=stamp,
        signature_v1=sign(vec.signer, spec_message(vec.app_id, vec.public_key, stamp)).hex(),
    )
    verify_app_env_encrypt_pubkey(key, vec.app_id, trusted_signer=vec.signer_hex)


@pytest.mark.parametrize("garbage", ["", "0x1234", None, "not hex"])
def test_verify_app_env_encrypt_pubkey_fails_closed(vec: Vector, garbage: Any) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        verify_app_env_encrypt_pubkey(
            fetched(vec, stamped=False), vec.app_id, trusted_signer=garbage
        )
    assert caught.value.reason == "invalid_trusted_signer"


def test_a_trusted_signer_object_is_accepted(vec: Vector) -> None:
    signer = TrustedSigner(k256_pubkey=vec.signer_hex, sources=("pinned",))
    verify_legacy(vec, trusted_signer=signer)
    verify_stamped(vec, trusted_signer=signer)
    verify_app_env_encrypt_pubkey(fetched(vec, stamped=False), vec.app_id, trusted_signer=signer)
    other = TrustedSigner(k256_pubkey=Vector().signer_hex, sources=("pinned",))
    with pytest.raises(SignatureVerificationError) as caught:
        verify_legacy(vec, trusted_signer=other)
    assert caught.value.reason == "signer_mismatch"
    unusable = TrustedSigner(k256_pubkey="0x1234", sources=("pinned",))
    with pytest.raises(SignatureVerificationError) as caught:
        verify_legacy(vec, trusted_signer=unusable)
    assert caught.value.reason == "invalid_trusted_signer"


# --------------------------------------------------------------------------- properties

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
