"""Env-var encryption (api-spec 4.1) and the test decryptor.

Expected values come from the spec or from independent implementations (the
``cryptography`` primitives used directly, ``dstack_sdk``), never from phala_kms's own
output. Properties: any input either encrypts to a well-formed payload or raises
``InvalidArgumentError``, and any valid env round-trips.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from dstack_sdk.encrypt_env_vars import EnvVar as DstackEnvVar
from dstack_sdk.encrypt_env_vars import encrypt_env_vars as dstack_encrypt_async
from dstack_sdk.encrypt_env_vars import encrypt_env_vars_sync as dstack_encrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms import _encryption
from phala_kms.crypto import EnvVar, encrypt_env_vars
from phala_kms.errors import InvalidArgumentError
from phala_kms.testing._decrypt import decrypt_env_vars

SECRET = "s3cr3t-VALUE-do-not-leak"

NASTY_VALUES = {
    "TRAILING_BACKSLASH": "ends with a backslash\\",
    "QUOTES": "say \"hi\" and 'bye'",
    "NEWLINES": "line1\nline2\r\nline3\n",
    "EQUALS": "a=b=c==",
    "EMPTY": "",
    "UNICODE": "ünïcødé 🔑",
    "CONTROL": "tab\tnul\x00bell\x07",
    "JSON_LOOKALIKE": '{"env":[{"key":"X","value":"Y"}]}',
}


def independent_decrypt(payload_hex: str, private_key: X25519PrivateKey) -> bytes:
    """Open a payload straight from the spec, with no phala_kms code."""
    blob = bytes.fromhex(payload_hex)
    ephemeral = X25519PublicKey.from_public_bytes(blob[:32])
    aes_key = private_key.exchange(ephemeral)  # no KDF: the shared secret is the key
    return AESGCM(aes_key).decrypt(blob[32:44], blob[44:], None)


def compact_json(pairs: list[tuple[str, str]]) -> bytes:
    document = {"env": [{"key": k, "value": v} for k, v in pairs]}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.fixture
def recipient() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def recipient_pub(recipient: X25519PrivateKey) -> bytes:
    return recipient.public_key().public_bytes_raw()


def exception_text(exc: BaseException) -> str:
    """Everything an exception could show: str, repr, args, attributes, and its chain."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args), repr(vars(current))]
        if isinstance(current, UnicodeError):
            parts.append(repr(getattr(current, "object", "")))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# --------------------------------------------------------------------------- round trips


