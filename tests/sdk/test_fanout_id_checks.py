"""Each app id of a fan-out is checked once: up front, never again inside the workers.

The four many-apps methods (the batch and streaming fan-outs, unverified and verified)
normalise every given id with :func:`phala_kms._params.app_id_hex` before anything is
sent, and the workers fetch the normalised id as it is (issue 14: no second validation
per request). Counted by wrapping that function wherever the SDK bound it, on both
client kinds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from phala_kms import InvalidArgumentError, PhalaKMSError, _params
from phala_kms.testing import FakeKMSServer
from tests.helpers import ClientDriver

IDS = [f"{i:040x}" for i in range(1, 6)]
GIVEN = [*IDS, "0x" + IDS[0].upper(), "not-an-id"]
"""Five distinct ids, one of them again in another spelling, and a malformed one."""


@pytest.fixture
def id_checks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call of ``app_id_hex`` from the SDK (not the fake server), by its argument."""
    original = _params.app_id_hex
    seen: list[object] = []

    def counting(app_id: object, argument: str = "app_id") -> str:
        seen.append(app_id)
        return original(app_id, argument)

    for name, module in list(sys.modules.items()):
        in_sdk = name == "phala_kms" or name.startswith("phala_kms.")
        if not in_sdk or name.startswith(("phala_kms.testing", "phala_kms.cli")):
            continue
        if getattr(module, "app_id_hex", None) is original:
            monkeypatch.setattr(module, "app_id_hex", counting)
    return seen


def _batch(kms: ClientDriver, server: FakeKMSServer, verified: bool) -> list[Any]:
    if verified:
        return list(
            kms.get_verified_app_env_encrypt_pubkeys(
                "phala", GIVEN, trusted_signer=server.k256_pubkey, return_exceptions=True
            )
        )
    return list(kms.get_app_env_encrypt_pubkeys("phala", GIVEN, return_exceptions=True))


def _stream(kms: ClientDriver, server: FakeKMSServer, verified: bool) -> list[Any]:
    def walk(client: Any) -> Any:
        if verified:
            return client.iter_verified_app_env_encrypt_pubkeys(
                "phala", iter(GIVEN), trusted_signer=server.k256_pubkey
            )
        return client.iter_app_env_encrypt_pubkeys("phala", iter(GIVEN))

    return [result for _, result in kms.run(walk)]


@pytest.mark.parametrize("verified", [False, True], ids=["unverified", "verified"])
@pytest.mark.parametrize("walk", [_batch, _stream], ids=["batch", "stream"])
def test_each_given_id_is_checked_exactly_once(
    kms: ClientDriver,
    server: FakeKMSServer,
    id_checks: list[object],
    walk: Callable[[ClientDriver, FakeKMSServer, bool], list[Any]],
    verified: bool,
) -> None:
    results = walk(kms, server, verified)
    assert sorted(map(str, id_checks)) == sorted(GIVEN)  # one check per given id, no more
    assert sum(isinstance(r, InvalidArgumentError) for r in results) == 1
    assert not [r for r in results if isinstance(r, PhalaKMSError) and r.app_id != "not-an-id"]
    fetched = server.route_counts["app_pubkey"]
    assert fetched == (len(IDS) if walk is _batch else len(IDS) + 1)  # batches de-duplicate
