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


# --------------------------------------------------------------------------- leak check

PORTAL_THREAD_NAME = "phala-kms-loop"
"""The name of a ``KMSClient``'s event-loop thread."""


def _portal_threads() -> dict[int, Any]:
    import threading

    return {
        t.ident: t
        for t in threading.enumerate()
        if t.name == PORTAL_THREAD_NAME and t.is_alive() and t.ident is not None
    }


def _threads_of_open_clients() -> set[int]:
    """The loop threads of ``KMSClient`` objects still reachable and open (e.g. held by a
    module-scoped fixture): those are owned by someone, not leaked."""
    import gc

    from phala_kms import KMSClient

    owned = set()
    for obj in gc.get_objects():
        loop = getattr(obj, "_loop", None) if isinstance(obj, KMSClient) else None
        if loop is not None and not loop.closed and loop.thread_ident is not None:
            owned.add(loop.thread_ident)  # (a KMSClient whose __init__ raised has no _loop)
    return owned


@pytest.fixture(autouse=True)
def _no_leaked_clients() -> Any:
    """Fail a test that leaves a ``KMSClient`` loop thread running, or an aiohttp session,
    connector, socket or transport unclosed (their ``ResourceWarning`` surfaces here, in
    the test that caused it, because garbage is collected before checking)."""
    import gc
    import time
    import warnings

    before = set(_portal_threads())
    # Park everything that exists now in the permanent generation, so the collection
    # below only walks what the test created (a full collection of the whole session's
    # heap after every test would cost far more than the tests themselves).
    gc.freeze()
    try:
        yield
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()  # runs KMSClient finalizers and aiohttp's __del__ checks
            gc.collect()
    finally:
        gc.unfreeze()
    problems = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, ResourceWarning)
    ]
    for w in caught:  # anything else goes back to the normal warning filters
        if not issubclass(w.category, ResourceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    leaked = {i: t for i, t in _portal_threads().items() if i not in before}
    if leaked:
        give_up = time.monotonic() + 2.0
        for thread in leaked.values():  # a finalizer may be stopping it right now
            thread.join(max(0.0, give_up - time.monotonic()))
        leaked = {i: t for i, t in leaked.items() if t.is_alive()}
    if leaked:
        owned = _threads_of_open_clients()
        leaked = {i: t for i, t in leaked.items() if i not in owned}
    if leaked:
        problems.append(
            f"{len(leaked)} {PORTAL_THREAD_NAME!r} thread(s) still running with no open"
            " KMSClient owning them"
        )
    if problems:
        pytest.fail("resource leak: " + "; ".join(problems), pytrace=False)
