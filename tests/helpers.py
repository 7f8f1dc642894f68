"""Plain data shared by test modules at import time, where fixtures cannot reach.

Parametrize lists and hypothesis strategies are built when a module is imported, so
the response bodies they hold, the API key they mention and the argument strategies
shared by several behaviours come from here; everything that can be a fixture lives in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "API_KEY",
    "FIXTURES",
    "MOCK_BASE",
    "NASTY",
    "app_id_texts",
    "argument_texts",
    "fixture_bytes",
    "load_fixture",
]

FIXTURES = Path(__file__).parent / "fixtures"
"""Response bodies copied from the shared API fixtures."""

API_KEY = "phak_test_SECRET_do_not_leak_7f3a9c"
"""The API key tests use against non-fake servers; tests assert it never shows up in output."""

MOCK_BASE = "https://kms.test/api/v1"
"""The base URL of the aioresponses-backed ``mock_client`` fixture."""


def load_fixture(name: str) -> Any:
    """A response body from tests/fixtures: parsed JSON for ``*.json``, else bytes."""
    with (FIXTURES / name).open("rb") as fh:
        return json.load(fh) if name.endswith(".json") else fh.read()


def fixture_bytes(name: str) -> bytes:
    """A response body from tests/fixtures, as bytes."""
    return (FIXTURES / name).read_bytes()


# --------------------------------------------------------------------------- strategies

NASTY = [
    "../",
    "..",
    ".",
    "...",
    "%2f",
    "%2F",
    "%252f",
    "..%2f..%2f",
    "a/b",
    "/",
    "//",
    "\\",
    "?",
    "#",
    "a?b=c",
    "a#frag",
    "&x=1",
    ";x=1",
    " ",
    " a ",
    "\t",
    "a\r\nX-Evil: 1",
    "\x00",
    "é",
    "😀",
    "\u202e",
    "\ufeff",
    "phala/../../admin",
    "on-chain",
    "phala",
    "x" * 256,
    "x" * 257,
    "€" * 256,
    "%",
    "%zz",
    "@",
    ":",
    "[::1]",
]
"""Strings that have broken path building somewhere: traversal, encoded separators,
query and fragment starters, control characters, odd Unicode, the length limit."""

argument_texts = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from("/?#%.\\ \t\r\n&=;:@+a€😀"), max_size=12),
    st.text(alphabet="ab/.%?#", min_size=250, max_size=260),
)
"""Any string a caller might pass as a KMS id, slug, chain or version."""

app_id_texts = st.one_of(
    argument_texts,
    st.binary(min_size=20, max_size=20).map(lambda b: b.hex()),
    st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex().upper()),
    st.binary(min_size=19, max_size=21).map(lambda b: "0X" + b.hex()),
)
"""App ids: valid ones in every accepted form, near misses, and any string."""
