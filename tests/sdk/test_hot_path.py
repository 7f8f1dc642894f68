"""The per-call path: read size on the SDK's own connections (both the hooked and the
fallback path), headers set once on the session, the checked-``kms`` cache, the pool's
non-waiting slot, and the blocking client's lock handoff.

Behaviour only: how fast any of it is belongs to benchmarks/run.py.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from phala_kms import AsyncKMSClient, InvalidArgumentError, KMSClient, NotFoundError
from phala_kms import _pool as pool_module
from phala_kms._pool import READ_SIZE, PoolSlots, make_connector, tune_reads
from phala_kms.errors import ClientStateError
from phala_kms.testing import FakeKMSServer, LatencyFault

APP = "0x" + "ab" * 20
KMS_INFO = {
    "id": "kms_hot0001",
    "slug": "phala",
    "url": "https://kms.example/rpc",
    "version": "v0.5.7",
    "chain_id": None,
    "kms_contract_address": None,
    "gateway_app_id": None,
}


# --------------------------------------------------------------------------- read size


class Recorder:
    """Wraps :func:`tune_reads`, keeping every transport it was given and its answer.

    Read the sizes (:func:`read_sizes`) while the client is open: closing a TLS
    connection drops the objects that hold them on Python 3.10."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, bool]] = []

    def __call__(self, transport: Any) -> bool:
        tuned = tune_reads(transport)
        self.calls.append((transport, tuned))
        return tuned


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(pool_module, "tune_reads", recorder)
    return recorder


def read_sizes(transport: Any) -> list[int]:
    """Every ``max_size`` asyncio reads with on this connection (plain or TLS).

    TLS on Python 3.11+ reads through the TLS protocol's own ``max_size``; on 3.10 the
    socket transport under it reads, and its ``_sslpipe`` feeds what was read to the
    TLS object."""
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    sizes = [getattr(transport, "max_size", None)]
    if ssl_protocol is not None:
        sizes += [
            getattr(ssl_protocol, "max_size", None),
            getattr(getattr(ssl_protocol, "_transport", None), "max_size", None),
            getattr(getattr(ssl_protocol, "_sslpipe", None), "max_size", None),
        ]
    return [size for size in sizes if isinstance(size, int)]


@pytest.mark.skipif(not pool_module.TUNE_READS, reason="this aiohttp cannot be hooked")
async def test_own_connections_read_64_kib_at_a_time(
    server: FakeKMSServer, recorder: Recorder
) -> None:
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        await asyncio.gather(*(client.get_app_env_encrypt_pubkey("phala", APP) for _ in range(3)))
        in_use = [(tuned, read_sizes(transport)) for transport, tuned in recorder.calls]
    assert in_use, "no connection was tuned"
    for tuned, sizes in in_use:
        assert tuned
        assert sizes == [READ_SIZE]


async def test_without_the_hook_connections_keep_asyncio_s_size(
    server: FakeKMSServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "TUNE_READS", False)
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        key = await client.get_app_env_encrypt_pubkey("phala", APP)
    assert len(key.public_key) == 64
    assert recorder.calls == []  # the plain connector: nothing hooked


def test_the_hook_is_detected_and_its_absence_too(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool_module._hookable() is asyncio.iscoroutinefunction(
        getattr(aiohttp.TCPConnector, "_wrap_create_connection", None)
    )
    monkeypatch.delattr(aiohttp.TCPConnector, "_wrap_create_connection", raising=False)
    assert pool_module._hookable() is False


async def test_make_connector_falls_back_to_the_plain_connector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "TUNE_READS", False)
    connector = make_connector(7, None)
    try:
        assert type(connector) is aiohttp.TCPConnector
        assert connector.limit == 7
    finally:
        await connector.close()


class _Plain:
    max_size = 256 * 1024


class _Small:
    max_size = 16 * 1024


class _TLS:
    def __init__(self) -> None:
        self._ssl_protocol = _Plain()
        self._ssl_protocol._transport = _Plain()  # type: ignore[attr-defined]


def test_tune_reads_sets_only_what_exists_and_only_downwards() -> None:
    plain = _Plain()
    assert tune_reads(plain) is True and plain.max_size == READ_SIZE
    small = _Small()
    assert tune_reads(small) is False and small.max_size == 16 * 1024  # never raised
    assert tune_reads(object()) is False  # another event loop's transport: untouched
    tls = _TLS()
    assert tune_reads(tls) is True
    assert tls._ssl_protocol.max_size == READ_SIZE
    assert tls._ssl_protocol._transport.max_size == READ_SIZE  # type: ignore[attr-defined]


