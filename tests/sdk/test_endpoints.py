"""The endpoints: what each method sends (path, query, headers, pinned versions) and what
it returns, with aioresponses and end to end against the fake over real sockets (both
clients)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    BadRequestError,
    KMSClient,
    NotFoundError,
    PermissionDeniedError,
)
from phala_kms._constants import CONTRACT_API_VERSION, NODE_API_VERSION
from phala_kms.testing import FakeKMSServer
from tests.helpers import API_KEY, MOCK_BASE, load_fixture

APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"
PUBKEY = {"public_key": "ab" * 32, "signature": "cd" * 65}


# --------------------------------------------------------------------------- on the wire


async def test_headers_and_version_pins(mocked: Any, mock_client: AsyncKMSClient) -> None:
    mocked.get(re.compile(r".*/kms\?.*"), payload=load_fixture("kms_list_page1.json"), repeat=True)
    mocked.get(f"{MOCK_BASE}/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    mocked.get(f"{MOCK_BASE}/kms/phala/pubkey/{APP_ID}", payload=PUBKEY)
    mocked.get(f"{MOCK_BASE}/kms/on-chain/base", payload=load_fixture("kms_onchain_base.json"))
    await mock_client.get_kms_list()
    await mock_client.get_kms_info("phala")
    await mock_client.get_app_env_encrypt_pubkey("phala", "0x" + APP_ID.upper())
    await mock_client.get_kms_on_chain_detail("base")
    await mock_client.get_kms_list(api_version="2025-10-28")
    versions: dict[str, list[str]] = {}
    for _method, url, kwargs in mocked.sent():
        headers = kwargs["headers"]
        assert headers["X-API-Key"] == API_KEY
        assert headers["User-Agent"].startswith("phala-kms/")
        assert kwargs["allow_redirects"] is False
        versions.setdefault(url.path, []).append(headers["X-Phala-Version"])
    assert versions["/api/v1/kms"] == ["2026-05-22", "2025-10-28"]  # pinned, then overridden
    assert versions["/api/v1/kms/phala"] == ["2026-05-22"]
    assert versions[f"/api/v1/kms/phala/pubkey/{APP_ID}"] == ["2026-06-23"]  # never pinned old
    assert versions["/api/v1/kms/on-chain/base"] == ["2026-06-23"]
    assert (NODE_API_VERSION, CONTRACT_API_VERSION) == ("2026-05-22", "2026-06-23")


async def test_query_params(mocked: Any, mock_client: AsyncKMSClient) -> None:
    mocked.get(re.compile(r".*/kms\?.*"), payload=load_fixture("kms_list_empty.json"), repeat=True)
    mocked.get(re.compile(r".*/next_app_id\?.*"), payload=load_fixture("next_app_ids.json"))
    await mock_client.get_kms_list(page=2, page_size=50, is_onchain=True)
    await mock_client.get_kms_list()
    await mock_client.next_app_ids(counts=2)
    queries = [dict(url.query) for _m, url, _k in mocked.sent()]
    assert {"page": "2", "page_size": "50", "is_onchain": "true"} in queries
    assert {"page": "1", "page_size": "20"} in queries  # is_onchain omitted when None
    assert {"counts": "2"} in queries


# --------------------------------------------------------------------------- against the fake


def test_kms_info_and_not_found(kms: Any) -> None:
    info = kms.get_kms_info("phala")
    assert info.slug == "phala" and info.chain_id is None
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("no-such-kms")
    err = caught.value
    assert err.status == 404
    assert err.error_code == "ERR-02-011"
    assert err.request_id
    assert err.attempts == 1


def test_on_chain_detail(kms: Any, server: FakeKMSServer) -> None:
    detail = kms.get_kms_on_chain_detail("base")
    assert detail.chain_id == 8453
    (contract,) = detail.contracts
    assert contract.k256_pubkey and contract.devices and contract.os_images
    assert contract.k256_pubkey.lower() == server.k256_pubkey_for("base").lower()
    with pytest.raises(BadRequestError):
        kms.get_kms_on_chain_detail("solana")


def test_next_app_ids(kms: Any) -> None:
    ids = kms.next_app_ids(counts=3)
    assert len(ids.app_ids) == 3
    nonces = [a.nonce for a in ids.app_ids]
    assert nonces == sorted(nonces) and len(set(nonces)) == 3
    assert all(len(a.app_id) == 40 for a in ids.app_ids)


def test_contract_routes(kms: Any, server: FakeKMSServer) -> None:
    page = kms.list_kms_contracts()
    slugs = {c.slug for c in page.items}
    assert {"phala", "base"} <= slugs
    phala = kms.get_kms_contract("phala")
    assert phala.chain_id == 0 and phala.is_onchain is False
    assert phala.k256_pubkey.lower() == server.k256_pubkey.lower()
    nodes = kms.list_kms_contract_nodes("phala")
    assert nodes.total == len(nodes.items) == 45
    assert len(kms.iter_kms_contracts(page_size=1)) == page.total
    versions = {r.phala_version for r in server.requests if r.route in ("kms_list", "kms_info")}
    assert versions == {"2026-06-23"}


def test_auth_errors(server: FakeKMSServer) -> None:
    with KMSClient("phak_wrong", server.base_url) as client, pytest.raises(PermissionDeniedError):
        client.get_kms_info("phala")
    assert server.requests[-1].headers.get("X-API-Key") != "phak_wrong"  # redacted in the log
