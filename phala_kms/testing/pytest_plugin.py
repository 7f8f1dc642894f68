"""pytest fixtures that run the fake Phala Cloud KMS API (installed as a pytest plugin).

Installing phala-kms registers this module under the ``pytest11`` entry point, so the
fixtures are available in any suite:

``fake_kms_server``
    An async fixture (needs pytest-asyncio): a running
    :class:`~phala_kms.testing.FakeKMSServer` on the test's event loop.
``fake_kms_server_thread``
    A sync fixture: a running :class:`~phala_kms.testing.FakeKMSServer` on its own loop
    in a background thread, for sync code such as ``phala_kms.KMSClient``.

Both are function-scoped and stop the server (and thread) after the test. Pass
constructor arguments with the ``fake_kms_options`` marker::

    @pytest.mark.fake_kms_options(phala_node_count=3, timestamped_signatures=True)
    async def test_small_catalogue(fake_kms_server: FakeKMSServer) -> None: ...

The plugin imports nothing heavy until a fixture is used, and works without
pytest-asyncio (only ``fake_kms_server`` then fails, with a message saying why).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._server import FakeKMSServer


__all__ = ["fake_kms_server", "fake_kms_server_thread", "pytest_configure"]

_MARKER = "fake_kms_options"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_kms_options`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**kwargs): FakeKMSServer arguments for the fake_kms_server fixtures",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker(_MARKER)
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(f"{_MARKER} takes keyword arguments only")
    return dict(marker.kwargs)


async def _async_server(request: pytest.FixtureRequest) -> AsyncIterator[FakeKMSServer]:
    """A running fake Phala Cloud KMS API on the test's event loop."""
    from ._server import FakeKMSServer

    async with FakeKMSServer(**_options(request)) as server:
        yield server


def _no_asyncio(request: pytest.FixtureRequest) -> FakeKMSServer:
    """Stands in for ``fake_kms_server`` when pytest-asyncio is missing."""
    pytest.fail(
        "the fake_kms_server fixture needs pytest-asyncio; "
        "use fake_kms_server_thread from sync tests",
        pytrace=False,
    )


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    fake_kms_server: Any = pytest_asyncio.fixture(_async_server, name="fake_kms_server")
else:  # pragma: no cover - exercised only without pytest-asyncio
    fake_kms_server = pytest.fixture(_no_asyncio, name="fake_kms_server")


@pytest.fixture
def fake_kms_server_thread(request: pytest.FixtureRequest) -> Iterator[FakeKMSServer]:
    """A running fake Phala Cloud KMS API on its own loop in a background thread."""
    from ._server import FakeKMSServer, ThreadedFakeKMSServer

    with ThreadedFakeKMSServer(FakeKMSServer(**_options(request))) as server:
        yield server
