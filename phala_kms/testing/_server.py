"""The fake Phala Cloud KMS API server: routes, auth, versions, logging, faults."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import hmac
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from aiohttp import web

from ._catalogue import (
    AppKey,
    Catalogue,
    Contract,
    app_id_bytes,
    build_catalogue,
    derive_app_key,
    dumps,
    keccak256,
    sign_timestamped,
)
from ._faults import FAULT_TYPES, Fault, Injection, LatencyFault, respond
from ._validation import ErrorList, parse_bool, parse_int, pattern_error

__all__ = [
    "API_VERSIONS",
    "CONTRACT_API_VERSION",
    "DEFAULT_API_KEY",
    "NODE_API_VERSION",
    "REDACTED",
    "ROUTE_NAMES",
    "FakeKMSServer",
    "RecordedRequest",
    "ThreadedFakeKMSServer",
    "run_fake_server",
]

NODE_API_VERSION = "2026-05-22"
"""The newest ``X-Phala-Version`` with node-centric ``/kms`` and ``/kms/{id}`` (``KmsInfo``)."""

CONTRACT_API_VERSION = "2026-06-23"
"""The first (and newest) ``X-Phala-Version`` with contract-centric ``/kms`` routes."""

API_VERSIONS = ("2025-10-28", "2026-01-21", "2026-05-22", "2026-06-23")
"""The API versions seen in the wild, oldest first."""

DEFAULT_API_KEY = "phak_fake_0123456789abcdef"
"""The API key a :class:`FakeKMSServer` accepts unless given another."""

REDACTED = "[redacted]"
"""What the request log shows instead of a secret header's value."""

ROUTE_NAMES = (
    "kms_list",
    "kms_info",
    "contract_nodes",
    "app_pubkey",
    "onchain_kms",
    "next_app_id",
)
"""The route names faults and counters use, for, in order: ``GET /kms``,
``GET /kms/{kms_id}``, ``GET /kms/{slug}/nodes``, ``GET /kms/{kms}/pubkey/{app_id}``,
``GET /kms/on-chain/{chain}`` and ``GET /kms/phala/next_app_id``."""

