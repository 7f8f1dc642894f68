"""The fake Phala Cloud KMS API server: its lifecycle, addresses, keys and controls.

:class:`FakeKMSServer` puts the parts together: the catalogue (:mod:`._catalogue`), the
routes (:mod:`._routes`), the fault registry (:mod:`._injections`), the request log
(:mod:`._requests`) and the app id predictions (:mod:`._app_ids`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .._constants import CONTRACT_API_VERSION
from ._app_ids import AppIdSequence
from ._catalogue import Contract, app_id_bytes, build_catalogue, derive_app_key
from ._faults import Fault
from ._injections import FaultRegistry, Injection
from ._listen import LoopbackServer
from ._pressure import Outage, RateLimit
from ._requests import RecordedRequest, RequestLog
from ._routes import API_PREFIX, ROUTE_NAMES, KMSRoutes
from ._thread import ServerThread

__all__ = ["DEFAULT_API_KEY", "FakeKMSServer", "ThreadedFakeKMSServer"]

DEFAULT_API_KEY = "phak_fake_0123456789abcdef"
"""The API key a :class:`FakeKMSServer` accepts unless given another."""


class FakeKMSServer(LoopbackServer):
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

    ``GET /kms/phala/next_app_id`` predicts the app ids of the next deployments, like
    the real API: reading it changes nothing; :meth:`deploy_app` says an app was
    deployed, and the predictions move on by one.
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
            first_nonce: the nonce of the first deployment: the first app id
                ``next_app_id`` predicts.
            signature_cache_size: how many signed (KMS, app id) keys to keep (LRU).
            request_log_size: how many requests the log keeps (oldest dropped first).
            shutdown_timeout: seconds :meth:`close` waits for in-flight requests before
                cancelling them.

        Raises:
            ValueError: a count is negative or ``default_version`` is malformed.
        """
        if first_nonce < 0 or signature_cache_size < 0 or request_log_size < 0:
            raise ValueError("first_nonce, signature_cache_size and request_log_size must be >= 0")
        super().__init__(host, port)
        self._api_key = api_key
        self._shutdown_timeout = shutdown_timeout
        self._catalogue = build_catalogue(
            seed=seed,
            phala_node_count=phala_node_count,
            include_onchain=include_onchain,
            extra_nodes=extra_nodes,
        )
        self._log = RequestLog(request_log_size)
        self._faults = FaultRegistry(ROUTE_NAMES)
        self._app_ids = AppIdSequence(seed, first_nonce)
        self._routes = KMSRoutes(
            catalogue=self._catalogue,
            api_key=api_key,
            default_version=default_version,
            timestamped_signatures=timestamped_signatures,
            clock=clock,
            signature_cache_size=signature_cache_size,
            log=self._log,
            faults=self._faults,
            app_ids=self._app_ids,
            origin=lambda: self.url,
        )

    # -- lifecycle -------------------------------------------------------------------

    def _make_runner(self) -> web.AppRunner:
        return web.AppRunner(
            self._routes.build_app(),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )

    _what = "fake server"

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
        return self.url + API_PREFIX

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
            app_id: as for :meth:`app_private_key`.

        Raises:
            KeyError: no such KMS.
            ValueError: ``app_id`` is malformed.
        """
        return derive_app_key(self._contract(kms).root_key, app_id_bytes(app_id)).public_key

    # -- KMS nodes and CVMs ------------------------------------------------------------

    def node_url(self, ref: str) -> str:
        """The URL of a fake KMS node on this server's port, e.g.
        ``http://127.0.0.1:PORT/node/phala``: it answers ``POST .../prpc/GetMeta?json``
        and ``POST .../prpc/GetAppEnvEncryptPubKey?json`` for the KMS ``ref`` names (a
        node id or slug, or a contract id, slug or type). ``GET /kms/{slug}/nodes``
        lists each node at ``node_url(node_id)``. No API key is needed.

        Raises:
            KeyError: no such KMS.
            RuntimeError: the server has not been started.
        """
        from ._node import node_path

        self._contract(ref)
        return self.url + node_path(ref)

    def add_cvm(
        self,
        kms: str = "phala",
        *,
        app_id: str | None = None,
        kms_info: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Add a CVM that ``GET /cvms/{cvm_id}`` serves; return its id.

        Args:
            kms: A node id or slug (the CVM's ``kms_info``), or a contract id, slug or
                type (its first node).
            app_id: The CVM's app id (40 hex); a fresh one by default.
            kms_info: Fields to override in ``kms_info`` (``None`` values are sent as null).
            **fields: More top-level fields, as sent.

        Raises:
            KeyError: no such KMS.
        """
        return self._routes.cvms.add(kms, app_id=app_id, kms_info=kms_info, **fields)

    # -- pubkey signatures -------------------------------------------------------------

    @property
    def timestamped_signatures(self) -> bool:
        """Whether pubkey responses add ``timestamp`` and ``signature_v1``.

        May be changed at any time.
        """
        return self._routes.timestamped_signatures

    @timestamped_signatures.setter
    def timestamped_signatures(self, value: bool) -> None:
        self._routes.timestamped_signatures = value

    @property
    def clock(self) -> Callable[[], float]:
        """Returns the current Unix time in seconds; ``timestamp`` is ``int(clock())``.

        May be replaced at any time.
        """
        return self._routes.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self._routes.clock = value

    # -- app ids ---------------------------------------------------------------------

    def app_id_for_nonce(self, nonce: int) -> str:
        """The app id (40 hex, no ``0x``) of the deployment with ``nonce``.

        ``next_app_id`` predicts it while :attr:`next_nonce` is at most ``nonce``.
        """
        return self._app_ids.app_id(nonce)

    @property
    def next_nonce(self) -> int:
        """The nonce of the next deployment: the first app id ``next_app_id`` predicts."""
        return self._app_ids.next_nonce

    def deploy_app(self) -> str:
        """Say an app was deployed: it takes the next predicted app id.

        ``next_app_id`` then predicts from the following nonce on.

        Returns:
            The app id the deployment got (40 hex, no ``0x``): the first one
            ``next_app_id`` predicted until now.
        """
        return self._app_ids.deploy()

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
        return self._faults.inject(route, fault, times)

    @property
    def injections(self) -> list[Injection]:
        """The injections still active, in injection order."""
        return self._faults.injections

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()

    def reset(self) -> None:
        """Clear faults, the rate limit, the outage, the request log, the counters and the
        peak; rewind the nonce."""
        self._faults.clear()
        self._routes.pressure.clear()
        self._log.clear()
        self._app_ids.reset()

    # -- rate limit and outage ---------------------------------------------------------

    @property
    def rate_limit(self) -> RateLimit | None:
        """The server-wide rate limit, or ``None`` (the default): set a
        :class:`~phala_kms.testing.RateLimit` to turn it on, ``None`` to lift it.

        While on, every API request takes a token from one bucket (``burst`` tokens,
        refilled at ``rate`` per second, full when set); a request that finds it empty
        gets a 429 with ``Retry-After`` and the API's ``ERR-05-002`` structured error.
        :attr:`rate_limited_count` counts them. Applies before authentication and
        before injected faults; the fake KMS nodes (:meth:`node_url`) are not limited.
        May be set from any thread::

            server.rate_limit = RateLimit(rate=300, burst=30, retry_after=1)
        """
        return self._routes.pressure.rate_limit

    @rate_limit.setter
    def rate_limit(self, value: RateLimit | None) -> None:
        self._routes.pressure.rate_limit = value

    @property
    def outage(self) -> Outage | None:
        """The outage in force, or ``None`` (the default). Set ``True`` (or an
        :class:`~phala_kms.testing.Outage` for another status, a ``Retry-After`` or a
        structured body) to answer every API request 503 from now on, ``False`` or
        ``None`` to end it. It takes precedence over :attr:`rate_limit` and injected
        faults; :attr:`outage_count` counts the requests it refused. May be set from
        any thread::

            server.outage = True     # every request: 503 {"detail": "Service Unavailable"}
            server.outage = Outage(fraction=0.1, seed=1)   # or a brown-out: 10 % at random
            ...
            server.outage = False
        """
        return self._routes.pressure.outage

    @outage.setter
    def outage(self, value: Outage | bool | None) -> None:
        self._routes.pressure.outage = value

    @property
    def rate_limited_count(self) -> int:
        """Requests refused by :attr:`rate_limit` since it was set or :meth:`reset`."""
        return self._routes.pressure.rate_limited

    @property
    def outage_count(self) -> int:
        """Requests refused by :attr:`outage` since start or :meth:`reset`."""
        return self._routes.pressure.outage_refused

    # -- request log -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The request log, oldest first (bounded by ``request_log_size``)."""
        return self._log.entries

    @property
    def route_counts(self) -> dict[str, int]:
        """How many requests each route received (keys as :attr:`RecordedRequest.route`)."""
        return self._log.route_counts

    @property
    def total_requests(self) -> int:
        """How many requests arrived since start or :meth:`reset`."""
        return self._log.total

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return self._log.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests handled at the same time since start or :meth:`reset`."""
        return self._log.peak


class ThreadedFakeKMSServer(ServerThread[FakeKMSServer]):
    """Runs a :class:`FakeKMSServer` on its own event loop in a background thread.

    For sync code and sync tests::

        with FakeKMSServer.in_thread() as server:
            requests.get(server.base_url + "/kms", headers={"X-API-Key": server.api_key})

    Leaving the block closes the server and its connections, stops the loop and joins
    the thread. The thread is a daemon, so a forgotten :meth:`stop` cannot hang
    interpreter exit.

    Attributes:
        server: the :class:`FakeKMSServer` it runs.
    """

    def __init__(self, server: FakeKMSServer | None = None) -> None:
        """Wrap ``server`` (a default :class:`FakeKMSServer` when ``None``); not started."""
        super().__init__(
            server if server is not None else FakeKMSServer(),
            thread_name="phala-kms-fake-server",
        )
