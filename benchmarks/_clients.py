"""The contenders of the HTTP benchmarks, each doing the same work its natural way.

* ``aiohttp``: the floor. One ``ClientSession``, a hand-written GET + ``json()``.
* ``async``: ``phala_kms.AsyncKMSClient``.
* ``async_gather``: ``AsyncKMSClient`` driven by ``asyncio.gather`` + a semaphore, as
  the other async contenders are (to separate the helper from the client).
* ``sync``: ``phala_kms.KMSClient``.
* ``pc_async`` / ``pc_sync``: the official ``phala-cloud`` SDK (``AsyncPhalaCloud`` /
  ``PhalaCloud``, httpx + pydantic), when it can be imported and used. It is given
  (through its ``http_client`` argument) an httpx client configured as its own default
  one (base URL, its headers, 30 s timeout, redirects followed) except for the pool:
  100 connections, all kept alive, like aiohttp's default pool that the others use.
  httpx's default keeps only 20 alive, so at concurrency 64 it opens and closes a
  connection for most requests; across rounds that ran this machine out of ephemeral
  ports (tens of thousands of sockets in TIME_WAIT) and made requests time out.

Every operation takes a client made by the contender's ``open`` and a list of app ids.
An operation a contender has no natural form of is absent from its ``ops``.

``python benchmarks/_clients.py rss CONTENDER N BASE_URL API_KEY`` is the fresh child
process of the peak-RSS scenario: it fans out over the first ``N`` benchmark ids at
concurrency 64 and prints a JSON line with its peak RSS. The peak is ``VmHWM`` from
``/proc/self/status``, not ``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` over
from the parent through fork and exec, so a child of a big parent reports the parent's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

CONCURRENCY = 64
KMS = "phala"
PAGE_SIZE = 20
NODE_API_VERSION = "2026-05-22"
CLIENT_API_VERSION = "2026-06-23"

AsyncOp = Callable[[Any, Sequence[str]], Awaitable[object]]
SyncOp = Callable[[Any, Sequence[str]], object]


def app_ids(count: int, offset: int = 0) -> list[str]:
    """Deterministic, distinct 40-hex app ids (so the server's cache can be warmed)."""
    return [
        hashlib.blake2b(f"bench-{i}".encode(), digest_size=20).hexdigest()
        for i in range(offset, offset + count)
    ]


async def _bounded_gather(
    call: Callable[[str], Awaitable[object]], ids: Sequence[str]
) -> list[Any]:
    """The usual asyncio fan-out: ``gather`` over every id, a semaphore of 64."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(app: str) -> object:
        async with semaphore:
            return await call(app)

    return await asyncio.gather(*(one(app) for app in ids))


class Contender:
    """One way of calling the API; ``unavailable`` says why it cannot run, if so."""

    name = ""
    label = ""
    style = "async"  # or "sync"
    unavailable: str | None = None

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.api_key = api_key

    scenarios: tuple[str, ...] = ("sequential", "fanout", "unbounded", "pages")
    """The scenario methods this contender runs (sync contenders have no unbounded gather)."""

    @property
    def ops(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.scenarios}

    def open(self) -> Any:
        raise NotImplementedError

    def close(self, client: Any) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------- aiohttp


class BareAiohttp(Contender):
    name = "aiohttp"
    label = "bare aiohttp"

    async def open(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(
            headers={"X-API-Key": self.api_key, "X-Phala-Version": CLIENT_API_VERSION}
        )

    async def close(self, client: Any) -> None:
        await client.close()

    async def _get(self, session: Any, app: str) -> Any:
        async with session.get(f"{self.base_url}/kms/{KMS}/pubkey/{app}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def sequential(self, session: Any, ids: Sequence[str]) -> None:
        for app in ids:
            await self._get(session, app)

    async def fanout(self, session: Any, ids: Sequence[str]) -> list[Any]:
        return await _bounded_gather(lambda app: self._get(session, app), ids)

    async def unbounded(self, session: Any, ids: Sequence[str]) -> list[Any]:
        return await asyncio.gather(*(self._get(session, app) for app in ids))

    async def pages(self, session: Any, _: Sequence[str]) -> int:
        count, page = 0, 1
        headers = {"X-Phala-Version": NODE_API_VERSION}
        while True:
            params = {"page": str(page), "page_size": str(PAGE_SIZE)}
            async with session.get(f"{self.base_url}/kms", params=params, headers=headers) as resp:
                resp.raise_for_status()
                data = await resp.json()
            count += len(data["items"])
            if page >= data["pages"]:
                return count
            page += 1


# --------------------------------------------------------------------------- phala-kms


class PhalaKMSAsync(Contender):
    name = "async"
    label = "AsyncKMSClient"

    async def open(self) -> Any:
        from phala_kms import AsyncKMSClient

        return AsyncKMSClient(self.api_key, self.base_url)

    async def close(self, client: Any) -> None:
        await client.aclose()

    async def sequential(self, client: Any, ids: Sequence[str]) -> None:
        for app in ids:
            await client.get_app_env_encrypt_pubkey(KMS, app)

    async def fanout(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return await client.get_app_env_encrypt_pubkeys(KMS, ids, concurrency=CONCURRENCY)

    async def gather_fanout(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return await _bounded_gather(lambda app: client.get_app_env_encrypt_pubkey(KMS, app), ids)

    async def unbounded(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return await asyncio.gather(*(client.get_app_env_encrypt_pubkey(KMS, app) for app in ids))

    async def pages(self, client: Any, _: Sequence[str]) -> int:
        count = 0
        async for _item in client.iter_kms_list(page_size=PAGE_SIZE):
            count += 1
        return count


class PhalaKMSAsyncGather(PhalaKMSAsync):
    name = "async_gather"
    label = "AsyncKMSClient, gather+sem"

    @property
    def ops(self) -> dict[str, Any]:
        return {"fanout": self.gather_fanout}


class PhalaKMSSync(Contender):
    name = "sync"
    label = "KMSClient"
    style = "sync"
    scenarios = ("sequential", "fanout", "pages")

    def open(self) -> Any:
        from phala_kms import KMSClient

        return KMSClient(self.api_key, self.base_url)

    def close(self, client: Any) -> None:
        client.close()

    def sequential(self, client: Any, ids: Sequence[str]) -> None:
        for app in ids:
            client.get_app_env_encrypt_pubkey(KMS, app)

    def fanout(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return client.get_app_env_encrypt_pubkeys(KMS, ids, concurrency=CONCURRENCY)  # type: ignore[no-any-return]

    def pages(self, client: Any, _: Sequence[str]) -> int:
        return sum(1 for _item in client.iter_kms_list(page_size=PAGE_SIZE))


# --------------------------------------------------------------------------- phala-cloud

_PC_PUBKEY_NAMES = ("get_app_env_encrypt_pub_key", "get_app_env_encrypt_pubkey")


def _phala_cloud() -> tuple[Any, Any, str]:
    """Import phala-cloud; return its async and sync classes and the pubkey method name."""
    import phala_cloud

    async_cls = phala_cloud.AsyncPhalaCloud
    sync_cls = phala_cloud.PhalaCloud
    for name in _PC_PUBKEY_NAMES:
        if hasattr(async_cls, name) and hasattr(sync_cls, name):
            return async_cls, sync_cls, name
    raise AttributeError(f"phala_cloud.PhalaCloud has none of {', '.join(_PC_PUBKEY_NAMES)}")


def _httpx_options(base_url: str, api_key: str) -> dict[str, Any]:
    """phala-cloud's own httpx settings, with a pool as large as the other contenders'."""
    import httpx

    return {
        "base_url": base_url,
        "timeout": 30.0,
        "headers": {
            "X-Phala-Version": CLIENT_API_VERSION,
            "Content-Type": "application/json",
            "X-API-Key": api_key,
        },
        "follow_redirects": True,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=100),
    }


class PhalaCloudAsync(Contender):
    name = "pc_async"
    label = "phala-cloud async"

    async def open(self) -> Any:
        import httpx

        async_cls, _, self._method = _phala_cloud()
        self._http = httpx.AsyncClient(**_httpx_options(self.base_url, self.api_key))
        return async_cls(api_key=self.api_key, base_url=self.base_url, http_client=self._http)

    async def close(self, client: Any) -> None:
        await client.aclose()
        await self._http.aclose()  # passed in, so phala-cloud leaves it open

    def _get(self, client: Any, app: str) -> Awaitable[object]:
        return getattr(client, self._method)({"kms": KMS, "app_id": app})  # type: ignore[no-any-return]

    async def sequential(self, client: Any, ids: Sequence[str]) -> None:
        for app in ids:
            await self._get(client, app)

    async def fanout(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return await _bounded_gather(lambda app: self._get(client, app), ids)

    async def unbounded(self, client: Any, ids: Sequence[str]) -> list[Any]:
        return await asyncio.gather(*(self._get(client, app) for app in ids))

    async def pages(self, client: Any, _: Sequence[str]) -> int:
        count, page = 0, 1
        while True:
            result = await client.get_kms_list({"page": page, "page_size": PAGE_SIZE})
            count += len(result.items)
            if page >= result.pages:
                return count
            page += 1


class PhalaCloudSync(Contender):
    name = "pc_sync"
    label = "phala-cloud sync"
    style = "sync"
    scenarios = ("sequential", "fanout", "pages")

    def open(self) -> Any:
        import httpx

        _, sync_cls, self._method = _phala_cloud()
        self._http = httpx.Client(**_httpx_options(self.base_url, self.api_key))
        return sync_cls(api_key=self.api_key, base_url=self.base_url, http_client=self._http)

    def close(self, client: Any) -> None:
        client.close()
        self._http.close()

    def sequential(self, client: Any, ids: Sequence[str]) -> None:
        get = getattr(client, self._method)
        for app in ids:
            get({"kms": KMS, "app_id": app})

    def fanout(self, client: Any, ids: Sequence[str]) -> list[Any]:
        """The sync SDK's natural fan-out: 64 threads sharing one (thread-safe) client."""
        get = getattr(client, self._method)
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(lambda app: get({"kms": KMS, "app_id": app}), ids))

    def pages(self, client: Any, _: Sequence[str]) -> int:
        count, page = 0, 1
        while True:
            result = client.get_kms_list({"page": page, "page_size": PAGE_SIZE})
            count += len(result.items)
            if page >= result.pages:
                return count
            page += 1


