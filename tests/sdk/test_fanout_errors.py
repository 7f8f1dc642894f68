"""Batch errors name their id: every error of a fan-out carries ``app_id`` and ``kms``.

On both clients: with ``return_exceptions=True`` every slot's error (malformed id,
status error, verification failure) is labelled; without it, the raised error names
its id and what became of the rest of the batch; an ``on_progress`` that raises is a
:class:`CallbackError` chaining its exception, not an id's failure.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

from phala_kms import (
    CallbackError,
    ClientStateError,
    InvalidArgumentError,
    KMSClient,
    NotFoundError,
    PhalaKMSError,
    SignatureVerificationError,
)
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault
from tests.helpers import ClientDriver, MakeClient

IDS = [f"{i:040x}" for i in range(1, 21)]
BAD = IDS[4]


def test_every_error_of_a_batch_names_its_id_and_kms(
    kms: ClientDriver, server: FakeKMSServer
) -> None:
    server.inject(f"/kms/phala/pubkey/{BAD}", StatusFault(404, error_code="ERR-02-011"))
    given = [*IDS[:6], "0x" + BAD.upper(), "not-an-id"]
    results = kms.get_app_env_encrypt_pubkeys("phala", given, return_exceptions=True)
    assert isinstance(results[4], NotFoundError)
    assert results[4] is results[6]  # the same id, fetched once
    assert (results[4].app_id, results[4].kms) == (BAD, "phala")
    assert isinstance(results[7], InvalidArgumentError)
    assert (results[7].app_id, results[7].kms) == ("not-an-id", "phala")
    assert not [r for r in results[:4] + results[5:6] if isinstance(r, PhalaKMSError)]


def test_verification_errors_name_their_id(kms: ClientDriver, server: FakeKMSServer) -> None:
    wrong = server.k256_pubkey_for("base")  # a real key, but not the signer of phala's keys
    results = kms.get_verified_app_env_encrypt_pubkeys(
        "phala", IDS[:3], trusted_signer=wrong, return_exceptions=True
    )
    assert all(isinstance(r, SignatureVerificationError) for r in results)
    assert [r.app_id for r in results] == IDS[:3]
    assert {r.kms for r in results} == {"phala"}


def test_the_raised_error_names_its_id_and_the_rest_of_the_batch(
    kms: ClientDriver, server: FakeKMSServer
) -> None:
    server.inject("app_pubkey", LatencyFault(0.05), times=None)
    server.inject(f"/kms/phala/pubkey/{BAD}", StatusFault(404, error_code="ERR-02-011"))
    with pytest.raises(NotFoundError) as caught:
        kms.get_app_env_encrypt_pubkeys("phala", IDS, concurrency=4)
    err = caught.value
    assert (err.app_id, err.kms) == (BAD, "phala")
    message = str(err)
    assert f"app_id {BAD}, kms 'phala'" in message
    match = re.search(r"(\d+) in flight (?:was|were) cancelled, (\d+) not started", message)
    assert match, message
    cancelled, not_started = int(match[1]), int(match[2])
    assert 1 <= cancelled <= 3
    assert server.route_counts["app_pubkey"] < len(IDS)  # the batch stopped
    # a cancelled request may not have reached the server; a not-started one never does
    assert not_started <= len(IDS) - server.route_counts["app_pubkey"]
    assert not_started >= len(IDS) - server.route_counts["app_pubkey"] - cancelled


def test_the_error_of_a_malformed_id_names_it(kms: ClientDriver) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        kms.get_app_env_encrypt_pubkeys("phala", [IDS[0], "zz"])
    assert caught.value.app_id == "zz" and caught.value.kms == "phala"
    assert caught.value.argument == "app_ids"


def test_labelled_errors_pickle() -> None:
    err = NotFoundError("404", status=404)
    err.app_id, err.kms = "ab" * 20, "phala"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.app_id, copy.kms, copy.status) == ("ab" * 20, "phala", 404)
    plain = pickle.loads(pickle.dumps(PhalaKMSError("x", app_id="cd" * 20, kms="base")))
    assert (plain.app_id, plain.kms) == ("cd" * 20, "base")
    assert PhalaKMSError("y").app_id is None and PhalaKMSError("y").kms is None


# --------------------------------------------------------------------------- on_progress


def test_an_on_progress_that_raises_is_reported_as_such(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    kms = make_client()
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if done == 3:
            raise ValueError("my bar broke")

    for return_exceptions in (False, True):
        calls.clear()
        with pytest.raises(CallbackError) as caught:
            kms.get_app_env_encrypt_pubkeys(
                "phala",
                IDS,
                concurrency=2,
                on_progress=progress,
                return_exceptions=return_exceptions,
            )
        err = caught.value
        assert isinstance(err.__cause__, ValueError)
        assert err.callback == "on_progress" and err.app_id is None
        assert "on_progress(3, 20) raised ValueError: my bar broke" in str(err)
        assert 3 in calls and max(calls) <= 4  # stopped there (the other worker may end one)


def test_calling_the_blocking_client_from_on_progress_is_a_callback_error(
    server: FakeKMSServer,
) -> None:
    with KMSClient(server.api_key, server.base_url) as client:

        def progress(done: int, total: int) -> None:
            client.get_kms_info("phala")  # from the client's own loop thread

        with pytest.raises(CallbackError) as caught:
            client.get_app_env_encrypt_pubkeys("phala", IDS[:2], on_progress=progress)
        assert isinstance(caught.value.__cause__, ClientStateError)
        assert client.get_kms_info("phala").slug == "phala"  # the client is fine


def test_callback_error_is_public() -> None:
    import phala_kms
    from phala_kms import errors

    assert phala_kms.CallbackError is errors.CallbackError
    assert issubclass(CallbackError, PhalaKMSError)
    err: Any = pickle.loads(pickle.dumps(CallbackError("m", callback="on_progress")))
    assert err.callback == "on_progress"