_PREFIX = "/api/v1"
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization"})
_VERSION_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_APP_ID_PATTERN = "^(0x)?[0-9a-fA-F]{40}$"
_APP_ID_RE = re.compile(r"(?:0x)?([0-9a-fA-F]{40})")
_JSON = "application/json"
_DOCS_LINKS = [{"url": "https://docs.phala.com/phala-cloud", "label": "Phala Cloud documentation"}]
_ROUTE_PATTERNS = (
    re.compile(r"/kms"),
    re.compile(r"/kms/on-chain/[^/]+"),
    re.compile(r"/kms/phala/next_app_id"),
    re.compile(r"/kms/[^/]+"),
    re.compile(r"/kms/[^/]+/nodes"),
    re.compile(r"/kms/[^/]+/pubkey/[^/]+"),
)

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("phala_kms_fake_request_id")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as its request log keeps it.

    Attributes:
        method: the HTTP method, e.g. ``"GET"``.
        path: the request path, e.g. ``"/api/v1/kms/phala/pubkey/ab..."``.
        route: the route name (one of :data:`ROUTE_NAMES`), ``"not_found"`` for an
            unknown path, or ``"method_not_allowed"``.
        query: the query parameters (the last value of a repeated name).
        headers: the request headers; ``X-API-Key``, ``Authorization``, ``Cookie`` and
            ``Proxy-Authorization`` values are replaced by :data:`REDACTED`.
        phala_version: the ``X-Phala-Version`` header as sent, or ``None``.
        request_id: the ``X-Request-ID`` the response carried.
        timestamp: when it arrived, Unix seconds (``time.time()``).
    """

    method: str
    path: str
    route: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    phala_version: str | None
    request_id: str
    timestamp: float


class _CachedKey:
    __slots__ = ("key", "legacy_body", "timestamp", "timestamped_body")

    def __init__(self, key: AppKey) -> None:
        self.key = key
        self.legacy_body = dumps(
            {"public_key": key.public_key.hex(), "signature": key.signature.hex()}
        ).encode()
        self.timestamp = -1
        self.timestamped_body = b""


class _Views:
    """Every static response body, serialised once."""

    def __init__(self, catalogue: Catalogue) -> None:
        nodes = catalogue.nodes
        contracts = catalogue.contracts
        node_json = [dumps(node.info) for node in nodes]
        contract_json = [dumps(contract.contract_item()) for contract in contracts]
        self.node_items: dict[bool | None, list[str]] = {
            None: node_json,
            True: [js for js, node in zip(node_json, nodes, strict=True) if node.is_onchain],
            False: [js for js, node in zip(node_json, nodes, strict=True) if not node.is_onchain],
        }
        self.contract_items: dict[bool | None, list[str]] = {
            None: contract_json,
            True: [js for js, c in zip(contract_json, contracts, strict=True) if c.chain_id != 0],
            False: [js for js, c in zip(contract_json, contracts, strict=True) if c.chain_id == 0],
        }
        self.node_body = {node.id: js.encode() for js, node in zip(node_json, nodes, strict=True)}
        self.contract_body = {
            c.id: js.encode() for js, c in zip(contract_json, contracts, strict=True)
        }
        self.contract_nodes_body = {
            c.id: dumps(
                {"items": [node.contract_node_item() for node in c.nodes], "total": len(c.nodes)}
            ).encode()
            for c in contracts
        }
        self.onchain_body: dict[str, bytes] = {}
        for chain_name, chain_id in (("base", 8453), ("ethereum", 1)):
            items = [c.onchain_item() for c in contracts if c.chain_id == chain_id]
            body = {"chain_name": chain_name, "chain_id": chain_id, "contracts": items}
            self.onchain_body[chain_name] = dumps(body).encode()


def _json(body: bytes | str, status: int = 200) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, status=status, content_type=_JSON)


def _detail(status: int, detail: Any) -> web.Response:
    return _json(dumps({"detail": detail}), status)


def _not_found(field: str, value: str) -> web.Response:
    body = {
        "error_code": "ERR-02-011",
        "message": "KMS not found",
        "request_id": _REQUEST_ID.get("req_unknown"),
        "details": [{"field": field, "value": value, "message": None}],
        "suggestions": ["See the KMS this API knows with GET /api/v1/kms"],
        "links": _DOCS_LINKS,
    }
    return _json(dumps(body), 404)


def _check_version(version: str) -> str:
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"an API version looks like YYYY-MM-DD, got {version!r}")
    return version


class FakeKMSServer:
    """A fake Phala Cloud KMS API: a real aiohttp server on a loopback port.

    It serves every KMS route under ``/api/v1`` with the real API's behaviour: API key
    check (401 without ``X-API-Key``, 403 with a wrong one), ``X-Phala-Version``
    switching ``/kms`` and ``/kms/{id}`` between node shapes (``KmsInfo``, versions
    before ``2026-06-23``) and contract shapes (``KmsContract``, ``2026-06-23`` and
    later), FastAPI-style 422 bodies, a structured 404 (``ERR-02-011``), an
    ``X-Request-ID`` header on every response, and a 307 redirect for a trailing slash.
    Without ``X-Phala-Version`` the server answers as ``default_version`` (the newest,
    ``2026-06-23``: contract shapes). A malformed version is a 400. A well-formed date
    picks the newest behaviour at or before it.

    Keys are real: each KMS contract holds a secp256k1 root key (advertised as
    ``k256_pubkey``) and derives each app's X25519 key from it and the app id, and the
    pubkey route signs it in the dstack legacy form (plus the timestamped form when
    ``timestamped_signatures`` is on). Signed keys are cached (LRU) so the server
    stays cheap under load.

    Use it as ``async with FakeKMSServer() as server:``, from sync code as ``with
    FakeKMSServer.in_thread() as server:``, or via the pytest fixtures
    ``fake_kms_server`` / ``fake_kms_server_thread``. The plain (non-async) methods and
    properties are safe to call from any thread. A request whose client disconnects
    is cancelled, so :attr:`in_flight` counts only requests a client still waits for.

    Attributes:
        timestamped_signatures: add ``timestamp`` and ``signature_v1`` to pubkey
            responses. May be changed at any time.
        clock: returns the current Unix time in seconds; ``timestamp`` is
            ``int(clock())``. May be replaced at any time.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        phala_node_count: int = 45,
        include_onchain: bool = True,
        extra_nodes: Iterable[Mapping[str, Any]] = (),
        default_version: str = CONTRACT_API_VERSION,
        timestamped_signatures: bool = False,
        clock: Callable[[], float] = time.time,
        seed: str = "phala-kms-fake",
        first_nonce: int = 0,
        signature_cache_size: int = 4096,
        request_log_size: int = 10_000,
        shutdown_timeout: float = 0.5,
    ) -> None:
        """Build the catalogue and keys; nothing listens until :meth:`start`.

        Args:
            host: the address to bind; keep the default loopback address in tests.
            port: the port to bind; 0 (the default) picks a free one, read it back
                from :attr:`port` after :meth:`start`.
            api_key: the only ``X-API-Key`` accepted.
            phala_node_count: how many off-chain Phala KMS nodes ``/kms`` lists. The
                first has slug ``phala``; with the 5 on-chain nodes the default 45 makes
                3 pages at ``page_size`` 20.
            include_onchain: serve the Base (8453, 3 nodes) and Ethereum (1, 2 nodes)
                KMS contracts; without them ``/kms/on-chain/{chain}`` lists none.
            extra_nodes: more ``KmsInfo`` objects (each with an ``id``) listed after
                the others, served as given. Each joins the contract with the same
                ``chain_id`` and (case-insensitive) ``kms_contract_address``, the Phala
                KMS when ``chain_id`` is null, or else a new contract with its own
                root key.
            default_version: the API version assumed without ``X-Phala-Version``.
            timestamped_signatures: start with timestamped pubkey responses on.
            clock: the time source for ``timestamp`` (Unix seconds).
            seed: makes ids, hashes and every key deterministic.
            first_nonce: the nonce of the first app id ``next_app_id`` hands out.
            signature_cache_size: how many signed (KMS, app id) keys to keep (LRU).
            request_log_size: how many requests the log keeps (oldest dropped first).
            shutdown_timeout: seconds :meth:`close` waits for in-flight requests before
                cancelling them.

        Raises:
            ValueError: a count is negative or ``default_version`` is malformed.
        """
        if first_nonce < 0 or signature_cache_size < 0 or request_log_size < 0:
            raise ValueError("first_nonce, signature_cache_size and request_log_size must be >= 0")
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        self._api_key_bytes = api_key.encode()
        self._default_version = _check_version(default_version)
        self._seed = seed
        self._shutdown_timeout = shutdown_timeout
        self.timestamped_signatures = timestamped_signatures
        self.clock = clock
        self._catalogue = build_catalogue(
            seed=seed,
            phala_node_count=phala_node_count,
            include_onchain=include_onchain,
            extra_nodes=extra_nodes,
        )
        self._views = _Views(self._catalogue)
        self._key_cache: OrderedDict[tuple[str, bytes], _CachedKey] = OrderedDict()
        self._key_cache_size = signature_cache_size
        self._version_cache: dict[str | None, bool | None] = {}
        self._lock = threading.Lock()
        self._log: deque[RecordedRequest] = deque(maxlen=request_log_size)
        self._route_counts: dict[str, int] = {}
        self._injections: list[Injection] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        self._seq = 0
        self._first_nonce = first_nonce
        self._next_nonce = first_nonce
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            RuntimeError: the server is already running.
            OSError: the address could not be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the fake server is already running")
        runner = web.AppRunner(
            self._build_app(),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving and close every connection; a no-op when not running."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeKMSServer:
        """Start the server and return it."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        await self.close()

    @classmethod
    def in_thread(cls, **kwargs: Any) -> ThreadedFakeKMSServer:
        """Make a server that runs on its own event loop in a background thread.

        ``with FakeKMSServer.in_thread(phala_node_count=3) as server:`` starts it and
        gives the running :class:`FakeKMSServer`; leaving the block stops it and joins
        the thread.

        Args:
            **kwargs: passed to :class:`FakeKMSServer`.
        """
        return ThreadedFakeKMSServer(cls(**kwargs))

    def __repr__(self) -> str:
        """Show where it listens (never the API key)."""
        where = self.base_url if self._port is not None else "not running"
        return f"<FakeKMSServer {where}>"

    # -- addresses and keys ----------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound host."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0).

        Raises:
            RuntimeError: the server has not been started.
        """
        if self._port is None:
            raise RuntimeError("the fake server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API prefix, e.g. ``http://127.0.0.1:PORT/api/v1`` (``PHALA_CLOUD_API_PREFIX``)."""
        return self.url + _PREFIX

    @property
    def api_key(self) -> str:
        """The API key the server accepts."""
        return self._api_key

    @property
    def k256_pubkey(self) -> str:
        """The Phala KMS root public key: compressed secp256k1, lowercase hex with ``0x``."""
        return self._catalogue.phala.k256_pubkey

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """Copies of every ``KmsInfo`` object ``/kms`` lists (node shape), in order."""
        return [dict(node.info) for node in self._catalogue.nodes]

    @property
    def contracts(self) -> list[dict[str, Any]]:
        """Every ``KmsContract`` object ``/kms`` lists (contract shape), in order."""
        return [contract.contract_item() for contract in self._catalogue.contracts]

    def _contract(self, kms: str) -> Contract:
        contract = self._catalogue.resolve(kms)
        if contract is None:
            raise KeyError(f"no KMS with id, slug or type {kms!r}")
        return contract

    def k256_pubkey_for(self, kms: str) -> str:
        """The root public key of a KMS (lowercase hex with ``0x``, SEC1 compressed).

        Args:
            kms: a contract or node id, a slug, or a KMS type (``phala``, ``base``,
                ``ethereum``), as the pubkey route accepts.

        Raises:
            KeyError: no such KMS.
        """
        return self._contract(kms).k256_pubkey

    def root_private_key(self, kms: str) -> bytes:
        """The 32-byte secp256k1 root private key of a KMS (to forge signatures in tests).

        Args:
            kms: as for :meth:`k256_pubkey_for`.

        Raises:
            KeyError: no such KMS.
        """
        return bytes(self._contract(kms).root_key.secret)

    def app_private_key(self, kms: str, app_id: str | bytes) -> bytes:
        """The 32-byte X25519 private key the KMS derives for an app (to decrypt in tests).

        Args:
            kms: as for :meth:`k256_pubkey_for`.
            app_id: 40 hex characters (optional ``0x``) or 20 raw bytes.

        Raises:
            KeyError: no such KMS.
            ValueError: ``app_id`` is malformed.
        """
        return derive_app_key(self._contract(kms).root_key, app_id_bytes(app_id)).private_key

    def app_public_key(self, kms: str, app_id: str | bytes) -> bytes:
        """The 32-byte X25519 public key the pubkey route returns for an app.

        Args:
            kms: as for :meth:`k256_pubkey_for`.
            app_id: 40 hex characters (optional ``0x``) or 20 raw bytes.

        Raises:
            KeyError: no such KMS.
            ValueError: ``app_id`` is malformed.
        """
        return derive_app_key(self._contract(kms).root_key, app_id_bytes(app_id)).public_key

    def app_id_for_nonce(self, nonce: int) -> str:
        """The app id (40 hex, no ``0x``) ``next_app_id`` hands out with ``nonce``."""
        material = f"{self._seed}:app-id:".encode() + nonce.to_bytes(8, "big")
        return keccak256(material)[12:].hex()

    @property
    def next_nonce(self) -> int:
        """The nonce of the next app id ``next_app_id`` will hand out."""
        return self._next_nonce

    # -- faults ----------------------------------------------------------------------

    def inject(self, route: str, fault: Fault, *, times: int | None = 1) -> Injection:
        """Make the next ``times`` requests to ``route`` fail with ``fault``.

        Faults apply before authentication, as a proxy's would. On one request every
        matching :class:`LatencyFault` adds its delay, then the first other matching
        fault (in injection order) answers; each fault that acted counts a hit.
        Without another fault, the real response follows the delay.

        Args:
            route: a name from :data:`ROUTE_NAMES`, ``"*"`` for every request, or a
                glob over the path below ``/api/v1`` starting with ``/`` (e.g.
                ``"/kms/*/pubkey/*"``).
            fault: one of the fault classes, e.g. ``StatusFault(503, retry_after=2)``.
            times: how many requests it applies to (>= 1), or ``None`` for all until
                :meth:`clear_faults` / :meth:`reset`.

        Returns:
            The :class:`Injection`; its ``hits`` count how often it fired.

        Raises:
            ValueError: unknown route name or ``times`` < 1.
            TypeError: ``fault`` is not a fault.
        """
        if route != "*" and not route.startswith("/") and route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; use one of {ROUTE_NAMES}, '*' or '/glob'")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not isinstance(fault, FAULT_TYPES):
            raise TypeError(f"not a fault: {fault!r}")
        injection = Injection(route=route, fault=fault, times=times)
        with self._lock:
            self._injections.append(injection)
        return injection

    @property
    def injections(self) -> list[Injection]:
        """The injections still active, in injection order."""
        with self._lock:
            return list(self._injections)

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self._injections.clear()

    def reset(self) -> None:
        """Clear faults, the request log, the counters and the peak; rewind the nonce."""
        with self._lock:
            self._injections.clear()
            self._log.clear()
            self._route_counts.clear()
            self._peak_in_flight = self._in_flight
            self._next_nonce = self._first_nonce

    def _take_faults(self, route: str, path: str) -> list[Fault]:
        if path.startswith(_PREFIX):
            path = path[len(_PREFIX) :]
        taken: list[Fault] = []
        with self._lock:
            answered = False
            for injection in self._injections:
                if injection.exhausted or not injection.matches(route, path):
                    continue
                is_latency = isinstance(injection.fault, LatencyFault)
                if not is_latency:
                    if answered:
                        continue
                    answered = True
                injection.hits += 1
                taken.append(injection.fault)
            self._injections = [i for i in self._injections if not i.exhausted]
        return taken

    # -- request log -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The request log, oldest first (bounded by ``request_log_size``)."""
        with self._lock:
            return list(self._log)

    @property
    def route_counts(self) -> dict[str, int]:
        """How many requests each route received (keys as :attr:`RecordedRequest.route`)."""
        with self._lock:
            return dict(self._route_counts)

    @property
    def total_requests(self) -> int:
        """How many requests arrived since start or :meth:`reset`."""
        with self._lock:
            return sum(self._route_counts.values())

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests handled at the same time since start or :meth:`reset`."""
        return self._peak_in_flight

    def _record(self, request: web.Request, route: str, request_id: str) -> None:
        headers = {
            name: REDACTED if name.lower() in _SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            route=route,
            query=dict(request.query.items()),
            headers=headers,
            phala_version=request.headers.get("X-Phala-Version"),
            request_id=request_id,
            timestamp=time.time(),
        )
        with self._lock:
            self._log.append(entry)
            self._route_counts[route] = self._route_counts.get(route, 0) + 1

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_get
        api = _PREFIX
        # Fixed paths first, so "{kms_id}"-style routes cannot capture them.
        add(api + "/kms", self._guard(self._kms_list), name="kms_list")
        # "[^/]+" (not aiohttp's default "[^{}/]+") so ids holding braces still route.
        add(api + "/kms/on-chain/{chain:[^/]+}", self._guard(self._onchain), name="onchain_kms")
        add(api + "/kms/phala/next_app_id", self._guard(self._next_app_id), name="next_app_id")
        add(api + "/kms/{kms_id:[^/]+}", self._guard(self._kms_info), name="kms_info")
        add(
            api + "/kms/{slug:[^/]+}/nodes",
            self._guard(self._contract_nodes),
            name="contract_nodes",
        )
        add(
            api + "/kms/{kms:[^/]+}/pubkey/{app_id:[^/]+}",
            self._guard(self._pubkey),
            name="app_pubkey",
        )
        add("/{tail:.*}", self._fallback, name="not_found")
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        self._in_flight += 1
        if self._in_flight > self._peak_in_flight:
            self._peak_in_flight = self._in_flight
        self._seq += 1
        request_id = f"req_fake{self._seq:08x}"
        token = _REQUEST_ID.set(request_id)
        try:
            route = request.match_info.route.name or "method_not_allowed"
            self._record(request, route, request_id)
            faults = self._take_faults(route, request.path) if self._injections else []
            try:
                if faults:
                    resp = await self._faulted(faults, request, handler, request_id)
                else:
                    resp = await handler(request)
            except web.HTTPException as exc:  # 405 from the router
                resp = _detail(exc.status, exc.reason)
                allow = exc.headers.get("Allow")
                if allow is not None:
                    resp.headers["Allow"] = allow
            if not resp.prepared:
                resp.headers["X-Request-ID"] = request_id
            return resp
        finally:
            _REQUEST_ID.reset(token)
            self._in_flight -= 1

    async def _faulted(
        self, faults: Sequence[Fault], request: web.Request, handler: _Handler, request_id: str
    ) -> web.StreamResponse:
        answer: Fault | None = None
        for fault in faults:
            if isinstance(fault, LatencyFault):
                await asyncio.sleep(fault.seconds)
            else:
                answer = fault
        if answer is None:
            return await handler(request)
        return await respond(answer, request, lambda: handler(request), request_id)

    def _guard(self, handler: Callable[[web.Request, bool], Awaitable[web.Response]]) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            key = request.headers.get("X-API-Key")
            if not key:
                return _detail(401, "Not authenticated: send your API key in X-API-Key")
            if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), self._api_key_bytes):
                return _detail(403, "Invalid API key")
            version = request.headers.get("X-Phala-Version")
            contract_shape = self._contract_shape(version)
            if contract_shape is None:
                return _detail(400, f"Invalid X-Phala-Version {version!r}: expected YYYY-MM-DD")
            return await handler(request, contract_shape)

        return guarded

    def _contract_shape(self, version: str | None) -> bool | None:
        cache = self._version_cache
        if version in cache:
            return cache[version]
        effective = self._default_version if version is None else version.strip()
        shape = effective >= CONTRACT_API_VERSION if _VERSION_RE.fullmatch(effective) else None
        if len(cache) < 256:
            cache[version] = shape
        return shape

    async def _fallback(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(_PREFIX + "/") and path.endswith("/") and len(path) > len(_PREFIX) + 1:
            rel = path.rstrip("/")[len(_PREFIX) :]
            if any(pattern.fullmatch(rel) for pattern in _ROUTE_PATTERNS):
                location = self.url + request.rel_url.raw_path.rstrip("/")
                if request.rel_url.raw_query_string:
                    location += "?" + request.rel_url.raw_query_string
                return web.Response(status=307, headers={"Location": location})
        return _detail(404, "Not Found")

    # -- routes ----------------------------------------------------------------------

    async def _kms_list(self, request: web.Request, contract_shape: bool) -> web.Response:
        query = dict(request.query.items())
        errors: ErrorList = []
        page = parse_int(query, "page", 1, errors, ge=1)
        page_size = parse_int(query, "page_size", 20, errors, ge=1, le=100)
        is_onchain = parse_bool(query, "is_onchain", errors)
        if errors:
            return _detail(422, errors)
        views = self._views
        items = (views.contract_items if contract_shape else views.node_items)[is_onchain]
        total = len(items)
        pages = -(-total // page_size)
        start = (page - 1) * page_size
        body = (
            '{"items":['
            + ",".join(items[start : start + page_size])
            + f'],"total":{total},"page":{page},"page_size":{page_size},"pages":{pages}}}'
        )
        return _json(body)

    async def _kms_info(self, request: web.Request, contract_shape: bool) -> web.Response:
        ref = request.match_info["kms_id"]
        if contract_shape:
            contract = self._catalogue.contract(ref)
            if contract is not None:
                return _json(self._views.contract_body[contract.id])
        else:
            node = self._catalogue.node(ref)
            if node is not None:
                return _json(self._views.node_body[node.id])
        return _not_found("kms_id", ref)

    async def _contract_nodes(self, request: web.Request, contract_shape: bool) -> web.Response:
        ref = request.match_info["slug"]
        contract = self._catalogue.contract(ref)
        if contract is None:
            return _not_found("slug", ref)
        return _json(self._views.contract_nodes_body[contract.id])

    async def _onchain(self, request: web.Request, contract_shape: bool) -> web.Response:
        chain = request.match_info["chain"]
        body = self._views.onchain_body.get(chain)
        if body is None:
            supported = ", ".join(self._views.onchain_body)
            return _detail(400, f"Unsupported chain '{chain}'. Supported chains: {supported}")
        return _json(body)

    async def _next_app_id(self, request: web.Request, contract_shape: bool) -> web.Response:
        errors: ErrorList = []
        counts = parse_int(dict(request.query.items()), "counts", 1, errors, ge=1, le=20)
        if errors:
            return _detail(422, errors)
        with self._lock:
            first = self._next_nonce
            self._next_nonce += counts
        app_ids = [
            {"app_id": self.app_id_for_nonce(nonce), "nonce": nonce}
            for nonce in range(first, first + counts)
        ]
        return _json(dumps({"app_ids": app_ids}))

    async def _pubkey(self, request: web.Request, contract_shape: bool) -> web.Response:
        raw_app_id = request.match_info["app_id"]
        match = _APP_ID_RE.fullmatch(raw_app_id)
        if match is None:
            return _detail(422, [pattern_error("path", "app_id", raw_app_id, _APP_ID_PATTERN)])
        kms = request.match_info["kms"]
        contract = self._catalogue.resolve(kms)
        if contract is None:
            return _not_found("kms", kms)
        cached = self._cached_key(contract, bytes.fromhex(match.group(1)))
        if not self.timestamped_signatures:
            return _json(cached.legacy_body)
        timestamp = int(self.clock())
        if timestamp != cached.timestamp:
            key = cached.key
            signature_v1 = sign_timestamped(
                contract.root_key, bytes.fromhex(match.group(1)), key.public_key, timestamp
            )
            cached.timestamped_body = dumps(
                {
                    "public_key": key.public_key.hex(),
                    "signature": key.signature.hex(),
                    "timestamp": timestamp,
                    "signature_v1": signature_v1.hex(),
                }
            ).encode()
            cached.timestamp = timestamp
        return _json(cached.timestamped_body)

    def _cached_key(self, contract: Contract, app_id: bytes) -> _CachedKey:
        cache = self._key_cache
        cache_key = (contract.id, app_id)
        cached = cache.get(cache_key)
        if cached is not None:
            cache.move_to_end(cache_key)
            return cached
        cached = _CachedKey(derive_app_key(contract.root_key, app_id))
        if self._key_cache_size:
            cache[cache_key] = cached
            while len(cache) > self._key_cache_size:
                cache.popitem(last=False)
        return cached


class ThreadedFakeKMSServer:
    """Runs a :class:`FakeKMSServer` on its own event loop in a background thread.

    For sync code and sync tests::

        with FakeKMSServer.in_thread() as server:
            requests.get(server.base_url + "/kms", headers={"X-API-Key": server.api_key})

    Leaving the block closes the server and its connections, stops the loop and joins
    the thread. The thread is a daemon, so a forgotten :meth:`stop` cannot hang
    interpreter exit.
    """

    def __init__(self, server: FakeKMSServer | None = None) -> None:
        """Wrap ``server`` (a default :class:`FakeKMSServer` when ``None``); not started."""
        self.server = server if server is not None else FakeKMSServer()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def start(self, timeout: float = 30.0) -> FakeKMSServer:
        """Start the thread and the server; return the running server.

        Args:
            timeout: seconds to wait for the server to listen.

        Raises:
            RuntimeError: already started.
            OSError: the address could not be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the threaded fake server is already running")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run,
            args=(self._main(started),),
            name="phala-kms-fake-server",
            daemon=True,
        )
        thread.start()
        try:
            started.result(timeout)
        except BaseException:
            thread.join(timeout)
            raise
        self._thread = thread
        return self.server

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            await self._stop_event.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Close the server, stop its loop and join the thread; a no-op when stopped."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)
        thread.join()

    def __enter__(self) -> FakeKMSServer:
        """Start and return the running :class:`FakeKMSServer`."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and join the thread."""
        self.stop()


def run_fake_server(
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
    **server_kwargs: Any,
) -> None:
    """Run a fake server in the foreground until Ctrl-C (``phala-kms fake-server``).

    Prints the base URL and API key (as ``PHALA_CLOUD_API_PREFIX`` /
    ``PHALA_CLOUD_API_KEY`` lines a shell can use) once it listens.

    Args:
        host: the address to bind (loopback by default; anything else exposes it).
        port: the port to bind; 0 picks a free one (printed).
        out: where to print; ``sys.stdout`` by default.
        stop_event: also stop when this event is set (for embedding and tests).
        **server_kwargs: passed to :class:`FakeKMSServer` (``api_key``,
            ``phala_node_count``, ...).

    Raises:
        OSError: the address could not be bound.
    """

    async def main() -> None:
        stream = out if out is not None else sys.stdout
        async with FakeKMSServer(host=host, port=port, **server_kwargs) as server:
            # A wildcard bind is reached locally through loopback (the SDK refuses plain
            # http:// to anything else).
            local = server.base_url
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
                local = f"http://127.0.0.1:{server.port}/api/v1"
            print(f"Fake Phala Cloud KMS API listening on {server.base_url}", file=stream)
            print("# for a shell: eval these two lines (or copy them)", file=stream)
            print(f"export PHALA_CLOUD_API_PREFIX={local}", file=stream)
            print(f"export PHALA_CLOUD_API_KEY={server.api_key}", file=stream)
            print("Press Ctrl-C to stop.", file=stream, flush=True)
            if stop_event is None:
                await asyncio.Event().wait()  # until Ctrl-C cancels it
            else:
                # A threading.Event cannot be awaited: poll it.
                while not stop_event.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("Stopped.", file=out if out is not None else sys.stdout, flush=True)
