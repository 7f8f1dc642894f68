"""A key straight from a KMS node (``POST {node}/prpc/GetAppEnvEncryptPubKey?json``),
verified exactly as the API's is, over verified TLS, without ever sending the API key.

The fake serves its KMS nodes on its own port (``server.node_url(ref)``); the TLS tests
put a local HTTPS server with a ``trustme`` CA in front of one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from phala_kms import (
    APIStatusError,
    AsyncKMSClient,
    ConnectRefusedError,
    InvalidArgumentError,
    KMSNodeMeta,
    RedirectError,
    ResponseValidationError,
    SignatureVerificationError,
    TLSError,
    VerifiedAppEnvEncryptPubKey,
)
from phala_kms.testing import FakeKMSServer, NonJSONFault, RedirectFault, StatusFault

APP_ID = "5e" * 20


def node_requests(server: FakeKMSServer) -> list[Any]:
    return [r for r in server.requests if r.route in ("node_pubkey", "node_meta")]


def test_a_node_key_is_verified_like_the_apis(kms: Any, server: FakeKMSServer) -> None:
    nodes = kms.list_kms_contract_nodes("base")
    assert [node.url for node in nodes.items] == [
        server.url + "/node/" + node.id for node in nodes.items
    ]
    signer = server.k256_pubkey_for("base")
    for node in nodes.items:
        key = kms.get_verified_app_env_encrypt_pubkey_from_node(
            node.url, "0x" + APP_ID.upper(), trusted_signer=signer, require_timestamped=True
        )
        assert isinstance(key, VerifiedAppEnvEncryptPubKey)
        assert key.scheme == "signature_v1" and key.timestamp is not None
        assert key.public_key_bytes == server.app_public_key("base", APP_ID)
        assert (key.signer, key.app_id) == (signer, APP_ID)
    api_key = kms.get_verified_app_env_encrypt_pubkey("base", APP_ID, trusted_signer=signer)
    assert api_key.public_key == key.public_key
    sent = node_requests(server)
    assert len(sent) == 3
    assert all(r.method == "POST" and "X-API-Key" not in r.headers for r in sent)
    assert all(r.query == {"json": ""} for r in sent)


def test_a_node_of_another_kms_fails_verification(kms: Any, server: FakeKMSServer) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            server.node_url("ethereum"), APP_ID, trusted_signer=server.k256_pubkey_for("base")
        )
    assert caught.value.reason == "signer_mismatch"
    assert caught.value.signer == server.k256_pubkey_for("ethereum")


def test_a_stale_node_signature_is_refused(kms: Any, server: FakeKMSServer) -> None:
    server.clock = lambda: 1_000.0
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            server.node_url("phala"), APP_ID, trusted_signer=server.k256_pubkey
        )
    assert caught.value.reason == "stale_timestamp"


def test_node_meta_reports_the_root_key(kms: Any, server: FakeKMSServer) -> None:
    meta = kms.get_kms_node_meta(server.node_url("kms-base-prod7"))
    assert isinstance(meta, KMSNodeMeta)
    assert "0x" + (meta.k256_pubkey or "") == server.k256_pubkey_for("base")
    assert (meta.chain_id, meta.is_dev) == (8453, False)
    assert meta.extra == {"bootstrap_info": None}


@pytest.mark.parametrize(
    "url",
    [
        "http://kms.example.com/node",  # plain http to a remote host would be tamperable
        "ftp://127.0.0.1/node",
        "https://user:pw@kms.example.com",
        "https://kms.example.com/?x=1",
        "",
        "not a url",
    ],
)
def test_node_urls_follow_the_base_url_rule(kms: Any, server: FakeKMSServer, url: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            url, APP_ID, trusted_signer=server.k256_pubkey
        )
    assert caught.value.argument == "node_url"
    with pytest.raises(InvalidArgumentError):
        kms.get_kms_node_meta(url)
    assert server.total_requests == 0


def test_arguments_are_checked_before_anything_is_sent(kms: Any, server: FakeKMSServer) -> None:
    url = server.node_url("phala")
    with pytest.raises(InvalidArgumentError):
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            url, "xyz", trusted_signer=server.k256_pubkey
        )
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey_from_node(url, APP_ID, trusted_signer="0x12")
    assert caught.value.reason == "invalid_trusted_signer"
    with pytest.raises(InvalidArgumentError):
        kms.get_kms_node_meta(url, ssl_context="not a context")
    assert server.total_requests == 0


def test_an_unreachable_node_is_a_transport_error(
    kms: Any, server: FakeKMSServer, closed_port: int
) -> None:
    with pytest.raises(ConnectRefusedError) as caught:
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            f"http://127.0.0.1:{closed_port}", APP_ID, trusted_signer=server.k256_pubkey
        )
    assert caught.value.method == "POST" and caught.value.port == closed_port


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (NonJSONFault("<html>gateway</html>"), ResponseValidationError),
        (StatusFault(200, body={"public_key": "zz", "signature": "00"}), ResponseValidationError),
        (StatusFault(200, body=[1, 2, 3]), ResponseValidationError),
        (StatusFault(500), APIStatusError),
        (RedirectFault(), RedirectError),
    ],
)
def test_a_node_answering_garbage_fails_closed(
    kms: Any, server: FakeKMSServer, fault: Any, error: type[Exception]
) -> None:
    server.inject("/node/*", fault, times=None)
    with pytest.raises(error):
        kms.get_verified_app_env_encrypt_pubkey_from_node(
            server.node_url("phala"), APP_ID, trusted_signer=server.k256_pubkey
        )
    if not (isinstance(fault, StatusFault) and isinstance(fault.body, dict)):
        with pytest.raises(error):  # (a JSON object is a KMSNodeMeta, just without a key)
            kms.get_kms_node_meta(server.node_url("phala"))


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_node(ca: trustme.CA) -> AsyncIterator[tuple[FakeKMSServer, str]]:
    """A fake KMS node behind HTTPS (certificate for 127.0.0.1 from ``ca``)."""
    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)

        async def forward(request: web.Request) -> web.Response:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    server.node_url("phala") + "/prpc/" + request.match_info["method"] + "?json",
                    data=await request.read(),
                ) as resp,
            ):
                return web.Response(body=await resp.read(), content_type="application/json")

        app = web.Application()
        app.router.add_post("/prpc/{method}", forward)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        try:
            yield server, f"https://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def test_node_tls_is_verified_against_the_given_ca(
    tls_node: tuple[FakeKMSServer, str], ca: trustme.CA
) -> None:
    server, url = tls_node
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        key = await client.get_verified_app_env_encrypt_pubkey_from_node(
            url, APP_ID, trusted_signer=server.k256_pubkey, ssl_context=trusted
        )
        assert key.public_key_bytes == server.app_public_key("phala", APP_ID)
        with pytest.raises(TLSError):  # the system store does not know this CA
            await client.get_verified_app_env_encrypt_pubkey_from_node(
                url, APP_ID, trusted_signer=server.k256_pubkey
            )
        wrong_name = url.replace("127.0.0.1", "localhost")  # the certificate is for the IP
        with pytest.raises(TLSError):
            await client.get_kms_node_meta(wrong_name, ssl_context=trusted)
