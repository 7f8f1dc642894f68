"""The blocking facade: twin methods, threads, running loops, its own loop thread."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from phala_kms import AsyncKMSClient, ClientStateError, KMSClient
from phala_kms.testing import FakeKMSServer

APP_ID = "ab" * 20


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }


def test_every_coroutine_has_a_blocking_twin() -> None:
    coroutines = public_methods(AsyncKMSClient)
    assert "get_kms_info" in coroutines and "iter_kms_list" in coroutines
    lifecycle = {"aclose"}  # KMSClient.close() is its blocking counterpart
    for name, method in coroutines.items():
        if name in lifecycle:
            continue
        twin = getattr(KMSClient, name, None)
        assert twin is not None, f"KMSClient lacks {name}"
        assert not inspect.iscoroutinefunction(twin), name
        assert (
            inspect.signature(twin).parameters.keys()
            == inspect.signature(
                method  # type: ignore[arg-type]
            ).parameters.keys()
        ), name
        for p_async, p_sync in zip(
            inspect.signature(method).parameters.values(),  # type: ignore[arg-type]
            inspect.signature(twin).parameters.values(),
            strict=True,
        ):
            assert (p_async.kind, p_async.default) == (p_sync.kind, p_sync.default), name
        assert twin.__doc__ == method.__doc__, name  # type: ignore[attr-defined]
    assert hasattr(KMSClient, "close") and hasattr(AsyncKMSClient, "aclose")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    with FakeKMSServer.in_thread(phala_node_count=3) as srv:
        yield srv


@pytest.fixture
def kms(server: FakeKMSServer) -> Iterator[KMSClient]:
    with KMSClient(server.api_key, server.base_url) as client:
        yield client


def test_one_loop_thread_and_keep_alive(kms: KMSClient, server: FakeKMSServer) -> None:
    kms.get_kms_info("phala")
    threads = threading.active_count()
    names = [t.name for t in threading.enumerate()].count("phala-kms-loop")
    for _ in range(50):
        kms.get_app_env_encrypt_pubkey("phala", APP_ID)
    assert threading.active_count() == threads
    assert [t.name for t in threading.enumerate()].count("phala-kms-loop") == names == 1


def test_shared_by_many_threads(kms: KMSClient, server: FakeKMSServer) -> None:
    app_ids = [f"{i:040x}" for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        keys = list(pool.map(lambda a: kms.get_app_env_encrypt_pubkey("phala", a), app_ids))
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


def test_refuses_calls_from_its_own_loop_thread(kms: KMSClient) -> None:
    def on_progress(done: int, total: int) -> None:
        kms.get_kms_info("phala")  # would deadlock if allowed

    with pytest.raises(ClientStateError, match="own event-loop thread"):
        kms.get_app_env_encrypt_pubkeys("phala", [APP_ID], on_progress=on_progress)
    assert kms.get_kms_info("phala").slug == "phala"  # the client is still usable


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


def test_errors_cross_the_thread_with_their_data(kms: KMSClient) -> None:
    from phala_kms import NotFoundError

    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("does-not-exist")
    assert caught.value.status == 404 and caught.value.request_id


def test_argument_errors_name_the_blocking_class(kms: KMSClient) -> None:
    with pytest.raises(TypeError, match=r"^KMSClient\.encrypt_env_vars_for_app\(\) missing"):
        kms.encrypt_env_vars_for_app("phala", APP_ID, {"A": "b"})  # type: ignore[call-arg]
