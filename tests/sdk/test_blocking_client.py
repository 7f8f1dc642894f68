"""The blocking client: twin methods (same signatures, docstrings rewritten for blocking
callers), one loop thread shared by many threads, running loops, its own loop thread."""

from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from phala_kms import AsyncKMSClient, ClientStateError, KMSClient, NotFoundError
from phala_kms.errors import CallbackError
from phala_kms.sync import BLOCKING_REWRITES, blocking_doc
from phala_kms.testing import FakeKMSServer

APP_ID = "ab" * 20
LIFECYCLE = {"aclose"}  # KMSClient.close() is its blocking counterpart


def public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }


def twins() -> list[tuple[str, Any, Any]]:
    """(name, async method, blocking twin) for every public coroutine but ``aclose``."""
    return [
        (name, method, getattr(KMSClient, name, None))
        for name, method in sorted(public_methods(AsyncKMSClient).items())
        if name not in LIFECYCLE
    ]


def described(signature: inspect.Signature) -> list[tuple[str, Any, str, str]]:
    """Each parameter as (name, kind, default, annotation), defaults and annotations as text."""
    return [
        (p.name, p.kind, repr(p.default), str(p.annotation)) for p in signature.parameters.values()
    ]


# --------------------------------------------------------------------------- twins


def test_every_coroutine_has_a_blocking_twin() -> None:
    coroutines = public_methods(AsyncKMSClient)
    assert "get_kms_info" in coroutines and "iter_kms_list" in coroutines
    assert "get_trusted_signer" in coroutines
    assert "get_verified_app_env_encrypt_pubkeys" in coroutines
    for name, _method, twin in twins():
        assert twin is not None, f"KMSClient lacks {name}"
        assert not inspect.iscoroutinefunction(twin), name
        assert not inspect.isasyncgenfunction(twin), name
    assert hasattr(KMSClient, "close") and hasattr(AsyncKMSClient, "aclose")


@pytest.mark.parametrize(("name", "method", "twin"), twins(), ids=[t[0] for t in twins()])
def test_twins_have_the_same_full_signature(name: str, method: Any, twin: Any) -> None:
    assert described(inspect.signature(twin)) == described(inspect.signature(method)), name
    returns = str(inspect.signature(method).return_annotation)
    if inspect.isasyncgenfunction(method):  # an async iterator becomes a plain iterator
        returns = returns.replace("AsyncIterator[", "Iterator[")
    assert str(inspect.signature(twin).return_annotation) == returns, name


def test_constructors_have_the_same_full_signature_but_session() -> None:
    blocking = described(inspect.signature(KMSClient.__init__))
    asynchronous = described(inspect.signature(AsyncKMSClient.__init__))
    assert [p for p in asynchronous if p[0] != "session"] == blocking
    assert [p[0] for p in asynchronous if p not in blocking] == ["session"]


@pytest.mark.parametrize(("name", "method", "twin"), twins(), ids=[t[0] for t in twins()])
def test_twin_docstrings_are_rewritten_for_blocking_callers(
    name: str, method: Any, twin: Any
) -> None:
    assert method.__doc__, name
    assert twin.__doc__ == blocking_doc(method.__doc__), name


def public_docstrings() -> dict[str, str]:
    docs = {"KMSClient": KMSClient.__doc__ or ""}
    for name, member in inspect.getmembers(KMSClient):
        if not name.startswith("_") and getattr(member, "__doc__", None):
            docs[name] = member.__doc__
    docs["__init__"] = KMSClient.__init__.__doc__ or ""
    return docs


def test_no_blocking_docstring_mentions_await_or_the_event_loop() -> None:
    docs = public_docstrings()
    assert "get_trusted_signer" in docs and "iter_kms_list" in docs and "close" in docs
    for name, doc in docs.items():
        lowered = doc.lower()
        assert "await" not in lowered, name
        assert "event loop" not in lowered, name


@pytest.mark.parametrize(
    ("async_text", "blocking_text"), BLOCKING_REWRITES, ids=[r[0][:30] for r in BLOCKING_REWRITES]
)
def test_every_rewrite_rule_applies_to_some_method(async_text: str, blocking_text: str) -> None:
    used_by = [name for name, method, _ in twins() if async_text in (method.__doc__ or "")]
    assert used_by, f"no AsyncKMSClient docstring contains {async_text!r}"
    for name, _method, twin in twins():
        assert async_text not in (twin.__doc__ or ""), name
    assert any(blocking_text in (twin.__doc__ or "") for _, _, twin in twins())


