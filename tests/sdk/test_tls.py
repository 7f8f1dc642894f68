"""TLS: certificates are verified, a failure is a TLSError that is never retried, and a
caller can trust a private CA with ``ssl_context=`` (both clients) or, for the async
client, by passing their own aiohttp session; there is no switch to turn checks off.

A local HTTPS server on 127.0.0.1 serves a KMS-info JSON with a certificate from a
throwaway CA made by ``trustme``; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    ConnectError,
    KMSClient,
    RetryPolicy,
    TLSError,
    TransportError,
)
from phala_kms.testing import FakeKMSServer, instant_retries
from tests.helpers import API_KEY

KMS_INFO = {
    "id": "kms_tls0001",
    "slug": "phala",
    "url": "https://kms.example/rpc",
    "version": "v0.5.7",
    "chain_id": None,
    "kms_contract_address": None,
    "gateway_app_id": None,
}
RETRIES = RetryPolicy(max_retries=3, initial_backoff=0.0, jitter=0.0)


class TLSServer:
    """An aiohttp server on 127.0.0.1 with TLS; records the API keys it was sent."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.keys: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _kms_info(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("X-API-Key"))
        return web.json_response(KMS_INFO)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/kms/{kms_id}", self._kms_info)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest_asyncio.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[TLSServer]:
    server = TLSServer(ca.issue_cert("127.0.0.1", "localhost"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def tls_server_thread(ca: trustme.CA) -> Iterator[TLSServer]:
    """The same server on its own loop in a thread, for the blocking client."""
    server = TLSServer(ca.issue_cert("127.0.0.1", "localhost"))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def check_tls_error(err: BaseException, port: int) -> None:
    assert type(err) is TLSError
    assert isinstance(err, ConnectError)
    assert err.attempts == 1  # never retried
    assert (err.host, err.port) == ("127.0.0.1", port)
    assert isinstance(err.__cause__, (ssl.SSLError, aiohttp.ClientSSLError))
    assert API_KEY not in str(err) and API_KEY not in repr(err)


@pytest.mark.timeout(20)
async def test_self_signed_certificate_is_refused_by_default(tls_server: TLSServer) -> None:
    async with AsyncKMSClient(API_KEY, tls_server.base_url, retry_policy=RETRIES) as client:
        with instant_retries(client) as waits, pytest.raises(TLSError) as caught:
            await client.get_kms_info("phala")
    check_tls_error(caught.value, tls_server.port)
    assert "certificate verify failed" in str(caught.value)
    assert waits == []
    assert tls_server.keys == []  # no request (and no API key) reached the server


@pytest.mark.timeout(20)
def test_sync_client_refuses_it_too(tls_server_thread: TLSServer) -> None:
    with (
        KMSClient(API_KEY, tls_server_thread.base_url, retry_policy=RETRIES) as client,
        instant_retries(client) as waits,
        pytest.raises(TLSError) as caught,
    ):
        client.get_kms_info("phala")
    check_tls_error(caught.value, tls_server_thread.port)
    assert waits == []
    assert tls_server_thread.keys == []


@pytest.mark.timeout(20)
async def test_explicit_ca_through_a_caller_session(ca: trustme.CA, tls_server: TLSServer) -> None:
    connector = aiohttp.TCPConnector(ssl=trusting(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with AsyncKMSClient(API_KEY, tls_server.base_url, session=session) as client:
            with instant_retries(client) as waits:
                info = await client.get_kms_info("phala")
                assert (await client.get_kms_info("phala")).id == info.id
        assert not session.closed  # the caller's session is left open for its owner
    assert info.id == "kms_tls0001" and info.slug == "phala"
    assert tls_server.keys == [API_KEY, API_KEY]
    assert waits == []


@pytest.mark.timeout(20)
async def test_trusted_ca_but_wrong_host_name_is_refused(ca: trustme.CA) -> None:
    server = TLSServer(ca.issue_cert("kms.example"))  # not valid for 127.0.0.1
    await server.start()
    try:
        connector = aiohttp.TCPConnector(ssl=trusting(ca))
        async with aiohttp.ClientSession(connector=connector) as session:
            client = AsyncKMSClient(API_KEY, server.base_url, session=session, retry_policy=RETRIES)
            with instant_retries(client) as waits, pytest.raises(TLSError) as caught:
                await client.get_kms_info("phala")
            await client.aclose()
    finally:
        await server.close()
    check_tls_error(caught.value, server.port)
    assert waits == []
    assert server.keys == []


@pytest.mark.timeout(20)
async def test_expired_certificate_is_refused(ca: trustme.CA) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = ca.issue_cert(
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    server = TLSServer(cert)
    await server.start()
    try:
        connector = aiohttp.TCPConnector(ssl=trusting(ca))
        async with aiohttp.ClientSession(connector=connector) as session:
            client = AsyncKMSClient(API_KEY, server.base_url, session=session, retry_policy=RETRIES)
            with pytest.raises(TLSError) as caught:
                await client.get_kms_info("phala")
            await client.aclose()
    finally:
        await server.close()
    check_tls_error(caught.value, server.port)
    assert "expired" in str(caught.value)
    assert server.keys == []


@pytest.mark.timeout(20)
@pytest.mark.fake_kms_options(phala_node_count=1, api_key=API_KEY)
async def test_https_to_a_plain_http_port_fails_without_sending_the_key(
    server: FakeKMSServer,
) -> None:
    base = f"https://127.0.0.1:{server.port}/api/v1"
    async with AsyncKMSClient(API_KEY, base, retry_policy=RETRIES) as client:
        with instant_retries(client) as waits, pytest.raises(TransportError) as caught:
            await client.get_kms_info("phala")
    err: Any = caught.value
    assert isinstance(err, TLSError), repr(err)
    assert err.attempts == 1 and waits == []
    # The TLS ClientHello is not HTTP: the fake never saw a request, let alone the key.
    assert server.total_requests == 0


# --------------------------------------------------------------------------- ssl_context=


@pytest.mark.timeout(20)
async def test_async_client_trusts_a_private_ca_through_ssl_context(
    ca: trustme.CA, tls_server: TLSServer
) -> None:
    async with AsyncKMSClient(API_KEY, tls_server.base_url, ssl_context=trusting(ca)) as client:
        with instant_retries(client) as waits:
            info = await client.get_kms_info("phala")
    assert info.id == "kms_tls0001"
    assert tls_server.keys == [API_KEY]
    assert waits == []


@pytest.mark.timeout(20)
def test_sync_client_trusts_a_private_ca_through_ssl_context(
    ca: trustme.CA, tls_server_thread: TLSServer
) -> None:
    with KMSClient(API_KEY, tls_server_thread.base_url, ssl_context=trusting(ca)) as client:
        assert client.get_kms_info("phala").id == "kms_tls0001"
        assert client.get_kms_info("phala").slug == "phala"
    assert tls_server_thread.keys == [API_KEY, API_KEY]


@pytest.mark.timeout(20)
def test_ssl_context_still_checks_the_name_and_the_ca(ca: trustme.CA) -> None:
    other = trustme.CA()  # a CA that did not sign the server's certificate
    context = trusting(ca)
    server = TLSServer(ca.issue_cert("kms.example"))  # trusted CA, wrong name
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with (
            KMSClient(API_KEY, server.base_url, ssl_context=context, retry_policy=RETRIES) as c,
            instant_retries(c) as waits,
            pytest.raises(TLSError) as caught,
        ):
            c.get_kms_info("phala")
        with (
            KMSClient(
                API_KEY, server.base_url, ssl_context=trusting(other), retry_policy=RETRIES
            ) as c,
            instant_retries(c) as other_waits,
            pytest.raises(TLSError),
        ):
            c.get_kms_info("phala")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.close())
        loop.close()
    check_tls_error(caught.value, server.port)
    assert waits == [] and other_waits == []
    assert server.keys == []


@pytest.mark.parametrize("value", [True, False, "/etc/ssl/certs/ca.pem", 0], ids=repr)
@pytest.mark.parametrize("client_type", [AsyncKMSClient, KMSClient])
def test_ssl_context_must_be_an_ssl_context(client_type: Any, value: Any) -> None:
    # In particular there is no way to turn verification off with a flag.
    with pytest.raises(ConfigurationError):
        client_type(API_KEY, "https://kms.test/api/v1", ssl_context=value)


async def test_ssl_context_and_a_caller_session_conflict(ca: trustme.CA) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigurationError):
            AsyncKMSClient(
                API_KEY, "https://kms.test/api/v1", session=session, ssl_context=trusting(ca)
            )
