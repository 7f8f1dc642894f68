"""The fake Phala Cloud KMS API: routes, auth, versions, paging, errors and keys."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from coincurve import PublicKey
from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from phala_kms.testing import (
    CONTRACT_API_VERSION,
    NODE_API_VERSION,
    FakeKMSServer,
)
from tests.helpers import load_fixture

APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"
OTHER_APP_ID = "2b7c4e1f9a3d6c8e0b5f2a7d4c1e9b6f3a8d0c52"
NODE_KEYS = {"id", "slug", "url", "version", "chain_id", "kms_contract_address", "gateway_app_id"}
CONTRACT_KEYS = {
    "id",
    "slug",
    "label",
    "contract_address",
    "chain_id",
    "k256_pubkey",
    "ca_pubkey",
    "node_count",
}
ENVELOPE_KEYS = {"items", "total", "page", "page_size", "pages"}


def keccak256(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def recover_signer(signature_hex: str, message: bytes) -> str:
    """Recover the compressed secp256k1 signer of a 65-byte r||s||v signature, as 0x hex."""
    signature = bytes.fromhex(signature_hex)
    assert len(signature) == 65
    assert signature[64] in (0, 1)
    public = PublicKey.from_signature_and_message(signature, keccak256(message), hasher=None)
    return "0x" + public.format(compressed=True).hex()


class Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    http_session: aiohttp.ClientSession,
    server: FakeKMSServer,
    path: str,
    *,
    version: str | None = None,
    api_key: str | None = "<server>",
    params: Mapping[str, str] | None = None,
) -> Reply:
    headers = {}
    if api_key is not None:
        headers["X-API-Key"] = server.api_key if api_key == "<server>" else api_key
    if version is not None:
        headers["X-Phala-Version"] = version
    async with http_session.get(
        server.base_url + path, headers=headers, params=params, allow_redirects=False
    ) as response:
        reply = Reply(response.status, dict(response.headers), await response.read())
    assert reply.headers["X-Request-ID"].startswith("req_")
    return reply


ROUTES = [
    "/kms",
    "/kms/phala",
    "/kms/base/nodes",
    f"/kms/phala/pubkey/{APP_ID}",
    "/kms/on-chain/base",
    "/kms/phala/next_app_id",
]


# -- lifecycle and auth ------------------------------------------------------------------


async def test_binds_loopback_on_a_free_port(server: FakeKMSServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/api/v1"
    assert server.api_key.startswith("phak_")
    assert server.api_key not in repr(server)


async def test_port_is_unavailable_before_start() -> None:
    server = FakeKMSServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert "not running" in repr(server)


@pytest.mark.parametrize("path", ROUTES)
async def test_every_route_needs_the_api_key(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, path: str
) -> None:
    missing = await call(http_session, server, path, api_key=None)
    assert missing.status == 401
    assert isinstance(missing.json()["detail"], str)
    wrong = await call(http_session, server, path, api_key="phak_wrong")
    assert wrong.status == 403
    assert isinstance(wrong.json()["detail"], str)
    good = await call(http_session, server, path)
    assert good.status == 200
    assert good.headers["Content-Type"].startswith("application/json")


async def test_custom_api_key(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(api_key="phak_custom") as server:
        assert (await call(http_session, server, "/kms", api_key="phak_custom")).status == 200
        assert (
            await call(http_session, server, "/kms", api_key="phak_fake_0123456789abcdef")
        ).status == 403


# -- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "contract_shape"),
    [
        (None, True),
        (CONTRACT_API_VERSION, True),
        ("2027-01-01", True),
        (NODE_API_VERSION, False),
        ("2026-06-22", False),
        ("2026-01-21", False),
        ("2025-10-28", False),
    ],
)
async def test_version_switches_list_shape(
    server: FakeKMSServer,
    http_session: aiohttp.ClientSession,
    version: str | None,
    contract_shape: bool,
) -> None:
    body = (await call(http_session, server, "/kms", version=version)).json()
    assert set(body) == ENVELOPE_KEYS
    for item in body["items"]:
        if contract_shape:
            assert set(item) == CONTRACT_KEYS
        else:
            assert set(item) >= NODE_KEYS
            assert "node_count" not in item


async def test_version_switches_detail_shape(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    contract = (await call(http_session, server, "/kms/phala")).json()
    assert contract == server.contracts[0]
    assert contract["contract_address"] == "phala"
    assert contract["chain_id"] == 0
    assert contract["k256_pubkey"] == server.k256_pubkey
    by_id = (await call(http_session, server, "/kms/" + contract["id"])).json()
    assert by_id == contract

    node = (await call(http_session, server, "/kms/phala", version=NODE_API_VERSION)).json()
    assert node["slug"] == "phala"
    assert node["chain_id"] is None
    assert node["kms_contract_address"] is None
    by_node_id = await call(http_session, server, "/kms/" + node["id"], version=NODE_API_VERSION)
    assert by_node_id.json() == node
    # A node id is not a contract id.
    assert (await call(http_session, server, "/kms/" + node["id"])).status == 404


@pytest.mark.parametrize("version", ["latest", "2026-6-23", "20260623"])
async def test_malformed_version_is_400(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, version: str
) -> None:
    reply = await call(http_session, server, "/kms", version=version)
    assert reply.status == 400
    assert isinstance(reply.json()["detail"], str)


async def test_default_version_is_configurable(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(default_version=NODE_API_VERSION) as server:
        item = (await call(http_session, server, "/kms")).json()["items"][0]
        assert "url" in item
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        FakeKMSServer(default_version="newest")


# -- paging --------------------------------------------------------------------------------


async def test_paging_walks_every_node(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    first = (await call(http_session, server, "/kms", version=NODE_API_VERSION)).json()
    assert (first["total"], first["page"], first["page_size"], first["pages"]) == (50, 1, 20, 3)
    seen: list[str] = []
    for page in (1, 2, 3):
        body = (
            await call(
                http_session,
                server,
                "/kms",
                version=NODE_API_VERSION,
                params={"page": str(page), "page_size": "20"},
            )
        ).json()
        assert body["page"] == page
        seen.extend(item["id"] for item in body["items"])
    assert len(seen) == len(set(seen)) == 50
    assert seen == [node["id"] for node in server.nodes]
    beyond = await call(
        http_session, server, "/kms", version=NODE_API_VERSION, params={"page": "4"}
    )
    assert beyond.json() == {"items": [], "total": 50, "page": 4, "page_size": 20, "pages": 3}
    everything = await call(
        http_session, server, "/kms", version=NODE_API_VERSION, params={"page_size": "100"}
    )
    assert len(everything.json()["items"]) == 50
    assert everything.json()["pages"] == 1


async def test_node_catalogue_has_the_real_quirks(server: FakeKMSServer) -> None:
    nodes = server.nodes
    on_chain = [node for node in nodes if node["chain_id"] is not None]
    assert {node["chain_id"] for node in on_chain} == {1, 8453}
    addresses = {node["kms_contract_address"] for node in on_chain if node["chain_id"] == 8453}
    assert len(addresses) > 1
    assert len({address.lower() for address in addresses}) == 1
    assert any(node["version"].startswith("v") for node in nodes)
    assert any("region" in node for node in nodes)
    assert any(node["slug"] is None for node in nodes)
    with_key = [node for node in nodes if "k256_pubkey" in node]
    assert 0 < len(with_key) < len(nodes)
    for node in with_key:
        kms = "phala" if node["chain_id"] is None else str(node["id"])
        key = node["k256_pubkey"].lower()
        assert key.removeprefix("0x") == server.k256_pubkey_for(kms)[2:]


@pytest.mark.parametrize(("value", "onchain"), [("true", True), ("false", False)])
async def test_is_onchain_filter(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, value: str, onchain: bool
) -> None:
    nodes = (
        await call(
            http_session,
            server,
            "/kms",
            version=NODE_API_VERSION,
            params={"is_onchain": value, "page_size": "100"},
        )
    ).json()
    assert nodes["total"] == (5 if onchain else 45)
    assert all((item["chain_id"] is not None) is onchain for item in nodes["items"])
    contracts = (await call(http_session, server, "/kms", params={"is_onchain": value})).json()
    assert contracts["total"] == (2 if onchain else 1)
    assert all((item["chain_id"] != 0) is onchain for item in contracts["items"])


async def test_pages_arithmetic_and_empty_results(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(phala_node_count=7, include_onchain=False) as server:
        empty = await call(
            http_session, server, "/kms", version=NODE_API_VERSION, params={"is_onchain": "true"}
        )
        assert empty.json() == load_fixture("kms_list_empty.json")
        for page_size, pages in [("1", 7), ("3", 3), ("7", 1), ("8", 1), ("100", 1)]:
            body = (
                await call(
                    http_session,
                    server,
                    "/kms",
                    version=NODE_API_VERSION,
                    params={"page_size": page_size},
                )
            ).json()
            assert (body["total"], body["pages"]) == (7, pages)
    async with FakeKMSServer(phala_node_count=0, include_onchain=False) as server:
        body = (await call(http_session, server, "/kms", version=NODE_API_VERSION)).json()
        assert body == load_fixture("kms_list_empty.json")


async def test_page_size_over_100_matches_the_fixture(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    reply = await call(http_session, server, "/kms", params={"page_size": "500"})
    assert reply.status == 422
    assert reply.json() == load_fixture("error_validation_422.json")


@pytest.mark.parametrize(
    ("params", "loc", "kind", "ctx"),
    [
        ({"page": "0"}, "page", "greater_than_equal", {"ge": 1}),
        ({"page": "-3"}, "page", "greater_than_equal", {"ge": 1}),
        ({"page": "abc"}, "page", "int_parsing", None),
        ({"page": "1.5"}, "page", "int_parsing", None),
        ({"page_size": "0"}, "page_size", "greater_than_equal", {"ge": 1}),
        ({"page_size": "101"}, "page_size", "less_than_equal", {"le": 100}),
        ({"page_size": ""}, "page_size", "int_parsing", None),
        ({"is_onchain": "maybe"}, "is_onchain", "bool_parsing", None),
    ],
)
async def test_invalid_paging_is_422(
    server: FakeKMSServer,
    http_session: aiohttp.ClientSession,
    params: dict[str, str],
    loc: str,
    kind: str,
    ctx: dict[str, int] | None,
) -> None:
    reply = await call(http_session, server, "/kms", params=params)
    assert reply.status == 422
    (error,) = reply.json()["detail"]
    assert error["loc"] == ["query", loc]
    assert error["type"] == kind
    assert error["input"] == params[loc]
    assert isinstance(error["msg"], str)
    assert error.get("ctx") == ctx


async def test_all_validation_errors_are_reported(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    reply = await call(http_session, server, "/kms", params={"page": "x", "page_size": "0"})
    assert [error["loc"][1] for error in reply.json()["detail"]] == ["page", "page_size"]


@pytest.mark.fake_kms_options(phala_node_count=3, include_onchain=False)
async def test_marker_passes_constructor_options(
    fake_kms_server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    body = (await call(http_session, fake_kms_server, "/kms", version=NODE_API_VERSION)).json()
    assert body["total"] == 3


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "version", "field"),
    [
        ("/kms/nope", None, "kms_id"),
        ("/kms/nope", NODE_API_VERSION, "kms_id"),
        ("/kms/nope/nodes", None, "slug"),
        (f"/kms/nope/pubkey/{APP_ID}", None, "kms"),
    ],
)
async def test_unknown_kms_is_a_structured_404(
    server: FakeKMSServer,
    http_session: aiohttp.ClientSession,
    path: str,
    version: str | None,
    field: str,
) -> None:
    reply = await call(http_session, server, path, version=version)
    assert reply.status == 404
    body = reply.json()
    assert set(body) == set(load_fixture("error_structured.json"))
    assert body["error_code"] == "ERR-02-011"
    assert body["message"] == "KMS not found"
    assert body["request_id"] == reply.headers["X-Request-ID"]
    assert body["details"] == [{"field": field, "value": "nope", "message": None}]
    assert body["suggestions"]
    assert all(set(link) == {"url", "label"} for link in body["links"])


async def test_request_ids_are_unique(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    ids = {(await call(http_session, server, "/kms")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
    assert [entry.request_id for entry in server.requests] == sorted(ids)


async def test_trailing_slash_redirects_like_fastapi(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    reply = await call(http_session, server, "/kms/", params={"page": "2"})
    assert reply.status == 307
    assert reply.headers["Location"] == server.base_url + "/kms?page=2"
    unknown = await call(http_session, server, "/nothing/here")
    assert unknown.status == 404
    assert unknown.json() == {"detail": "Not Found"}


async def test_wrong_method_is_405_json(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    async with http_session.post(server.base_url + "/kms") as response:
        assert response.status == 405
        assert await response.json() == {"detail": "Method Not Allowed"}
        assert "X-Request-ID" in response.headers


# -- contract nodes, on-chain, next app ids ------------------------------------------------


async def test_contract_nodes(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    body = (await call(http_session, server, "/kms/base/nodes")).json()
    assert set(body) == {"items", "total"}
    assert body["total"] == len(body["items"]) == 3
    for item in body["items"]:
        assert set(item) == {"id", "slug", "url", "version", "kms_type"}
        assert item["kms_type"] == "base"
    phala = (await call(http_session, server, "/kms/phala/nodes")).json()
    assert phala["total"] == 45
    assert phala["items"][0]["kms_type"] == "phala"
    contract_id = server.contracts[2]["id"]
    ethereum = (await call(http_session, server, f"/kms/{contract_id}/nodes")).json()
    assert ethereum["total"] == 2


async def test_onchain_base(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    body = (await call(http_session, server, "/kms/on-chain/base")).json()
    expected = load_fixture("kms_onchain_base.json")
    assert set(body) == set(expected)
    assert (body["chain_name"], body["chain_id"]) == ("base", 8453)
    (contract,) = body["contracts"]
    assert set(contract) == set(expected["contracts"][0])
    assert contract["contract_address"] == expected["contracts"][0]["contract_address"]
    assert contract["k256_pubkey"] == server.k256_pubkey_for("base")
    assert any("node_name" not in device for device in contract["devices"])
    assert {device["on_chain_allowed"] for device in contract["devices"]} == {True, False, None}
    assert {image["on_chain_allowed"] for image in contract["os_images"]} == {True, False, None}
    assert any(image["os_image_hash"] is None for image in contract["os_images"])
    ethereum = (await call(http_session, server, "/kms/on-chain/ethereum")).json()
    assert ethereum["chain_id"] == 1
    assert ethereum["contracts"][0]["k256_pubkey"] == server.k256_pubkey_for("ethereum")


async def test_onchain_without_contracts(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(include_onchain=False, phala_node_count=1) as server:
        body = (await call(http_session, server, "/kms/on-chain/ethereum")).json()
        assert body == load_fixture("kms_onchain_empty.json")


@pytest.mark.parametrize("chain", ["polygon", "Base", "8453"])
async def test_unknown_chain_is_400(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, chain: str
) -> None:
    reply = await call(http_session, server, f"/kms/on-chain/{chain}")
    assert reply.status == 400
    assert isinstance(reply.json()["detail"], str)


async def test_next_app_ids(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    one = (await call(http_session, server, "/kms/phala/next_app_id")).json()
    assert set(one) == {"app_ids"}
    assert one["app_ids"] == [{"app_id": server.app_id_for_nonce(0), "nonce": 0}]
    many = await call(http_session, server, "/kms/phala/next_app_id", params={"counts": "20"})
    app_ids = many.json()["app_ids"]
    assert [entry["nonce"] for entry in app_ids] == list(range(20))  # reads do not advance
    assert all(re.fullmatch("[0-9a-f]{40}", entry["app_id"]) for entry in app_ids)
    assert len({entry["app_id"] for entry in app_ids}) == 20
    assert server.next_nonce == 0
    assert server.deploy_app() == server.app_id_for_nonce(0)
    moved = (await call(http_session, server, "/kms/phala/next_app_id")).json()
    assert moved["app_ids"] == [{"app_id": server.app_id_for_nonce(1), "nonce": 1}]
    server.reset()
    again = (await call(http_session, server, "/kms/phala/next_app_id")).json()
    assert again == one


async def test_next_app_ids_are_deterministic(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(first_nonce=41) as server:
        body = await call(http_session, server, "/kms/phala/next_app_id", params={"counts": "2"})
        assert [entry["nonce"] for entry in body.json()["app_ids"]] == [41, 42]
    async with FakeKMSServer(first_nonce=41) as twin:
        again = await call(http_session, twin, "/kms/phala/next_app_id", params={"counts": "2"})
        assert again.json() == body.json()


@pytest.mark.parametrize(
    ("counts", "kind"),
    [("0", "greater_than_equal"), ("21", "less_than_equal"), ("two", "int_parsing")],
)
async def test_next_app_id_counts_limits(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, counts: str, kind: str
) -> None:
    reply = await call(http_session, server, "/kms/phala/next_app_id", params={"counts": counts})
    assert reply.status == 422
    (error,) = reply.json()["detail"]
    assert (error["loc"], error["type"], error["input"]) == (["query", "counts"], kind, counts)


# -- env-encryption public keys ------------------------------------------------------------


async def test_pubkey_signature_recovers_the_advertised_root_key(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    reply = await call(http_session, server, f"/kms/phala/pubkey/{APP_ID}")
    body = reply.json()
    assert set(body) == {"public_key", "signature"}
    assert re.fullmatch("[0-9a-f]{64}", body["public_key"])
    assert re.fullmatch("[0-9a-f]{130}", body["signature"])
    message = (
        b"dstack-env-encrypt-pubkey:" + bytes.fromhex(APP_ID) + bytes.fromhex(body["public_key"])
    )
    assert len(message) == 78
    advertised = (await call(http_session, server, "/kms/phala")).json()["k256_pubkey"]
    assert recover_signer(body["signature"], message) == advertised == server.k256_pubkey


async def test_pubkey_matches_the_app_private_key(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    body = (await call(http_session, server, f"/kms/phala/pubkey/{APP_ID}")).json()
    private = server.app_private_key("phala", APP_ID)
    assert len(private) == 32
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert public.hex() == body["public_key"]
    assert server.app_public_key("phala", "0x" + APP_ID.upper()) == public


async def test_pubkey_is_deterministic_per_kms_and_app(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    async def key(kms: str, app_id: str) -> str:
        reply = await call(http_session, server, f"/kms/{kms}/pubkey/{app_id}")
        assert reply.status == 200
        return str(reply.json()["public_key"])

    phala = await key("phala", APP_ID)
    assert await key("phala", "0x" + APP_ID) == phala
    assert await key("phala", APP_ID.upper()) == phala
    phala_contract, base_contract = server.contracts[:2]
    assert await key(phala_contract["id"], APP_ID) == phala
    assert await key(server.nodes[1]["id"], APP_ID) == phala
    assert await key("phala-prod2", APP_ID) == phala
    assert await key("phala", OTHER_APP_ID) != phala
    base = await key("base", APP_ID)
    assert base != phala
    assert await key(base_contract["id"], APP_ID) == base
    assert await key("kms-base-prod9", APP_ID) == base
    assert await key("ethereum", APP_ID) not in (phala, base)
    async with FakeKMSServer() as twin:
        assert twin.app_public_key("phala", APP_ID).hex() == phala
        assert twin.k256_pubkey == server.k256_pubkey
    async with FakeKMSServer(seed="another") as stranger:
        assert stranger.app_public_key("phala", APP_ID).hex() != phala
        assert stranger.k256_pubkey != server.k256_pubkey


async def test_each_kms_signs_with_its_own_root_key(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    for kms in ("base", "ethereum"):
        body = (await call(http_session, server, f"/kms/{kms}/pubkey/{APP_ID}")).json()
        message = (
            b"dstack-env-encrypt-pubkey:"
            + bytes.fromhex(APP_ID)
            + bytes.fromhex(body["public_key"])
        )
        assert recover_signer(body["signature"], message) == server.k256_pubkey_for(kms)
        private = server.root_private_key(kms)
        assert len(private) == 32
    with pytest.raises(KeyError):
        server.k256_pubkey_for("nope")
    with pytest.raises(ValueError, match="40 hex"):
        server.app_private_key("phala", "xyz")


@pytest.mark.parametrize(
    "app_id", ["abc", APP_ID[:-1], APP_ID + "0", "0x" + APP_ID[:-2], "g" * 40, "0X" + APP_ID]
)
async def test_malformed_app_id_is_422(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, app_id: str
) -> None:
    reply = await call(http_session, server, f"/kms/phala/pubkey/{app_id}")
    assert reply.status == 422
    (error,) = reply.json()["detail"]
    assert error["loc"] == ["path", "app_id"]
    assert error["type"] == "string_pattern_mismatch"
    assert error["input"] == app_id


async def test_timestamped_signatures(http_session: aiohttp.ClientSession) -> None:
    now = 1_750_000_000.75

    async with FakeKMSServer(timestamped_signatures=True, clock=lambda: now) as server:
        body = (await call(http_session, server, f"/kms/base/pubkey/{APP_ID}")).json()
        assert set(body) == {"public_key", "signature", "timestamp", "signature_v1"}
        assert body["timestamp"] == 1_750_000_000
        public = bytes.fromhex(body["public_key"])
        app_id = bytes.fromhex(APP_ID)
        prefix = b"dstack-env-encrypt-pubkey:"
        v1_message = prefix + app_id + (1_750_000_000).to_bytes(8, "big") + public
        assert len(v1_message) == 86
        signer = server.k256_pubkey_for("base")
        assert recover_signer(body["signature_v1"], v1_message) == signer
        assert recover_signer(body["signature"], prefix + app_id + public) == signer

        server.clock = lambda: now + 10
        later = (await call(http_session, server, f"/kms/base/pubkey/{APP_ID}")).json()
        assert later["timestamp"] == 1_750_000_010
        assert later["signature_v1"] != body["signature_v1"]
        assert later["signature"] == body["signature"]

        server.timestamped_signatures = False
        legacy = (await call(http_session, server, f"/kms/base/pubkey/{APP_ID}")).json()
        assert set(legacy) == {"public_key", "signature"}


async def test_signature_cache_is_bounded(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(signature_cache_size=2) as server:
        seen: dict[str, Any] = {}
        for app_id in (APP_ID, OTHER_APP_ID, "11" * 20, APP_ID):
            body = (await call(http_session, server, f"/kms/phala/pubkey/{app_id}")).json()
            seen.setdefault(app_id, body)
            assert seen[app_id] == body
    async with FakeKMSServer(signature_cache_size=0) as uncached:
        first = (await call(http_session, uncached, f"/kms/phala/pubkey/{APP_ID}")).json()
        assert (await call(http_session, uncached, f"/kms/phala/pubkey/{APP_ID}")).json() == first


async def test_extra_nodes_join_their_contract(http_session: aiohttp.ClientSession) -> None:
    extra = [
        {
            "id": "kms_extra_base",
            "slug": "kms-base-extra",
            "url": "https://kms.extra.example",
            "version": "0.5.9",
            "chain_id": 8453,
            "kms_contract_address": "0x2F83172A49584C017F2B256F0FB2DCA14126BA9C",
            "gateway_app_id": None,
            "brand_new_field": [1, 2],
        },
        {
            "id": "kms_local",
            "slug": "kms-local",
            "url": "http://127.0.0.1:8000",
            "version": "0.0.1",
            "chain_id": 31337,
            "kms_contract_address": "0x" + "1" * 40,
            "gateway_app_id": None,
        },
    ]
    async with FakeKMSServer(phala_node_count=2, extra_nodes=extra) as server:
        listed = (await call(http_session, server, "/kms", version=NODE_API_VERSION)).json()
        assert listed["total"] == 2 + 5 + 2
        assert listed["items"][-2] == extra[0]
        nodes = (await call(http_session, server, "/kms/base/nodes")).json()
        assert nodes["total"] == 4
        assert server.k256_pubkey_for("kms_extra_base") == server.k256_pubkey_for("base")
        local = server.k256_pubkey_for("kms_local")
        assert local not in {server.k256_pubkey_for(k) for k in ("phala", "base", "ethereum")}
        body = (await call(http_session, server, f"/kms/kms-local/pubkey/{APP_ID}")).json()
        message = (
            b"dstack-env-encrypt-pubkey:"
            + bytes.fromhex(APP_ID)
            + bytes.fromhex(body["public_key"])
        )
        assert recover_signer(body["signature"], message) == local
    with pytest.raises(ValueError, match="id"):
        FakeKMSServer(extra_nodes=[{"slug": "no-id"}])
    with pytest.raises(ValueError, match=">= 0"):
        FakeKMSServer(phala_node_count=-1)
