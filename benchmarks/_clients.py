"""One benchmark run in a fresh process: ``python benchmarks/_clients.py '<json spec>'``.

The runner (``run.py``) starts this script once per contender per scenario per round,
so every contender is measured in the allocator and thread state a user's script
starts in (no other contender's imports, buffers or threads). This module imports
nothing but the standard library at the top; each contender imports only what it
uses (``requests`` children never import aiohttp, aiohttp children never httpx).

The spec (a JSON object): ``contender``, ``scenario`` (``seq``, ``fanout`` or
``threads``), ``count`` (timed requests), ``threads``, ``base_url``, ``api_key``,
``ca_file`` (a PEM to trust, for TLS, or ``null``), ``server_pid``. The last line
printed is a JSON object: ``wall_s`` (for ``seq``: the median of ten timed blocks,
times ten; ``wall_total_s`` is the plain total), ``cpu_s`` (this process, all threads),
``server_cpu_s``, ``requests``, ``rss_before``, ``peak_rss`` (``VmHWM``: Linux carries
``ru_maxrss`` over from the parent through fork + exec, ``VmHWM`` starts afresh).

Contenders:

* ``hop_rct`` / ``hop_lock``: the physical floor of a blocking call, no network: an
  empty coroutine run on a loop thread from the calling thread, through
  ``run_coroutine_threadsafe(...).result()`` or through a task whose done-callback
  releases a plain lock (what ``KMSClient`` does).
* ``aiohttp``: bare aiohttp on the caller's loop: one ``ClientSession`` with the
  headers on it, ``session.get`` + ``raise_for_status()`` + ``await resp.json()``;
  fanned out with ``gather`` + ``Semaphore(64)``.
* ``aiohttp_workers``: the same request, fanned out by 64 workers pulling ids from one
  iterator (the pattern ``get_app_env_encrypt_pubkeys`` uses), to compare CPU per
  request under the same worker pool.
* ``aiohttp_rct`` / ``aiohttp_lock``: bare aiohttp on a loop thread, each call driven
  from the calling thread through the ``hop_rct`` / ``hop_lock`` hop: the floor of
  any blocking client built on a private loop thread.
* ``async``: ``phala_kms.AsyncKMSClient``; ``sync``: ``phala_kms.KMSClient``.
* ``requests``: a ``requests.Session`` per thread (the ``threads`` scenario).
* ``pc_async`` / ``pc_sync``: the official ``phala-cloud`` SDK, when installed, with
  an httpx client set up as its own default one except for the pool (100
  connections kept alive, like aiohttp's: httpx's 20 exhausts ephemeral ports).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

CONCURRENCY = 64
KMS = "phala"
CLIENT_API_VERSION = "2026-06-23"
WARM_IDS = 128
BLOCKS = 10
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def app_ids(count: int, offset: int = 0) -> list[str]:
    """Deterministic, distinct 40-hex app ids (so the server's cache can be warmed)."""
    return [
        hashlib.blake2b(f"bench-{i}".encode(), digest_size=20).hexdigest()
        for i in range(offset, offset + count)
    ]


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _server_cpu(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _ssl_context(ca_file: str | None) -> Any:
    if ca_file is None:
        return None
    import ssl

    return ssl.create_default_context(cafile=ca_file)


# --------------------------------------------------------------------------- the hops


class LoopThread:
    """A bare asyncio loop in a daemon thread, and the two ways of calling into it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call_rct(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def call_lock(self, coro: Coroutine[Any, Any, Any]) -> Any:
        done = threading.Lock()
        done.acquire()
        box: list[asyncio.Task[Any]] = []

        def start() -> None:
            task = self.loop.create_task(coro)
            box.append(task)
            task.add_done_callback(lambda _: done.release())

        self.loop.call_soon_threadsafe(start)
        done.acquire()
        return box[0].result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _noop() -> None:
    return None


# --------------------------------------------------------------------------- contenders
# Each factory returns (run, close): run(ids) does the scenario's work on those ids.

Run = Callable[[Sequence[str]], object]


async def _fanout_gather(call: Callable[[str], Awaitable[object]], ids: Sequence[str]) -> list:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(app: str) -> object:
        async with semaphore:
            return await call(app)

    return await asyncio.gather(*(one(app) for app in ids))


async def _fanout_workers(call: Callable[[str], Awaitable[object]], ids: Sequence[str]) -> list:
    results: list[object] = [None] * len(ids)
    queue: Iterator[int] = iter(range(len(ids)))

    async def worker() -> None:
        for index in queue:
            results[index] = await call(ids[index])

    await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, len(ids)))))
    return results


def hop(spec: dict[str, Any], kind: str) -> tuple[Run, Callable[[], None]]:
    thread = LoopThread()
    call = thread.call_rct if kind == "rct" else thread.call_lock

    def run(ids: Sequence[str]) -> int:
        for _ in ids:
            call(_noop())
        return len(ids)

    return run, thread.close


class _Aiohttp:
    """Bare aiohttp: the session and the one request every aiohttp contender sends."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.url = f"{spec['base_url']}/kms/{KMS}/pubkey/"
        self.spec = spec
        self.session: Any = None

    async def open(self) -> None:
        import aiohttp

        ssl = _ssl_context(self.spec["ca_file"])
        self.session = aiohttp.ClientSession(
            headers={"X-API-Key": self.spec["api_key"], "X-Phala-Version": CLIENT_API_VERSION},
            connector=aiohttp.TCPConnector(ssl=ssl if ssl is not None else True),
        )

    async def get(self, app: str) -> Any:
        async with self.session.get(self.url + app) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def sequential(self, ids: Sequence[str]) -> int:
        for app in ids:
            await self.get(app)
        return len(ids)


def bare_aiohttp(spec: dict[str, Any], fanout: str) -> tuple[Run, Callable[[], None]]:
    bare = _Aiohttp(spec)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(bare.open())

    def run(ids: Sequence[str]) -> object:
        if spec["scenario"] == "seq":
            return loop.run_until_complete(bare.sequential(ids))
        if fanout == "workers":
            return loop.run_until_complete(_fanout_workers(bare.get, ids))
        return loop.run_until_complete(_fanout_gather(bare.get, ids))

    def close() -> None:
        loop.run_until_complete(bare.session.close())
        loop.close()

    return run, close


def aiohttp_via_hop(spec: dict[str, Any], kind: str) -> tuple[Run, Callable[[], None]]:
    bare = _Aiohttp(spec)
    thread = LoopThread()
    call = thread.call_rct if kind == "rct" else thread.call_lock
    call(bare.open())

    def run(ids: Sequence[str]) -> int:
        for app in ids:
            call(bare.get(app))
        return len(ids)

    def close() -> None:
        call(bare.session.close())
        thread.close()

    return run, close


def phala_async(spec: dict[str, Any]) -> tuple[Run, Callable[[], None]]:
    from phala_kms import AsyncKMSClient

    loop = asyncio.new_event_loop()

    async def make() -> Any:
        return AsyncKMSClient(
            spec["api_key"], spec["base_url"], ssl_context=_ssl_context(spec["ca_file"])
        )

    client = loop.run_until_complete(make())

    async def sequential(ids: Sequence[str]) -> int:
        for app in ids:
            await client.get_app_env_encrypt_pubkey(KMS, app)
        return len(ids)

    def run(ids: Sequence[str]) -> object:
        if spec["scenario"] == "seq":
            return loop.run_until_complete(sequential(ids))
        return loop.run_until_complete(
            client.get_app_env_encrypt_pubkeys(KMS, ids, concurrency=CONCURRENCY)
        )

    def close() -> None:
        loop.run_until_complete(client.aclose())
        loop.close()

    return run, close


def _threaded(ids: Sequence[str], threads: int, work: Callable[[int, Sequence[str]], None]) -> int:
    """Split ``ids`` among ``threads`` threads, each calling ``work(index, its ids)``."""
    parts = [ids[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=work, args=(i, part)) for i, part in enumerate(parts)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(ids)


def phala_sync(spec: dict[str, Any]) -> tuple[Run, Callable[[], None]]:
    from phala_kms import KMSClient

    client = KMSClient(spec["api_key"], spec["base_url"], ssl_context=_ssl_context(spec["ca_file"]))

    def sequential(_: int, ids: Sequence[str]) -> None:
        for app in ids:
            client.get_app_env_encrypt_pubkey(KMS, app)

    def run(ids: Sequence[str]) -> object:
        if spec["scenario"] == "seq":
            sequential(0, ids)
            return len(ids)
        if spec["scenario"] == "threads":
            return _threaded(ids, spec["threads"], sequential)
        return client.get_app_env_encrypt_pubkeys(KMS, ids, concurrency=CONCURRENCY)

    return run, client.close


def requests_per_thread(spec: dict[str, Any]) -> tuple[Run, Callable[[], None]]:
    import requests

    headers = {"X-API-Key": spec["api_key"], "X-Phala-Version": CLIENT_API_VERSION}
    url = f"{spec['base_url']}/kms/{KMS}/pubkey/"
    sessions: list[Any] = []
    for _ in range(max(1, spec["threads"])):
        session = requests.Session()
        session.headers.update(headers)
        if spec["ca_file"] is not None:
            session.verify = spec["ca_file"]
        sessions.append(session)

    def sequential(index: int, ids: Sequence[str]) -> None:
        session = sessions[index]
        for app in ids:
            resp = session.get(url + app, timeout=30)
            resp.raise_for_status()
            resp.json()

    def run(ids: Sequence[str]) -> object:
        return _threaded(ids, max(1, spec["threads"]), sequential)

    def close() -> None:
        for session in sessions:
            session.close()

    return run, close


def _phala_cloud(spec: dict[str, Any], style: str) -> tuple[Any, Any, str]:
    import httpx
    import phala_cloud

    cls = phala_cloud.AsyncPhalaCloud if style == "async" else phala_cloud.PhalaCloud
    method = next(
        name
        for name in ("get_app_env_encrypt_pub_key", "get_app_env_encrypt_pubkey")
        if hasattr(cls, name)
    )
    options = {
        "base_url": spec["base_url"],
        "timeout": 30.0,
        "headers": {
            "X-Phala-Version": CLIENT_API_VERSION,
            "Content-Type": "application/json",
            "X-API-Key": spec["api_key"],
        },
        "follow_redirects": True,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=100),
    }
    http = (httpx.AsyncClient if style == "async" else httpx.Client)(**options)
    return cls(api_key=spec["api_key"], base_url=spec["base_url"], http_client=http), http, method


def pc_async(spec: dict[str, Any]) -> tuple[Run, Callable[[], None]]:
    loop = asyncio.new_event_loop()

    async def make() -> tuple[Any, Any, str]:
        return _phala_cloud(spec, "async")

    client, http, method = loop.run_until_complete(make())
    get = getattr(client, method)

    async def sequential(ids: Sequence[str]) -> int:
        for app in ids:
            await get({"kms": KMS, "app_id": app})
        return len(ids)

    def run(ids: Sequence[str]) -> object:
        if spec["scenario"] == "seq":
            return loop.run_until_complete(sequential(ids))
        return loop.run_until_complete(
            _fanout_gather(lambda app: get({"kms": KMS, "app_id": app}), ids)
        )

    def close() -> None:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(http.aclose())
        loop.close()

    return run, close


def pc_sync(spec: dict[str, Any]) -> tuple[Run, Callable[[], None]]:
    client, http, method = _phala_cloud(spec, "sync")
    get = getattr(client, method)

    def run(ids: Sequence[str]) -> object:
        if spec["scenario"] == "seq":
            for app in ids:
                get({"kms": KMS, "app_id": app})
            return len(ids)
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(lambda app: get({"kms": KMS, "app_id": app}), ids))

    def close() -> None:
        client.close()
        http.close()

    return run, close


CONTENDERS: dict[str, Callable[[dict[str, Any]], tuple[Run, Callable[[], None]]]] = {
    "hop_rct": lambda spec: hop(spec, "rct"),
    "hop_lock": lambda spec: hop(spec, "lock"),
    "aiohttp": lambda spec: bare_aiohttp(spec, "gather"),
    "aiohttp_workers": lambda spec: bare_aiohttp(spec, "workers"),
    "aiohttp_rct": lambda spec: aiohttp_via_hop(spec, "rct"),
    "aiohttp_lock": lambda spec: aiohttp_via_hop(spec, "lock"),
    "async": phala_async,
    "sync": phala_sync,
    "requests": requests_per_thread,
    "pc_async": pc_async,
    "pc_sync": pc_sync,
}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the contender, warm it (untimed), time the scenario on fresh ids, close."""
    count = spec["count"]
    ids = app_ids(count)
    warm = app_ids(WARM_IDS, offset=spec["warm_offset"])
    run, close = CONTENDERS[spec["contender"]](spec)
    try:
        run(warm if spec["scenario"] != "seq" else warm[:16])  # opens the pool's connections
        rss_before = _status_bytes("VmRSS")
        pid = spec["server_pid"]
        blocks: list[float] = []
        s0, c0, t0 = _server_cpu(pid), time.process_time(), time.perf_counter()
        if spec["scenario"] == "seq":
            # Ten blocks, each timed: the median block stands for the run, so a burst
            # of another process's load on this shared machine moves it less.
            size = max(1, count // BLOCKS)
            result = 0
            for start in range(0, count, size):
                b0 = time.perf_counter()
                result += run(ids[start : start + size])  # type: ignore[operator]
                blocks.append((time.perf_counter() - b0) / len(ids[start : start + size]))
        else:
            result = run(ids)
        wall = time.perf_counter() - t0
        cpu, server_cpu = time.process_time() - c0, _server_cpu(pid) - s0
        if blocks:
            wall_total, wall = wall, statistics.median(blocks) * count
    finally:
        close()
    got = result if isinstance(result, int) else len(result)  # type: ignore[arg-type]
    if got != count:
        raise RuntimeError(f"{spec['contender']} {spec['scenario']}: {got} results, not {count}")
    return {
        "wall_s": wall,
        "wall_total_s": wall_total if blocks else wall,
        "cpu_s": cpu,
        "server_cpu_s": server_cpu,
        "requests": count,
        "rss_before": rss_before,
        "peak_rss": _status_bytes("VmHWM"),
        "modules_aiohttp": "aiohttp" in sys.modules,
        "modules_httpx": "httpx" in sys.modules,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: _clients.py '<json spec>'")
    print(json.dumps(measure(json.loads(sys.argv[1]))))