def test_round_trip_nasty_values_in_order(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    pairs = list(NASTY_VALUES.items())
    payload = encrypt_env_vars(dict(pairs), recipient_pub)

    assert decrypt_env_vars(payload, recipient) == [EnvVar(k, v) for k, v in pairs]
    plaintext = independent_decrypt(payload, recipient)
    assert plaintext == compact_json(pairs)
    assert len(payload) == 2 * (60 + len(compact_json(pairs)))


def test_plaintext_is_compact_utf8_json_written_by_hand(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    payload = encrypt_env_vars([EnvVar("FOO", 'a"b\\c\nü')], recipient_pub)
    # Hand-written from api-spec 4.1: compact separators, non-ASCII as raw UTF-8.
    expected = b'{"env":[{"key":"FOO","value":"a\\"b\\\\c\\n\xc3\xbc"}]}'
    assert independent_decrypt(payload, recipient) == expected


def test_output_is_lowercase_hex_of_expected_layout(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    payload = encrypt_env_vars({"A": "1"}, recipient_pub)
    assert re.fullmatch(r"[0-9a-f]+", payload)
    blob = bytes.fromhex(payload)
    plaintext = b'{"env":[{"key":"A","value":"1"}]}'
    assert len(blob) == 32 + 12 + len(plaintext) + 16
    # The first 32 bytes are an X25519 public key whose shared secret opens the rest.
    shared = recipient.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
    assert AESGCM(shared).decrypt(blob[32:44], blob[44:], None) == plaintext


def test_order_of_a_sequence_is_kept(recipient: X25519PrivateKey, recipient_pub: bytes) -> None:
    env = [EnvVar("ZED", "1"), EnvVar("ALPHA", "2"), EnvVar("MID", "3")]
    assert decrypt_env_vars(encrypt_env_vars(env, recipient_pub), recipient) == env


@pytest.mark.parametrize("empty", [{}, [], ()])
def test_empty_env_is_valid(recipient: X25519PrivateKey, recipient_pub: bytes, empty: Any) -> None:
    payload = encrypt_env_vars(empty, recipient_pub, allow_empty=True)  # refused without it
    assert independent_decrypt(payload, recipient) == b'{"env":[]}'
    assert len(payload) == 2 * (60 + len(b'{"env":[]}'))


def test_pairs_generators_and_dstack_env_vars_are_accepted(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    expected = [EnvVar("A", "1"), EnvVar("B", "2")]

    def gen() -> Iterator[tuple[str, str]]:
        yield ("A", "1")
        yield ("B", "2")

    for env in ([("A", "1"), ("B", "2")], gen(), [DstackEnvVar("A", "1"), DstackEnvVar("B", "2")]):
        assert decrypt_env_vars(encrypt_env_vars(env, recipient_pub), recipient) == expected


def test_each_call_uses_a_fresh_ephemeral_key_and_iv(recipient_pub: bytes) -> None:
    payloads = {encrypt_env_vars({"A": "1"}, recipient_pub) for _ in range(20)}
    assert len(payloads) == 20
    assert len({p[:64] for p in payloads}) == 20  # ephemeral keys
    assert len({p[64:88] for p in payloads}) == 20  # IVs


def test_public_key_forms(recipient: X25519PrivateKey, recipient_pub: bytes) -> None:
    hex_key = recipient_pub.hex()
    for form in (
        recipient_pub,
        bytearray(recipient_pub),
        memoryview(recipient_pub),
        hex_key,
        hex_key.upper(),
        "0x" + hex_key,
        "0X" + hex_key.upper(),
    ):
        payload = encrypt_env_vars({"K": "v"}, form)  # type: ignore[arg-type]
        assert decrypt_env_vars(payload, recipient) == [EnvVar("K", "v")]


async def test_callable_from_async_code(recipient: X25519PrivateKey, recipient_pub: bytes) -> None:
    payload = encrypt_env_vars({"A": "b"}, recipient_pub)
    assert decrypt_env_vars(payload, recipient) == [EnvVar("A", "b")]


# --------------------------------------------------------------------------- dstack cross-check


def test_dstack_output_decrypts_with_ours(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    env = [DstackEnvVar(k, v) for k, v in NASTY_VALUES.items()]
    payload = dstack_encrypt(env, recipient_pub.hex())
    assert decrypt_env_vars(payload, recipient) == [EnvVar(k, v) for k, v in NASTY_VALUES.items()]


async def test_dstack_async_output_decrypts_with_ours(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    payload = await dstack_encrypt_async([DstackEnvVar("A", "ü")], "0x" + recipient_pub.hex())
    assert decrypt_env_vars(payload, recipient) == [EnvVar("A", "ü")]


def test_ours_decrypts_like_dstack_output(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    # The TEE parses JSON: ours and dstack's must carry the same document.
    env = list(NASTY_VALUES.items())
    ours = independent_decrypt(encrypt_env_vars(env, recipient_pub), recipient)
    theirs = independent_decrypt(
        dstack_encrypt([DstackEnvVar(k, v) for k, v in env], recipient_pub.hex()), recipient
    )
    assert json.loads(ours) == json.loads(theirs)


# --------------------------------------------------------------------------- rejection


LOW_ORDER_POINTS = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",  # p - 1
    "ed" + "ff" * 30 + "7f",  # p
    "ee" + "ff" * 30 + "7f",  # p + 1
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_public_keys_are_rejected(point: str) -> None:
    with pytest.raises(InvalidArgumentError, match="low-order") as info:
        encrypt_env_vars({"A": SECRET}, point)
    assert info.value.argument == "public_key"
    assert SECRET not in exception_text(info.value)


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "0x",
        "ab" * 31,
        "ab" * 33,
        "a" * 63,
        "g" * 64,
        "ab" * 31 + " a",  # whitespace that bytes.fromhex would skip
        " " + "ab" * 32,
        "ab" * 31 + "\nab",
        "0xx" + "ab" * 32,
        "\u0660" * 64,  # Arabic-Indic zeros: not ASCII hex
        b"\x01" * 31,
        b"\x01" * 33,
        None,
        12345,
        ["ab"] * 32,
    ],
)
def test_malformed_public_keys_are_rejected(bad_key: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        encrypt_env_vars({"A": SECRET}, bad_key)
    assert info.value.argument == "public_key"


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "A=B", "É", "A\n", "\nA", "A.B", "0"])
def test_invalid_names_are_rejected(recipient_pub: bytes, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        encrypt_env_vars({"OK": "x", name: SECRET}, recipient_pub)
    assert info.value.argument == "env_vars"
    assert SECRET not in exception_text(info.value)


@pytest.mark.parametrize("name", ["A", "_", "_1", "abc_DEF_123", "a" * 255])  # 255: TEE max
def test_valid_names_are_accepted(
    recipient: X25519PrivateKey, recipient_pub: bytes, name: str
) -> None:
    assert decrypt_env_vars(encrypt_env_vars({name: "v"}, recipient_pub), recipient) == [
        EnvVar(name, "v")
    ]


@pytest.mark.parametrize(
    "env",
    [
        {1: SECRET},
        {b"A": SECRET},
        {"A": 1},
        {"A": b"bytes"},
        {"A": None},
        [EnvVar("A", 1)],  # type: ignore[arg-type]
        [EnvVar(1, SECRET)],  # type: ignore[arg-type]
        [("A", SECRET, "extra")],
        [("A",)],
        ["A=" + SECRET],
        [{"key": "A", "value": SECRET}],
        "A=" + SECRET,
        b"A=1",
        None,
        12,
    ],
)
def test_non_str_or_badly_shaped_env_is_rejected(recipient_pub: bytes, env: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        encrypt_env_vars(env, recipient_pub)
    assert info.value.argument == "env_vars"
    assert SECRET not in exception_text(info.value)


def test_duplicate_names_are_rejected(recipient_pub: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match="'DUP'") as info:
        encrypt_env_vars(
            [EnvVar("DUP", SECRET), EnvVar("X", "1"), EnvVar("DUP", "2")], recipient_pub
        )
    assert vars(info.value)["key"] == "DUP"
    assert SECRET not in exception_text(info.value)


def test_names_are_case_sensitive(recipient: X25519PrivateKey, recipient_pub: bytes) -> None:
    env = [EnvVar("foo", "1"), EnvVar("FOO", "2")]
    assert decrypt_env_vars(encrypt_env_vars(env, recipient_pub), recipient) == env


def test_lone_surrogate_value_is_rejected_without_leaking(recipient_pub: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        encrypt_env_vars({"OK": "fine", "BAD": SECRET + "\ud800"}, recipient_pub)
    assert vars(info.value)["key"] == "BAD"
    assert SECRET not in exception_text(info.value)


class _NoWork:
    @staticmethod
    def generate() -> None:
        raise AssertionError("key generation ran before validation finished")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"A": 1}, "ab" * 32),
        ({"A": "1"}, "ab" * 31),
        ({"1A": "1"}, "ab" * 32),
        ([EnvVar("A", "1"), EnvVar("A", "2")], "ab" * 32),
    ],
)
def test_validation_happens_before_any_work(
    monkeypatch: pytest.MonkeyPatch, env: Any, key: str
) -> None:
    monkeypatch.setattr(_encryption, "X25519PrivateKey", _NoWork)
    with pytest.raises(InvalidArgumentError):
        encrypt_env_vars(env, key)


# --------------------------------------------------------------------------- EnvVar


def test_env_var_repr_hides_the_value() -> None:
    var = EnvVar("FOO", SECRET)
    assert repr(var) == "EnvVar(key='FOO', value=<redacted>)"
    assert SECRET not in str(var)
    assert SECRET not in repr([var, EnvVar(key="BAR", value=SECRET)])
    assert SECRET not in f"{var}"


def test_env_var_is_frozen_comparable_and_picklable() -> None:
    var = EnvVar("FOO", "bar")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        var.value = "baz"  # type: ignore[misc]
    assert var == EnvVar(key="FOO", value="bar")
    assert var != EnvVar("FOO", "baz")
    assert pickle.loads(pickle.dumps(var)) == var
    assert hash(var) == hash(EnvVar("FOO", "bar"))


# --------------------------------------------------------------------------- decryptor


def test_decrypt_accepts_key_forms(recipient: X25519PrivateKey, recipient_pub: bytes) -> None:
    payload = encrypt_env_vars({"A": "1"}, recipient_pub)
    raw = recipient.private_bytes_raw()
    for key in (recipient, raw, raw.hex(), "0x" + raw.hex().upper()):
        assert decrypt_env_vars(payload, key) == [EnvVar("A", "1")]
    assert decrypt_env_vars(bytes.fromhex(payload), raw) == [EnvVar("A", "1")]
    assert decrypt_env_vars("0x" + payload.upper(), raw) == [EnvVar("A", "1")]


def test_decrypt_with_the_wrong_key_fails(recipient_pub: bytes) -> None:
    payload = encrypt_env_vars({"A": SECRET}, recipient_pub)
    wrong = X25519PrivateKey.generate()
    with pytest.raises(InvalidArgumentError, match="authentication") as info:
        decrypt_env_vars(payload, wrong)
    text = exception_text(info.value)
    assert SECRET not in text
    assert wrong.private_bytes_raw().hex() not in text.lower()


@pytest.mark.parametrize("offset", [0, 31, 32, 43, 44, -17, -16, -1])
def test_decrypt_detects_tampering_anywhere(
    recipient: X25519PrivateKey, recipient_pub: bytes, offset: int
) -> None:
    blob = bytearray.fromhex(encrypt_env_vars({"A": SECRET}, recipient_pub))
    blob[offset] ^= 0x01
    with pytest.raises(InvalidArgumentError) as info:
        decrypt_env_vars(bytes(blob), recipient)
    assert info.value.argument == "ciphertext"


@pytest.mark.parametrize("payload", ["", "00" * 59, "zz" * 80, "0x", b"\x00" * 59, None, 5])
def test_decrypt_rejects_malformed_ciphertext(recipient: X25519PrivateKey, payload: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        decrypt_env_vars(payload, recipient)
    assert info.value.argument == "ciphertext"


@pytest.mark.parametrize("key", ["", "ab" * 31, "zz" * 32, b"\x01" * 33, None])
def test_decrypt_rejects_malformed_private_keys(recipient_pub: bytes, key: Any) -> None:
    payload = encrypt_env_vars({"A": "1"}, recipient_pub)
    with pytest.raises(InvalidArgumentError) as info:
        decrypt_env_vars(payload, key)
    assert info.value.argument == "private_key"


def _seal(recipient_pub: bytes, plaintext: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_pub))
    iv = b"\x07" * 12
    sealed = AESGCM(shared).encrypt(iv, plaintext, None)
    return ephemeral.public_key().public_bytes_raw() + iv + sealed


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json " + SECRET.encode(),
        b"\xff\xfe" + SECRET.encode(),
        b'{"env":"' + SECRET.encode() + b'"}',
        b'{"other":[]}',
        b"[]",
        b'{"env":[1]}',
        b'{"env":[{"key":"A"}]}',
        b'{"env":[{"key":"A","value":7}]}',
    ],
)
def test_decrypt_rejects_unexpected_plaintext_without_leaking(
    recipient: X25519PrivateKey, recipient_pub: bytes, plaintext: bytes
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        decrypt_env_vars(_seal(recipient_pub, plaintext), recipient)
    assert SECRET not in exception_text(info.value)


def test_decrypt_accepts_any_json_formatting(
    recipient: X25519PrivateKey, recipient_pub: bytes
) -> None:
    plaintext = b'{ "env" : [ { "value" : "\\u00fc", "key" : "A" } ] }'
    assert decrypt_env_vars(_seal(recipient_pub, plaintext), recipient) == [EnvVar("A", "ü")]


# --------------------------------------------------------------------------- properties

RECIPIENT = X25519PrivateKey.generate()
RECIPIENT_PUB = RECIPIENT.public_key().public_bytes_raw()
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
env_value = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@FAST
@given(env=st.dictionaries(env_name, env_value, max_size=12))
def test_round_trip_for_any_valid_env(env: dict[str, str]) -> None:
    payload = encrypt_env_vars(env, RECIPIENT_PUB, allow_empty=True)
    assert decrypt_env_vars(payload, RECIPIENT) == [EnvVar(k, v) for k, v in env.items()]
    # And with a decryption written from the spec alone:
    blob = bytes.fromhex(payload)
    shared = RECIPIENT.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
    plaintext = AESGCM(shared).decrypt(blob[32:44], blob[44:], None)
    assert len(blob) == 60 + len(plaintext)
