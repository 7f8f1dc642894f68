"""Shared helpers for the test suite."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import aiohttp
import aioresponses.core
import pytest

FIXTURES = Path(__file__).parent / "fixtures"

API_KEY = "phak_test_SECRET_do_not_leak_7f3a9c"
"""The API key every test uses; tests assert it never shows up in output."""


def load_fixture(name: str) -> Any:
    """A response body from tests/fixtures (copied from the shared API fixtures)."""
    with (FIXTURES / name).open("rb") as fh:
        return json.load(fh) if name.endswith(".json") else fh.read()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real key or base URL from the environment."""
    monkeypatch.delenv("PHALA_CLOUD_API_KEY", raising=False)
    monkeypatch.delenv("PHALA_CLOUD_API_PREFIX", raising=False)


def _patch_aioresponses_for_aiohttp_314() -> None:
    """aioresponses 0.7.9 builds ClientResponse without the ``stream_writer`` argument that
    aiohttp 3.14 requires (upstream: pnuckowski/aioresponses#289, still open). Give its
    fake responses a writer that reports nothing written, until a fixed release exists."""
    if "stream_writer" not in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
        return

    class _SentWriter:
        output_size = 0

    class _CompatResponse(aiohttp.ClientResponse):
        def __init__(self, *args: Any, stream_writer: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, stream_writer=stream_writer or _SentWriter(), **kwargs)

    aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[misc]


_patch_aioresponses_for_aiohttp_314()
