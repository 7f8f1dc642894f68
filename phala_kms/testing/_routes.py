"""The fake's HTTP side: the aiohttp application, its middleware and route handlers.

:class:`KMSRoutes` answers like the real API (auth, ``X-Phala-Version`` shapes,
FastAPI-style validation, structured 404s, trailing-slash redirects) from a
:class:`~._catalogue.Catalogue`, and applies what the rest of the fake keeps: faults
from a :class:`~._injections.FaultRegistry`, the :class:`~._requests.RequestLog`, and
app id predictions from an :class:`~._app_ids.AppIdSequence`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .._constants import (
    CONTRACT_API_VERSION,
    DEFAULT_BASE_URL,
    HEADER_API_KEY,
    HEADER_REQUEST_ID,
    HEADER_VERSION,
)
from .._hex import parse_hex
from ._app_ids import AppIdSequence
from ._catalogue import (
    CHAIN_NAMES,
    JSON_CONTENT_TYPE,
    AppKey,
    Catalogue,
    Contract,
    derive_app_key,
    dumps,
    sign_timestamped,
)
from ._cvms import CVMStore
from ._faults import Fault, LatencyFault, respond
from ._injections import FaultRegistry
from ._node import add_node_routes, node_path
from ._pressure import Pressure
from ._requests import RequestLog
from ._validation import ErrorList, parse_bool, parse_int, pattern_error

__all__ = ["API_PREFIX", "ROUTE_NAMES", "KMSRoutes"]

API_PREFIX = urlsplit(DEFAULT_BASE_URL).path
"""The path every route is served under (``/api/v1``), as on the real API."""

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

_VERSION_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_APP_ID_PATTERN = "^(0x)?[0-9a-fA-F]{40}$"  # the API's pattern, quoted in its 422 body
_APP_ID_RE = re.compile(_APP_ID_PATTERN)
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
_Route = Callable[[web.Request, bool], Awaitable[web.Response]]


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
        self.onchain_body: dict[str, bytes] = {}
        for chain_id, chain_name in CHAIN_NAMES.items():
            items = [c.onchain_item() for c in contracts if c.chain_id == chain_id]
            body = {"chain_name": chain_name, "chain_id": chain_id, "contracts": items}
            self.onchain_body[chain_name] = dumps(body).encode()


def _json(body: bytes | str, status: int = 200) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, status=status, content_type=JSON_CONTENT_TYPE)


def _detail(status: int, detail: Any) -> web.Response:
    return _json(dumps({"detail": detail}), status)


def _not_found(field: str, value: str) -> web.Response:
    body = {
        "error_code": "ERR-02-011",
        "message": "KMS not found",
        "request_id": _REQUEST_ID.get("req_unknown"),
        "details": [{"field": field, "value": value, "message": None}],
        "suggestions": [f"See the KMS this API knows with GET {API_PREFIX}/kms"],
        "links": _DOCS_LINKS,
    }
    return _json(dumps(body), 404)


class KMSRoutes:
    """The aiohttp application of the fake and the state only its handlers use.

    Attributes:
        timestamped_signatures: add ``timestamp`` and ``signature_v1`` to pubkey
            responses.
        clock: returns the current Unix time in seconds, for ``timestamp``.
    """

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        api_key: str,
        default_version: str,
        timestamped_signatures: bool,
        clock: Callable[[], float],
        signature_cache_size: int,
        log: RequestLog,
        faults: FaultRegistry,
        app_ids: AppIdSequence,
        origin: Callable[[], str],
    ) -> None:
        """Serialise the static bodies; :meth:`build_app` makes the application.

        Args:
            catalogue: the contracts and nodes to serve.
            api_key: the only ``X-API-Key`` accepted.
            default_version: the API version assumed without ``X-Phala-Version``.
            timestamped_signatures: the initial :attr:`timestamped_signatures`.
            clock: the initial :attr:`clock`.
            signature_cache_size: how many signed (KMS, app id) keys to keep (LRU).
            log: where each request is logged and counted.
            faults: where each request takes its faults from.
            app_ids: what ``next_app_id`` predicts.
            origin: returns the server root URL (for redirects).

        Raises:
            ValueError: ``default_version`` is not ``YYYY-MM-DD``.
        """
        if not _VERSION_RE.fullmatch(default_version):
            raise ValueError(f"an API version looks like YYYY-MM-DD, got {default_version!r}")
        self.timestamped_signatures = timestamped_signatures
        self.clock = clock
        self._catalogue = catalogue
        self._api_key_bytes = api_key.encode()
        self._default_version = default_version
        self._log = log
        self._faults = faults
        self._app_ids = app_ids
        self._origin = origin
        self._views = _Views(catalogue)
        self.pressure = Pressure()
        self.cvms = CVMStore(catalogue)
        self._key_cache: OrderedDict[tuple[str, bytes], _CachedKey] = OrderedDict()
        self._key_cache_size = signature_cache_size
        self._version_cache: dict[str | None, bool | None] = {}

    def build_app(self) -> web.Application:
        """A new application serving every route (and the fallback) through the middleware."""
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_get
        api = API_PREFIX
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
        add(api + "/cvms/{cvm_id:[^/]+}", self._guard(self.cvms.route), name="cvm")
        add_node_routes(app, self._catalogue, lambda: self.clock())
        add("/{tail:.*}", self._fallback, name="not_found")
        return app

    # -- every request ---------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        log = self._log
        request_id = log.begin()
        token = _REQUEST_ID.set(request_id)
        try:
            route = request.match_info.route.name or "method_not_allowed"
            log.record(request, route, request_id)
            if request.path.startswith(API_PREFIX):  # the rate limit and outage, if on
                refusal = self.pressure.answer(request_id)
                if refusal is not None:
                    return refusal
            faults = self._faults.take(route, request.path.removeprefix(API_PREFIX))
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
                resp.headers[HEADER_REQUEST_ID] = request_id
            return resp
        finally:
            _REQUEST_ID.reset(token)
            log.end()

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

    def _guard(self, route: _Route) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            key = request.headers.get(HEADER_API_KEY)
            if not key:
                return _detail(401, f"Not authenticated: send your API key in {HEADER_API_KEY}")
            if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), self._api_key_bytes):
                return _detail(403, "Invalid API key")
            version = request.headers.get(HEADER_VERSION)
            contract_shape = self._contract_shape(version)
            if contract_shape is None:
                return _detail(400, f"Invalid {HEADER_VERSION} {version!r}: expected YYYY-MM-DD")
            return await route(request, contract_shape)

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
        if (
            path.startswith(API_PREFIX + "/")
            and path.endswith("/")
            and len(path) > len(API_PREFIX) + 1
        ):
            rel = path.rstrip("/")[len(API_PREFIX) :]
            if any(pattern.fullmatch(rel) for pattern in _ROUTE_PATTERNS):
                location = self._origin() + request.rel_url.raw_path.rstrip("/")
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
        origin = self._origin()  # each node's url is the fake node on this port
        items = [
            {**node.contract_node_item(), "url": origin + node_path(node.id)}
            for node in contract.nodes
        ]
        return _json(dumps({"items": items, "total": len(items)}))

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
        app_ids = [
            {"app_id": app_id, "nonce": nonce} for nonce, app_id in self._app_ids.predict(counts)
        ]
        return _json(dumps({"app_ids": app_ids}))

    async def _pubkey(self, request: web.Request, contract_shape: bool) -> web.Response:
        raw_app_id = request.match_info["app_id"]
        app_id = parse_hex(raw_app_id, 20) if _APP_ID_RE.fullmatch(raw_app_id) else None
        if app_id is None:
            return _detail(422, [pattern_error("path", "app_id", raw_app_id, _APP_ID_PATTERN)])
        kms = request.match_info["kms"]
        contract = self._catalogue.resolve(kms)
        if contract is None:
            return _not_found("kms", kms)
        cached = self._cached_key(contract, app_id)
        if not self.timestamped_signatures:
            return _json(cached.legacy_body)
        timestamp = int(self.clock())
        if timestamp != cached.timestamp:
            key = cached.key
            signature_v1 = sign_timestamped(contract.root_key, app_id, key.public_key, timestamp)
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