CONTENDERS: tuple[type[Contender], ...] = (
    BareAiohttp,
    PhalaKMSAsync,
    PhalaKMSAsyncGather,
    PhalaKMSSync,
    PhalaCloudAsync,
    PhalaCloudSync,
)


def make_contenders(base_url: str, api_key: str) -> dict[str, Contender]:
    """Every contender, with ``unavailable`` set on the phala-cloud ones if they can't run."""
    contenders = {cls.name: cls(base_url, api_key) for cls in CONTENDERS}
    reason = _phala_cloud_problem(base_url, api_key)
    for name in ("pc_async", "pc_sync"):
        contenders[name].unavailable = reason
    return contenders


def _phala_cloud_problem(base_url: str, api_key: str) -> str | None:
    """Why phala-cloud cannot be benchmarked here, or ``None`` when one call works."""
    try:
        _, sync_cls, method = _phala_cloud()
    except Exception as exc:  # an import failure of any kind: report it, don't fail
        return f"cannot import phala_cloud: {type(exc).__name__}: {exc}"
    try:
        client = sync_cls(api_key=api_key, base_url=base_url)
        try:
            key = getattr(client, method)({"kms": KMS, "app_id": app_ids(1)[0]})
            if len(str(key.public_key)) != 64:
                return f"unexpected pubkey result {key!r}"
        finally:
            client.close()
    except Exception as exc:
        return f"phala_cloud call failed: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- RSS child


def _rss_child(name: str, count: int, base_url: str, api_key: str) -> dict[str, Any]:
    contender = {cls.name: cls for cls in CONTENDERS}[name](base_url, api_key)
    ids = app_ids(count)
    fanout = contender.ops["fanout"]
    if contender.style == "sync":
        client = contender.open()
        before = _rss_now()
        results = fanout(client, ids)
        contender.close(client)
    else:

        async def main() -> tuple[int, Any]:
            client = await contender.open()
            at_start = _rss_now()
            try:
                return at_start, await fanout(client, ids)
            finally:
                await contender.close(client)

        before, results = asyncio.run(main())
    assert len(results) == count
    return {
        "contender": name,
        "ids": count,
        "rss_before_fanout": before,
        "peak_rss": _status_bytes("VmHWM"),
        "ru_maxrss_inherited": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_now() -> int:
    return _status_bytes("VmRSS")


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "rss":
        sys.exit("usage: _clients.py rss CONTENDER N BASE_URL API_KEY")
    print(json.dumps(_rss_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])))
