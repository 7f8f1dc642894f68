"""The one conftest of the suite: the fake server, the clients, and the checks every test gets.

Fixtures
    ``server``: a :class:`~phala_kms.testing.FakeKMSServer` on 127.0.0.1, port 0, on its
    own loop in a thread (so sync and async tests share it); constructor arguments come
    from the ``fake_kms_options`` marker, e.g.
    ``@pytest.mark.fake_kms_options(api_key=API_KEY, phala_node_count=2)``.
    ``async_client`` / ``sync_client``: an ``AsyncKMSClient`` / ``KMSClient`` on ``server``.
    ``make_client``: runs each test twice, once per client kind; ``make_client(**kwargs)``
    gives a :class:`ClientDriver` whose method calls run on a fresh client of that kind.
    ``kms``: ``make_client()`` with the defaults.
    ``mocked`` / ``mock_client`` / ``mock_waits``: aioresponses standing in for the
    network, an ``AsyncKMSClient`` on ``MOCK_BASE`` with no backoff, and its retry waits
    (recorded, not slept).
    ``http_session``: a plain ``aiohttp.ClientSession`` (to talk HTTP without our client).
    ``closed_port``: a loopback port nothing listens on.
    ``wait_until``: ``wait_until(predicate, timeout=5.0)`` polls until it holds.

Checks on every test
    No ``PHALA_CLOUD_*`` variable from the developer's environment is picked up, and no
    ``KMSClient`` loop thread, aiohttp session, connector or socket is leaked.

Response bodies (``load_fixture``, ``fixture_bytes``), ``API_KEY`` and ``MOCK_BASE`` are
in ``tests/helpers.py``: parametrize lists need them at import time. So are
``ClientDriver`` and ``MakeClient``, the types of ``kms`` and ``make_client``, for test
signatures: test modules import ``tests.helpers``, never this file.
"""

from __future__ import annotations

import gc
import inspect
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import aioresponses.core
import pytest
from aioresponses import aioresponses as aioresponses_mock

from phala_kms import AsyncKMSClient, KMSClient, RetryPolicy
from phala_kms.testing import FakeKMSServer, instant_retries
from tests.helpers import API_KEY, MOCK_BASE, ClientDriver, MakeClient

# --------------------------------------------------------------------------- environment


def pytest_configure(config: pytest.Config) -> None:
    """Register ``fake_kms_options`` here too, so ``--strict-markers`` accepts it even when
    the phala_kms pytest plugin is not loaded (``-p no:phala_kms``)."""
    config.addinivalue_line(
        "markers", "fake_kms_options(**kwargs): FakeKMSServer arguments for the server fixtures"
    )


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real key or base URL from the environment."""
    monkeypatch.delenv("PHALA_CLOUD_API_KEY", raising=False)
    monkeypatch.delenv("PHALA_CLOUD_API_PREFIX", raising=False)


# --------------------------------------------------------------------------- aioresponses


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


class MockedNetwork(aioresponses_mock):  # type: ignore[misc]
    """aioresponses, plus :meth:`sent`: the requests the test's clients made."""

    def sent(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """Every request made, as ``(method, yarl.URL, keyword arguments of the call)``."""
        return [
            (method, url, call.kwargs)
            for (method, url), calls in self.requests.items()
            for call in calls
        ]


@pytest.fixture
def mocked() -> Iterator[MockedNetwork]:
    """aioresponses: every aiohttp request of the test is answered by what it registers."""
    with MockedNetwork() as mock:
        yield mock


@pytest.fixture
async def mock_client() -> AsyncIterator[AsyncKMSClient]:
    """An ``AsyncKMSClient`` on ``MOCK_BASE`` (use with ``mocked``): 3 retries, no backoff."""
    policy = RetryPolicy(max_retries=3, initial_backoff=0, jitter=0)
    async with AsyncKMSClient(API_KEY, MOCK_BASE, retry_policy=policy) as client:
        yield client


@pytest.fixture
def mock_waits(mock_client: AsyncKMSClient) -> Iterator[list[float]]:
    """``mock_client``'s retry waits, in seconds: recorded instead of slept."""
    with instant_retries(mock_client) as waits:
        yield waits


# --------------------------------------------------------------------------- the fake server

_OPTIONS_MARKER = "fake_kms_options"  # the phala_kms pytest plugin reads it too


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeKMSServer]:
    """A running fake API on 127.0.0.1 (a free port), on its own loop in a thread.

    Its arguments come from the ``fake_kms_options`` marker (closest wins)."""
    marker = request.node.get_closest_marker(_OPTIONS_MARKER)
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    if marker is not None:
        options.update(marker.kwargs)
    with FakeKMSServer.in_thread(**options) as running:
        yield running


@pytest.fixture
async def async_client(server: FakeKMSServer) -> AsyncIterator[AsyncKMSClient]:
    """An ``AsyncKMSClient`` on ``server``, on the test's event loop."""
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        yield client


@pytest.fixture
def sync_client(server: FakeKMSServer) -> Iterator[KMSClient]:
    """A ``KMSClient`` on ``server``."""
    with KMSClient(server.api_key, server.base_url) as client:
        yield client


@pytest.fixture(params=["async", "sync"])
def make_client(request: pytest.FixtureRequest, server: FakeKMSServer) -> MakeClient:
    """Runs the test once per client kind. ``make_client(instant_retries=True, **kwargs)``
    gives a :class:`ClientDriver` for ``AsyncKMSClient(**kwargs)`` / ``KMSClient(**kwargs)``,
    ``api_key`` and ``base_url`` defaulting to ``server``'s."""
    kind = str(request.param)

    def factory(*, instant_retries: bool = True, **kwargs: Any) -> ClientDriver:
        settings = {"api_key": server.api_key, "base_url": server.base_url, **kwargs}
        return ClientDriver(kind, settings, instant=instant_retries)

    return factory


@pytest.fixture
def kms(make_client: MakeClient) -> ClientDriver:
    """``make_client()``: a driver for either client kind on ``server``, default settings."""
    return make_client()


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain ``aiohttp.ClientSession``, for talking to a server without our client."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port with nothing listening (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """``wait_until(predicate, timeout=5.0)``: poll from a sync test until it holds."""

    def poll(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if predicate():
                return True
            time.sleep(0.005)
        return predicate()

    return poll


# --------------------------------------------------------------------------- leak check

PORTAL_THREAD_NAME = "phala-kms-loop"
"""The name of a ``KMSClient``'s event-loop thread."""


def _portal_threads() -> dict[int, Any]:
    return {
        t.ident: t
        for t in threading.enumerate()
        if t.name == PORTAL_THREAD_NAME and t.is_alive() and t.ident is not None
    }


def _threads_of_open_clients() -> set[int]:
    """The loop threads of ``KMSClient`` objects still reachable and open (e.g. held by a
    module-scoped fixture): those are owned by someone, not leaked."""
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
