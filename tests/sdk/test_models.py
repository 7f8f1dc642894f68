"""Decoding API JSON into frozen models: fixture shapes, nulls, unknown keys, strictness."""

from __future__ import annotations

import attrs
import pytest

from phala_kms import (
    AppEnvEncryptPubKey,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    OnChainDevice,
    Paginated,
)
from phala_kms._convert import DecodeError, structure
from tests.conftest import load_fixture


def test_kms_list_page_keeps_quirks_and_unknown_fields() -> None:
    page = structure(load_fixture("kms_list_page1.json"), Paginated[KMSInfo])
    assert (page.total, page.page, page.page_size, page.pages) == (5, 1, 20, 1)
    assert [i.id for i in page.items] == [
        "kms_7Hq2mZ01",
        "kms_7Hq2mZ02",
        "kms_9Kc4pB07",
        "kms_9Kc4pB09",
        "kms_3Ew8tN01",
    ]
    phala, _, base7, base9, eth = page.items
    assert phala.chain_id is None and phala.kms_contract_address is None
    assert phala.k256_pubkey is None  # absent key decodes like null
    assert base7.version == "v0.5.7"  # kept as sent, not normalised
    assert (
        base7.k256_pubkey == "0x03082b64216200a62e957307314fa8bb1e90ba65d5ccb73e0264046169cd497af2"
    )
    assert base9.extra == {"region": "us-east"}  # unknown field kept
    assert phala.extra == {}
    assert eth.kms_contract_address == "0x4B2c5E9a1F0d3C7b8A6e2D1f9C0b3A5e7D8c6F41"  # case kept
    assert page.has_next is False


def test_empty_page() -> None:
    page = structure(load_fixture("kms_list_empty.json"), Paginated[KMSInfo])
    assert page.items == ()
    assert page.pages == 0
    assert page.has_next is False


def test_minimal_kms_info() -> None:
    info = structure(load_fixture("kms_info_minimal.json"), KMSInfo)
    assert info.id == "minimal-kms"
    assert info.slug is None and info.gateway_app_id is None


def test_on_chain_detail() -> None:
    detail = structure(load_fixture("kms_onchain_base.json"), KMSOnChainDetail)
    (contract,) = detail.contracts
    assert detail.chain_id == 8453 and contract.chain_name == "base"
    assert [d.node_name for d in contract.devices] == ["prod7", None]  # absent node_name
    assert [d.on_chain_allowed for d in contract.devices] == [True, None]
    assert [i.on_chain_allowed for i in contract.os_images] == [True, None, False]
    assert contract.os_images[1].os_image_hash is None
    empty = structure(load_fixture("kms_onchain_empty.json"), KMSOnChainDetail)
    assert empty.contracts == ()


def test_next_app_ids() -> None:
    ids = structure(load_fixture("next_app_ids.json"), NextAppIDs)
    assert [(a.app_id, a.nonce) for a in ids.app_ids] == [
        ("8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63", 41),
        ("2b7c4e1f9a3d6c8e0b5f2a7d4c1e9b6f3a8d0c52", 42),
    ]


def test_contract_shapes() -> None:
    page = structure(load_fixture("kms_contracts_v2026_06_23.json"), Paginated[KMSContract])
    phala, base = page.items
    assert phala.contract_address == "phala" and phala.chain_id == 0
    assert phala.is_onchain is False
    assert base.is_onchain is True and base.node_count == 4
    nodes = structure(load_fixture("kms_contract_nodes.json"), KMSContractNodes)
    assert nodes.total == 1 and nodes.items[0].kms_type == "phala"


def test_pubkey_hex_is_normalised_and_checked() -> None:
    key = structure(
        {"public_key": "0x" + "AB" * 32, "signature": "0X" + "cd" * 65, "timestamp": 17},
        AppEnvEncryptPubKey,
    )
    assert key.public_key == "ab" * 32
    assert key.signature == "cd" * 65
    assert key.public_key_bytes == bytes.fromhex("ab" * 32)
    assert key.timestamp == 17 and key.signature_v1 is None
    for bad in (
        {"public_key": "ab" * 31, "signature": "cd" * 65},
        {"public_key": "zz" * 32, "signature": "cd" * 65},
        {"public_key": "ab" * 32, "signature": "cd" * 64},
        {"public_key": "ab" * 32, "signature": "cd" * 65, "signature_v1": "00"},
    ):
        with pytest.raises(DecodeError):
            structure(bad, AppEnvEncryptPubKey)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "expected an object, got array @ $"),
        ({"id": 1, "url": "u", "version": "v"}, "expected a string, got integer @ $.id"),
        ({"id": "x", "url": "u"}, "required field missing @ $.version"),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": "1"},
            "expected an integer, got string @ $.chain_id",
        ),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": True},
            "expected an integer, got boolean @ $.chain_id",
        ),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": 1.0},
            "expected an integer, got number @ $.chain_id",
        ),
    ],
)
def test_strict_types(body: object, problem: str) -> None:
    with pytest.raises(DecodeError) as info:
        structure(body, KMSInfo)
    assert problem in info.value.problems
    assert info.value.model == "KMSInfo"


def test_lists_must_be_arrays() -> None:
    body = {"items": "abc", "total": 1, "page": 1, "page_size": 20, "pages": 1}
    with pytest.raises(DecodeError, match="expected an array"):
        structure(body, Paginated[KMSInfo])
    with pytest.raises(DecodeError, match="expected a boolean"):
        structure({"device_id": "d", "on_chain_allowed": "yes"}, OnChainDevice)


def test_models_are_frozen_and_extra_is_read_only() -> None:
    page = structure(load_fixture("kms_list_page1.json"), Paginated[KMSInfo])
    item = page.items[3]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        item.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        item.extra["region"] = "eu"  # type: ignore[index]
    assert attrs.evolve(item, slug="s").slug == "s"
