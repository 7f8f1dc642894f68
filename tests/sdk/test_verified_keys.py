"""Verified keys through the clients (both kinds, against the fake): the trusted-signer
lookup, fetching a key and proving the KMS signed it, and encrypting env vars to it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from phala_kms import (
    KMSClient,
    NotFoundError,
    SignatureVerificationError,
    TrustedSigner,
)
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars

APP_IDS = [f"{i:040x}" for i in range(1, 6)]
APP_ID = "cd" * 20


# --------------------------------------------------------------------------- trusted signer


def lookups(server: FakeKMSServer) -> list[tuple[str, str, str | None]]:
    return [(r.route, r.path.removeprefix("/api/v1"), r.phala_version) for r in server.requests]


def test_trusted_signer_from_the_contract_view(kms: Any, server: FakeKMSServer) -> None:
    signer = kms.get_trusted_signer("phala")
    assert isinstance(signer, TrustedSigner)
    assert signer.k256_pubkey.lower() == server.k256_pubkey.lower()
    assert signer.sources == ("api: GET /kms/phala (contract view) k256_pubkey",)
    assert lookups(server) == [("kms_info", "/kms/phala", "2026-06-23")]


def test_trusted_signer_falls_back_to_the_node_view(kms: Any, server: FakeKMSServer) -> None:
    signer = kms.get_trusted_signer("kms-base-prod7")  # a node, not a contract
    assert signer.k256_pubkey.lower() == server.k256_pubkey_for("base").lower()
    assert signer.sources == ("api: GET /kms/kms-base-prod7 (node view) k256_pubkey",)
    assert lookups(server) == [
        ("kms_info", "/kms/kms-base-prod7", "2026-06-23"),  # 404: no such contract
        ("kms_info", "/kms/kms-base-prod7", "2026-05-22"),
    ]


@pytest.mark.parametrize(
    ("node", "contract"), [("kms-base-prod9", "base"), ("phala-prod2", "phala")]
)
def test_a_node_without_a_key_takes_the_key_of_the_contract_it_serves(
    kms: Any, server: FakeKMSServer, node: str, contract: str
) -> None:
    # kms-base-prod9 (on chain, lowercase contract address) and phala-prod2 (off chain)
    # omit k256_pubkey in the node view.
    signer = kms.get_trusted_signer(node)
    assert signer.k256_pubkey.lower() == server.k256_pubkey_for(contract).lower()
    assert signer.sources == (
        f"api: GET /kms (contract view) k256_pubkey of {contract}, the contract node {node} serves",
    )
    assert [route for route, _, _ in lookups(server)] == ["kms_info", "kms_info", "kms_list"]


def test_no_key_anywhere_is_a_signature_verification_error(kms: Any, server: FakeKMSServer) -> None:
    empty = {"items": [], "total": 0, "page": 1, "page_size": 100, "pages": 0}
    server.inject("kms_list", StatusFault(200, body=empty), times=None)  # no contract matches
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer("kms-base-prod9")
    assert caught.value.reason == "invalid_trusted_signer"
    assert "no k256_pubkey for KMS 'kms-base-prod9'" in str(caught.value)


def test_a_contract_without_a_key_is_a_signature_verification_error(
    kms: Any, server: FakeKMSServer
) -> None:
    keyless = {**server.contracts[0], "k256_pubkey": None}
    server.inject("kms_info", StatusFault(200, body=keyless), times=1)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer("phala")
    assert caught.value.reason == "invalid_trusted_signer"
    assert server.route_counts == {"kms_info": 1}


def test_an_unknown_kms_has_no_trusted_signer(kms: Any, server: FakeKMSServer) -> None:
    with pytest.raises(NotFoundError):
        kms.get_trusted_signer("no-such-kms")


def test_a_trusted_signer_is_accepted_wherever_a_key_is(kms: Any, server: FakeKMSServer) -> None:
    signer = kms.get_trusted_signer("base")
    key = kms.get_verified_app_env_encrypt_pubkey("base", APP_IDS[0], trusted_signer=signer)
    assert key.public_key_bytes == server.app_public_key("base", APP_IDS[0])
    sealed = kms.encrypt_env_vars_for_app("base", APP_IDS[0], {"A": "1"}, trusted_signer=signer)
    opened = decrypt_env_vars(sealed, server.app_private_key("base", APP_IDS[0]))
    assert [(v.key, v.value) for v in opened] == [("A", "1")]
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey("phala", APP_IDS[0], trusted_signer=signer)
    assert caught.value.reason == "signer_mismatch"


# --------------------------------------------------------------------------- verified keys


def test_pubkey_matches_the_kms_key_and_verifies(kms: Any, server: FakeKMSServer) -> None:
    key = kms.get_app_env_encrypt_pubkey("phala", "0x" + APP_IDS[0].upper())
    assert key.public_key_bytes == server.app_public_key("phala", APP_IDS[0])
    verified = kms.get_verified_app_env_encrypt_pubkey(
        "phala", APP_IDS[0], trusted_signer=server.k256_pubkey
    )
    assert (verified.public_key, verified.signature) == (key.public_key, key.signature)
    assert (verified.scheme, verified.timestamp) == ("signature", None)
    assert verified.signer == server.k256_pubkey
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_IDS[0], trusted_signer=server.k256_pubkey_for("base")
        )
    assert caught.value.reason == "signer_mismatch"


def test_timestamped_signature_is_preferred(kms: Any, server: FakeKMSServer) -> None:
    server.timestamped_signatures = True
    key = kms.get_verified_app_env_encrypt_pubkey(
        "base", APP_IDS[1], trusted_signer=server.k256_pubkey_for("base")
    )
    assert key.timestamp is not None and key.scheme == "signature_v1"
    server.clock = lambda: 1_000.0  # a signature from 1970: stale
    try:
        with pytest.raises(SignatureVerificationError) as caught:
            kms.get_verified_app_env_encrypt_pubkey(
                "base", APP_IDS[2], trusted_signer=server.k256_pubkey_for("base")
            )
        assert caught.value.reason == "stale_timestamp"
    finally:
        server.clock = time.time


@pytest.mark.parametrize("signer", ["", "0x1234", "not hex", "04" + "00" * 64])
def test_unusable_trusted_signer_fails_before_any_request(
    kms: Any, server: FakeKMSServer, signer: str
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey("phala", APP_IDS[0], trusted_signer=signer)
    assert caught.value.reason == "invalid_trusted_signer"
    with pytest.raises(SignatureVerificationError):
        kms.get_verified_app_env_encrypt_pubkeys("phala", APP_IDS, trusted_signer=signer)
    with pytest.raises(SignatureVerificationError):
        kms.encrypt_env_vars_for_app("phala", APP_IDS[0], {"A": "b"}, trusted_signer=signer)
    assert server.total_requests == 0


# --------------------------------------------------------------------------- encryption


def test_encrypt_env_vars_for_app_round_trip(kms: Any, server: FakeKMSServer) -> None:
    env = {"DATABASE_URL": "postgres://u:p@h/db?x=1", "TRAILING": "back\\", "EMPTY": ""}
    hex_ct = kms.encrypt_env_vars_for_app(
        "phala", APP_IDS[3], env, trusted_signer=server.k256_pubkey
    )
    plain = decrypt_env_vars(hex_ct, server.app_private_key("phala", APP_IDS[3]))
    assert [(v.key, v.value) for v in plain] == list(env.items())


def test_encrypting_a_one_shot_iterable_encrypts_every_variable(
    sync_client: KMSClient, server: FakeKMSServer
) -> None:
    pairs = {"A": "1", "B": "two"}
    sealed = sync_client.encrypt_env_vars_for_app(
        "phala", APP_ID, iter(pairs.items()), trusted_signer=server.k256_pubkey
    )
    opened = decrypt_env_vars(sealed, server.app_private_key("phala", APP_ID))
    assert [(v.key, v.value) for v in opened] == list(pairs.items())
