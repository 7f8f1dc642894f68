"""Resource hygiene: threads, connection pools and sockets are released in every exit path.

The autouse ``_no_leaked_clients`` fixture in tests/conftest.py checks every test of the suite
(no ``phala-kms-loop`` thread left running without an open client owning it, no
``ResourceWarning`` from an unclosed aiohttp session, connector, socket or transport);
the tests here drive the exit paths that could leak: errors, cancellation, Ctrl-C,
a forgotten ``close()`` at interpreter exit, ``os.fork()``, a client moved between
event loops, and many calls in a row. The last test proves the leak check itself fires.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from phala_kms import (
    APITimeoutError,
    AsyncKMSClient,
    ClientStateError,
    ConnectRefusedError,
    KMSClient,
    NotFoundError,
    RetryPolicy,
    ServerError,
)
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
NO_WAIT = RetryPolicy(max_retries=1, initial_backoff=0.0, jitter=0.0)
PORTAL = "phala-kms-loop"


def portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PORTAL and t.is_alive()]


WaitUntil = Callable[..., bool]

pytestmark = pytest.mark.fake_kms_options(phala_node_count=2, include_onchain=False)


def resource_warnings_after_gc() -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def run_script(code: str, timeout: float = 30.0, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PHALA_CLOUD_API_KEY", None)
    env.pop("PHALA_CLOUD_API_PREFIX", None)
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


# --------------------------------------------------------------------------- errors


@pytest.mark.timeout(30)
def test_sync_client_after_errors_leaves_no_thread(server: FakeKMSServer, closed_port: int) -> None:
    baseline = threading.active_count()
    before = portal_threads()
    client = KMSClient(server.api_key, server.base_url, retry_policy=NO_WAIT, timeout=0.3)
    with pytest.raises(NotFoundError):
        client.get_kms_info("no-such-kms")
    server.inject("kms_info", StatusFault(503), times=2)
    with pytest.raises(ServerError):
        client.get_kms_info("phala")
    server.inject("kms_info", LatencyFault(3.0), times=2)
    with pytest.raises(APITimeoutError):
        client.get_kms_info("phala")
    assert client.get_kms_info("phala").slug == "phala"  # still works after all that
    assert len(portal_threads()) == len(before) + 1
    client.close()
    assert portal_threads() == before
    assert threading.active_count() == baseline
    refused = KMSClient(
        server.api_key, f"http://127.0.0.1:{closed_port}/api/v1", retry_policy=NO_WAIT
    )
    with pytest.raises(ConnectRefusedError):
        refused.get_kms_info("phala")
    refused.close()
    assert threading.active_count() == baseline
    assert resource_warnings_after_gc() == []


@pytest.mark.timeout(30)
async def test_async_client_after_errors_closes_its_pool(
    server: FakeKMSServer, wait_until: WaitUntil
) -> None:
    client = AsyncKMSClient(server.api_key, server.base_url, retry_policy=NO_WAIT, timeout=0.3)
    with pytest.raises(NotFoundError):
        await client.get_kms_info("no-such-kms")
    server.inject("kms_info", StatusFault(503), times=2)
    with pytest.raises(ServerError):
        await client.get_kms_info("phala")
    server.inject("kms_info", LatencyFault(3.0), times=2)
    with pytest.raises(APITimeoutError):
        await client.get_kms_info("phala")
    assert (await client.get_kms_info("phala")).slug == "phala"
    await client.aclose()
    assert client.closed
    with pytest.raises(ClientStateError):
        await client.get_kms_info("phala")
    del client
    assert resource_warnings_after_gc() == []
    assert wait_until(lambda: server.in_flight == 0)


# --------------------------------------------------------------------------- cancellation


@pytest.mark.timeout(30)
async def test_cancelled_request_ends_on_the_server_and_the_client_still_works(
    server: FakeKMSServer,
) -> None:
    server.inject("kms_info", LatencyFault(30.0), times=1)
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        task = asyncio.ensure_future(client.get_kms_info("phala"))
        for _ in range(500):
            if server.in_flight:
                break
            await asyncio.sleep(0.01)
        assert server.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):
            if not server.in_flight:
                break
            await asyncio.sleep(0.01)
        assert server.in_flight == 0  # the server saw the request end
        # A caller's own timeout is a cancellation too (not our APITimeoutError).
        server.inject("kms_info", LatencyFault(30.0), times=1)
        with pytest.raises(asyncio.TimeoutError) as caught:
            await asyncio.wait_for(client.get_kms_info("phala"), 0.2)
        assert not isinstance(caught.value, APITimeoutError)
        assert (await client.get_kms_info("phala")).slug == "phala"
    assert server.route_counts == {"kms_info": 3}


@pytest.mark.timeout(30)
async def test_cancelled_during_a_retry_wait(server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503), times=1)  # backoff, no client-wide hold
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        task = asyncio.ensure_future(client.get_kms_info("phala"))
        for _ in range(500):
            if server.route_counts.get("kms_info") and server.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # now inside the 30 s wait
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.route_counts == {"kms_info": 1}  # the retry never happened
        assert (await client.get_kms_info("phala")).slug == "phala"


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.timeout(30)
def test_ctrl_c_in_the_sync_facade_cancels_the_request(
    server: FakeKMSServer, wait_until: WaitUntil
) -> None:
    """A real SIGINT (what a terminal's Ctrl-C sends) while a request is in flight."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    server.inject("kms_info", LatencyFault(30.0), times=1)
    main = threading.main_thread().ident
    assert main is not None
    fired = threading.Event()

    def interrupt() -> None:
        if wait_until(lambda: server.in_flight >= 1, timeout=10.0):
            time.sleep(0.05)
            fired.set()
            signal.pthread_kill(main, signal.SIGINT)

    with KMSClient(server.api_key, server.base_url) as client:
        client.get_kms_list()  # the loop thread is up before counting threads
        threads = threading.active_count()
        timer = threading.Thread(target=interrupt, daemon=True)
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.get_kms_info("phala")
        elapsed = time.monotonic() - started
        timer.join(5)
        assert fired.is_set()
        assert elapsed < 10.0  # promptly, not after the server's 30 s
        assert wait_until(lambda: server.in_flight == 0)  # the server saw it end
        assert client.get_kms_info("phala").slug == "phala"  # and the client still works
        assert threading.active_count() == threads
    assert server.route_counts["kms_info"] == 2


INTERRUPT_MAIN_SCRIPT = """
import _thread, os, threading, time, sys
from phala_kms import KMSClient
from phala_kms.testing import FakeKMSServer, LatencyFault

with FakeKMSServer.in_thread(phala_node_count=1) as server:
    server.inject("kms_info", LatencyFault(4.0), times=1)
    with KMSClient(server.api_key, server.base_url) as client:
        def fire():
            while server.in_flight < 1:
                time.sleep(0.005)
            time.sleep(0.05)
            _thread.interrupt_main()
            time.sleep(2.0)
            os._exit(3)  # still blocked: no need to wait for the server's 4 s
        threading.Thread(target=fire, daemon=True).start()
        started = time.monotonic()
        try:
            client.get_kms_info("phala")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - started:.2f}")
        else:
            print("not interrupted")
            sys.exit(1)
        assert client.get_kms_info("phala").slug == "phala"
        os._exit(0)
"""


@pytest.mark.timeout(30)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_main_in_the_sync_facade_is_prompt() -> None:
    # In a subprocess: a KeyboardInterrupt that arrives late must not hit pytest itself.
    proc = run_script(INTERRUPT_MAIN_SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(30)
async def test_aclose_while_a_call_waits_to_retry(server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503, retry_after=0.5), times=1)
    client = AsyncKMSClient(server.api_key, server.base_url)
    task = asyncio.ensure_future(client.get_kms_info("phala"))
    for _ in range(500):
        if server.route_counts.get("kms_info"):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(ClientStateError):  # was a bare RuntimeError("Session is closed")
        await task
    assert server.route_counts == {"kms_info": 1}


@pytest.mark.timeout(30)
def test_close_while_another_thread_waits_to_retry_is_prompt(
    server: FakeKMSServer, wait_until: WaitUntil
) -> None:
    server.inject("kms_info", StatusFault(503, retry_after=1.5), times=1)
    client = KMSClient(server.api_key, server.base_url)
    ended: list[tuple[type[BaseException], float]] = []

    def call() -> None:
        started = time.monotonic()
        try:
            client.get_kms_info("phala")
        except BaseException as exc:
            ended.append((type(exc), time.monotonic() - started))

    caller = threading.Thread(target=call)
    caller.start()
    assert wait_until(lambda: server.route_counts.get("kms_info") == 1)
    time.sleep(0.05)  # now inside the 1.5 s wait
    started = time.monotonic()
    client.close()
    closing = time.monotonic() - started
    caller.join(10)
    assert closing < 0.75  # close() does not wait for the 1.5 s wait to end
    assert ended and ended[0][1] < 0.75  # and the waiting call ends at once...
    assert issubclass(ended[0][0], ClientStateError), ended  # ...with a typed error


# --------------------------------------------------------------------------- interpreter exit

FORGOTTEN_CLOSE_SCRIPT = """
import sys, threading
from phala_kms import KMSClient, PhalaKMSError
from phala_kms.testing import FakeKMSServer, LatencyFault

fake = FakeKMSServer.in_thread(phala_node_count=1)
server = fake.start()
client = KMSClient(server.api_key, server.base_url)
assert client.get_kms_info("phala").slug == "phala"
if sys.argv[1] == "in-flight":
    # Exit while another thread's request is held by the server.
    server.inject("kms_info", LatencyFault(30.0), times=1)
    def call():
        try:
            client.get_kms_info("phala")
        except PhalaKMSError:  # anything else would print a traceback to stderr
            pass
    threading.Thread(target=call, daemon=True).start()
    while server.in_flight < 1:
        pass
if sys.argv[1] == "server-stopped":
    fake.stop()
print("exiting without close()")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", ["idle", "server-stopped", "in-flight"])
def test_forgotten_close_does_not_hang_or_warn_at_exit(variant: str) -> None:
    code = FORGOTTEN_CLOSE_SCRIPT.replace("sys.argv[1]", repr(variant))
    started = time.monotonic()
    proc = run_script(code, 30.0, "-W", "error")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exiting without close()"
    assert proc.stderr == ""  # no warning, no "Exception ignored", no traceback
    assert elapsed < 15.0  # generous: interpreter start-up plus a prompt exit


FORK_SCRIPT = """
import os, sys, warnings
# Forking a process with threads is what this checks; 3.12+ warns about it.
warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
from phala_kms import KMSClient
from phala_kms.testing import FakeKMSServer

with FakeKMSServer.in_thread(phala_node_count=1) as server:
    client = KMSClient(server.api_key, server.base_url)
    assert client.get_kms_info("phala").slug == "phala"
    pid = os.fork()
    if pid == 0:
        try:
            ok = client.get_kms_info("phala").slug == "phala"
            client.close()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    child = os.waitstatus_to_exitcode(status)
    assert client.get_kms_info("phala").slug == "phala"  # the parent is unaffected
    client.close()
    print("child", child, "requests", server.route_counts["kms_info"])
    sys.exit(child)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_client_works_in_a_forked_child_and_in_the_parent() -> None:
    proc = run_script(FORK_SCRIPT, 30.0, "-W", "error")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "child 0 requests 3"
    assert proc.stderr == ""


# --------------------------------------------------------------------------- event loops


@pytest.mark.timeout(30)
def test_async_client_under_two_asyncio_runs_is_a_client_state_error(
    server: FakeKMSServer,
) -> None:
    # The fake closes the connection after answering, so the first loop leaves no
    # pooled socket behind (see the report: a pooled one leaks when that loop closes).
    closing = StatusFault(200, body=server.nodes[0], headers={"Connection": "close"})
    server.inject("kms_info", closing)
    client = AsyncKMSClient(server.api_key, server.base_url)
    assert asyncio.run(client.get_kms_info("phala")).id == server.nodes[0]["id"]
    with pytest.raises(ClientStateError) as caught:
        asyncio.run(client.get_kms_info("phala"))
    assert type(caught.value) is ClientStateError
    assert "another event loop" in str(caught.value)
    assert "Event loop is closed" not in str(caught.value)
    assert server.route_counts == {"kms_info": 1}  # the second call sent nothing
    asyncio.run(client.aclose())  # closing from a later loop works
    assert client.closed
    del client
    assert resource_warnings_after_gc() == []


# --------------------------------------------------------------------------- many calls


@pytest.mark.timeout(60)
def test_thread_count_is_constant_over_many_sync_calls(server: FakeKMSServer) -> None:
    baseline = threading.active_count()
    with KMSClient(server.api_key, server.base_url, retry_policy=NO_WAIT) as client:
        client.get_kms_info("phala")
        after_first = threading.active_count()
        assert after_first == baseline + 1  # exactly one loop thread
        for i in range(300):
            if i % 3 == 0:
                with pytest.raises(NotFoundError):
                    client.get_kms_info(f"missing-{i}")
            else:
                client.get_kms_list(page=1 + i % 2, page_size=1)
            assert threading.active_count() == after_first
        # Many caller threads share the one loop thread.
        callers = [threading.Thread(target=client.get_kms_info, args=("phala",)) for _ in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert threading.active_count() == after_first
        assert server.peak_in_flight <= 8
    assert threading.active_count() == baseline
    assert server.total_requests == 301 + 8


# --------------------------------------------------------------------------- the leak check


LEAKY_TESTS = """
import asyncio
from phala_kms import AsyncKMSClient, KMSClient
from phala_kms.testing import FakeKMSServer

def test_unclosed_async_client_in_a_cycle():
    with FakeKMSServer.in_thread(phala_node_count=1) as server:
        client = AsyncKMSClient(server.api_key, server.base_url)
        asyncio.run(client.get_kms_info("phala"))
        client.self_ref = client  # only the garbage collector can find it

def test_orphaned_loop_thread():
    with FakeKMSServer.in_thread(phala_node_count=1) as server:
        client = KMSClient(server.api_key, server.base_url)
        client.get_kms_info("phala")
        client._finalizer.detach()  # as if close() and the finalizer both failed
        client._loop.closed = True

def test_forgotten_sync_close_is_cleaned_up_by_the_finalizer():
    with FakeKMSServer.in_thread(phala_node_count=1) as server:
        client = KMSClient(server.api_key, server.base_url)
        client.get_kms_info("phala")

def test_clean():
    with FakeKMSServer.in_thread(phala_node_count=1) as server:
        with KMSClient(server.api_key, server.base_url) as client:
            client.get_kms_info("phala")
"""


@pytest.mark.timeout(60)
def test_the_leak_check_fires(tmp_path: Path) -> None:
    # The suite's own conftest (and so its leak check) applies to the leaky tests.
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "-o",
            "addopts=",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_leaky.py"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    outcomes: dict[str, set[str]] = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        word = rest.split(" ")[0]
        if name.startswith("test_leaky.py::") and word in ("PASSED", "FAILED", "ERROR"):
            outcomes.setdefault(name.split("::")[1], set()).add(word)
    assert "ERROR" in outcomes["test_unclosed_async_client_in_a_cycle"], out
    assert "ERROR" in outcomes["test_orphaned_loop_thread"], out
    assert outcomes["test_forgotten_sync_close_is_cleaned_up_by_the_finalizer"] == {"PASSED"}, out
    assert outcomes["test_clean"] == {"PASSED"}, out
    assert "Unclosed client session" in out or "Unclosed connector" in out, out
    assert "'phala-kms-loop' thread(s) still running with no open KMSClient" in out, out