def test_blocking_doc_keeps_none_and_unrelated_text() -> None:
    assert blocking_doc(None) is None
    assert blocking_doc("Read one KMS node.") == "Read one KMS node."


# --------------------------------------------------------------------------- threads


def test_one_loop_thread_and_keep_alive(sync_client: KMSClient) -> None:
    kms = sync_client
    kms.get_kms_info("phala")
    threads = threading.active_count()
    names = [t.name for t in threading.enumerate()].count("phala-kms-loop")
    for _ in range(50):
        kms.get_app_env_encrypt_pubkey("phala", APP_ID)
    assert threading.active_count() == threads
    assert [t.name for t in threading.enumerate()].count("phala-kms-loop") == names == 1


def test_shared_by_many_threads(sync_client: KMSClient, server: FakeKMSServer) -> None:
    app_ids = [f"{i:040x}" for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        keys = list(pool.map(lambda a: sync_client.get_app_env_encrypt_pubkey("phala", a), app_ids))
    assert [k.public_key_bytes for k in keys] == [
        server.app_public_key("phala", a) for a in app_ids
    ]


async def test_works_inside_a_running_event_loop(server: FakeKMSServer) -> None:
    # As in Jupyter: the caller's thread already runs a loop; the facade must not touch it.
    loop = asyncio.get_running_loop()
    with KMSClient(server.api_key, server.base_url) as kms:
        info = kms.get_kms_info("phala")
        assert [i.id for i in kms.iter_kms_list()][:1] == [
            kms.get_kms_list(page_size=1).items[0].id
        ]
    assert info.slug == "phala"
    assert asyncio.get_running_loop() is loop and not loop.is_closed()


def test_refuses_calls_from_its_own_loop_thread(sync_client: KMSClient) -> None:
    kms = sync_client

    def on_progress(done: int, total: int) -> None:
        kms.get_kms_info("phala")  # would deadlock if allowed

    with pytest.raises(CallbackError) as caught:  # the callback failed, not an id
        kms.get_app_env_encrypt_pubkeys("phala", [APP_ID], on_progress=on_progress)
    assert isinstance(caught.value.__cause__, ClientStateError)
    assert "own event-loop thread" in str(caught.value.__cause__)
    assert kms.get_kms_info("phala").slug == "phala"  # the client is still usable


def test_a_refused_close_from_the_loop_thread_leaves_the_client_whole(
    server: FakeKMSServer,
) -> None:
    kms = KMSClient(server.api_key, server.base_url)
    try:
        refused: list[BaseException] = []

        def on_progress(done: int, total: int) -> None:
            try:
                kms.close()
            except ClientStateError as exc:
                refused.append(exc)

        kms.get_app_env_encrypt_pubkeys("phala", [APP_ID], on_progress=on_progress)
        assert len(refused) == 1
        assert not kms.closed
        assert kms.get_kms_info("phala").slug == "phala"  # still fully working
    finally:
        kms.close()
    assert "phala-kms-loop" not in [t.name for t in threading.enumerate()]


def test_close_is_idempotent_and_final(server: FakeKMSServer) -> None:
    kms = KMSClient(server.api_key, server.base_url)
    kms.get_kms_info("phala")
    kms.close()
    kms.close()
    assert kms.closed
    assert "phala-kms-loop" not in [t.name for t in threading.enumerate()]
    with pytest.raises(ClientStateError, match="closed"):
        kms.get_kms_info("phala")


def test_closing_an_unused_client_starts_nothing(server: FakeKMSServer) -> None:
    before = threading.active_count()
    with KMSClient(server.api_key, server.base_url) as kms:
        assert (
            repr(kms) == f"<KMSClient base_url={server.base_url!r} api_version='2026-06-23' open>"
        )
    assert threading.active_count() == before
    assert repr(kms).endswith("closed>")


def test_errors_cross_the_thread_with_their_data(sync_client: KMSClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        sync_client.get_kms_info("does-not-exist")
    assert caught.value.status == 404 and caught.value.request_id


def test_argument_errors_name_the_blocking_class(sync_client: KMSClient) -> None:
    with pytest.raises(TypeError, match=r"^KMSClient\.encrypt_env_vars_for_app\(\) missing"):
        sync_client.encrypt_env_vars_for_app("phala", APP_ID, {"A": "b"})  # type: ignore[call-arg]
