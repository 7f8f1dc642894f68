"""No downgrade, no unverified fields: a verified key says exactly what was verified.

When a response carries the timestamped ``signature_v1``, only it is checked (a bad or
stale one is never rescued by the legacy ``signature``); a half-present pair fails
closed; ``require_timestamped`` refuses legacy-only keys; and the result never reports
a ``timestamp`` that no verified signature covered (api-spec 7, "Downgrade").
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from coincurve import PrivateKey

from phala_kms import (
    AppEnvEncryptPubKey,
    KMSClient,
    SignatureVerificationError,
    VerifiedAppEnvEncryptPubKey,
)
from phala_kms.crypto import keccak256, verify_app_env_encrypt_pubkey
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars

ROOT = PrivateKey(b"\x11" * 32)
OTHER = PrivateKey(b"\x22" * 32)
SIGNER = "0x" + ROOT.public_key.format(compressed=True).hex()
APP = bytes(range(20))
PUB = bytes(range(100, 132))
NOW = 1_750_000_000
APP_IDS = [f"{i:040x}" for i in range(1, 4)]


def sign(root: PrivateKey, timestamp: int | None = None) -> str:
    stamp = b"" if timestamp is None else timestamp.to_bytes(8, "big")
    digest = keccak256(b"dstack-env-encrypt-pubkey:" + APP + stamp + PUB)
    return root.sign_recoverable(digest, hasher=None).hex()


def key(**fields: Any) -> AppEnvEncryptPubKey:
    return AppEnvEncryptPubKey(public_key=PUB.hex(), signature=sign(ROOT), **fields)


def verify(k: AppEnvEncryptPubKey, **kwargs: Any) -> VerifiedAppEnvEncryptPubKey:
    return verify_app_env_encrypt_pubkey(k, APP, trusted_signer=SIGNER, now=NOW, **kwargs)


# --------------------------------------------------------------------------- the pure check


def test_a_legacy_key_reports_the_legacy_scheme_and_no_timestamp() -> None:
    verified = verify(key())
    assert verified == VerifiedAppEnvEncryptPubKey(
        public_key=PUB.hex(),
        app_id=APP.hex(),
        scheme="signature",
        signature=sign(ROOT),
        signer=SIGNER,
        timestamp=None,
    )
    assert not verified.timestamped
    assert not hasattr(verified, "signature_v1")  # nothing unverified is carried over


def test_a_timestamped_key_reports_what_its_signature_covered() -> None:
    verified = verify(key(timestamp=NOW - 10, signature_v1=sign(ROOT, NOW - 10)))
    assert (verified.scheme, verified.timestamp) == ("signature_v1", NOW - 10)
    assert verified.signature == sign(ROOT, NOW - 10)
    assert verified.signer == SIGNER and verified.timestamped


@pytest.mark.parametrize(
    ("signature_v1", "reason"),
    [
        (sign(OTHER, NOW), "signer_mismatch"),  # forged v1 next to a genuine legacy signature
        (sign(ROOT, NOW - 3_600), "signer_mismatch"),  # signed for another timestamp
    ],
)
def test_a_bad_signature_v1_is_not_rescued_by_the_legacy_signature(
    signature_v1: str, reason: str
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        verify(key(timestamp=NOW, signature_v1=signature_v1))
    assert caught.value.reason == reason


def test_a_stale_signature_v1_is_not_rescued_by_the_legacy_signature() -> None:
    stale = key(timestamp=NOW - 301, signature_v1=sign(ROOT, NOW - 301))
    with pytest.raises(SignatureVerificationError) as caught:
        verify(stale)
    assert caught.value.reason == "stale_timestamp"


@pytest.mark.parametrize(
    ("fields", "argument"),
    [({"timestamp": NOW}, "timestamp"), ({"signature_v1": sign(ROOT, NOW)}, "signature_v1")],
)
def test_a_half_present_pair_fails_closed(fields: dict[str, Any], argument: str) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        verify(key(**fields))
    assert caught.value.reason == "incomplete_signature_v1"
    assert caught.value.argument == argument


def test_require_timestamped_refuses_legacy_only_keys() -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        verify(key(), require_timestamped=True)
    assert caught.value.reason == "legacy_signature"
    stamped = key(timestamp=NOW, signature_v1=sign(ROOT, NOW))
    assert verify(stamped, require_timestamped=True).scheme == "signature_v1"


def test_the_result_is_canonical_whatever_the_input_form() -> None:
    raw = AppEnvEncryptPubKey(public_key="0x" + PUB.hex().upper(), signature="0x" + sign(ROOT))
    verified = verify_app_env_encrypt_pubkey(raw, "0x" + APP.hex().upper(), trusted_signer=SIGNER)
    assert (verified.public_key, verified.app_id) == (PUB.hex(), APP.hex())
    assert verified.public_key_bytes == PUB


# --------------------------------------------------------------------------- through the clients


def test_clients_return_what_was_verified(kms: Any, server: FakeKMSServer) -> None:
    legacy = kms.get_verified_app_env_encrypt_pubkey(
        "phala", APP_IDS[0], trusted_signer=server.k256_pubkey
    )
    assert isinstance(legacy, VerifiedAppEnvEncryptPubKey)
    assert (legacy.scheme, legacy.timestamp, legacy.signer) == (
        "signature",
        None,
        server.k256_pubkey,
    )
    server.timestamped_signatures = True
    stamped = kms.get_verified_app_env_encrypt_pubkey(
        "phala", APP_IDS[0], trusted_signer=server.k256_pubkey, require_timestamped=True
    )
    assert stamped.scheme == "signature_v1"
    assert stamped.timestamp is not None and abs(stamped.timestamp - time.time()) < 60
    keys = kms.get_verified_app_env_encrypt_pubkeys(
        "phala", APP_IDS, trusted_signer=server.k256_pubkey, require_timestamped=True
    )
    assert [k.scheme for k in keys] == ["signature_v1"] * len(APP_IDS)
    assert [k.public_key_bytes for k in keys] == [
        server.app_public_key("phala", a) for a in APP_IDS
    ]


def test_clients_refuse_legacy_only_keys_when_told(kms: Any, server: FakeKMSServer) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_IDS[0], trusted_signer=server.k256_pubkey, require_timestamped=True
        )
    assert caught.value.reason == "legacy_signature"
    results = kms.get_verified_app_env_encrypt_pubkeys(
        "phala",
        APP_IDS,
        trusted_signer=server.k256_pubkey,
        require_timestamped=True,
        return_exceptions=True,
    )
    assert [getattr(r, "reason", None) for r in results] == ["legacy_signature"] * len(APP_IDS)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.encrypt_env_vars_for_app(
            "phala", APP_IDS[0], {"A": "1"}, trusted_signer=server.k256_pubkey,
            require_timestamped=True,
        )  # fmt: skip
    assert caught.value.reason == "legacy_signature"


@pytest.mark.parametrize("drop", ["signature_v1", "timestamp"])
def test_a_half_present_pair_from_the_api_fails_closed(
    kms: Any, server: FakeKMSServer, drop: str
) -> None:
    server.timestamped_signatures = True
    with KMSClient(server.api_key, server.base_url) as client:
        body = client.get_app_env_encrypt_pubkey("phala", APP_IDS[1])
    answer = {
        "public_key": body.public_key,
        "signature": body.signature,
        "timestamp": body.timestamp,
        "signature_v1": body.signature_v1,
    }
    del answer[drop]
    server.inject("app_pubkey", StatusFault(200, body=answer), times=None)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_IDS[1], trusted_signer=server.k256_pubkey
        )
    assert caught.value.reason == "incomplete_signature_v1"
    with pytest.raises(SignatureVerificationError):
        kms.encrypt_env_vars_for_app(
            "phala", APP_IDS[1], {"A": "1"}, trusted_signer=server.k256_pubkey
        )


def test_a_forged_signature_v1_beside_a_genuine_legacy_one_is_refused(
    kms: Any, server: FakeKMSServer
) -> None:
    app = bytes.fromhex(APP_IDS[2])
    public = server.app_public_key("phala", app)
    with KMSClient(server.api_key, server.base_url) as client:  # the KMS's genuine legacy one
        legacy = client.get_app_env_encrypt_pubkey("phala", APP_IDS[2]).signature
    stamp = int(time.time())
    forged = OTHER.sign_recoverable(
        keccak256(b"dstack-env-encrypt-pubkey:" + app + stamp.to_bytes(8, "big") + public),
        hasher=None,
    )
    answer = {"public_key": public.hex(), "signature": legacy, "timestamp": stamp,
              "signature_v1": forged.hex()}  # fmt: skip
    server.inject("app_pubkey", StatusFault(200, body=answer), times=None)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_IDS[2], trusted_signer=server.k256_pubkey
        )
    assert caught.value.reason == "signer_mismatch"


def test_encrypting_uses_the_verified_key(kms: Any, server: FakeKMSServer) -> None:
    server.timestamped_signatures = True
    sealed = kms.encrypt_env_vars_for_app(
        "base", APP_IDS[0], {"A": "1"}, trusted_signer=server.k256_pubkey_for("base"),
        require_timestamped=True,
    )  # fmt: skip
    opened = decrypt_env_vars(sealed, server.app_private_key("base", APP_IDS[0]))
    assert [(v.key, v.value) for v in opened] == [("A", "1")]
