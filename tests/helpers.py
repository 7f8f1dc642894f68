"""Plain data and types shared by test modules at import time, where fixtures cannot reach.

Parametrize lists and hypothesis strategies are built when a module is imported, so
the response bodies they hold, the API key they mention and the argument strategies
shared by several behaviours come from here; so do :class:`ClientDriver` and
``MakeClient``, the types of the ``kms`` and ``make_client`` fixtures, for test
signatures. Everything that can be a fixture lives in ``tests/conftest.py``, which
imports this module (never the reverse): no test module imports the conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from phala_kms import AsyncKMSClient, KMSClient
from phala_kms.testing import instant_retries

__all__ = [
    "API_KEY",
    "FIXTURES",
    "MOCK_BASE",
    "NASTY",
    "ClientDriver",
    "MakeClient",
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


# --------------------------------------------------------------------------- client drivers


class ClientDriver:
    """Calls client methods from sync test code, on a fresh client per call.

    ``driver.get_kms_info("phala")`` runs the method on a new ``AsyncKMSClient`` under
    ``asyncio.run`` (kind ``"async"``) or on a new ``KMSClient`` (kind ``"sync"``); an
    iterator's items come back as a list. ``driver.run(fn)`` runs ``fn(client)`` (awaited
    when it returns an awaitable). Retry waits are skipped and recorded in :attr:`waits`
    (seconds, in order) unless the driver was made with ``instant_retries=False``.
    """

    def __init__(self, kind: str, kwargs: dict[str, Any], *, instant: bool) -> None:
        self.kind = kind
        self.kwargs = kwargs
        self.instant = instant
        self.waits: list[float] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(lambda client: getattr(client, name)(*args, **kwargs))

        return call

    def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.kind == "sync":
            with KMSClient(**self.kwargs) as client, self._recording(client):
                result = fn(client)
                return list(result) if inspect.isgenerator(result) else result

        async def go() -> Any:
            async with AsyncKMSClient(**self.kwargs) as client:
                with self._recording(client):
                    result = fn(client)
                    if inspect.isasyncgen(result):
                        return [item async for item in result]
                    if inspect.isawaitable(result):
                        return await result
                    return result

        return asyncio.run(go())

    def _recording(self, client: AsyncKMSClient | KMSClient) -> Any:
        if not self.instant:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def record() -> Iterator[None]:
            with instant_retries(client) as waits:
                try:
                    yield
                finally:
                    self.waits.extend(waits)

        return record()


MakeClient = Callable[..., ClientDriver]


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
