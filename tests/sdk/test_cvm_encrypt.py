"""CVM-aware encryption: read the CVM (``GET /cvms/{id}``), pick its KMS by slug, then
id (never a chain name), fetch and verify the key, encrypt; the fake serves the route."""

from __future__ import annotations

from typing import Any

import pytest

from phala_kms import (
    CVMInfo,
    InvalidArgumentError,
    NotFoundError,
    ResponseValidationError,
    SignatureVerificationError,
)
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars

ENV = {"DB_URL": "postgres://u:p@h/db", "TOKEN": "t0k"}


def opened(server: FakeKMSServer, kms: str, app_id: str, sealed: str) -> list[tuple[str, str]]:
    return [(v.key, v.value) for v in decrypt_env_vars(sealed, server.app_private_key(kms, app_id))]


def pubkey_paths(server: FakeKMSServer) -> list[str]:
    return [r.path.removeprefix("/api/v1") for r in server.requests if r.route == "app_pubkey"]


def test_get_cvm_models_the_app_id_and_kms_info(kms: Any, server: FakeKMSServer) -> None:
    cvm_id = server.add_cvm("kms-base-prod7", app_id="ab" * 20)
    cvm = kms.get_cvm(cvm_id)
    assert isinstance(cvm, CVMInfo)
    assert cvm.app_id == "ab" * 20
    assert cvm.kms_info is not None
    assert (cvm.kms_info.slug, cvm.kms_info.k256_pubkey) == (
        "kms-base-prod7",
        server.k256_pubkey_for("base"),
    )
    assert cvm.kms_info.extra["chain_id"] == 8453  # unknown fields kept
    assert cvm.extra["status"] == "running" and cvm.extra["id"] == cvm_id
    with pytest.raises(NotFoundError):
        kms.get_cvm("cvm_nope")
    with pytest.raises(InvalidArgumentError):
        kms.get_cvm("a/b")


def test_encrypt_for_a_cvm_uses_its_kms_by_slug(kms: Any, server: FakeKMSServer) -> None:
    cvm_id = server.add_cvm("kms-base-prod7")
    app_id = kms.get_cvm(cvm_id).app_id
    sealed = kms.encrypt_env_vars_for_cvm(
        cvm_id, ENV, trusted_signer=server.k256_pubkey_for("base")
    )
    assert opened(server, "base", app_id, sealed) == list(ENV.items())
    assert pubkey_paths(server) == [f"/kms/kms-base-prod7/pubkey/{app_id}"]


def test_without_a_slug_the_kms_id_is_used_never_the_chain(kms: Any, server: FakeKMSServer) -> None:
    cvm_id = server.add_cvm("kms-base-prod9", kms_info={"slug": None})
    cvm = kms.get_cvm(cvm_id)
    assert cvm.kms_info is not None and cvm.kms_info.slug is None
    sealed = kms.encrypt_env_vars_for_cvm(
        cvm_id, ENV, trusted_signer=server.k256_pubkey_for("base")
    )
    assert opened(server, "base", cvm.app_id, sealed) == list(ENV.items())
    assert pubkey_paths(server) == [f"/kms/{cvm.kms_info.id}/pubkey/{cvm.app_id}"]
    assert all("/kms/base/" not in path for path in pubkey_paths(server))


def test_a_cvm_without_slug_or_id_needs_kms(kms: Any, server: FakeKMSServer) -> None:
    cvm_id = server.add_cvm("phala", kms_info={"slug": None, "id": None})
    with pytest.raises(ResponseValidationError) as caught:
        kms.encrypt_env_vars_for_cvm(cvm_id, ENV, trusted_signer=server.k256_pubkey)
    assert "kms=" in str(caught.value)
    assert pubkey_paths(server) == []
    sealed = kms.encrypt_env_vars_for_cvm(
        cvm_id, ENV, trusted_signer=server.k256_pubkey, kms="phala"
    )
    app_id = kms.get_cvm(cvm_id).app_id
    assert opened(server, "phala", app_id, sealed) == list(ENV.items())


def test_a_cvm_of_another_kms_than_the_trusted_one_fails_closed(
    kms: Any, server: FakeKMSServer
) -> None:
    cvm_id = server.add_cvm("ethereum")
    with pytest.raises(SignatureVerificationError) as caught:
        kms.encrypt_env_vars_for_cvm(cvm_id, ENV, trusted_signer=server.k256_pubkey_for("base"))
    assert caught.value.reason == "anchor_mismatch"
    assert pubkey_paths(server) == []  # refused before the key was fetched
    keyless = server.add_cvm("ethereum", kms_info={"k256_pubkey": None})
    with pytest.raises(SignatureVerificationError) as caught:  # the signature still decides
        kms.encrypt_env_vars_for_cvm(keyless, ENV, trusted_signer=server.k256_pubkey_for("base"))
    assert caught.value.reason == "signer_mismatch"


def test_a_cvm_without_an_app_id_fails(kms: Any, server: FakeKMSServer) -> None:
    body = {"id": "cvm_x", "status": "running", "kms_info": {"slug": "phala"}}
    server.inject("/cvms/*", StatusFault(200, body=body), times=None)
    with pytest.raises(ResponseValidationError) as caught:
        kms.encrypt_env_vars_for_cvm("cvm_x", ENV, trusted_signer=server.k256_pubkey)
    assert "no app_id" in str(caught.value)
    assert pubkey_paths(server) == []


def test_env_vars_are_checked_before_any_request(kms: Any, server: FakeKMSServer) -> None:
    cvm_id = server.add_cvm("phala")
    with pytest.raises(InvalidArgumentError):
        kms.encrypt_env_vars_for_cvm(cvm_id, {}, trusted_signer=server.k256_pubkey)
    with pytest.raises(InvalidArgumentError):
        kms.encrypt_env_vars_for_cvm(
            cvm_id, ENV, trusted_signer=server.k256_pubkey, allowed_envs=["DB_URL"]
        )
    with pytest.raises(SignatureVerificationError):
        kms.encrypt_env_vars_for_cvm(cvm_id, ENV, trusted_signer="0x12")
    assert server.total_requests == 0
    sealed = kms.encrypt_env_vars_for_cvm(
        cvm_id, ENV, trusted_signer=server.k256_pubkey, allowed_envs=list(ENV),
        require_timestamped=False,
    )  # fmt: skip
    assert opened(server, "phala", kms.get_cvm(cvm_id).app_id, sealed) == list(ENV.items())
