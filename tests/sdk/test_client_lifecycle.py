"""A forgotten or misused client: one ResourceWarning that names this SDK, and no socket left.

An ``AsyncKMSClient`` garbage-collected unclosed emits exactly one ``ResourceWarning``
naming ``phala_kms.AsyncKMSClient`` and closes its pool itself: never aiohttp's
"Unclosed client session" / "Unclosed connector" pair, and no asyncio error log. After a
``ClientStateError`` from a second ``asyncio.run()``, ``aclose()`` closes the sockets the
first (closed) loop left open. A ``KMSClient`` forgotten unclosed is closed by its
finalizer, silently. (Named apart from ``test_lifecycle.py``, the suite's older
hygiene tests.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import warnings
from collections.abc import Callable

import aiohttp
import pytest

from phala_kms import AsyncKMSClient, ClientStateError, KMSClient
from phala_kms.testing import FakeKMSServer

AIOHTTP_WARNINGS = ("Unclosed client session", "Unclosed connector", "unclosed transport")


def open_sockets() -> set[int]:
    """The file descriptors of this process that are sockets."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except OSError:  # closed while listing
            continue
    return found


def collect_warnings() -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    return list(caught)


@pytest.fixture
def baseline() -> set[int]:
    """The sockets open before the test (the fake server's)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    return open_sockets()


@pytest.fixture
def asyncio_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.ERROR, logger="asyncio")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def assert_back_to(baseline: set[int], wait_until: Callable[..., bool]) -> None:
    # the fake server closes its side once the client's side is closed
    assert wait_until(lambda: open_sockets() <= baseline, 5.0), open_sockets() - baseline


# --------------------------------------------------------------------------- AsyncKMSClient


@pytest.mark.parametrize("cycle", [False, True], ids=["refcount", "cycle"])
def test_unclosed_async_client_warns_once_and_closes_quietly(
    server: FakeKMSServer,
    baseline: set[int],
    wait_until: Callable[..., bool],
    asyncio_errors: Callable[[], list[str]],
    cycle: bool,
) -> None:
    client = AsyncKMSClient(server.api_key, server.base_url)
    asyncio.run(client.get_kms_info("phala"))  # leaves a pooled keep-alive socket
    assert open_sockets() > baseline
    if cycle:
        client.self_ref = client  # type: ignore[attr-defined]  # only gc can free it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
        gc.collect()
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(resource) == 1, [str(w.message) for w in caught]
    text = str(resource[0].message)
    assert "phala_kms.AsyncKMSClient" in text
    assert "async with" in text
    assert "aclose()" in text
    assert not any(a in str(w.message) for w in caught for a in AIOHTTP_WARNINGS)
    assert asyncio_errors() == []
    assert_back_to(baseline, wait_until)


async def test_unclosed_async_client_collected_inside_its_loop(server: FakeKMSServer) -> None:
    baseline = open_sockets()  # this loop's own sockets included
    client = AsyncKMSClient(server.api_key, server.base_url)
    await client.get_kms_info("phala")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == [
        f"unclosed phala_kms.AsyncKMSClient for {server.base_url}; use `async with` or"
        " `await client.aclose()` (phala_kms closed its connection pool)"
    ]
    for _ in range(500):  # the close runs on this loop: give it turns
        if open_sockets() <= baseline:
            break
        await asyncio.sleep(0.01)
    assert open_sockets() <= baseline


def test_a_client_that_never_sent_holds_nothing_and_does_not_warn() -> None:
    client = AsyncKMSClient("k", "http://127.0.0.1:9/api/v1")
    del client
    assert [w for w in collect_warnings() if issubclass(w.category, ResourceWarning)] == []


async def test_a_callers_session_is_left_to_its_owner(server: FakeKMSServer) -> None:
    async with aiohttp.ClientSession() as session:
        client = AsyncKMSClient(server.api_key, server.base_url, session=session)
        await client.get_kms_info("phala")
        del client
        assert [w for w in collect_warnings() if issubclass(w.category, ResourceWarning)] == []
        assert not session.closed


def test_aclose_after_a_second_asyncio_run_leaves_no_socket(
    server: FakeKMSServer,
    baseline: set[int],
    wait_until: Callable[..., bool],
    asyncio_errors: Callable[[], list[str]],
) -> None:
    client = AsyncKMSClient(server.api_key, server.base_url)
    asyncio.run(client.get_kms_info("phala"))  # pooled socket; then the loop closes
    with pytest.raises(ClientStateError, match="another event loop"):
        asyncio.run(client.get_kms_info("phala"))
    assert open_sockets() > baseline  # still open: its loop is closed
    asyncio.run(client.aclose())
    assert client.closed
    assert_back_to(baseline, wait_until)
    del client
    assert [str(w.message) for w in collect_warnings()] == []
    assert asyncio_errors() == []


def test_aclose_with_no_running_loop_after_the_loop_closed(
    server: FakeKMSServer, baseline: set[int], wait_until: Callable[..., bool]
) -> None:
    client = AsyncKMSClient(server.api_key, server.base_url)
    asyncio.run(client.get_kms_info("phala"))
    closing = client.aclose()
    with pytest.raises(StopIteration):  # nothing to await: it finishes in one step
        closing.send(None)
    assert_back_to(baseline, wait_until)
    del client
    assert [str(w.message) for w in collect_warnings()] == []


# --------------------------------------------------------------------------- KMSClient


def test_unclosed_blocking_client_is_closed_silently(
    server: FakeKMSServer,
    baseline: set[int],
    wait_until: Callable[..., bool],
    asyncio_errors: Callable[[], list[str]],
) -> None:
    client = KMSClient(server.api_key, server.base_url)
    client.get_kms_info("phala")
    assert open_sockets() > baseline
    client.self_ref = client  # type: ignore[attr-defined]
    del client
    assert [str(w.message) for w in collect_warnings()] == []  # its finalizer closed it
    assert asyncio_errors() == []
    assert_back_to(baseline, wait_until)


def test_blocking_client_close_leaves_no_socket(
    server: FakeKMSServer, baseline: set[int], wait_until: Callable[..., bool]
) -> None:
    client = KMSClient(server.api_key, server.base_url)
    client.get_kms_info("phala")
    client.close()
    assert_back_to(baseline, wait_until)
    del client
    assert [str(w.message) for w in collect_warnings()] == []


def test_blocking_client_works_across_asyncio_runs(
    server: FakeKMSServer, baseline: set[int], wait_until: Callable[..., bool]
) -> None:
    """The blocking client owns its loop, so a caller's loops coming and going do not matter."""
    with KMSClient(server.api_key, server.base_url) as client:

        async def call() -> str:
            return client.get_kms_info("phala").id

        first = asyncio.run(call())
        assert asyncio.run(call()) == first
    assert_back_to(baseline, wait_until)
