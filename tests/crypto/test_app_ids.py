"""App ids and hex: the one strict hex parser (``phala_kms._hex``) and the app-id
helpers built on it accept exactly 20 bytes (40 hex digits, optional ``0x``, either case,
or raw bytes) and reject everything else with ``InvalidArgumentError``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms._hex import canonical_hex, parse_hex
from phala_kms.crypto import app_id_to_bytes, normalize_app_id
from phala_kms.errors import InvalidArgumentError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


APP_ID = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("form", [APP_ID, APP_ID.upper(), "0x" + APP_ID, "0X" + APP_ID.upper()])
def test_normalize_app_id(form: str) -> None:
    assert normalize_app_id(form) == APP_ID
    assert app_id_to_bytes(form) == bytes.fromhex(APP_ID)


def test_app_id_to_bytes_accepts_raw_bytes() -> None:
    assert app_id_to_bytes(bytes.fromhex(APP_ID)) == bytes.fromhex(APP_ID)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0x",
        APP_ID[:-1],
        APP_ID + "0",
        APP_ID[:-2] + "zz",
        APP_ID[:-2] + " 7",
        "0x0x" + APP_ID[4:],
        " " + APP_ID,
        APP_ID + "\n",
        None,
        42,
        bytes.fromhex(APP_ID),  # normalize_app_id takes str only
    ],
)
def test_normalize_app_id_rejects(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        normalize_app_id(bad)
    assert info.value.argument == "app_id"
    assert isinstance(info.value, ValueError)


@FAST
@given(app=st.one_of(st.text(max_size=44), st.binary(max_size=22), st.none(), st.integers()))
def test_normalize_app_id_raises_only_invalid_argument(app: Any) -> None:
    try:
        got = normalize_app_id(app)
    except InvalidArgumentError:
        return
    assert len(got) == 40
    assert bytes.fromhex(got)


# --------------------------------------------------------------------------- hex


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("abCD", None, b"\xab\xcd"),
        ("0xabcd", 2, b"\xab\xcd"),
        ("0XABCD", 2, b"\xab\xcd"),
        ("", None, b""),
        ("0x", None, b""),
        (b"\x01\x02", 2, b"\x01\x02"),
        (bytearray(b"\x01\x02"), None, b"\x01\x02"),
        (memoryview(b"\x01\x02"), 2, b"\x01\x02"),
    ],
)
def test_parse_hex_accepts_bytes_and_hex_text(
    value: Any, size: int | None, expected: bytes
) -> None:
    got = parse_hex(value, size)
    assert got == expected and type(got) is bytes


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("abc", None),  # odd length
        ("ab cd", None),  # whitespace that bytes.fromhex would skip
        (" abcd", None),
        ("abcd\n", None),
        ("+abc", None),
        ("ab_cd", None),
        ("0x0xab", None),
        ("\u0660\u0660", None),  # non-ASCII digits
        ("abcd", 3),  # wrong size
        (b"\x01", 2),
        (None, None),
        (12, None),
        (["ab"], None),
    ],
)
def test_parse_hex_rejects_everything_else_without_raising(value: Any, size: int | None) -> None:
    assert parse_hex(value, size) is None


def test_canonical_hex_is_lowercase_without_prefix() -> None:
    assert canonical_hex("0XAbCd") == "abcd"
    assert canonical_hex("abcd", 2) == "abcd"
    assert canonical_hex("abcd", 3) is None
    assert canonical_hex(b"ab") is None  # text only
    assert canonical_hex("zz") is None


@FAST
@given(raw=st.binary(max_size=40), prefix=st.sampled_from(["", "0x", "0X"]), upper=st.booleans())
def test_parse_hex_round_trips_any_bytes(raw: bytes, prefix: str, upper: bool) -> None:
    text = raw.hex().upper() if upper else raw.hex()
    assert parse_hex(prefix + text, len(raw)) == raw
    assert parse_hex(prefix + text) == raw
    assert canonical_hex(prefix + text) == raw.hex()
    assert parse_hex(raw, len(raw)) == raw