class TLSServer:
    """A one-route aiohttp server with TLS on 127.0.0.1."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def kms_info(request: web.Request) -> web.Response:
            return web.json_response(KMS_INFO)

        app = web.Application()
        app.router.add_get("/api/v1/kms/{kms_id}", kms_info)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.port = int(self.runner.addresses[0][1])

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest_asyncio.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[TLSServer]:
    server = TLSServer(ca)
    await server.start()
    try:
        yield server
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


@pytest.mark.skipif(not pool_module.TUNE_READS, reason="this aiohttp cannot be hooked")
async def test_tls_connections_read_64_kib_at_a_time(
    ca: trustme.CA, tls_server: TLSServer, recorder: Recorder
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with AsyncKMSClient("k", tls_server.base_url, ssl_context=context) as client:
        info = await client.get_kms_info("phala")
        ((transport, tuned),) = recorder.calls
        sizes = read_sizes(transport)  # the kept-alive connection, still open
    assert info.id == "kms_hot0001"
    assert tuned
    assert getattr(transport, "_ssl_protocol", None) is not None  # really the TLS transport
    assert READ_SIZE in sizes
    assert all(size <= READ_SIZE for size in sizes)


# --------------------------------------------------------------------------- headers


async def test_headers_reach_the_server_with_the_default_and_an_overridden_version(
    server: FakeKMSServer,
) -> None:
    async with AsyncKMSClient(server.api_key, server.base_url, api_version="2026-06-23") as client:
        await client.get_app_env_encrypt_pubkey("phala", APP)
        await client.get_app_env_encrypt_pubkey("phala", APP, api_version="2026-05-22")
        await client.get_app_env_encrypt_pubkey("phala", APP)
    versions = [r.phala_version for r in server.requests]
    assert versions == ["2026-06-23", "2026-05-22", "2026-06-23"]
    assert all(r.headers.get("Accept") == "application/json" for r in server.requests)
    assert all(r.headers.get("User-Agent", "").startswith("phala-kms") for r in server.requests)
    # the key itself is redacted in the log; a wrong or missing one would have been a 401
    assert all("X-API-Key" in r.headers for r in server.requests)


async def test_a_caller_session_still_gets_every_header(server: FakeKMSServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        AsyncKMSClient(server.api_key, server.base_url, session=session) as client,
    ):
        await client.get_app_env_encrypt_pubkey("phala", APP)
    (request,) = server.requests  # answered, so the key was right (else a 401)
    assert "X-API-Key" in request.headers
    assert request.phala_version is not None


# --------------------------------------------------------------------------- kms cache


async def test_a_bad_kms_is_refused_every_time_and_never_remembered(
    server: FakeKMSServer,
) -> None:
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        for _ in range(2):
            with pytest.raises(InvalidArgumentError):
                await client.get_app_env_encrypt_pubkey("on-chain", APP)
            with pytest.raises(InvalidArgumentError):
                await client.get_app_env_encrypt_pubkey("", APP)
        assert server.total_requests == 0
        await client.get_app_env_encrypt_pubkey("phala", APP)
        await client.get_app_env_encrypt_pubkey("phala", APP)
    assert server.total_requests == 2


async def test_the_kms_cache_is_bounded(server: FakeKMSServer) -> None:
    async with AsyncKMSClient(server.api_key, server.base_url, max_retries=0) as client:
        for index in range(100):
            with pytest.raises(NotFoundError):  # checked, sent, and unknown to the server
                await client.get_app_env_encrypt_pubkey(f"kms-{index}", APP)
        assert server.total_requests == 100
        assert len(client._kms_segments) <= 64


# --------------------------------------------------------------------------- pool slots


async def test_try_acquire_takes_a_free_slot_and_never_jumps_the_queue() -> None:
    slots = PoolSlots(1)
    assert slots.try_acquire() is True
    assert slots.try_acquire() is False  # none free
    waiter = asyncio.ensure_future(slots.acquire(None))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, not to the pool
    await waiter
    assert slots.try_acquire() is False
    slots.release()
    assert slots.try_acquire() is True


# --------------------------------------------------------------------------- lock handoff


@pytest.fixture
def slow_server() -> Iterator[FakeKMSServer]:
    with FakeKMSServer.in_thread() as running:
        running.inject("app_pubkey", LatencyFault(5.0), times=None)
        yield running


def test_close_from_another_thread_ends_a_call_in_flight(slow_server: FakeKMSServer) -> None:
    client = KMSClient(slow_server.api_key, slow_server.base_url)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.get_app_env_encrypt_pubkey("phala", APP)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while slow_server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    caller.join(5)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClientStateError)


def test_results_and_errors_cross_many_threads(server: FakeKMSServer) -> None:
    results: dict[int, object] = {}
    with KMSClient(server.api_key, server.base_url) as client:

        def call(index: int) -> None:
            try:
                kms = "phala" if index % 2 else "on-chain"
                results[index] = client.get_app_env_encrypt_pubkey(kms, APP).public_key
            except InvalidArgumentError as exc:
                results[index] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    keys = {v for i, v in results.items() if i % 2}
    assert len(keys) == 1 and len(next(iter(keys))) == 64  # type: ignore[arg-type]
    assert all(isinstance(results[i], InvalidArgumentError) for i in range(0, 16, 2))
