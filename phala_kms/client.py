"""``AsyncKMSClient``: the asyncio client for the Phala Cloud KMS API."""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, overload

from ._config import (
    NODE_API_VERSION,
    ClientConfig,
    RetryPolicy,
    header_safe,
    resolve_config,
)
from ._pagination import awalk_pages
from ._transport import Transport
from ._validate import app_id_hex, bool_param, int_param, kms_segment, path_segment
from .errors import ConfigurationError, InvalidArgumentError, PhalaKMSError
from .models import (
    AppEnvEncryptPubKey,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    Paginated,
)

if TYPE_CHECKING:
    import aiohttp

    from .crypto import EnvVar

__all__ = ["CONTRACT_API_VERSION", "UNVERIFIED", "AsyncKMSClient", "ProgressCallback"]

CONTRACT_API_VERSION = "2026-06-23"
"""The version pinned on the contract-centric calls (``list_kms_contracts`` and friends)."""


class _Unverified(enum.Enum):
    UNVERIFIED = "unverified"

    def __repr__(self) -> str:
        return "UNVERIFIED"


UNVERIFIED: Final = _Unverified.UNVERIFIED
"""The fan-out's default ``trusted_signer``: fetch keys without verifying them.

It is a marker rather than ``None`` so that a signer looked up at run time and found
missing (e.g. a ``k256_pubkey`` the API returned as ``null``) fails closed with
``SignatureVerificationError`` instead of silently turning verification off."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``on_progress(done, total)`` after each distinct app id of a fan-out finishes."""


def _page_params(page: int, page_size: int, is_onchain: bool | None) -> dict[str, str]:
    params = {
        "page": int_param(page, "page", 1),
        "page_size": int_param(page_size, "page_size", 1, 100),
    }
    onchain = bool_param(is_onchain, "is_onchain")
    if onchain is not None:
        params["is_onchain"] = onchain
    return params


class AsyncKMSClient:
    """An asyncio client for the Phala Cloud KMS API (``/api/v1/kms...``).

    Use it as an async context manager, or call :meth:`aclose` when done. One
    client holds one connection pool; share it across tasks (it is safe for
    concurrent use within its event loop) rather than creating one per request.

    Every method sends a GET with ``X-API-Key``, ``X-Phala-Version`` and
    ``User-Agent: phala-kms/<version>``, never follows redirects, retries only safe
    failures (see :class:`~phala_kms.RetryPolicy`), and validates its arguments
    before sending anything.

    Args:
        api_key: The Phala Cloud API key (``phak_...``). Defaults to the
            ``PHALA_CLOUD_API_KEY`` environment variable. A missing key raises
            :class:`~phala_kms.errors.ConfigurationError` at the first request,
            before anything is sent (not at construction, so a client can be built
            before the key is known).
        base_url: The API prefix including ``/api/v1``. Defaults to
            ``PHALA_CLOUD_API_PREFIX``, then ``https://cloud-api.phala.com/api/v1``.
            ``http://`` is refused unless the host is loopback.
        api_version: The ``X-Phala-Version`` (``YYYY-MM-DD``) sent on calls that do
            not pin their own; default ``"2026-06-23"``. Every method also takes a
            per-call ``api_version``.
        timeout: The limit for one attempt (connect, send, wait, read), in seconds.
            The default of 60 s allows for the server's own KMS round trip (~30 s).
        max_retries: Retries after the first attempt for safe failures; 0 disables.
        session: An ``aiohttp.ClientSession`` you own. The client uses its connector
            (pool limit, TLS settings, proxies) and never closes it; the client's own
            ``timeout``, redirect refusal and status handling still apply to every
            request. By default the client creates its own session.
        connect_timeout: The limit for opening a TCP connection, in seconds.
        retry_policy: Full control of retry timing; pass it instead of ``max_retries``.
        max_connections: The connection pool size for the client's own session; it
            also caps the concurrency of :meth:`get_app_env_encrypt_pubkeys`.
        ssl_context: An ``ssl.SSLContext`` for the client's own session, e.g.
            ``ssl.create_default_context(cafile="corp-ca.pem")`` to trust a private CA.
            Default: the system's trust store, with certificate and host-name checks
            (they cannot be turned off by accident: there is no ``verify=False``).
        trust_env: Honour ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (and
            ``~/.netrc``) for the client's own session, as aiohttp's ``trust_env``
            does. Off by default, like aiohttp.

    Raises:
        ConfigurationError: A setting is unusable (bad base URL, non-positive
            timeout, both ``max_retries`` and ``retry_policy`` given, ``ssl_context``
            together with ``session``, ...).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        api_version: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 10.0,
        retry_policy: RetryPolicy | None = None,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = False,
    ) -> None:
        self._config = resolve_config(
            api_key=api_key,
            base_url=base_url,
            api_version=api_version,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            max_connections=max_connections,
            ssl_context=ssl_context,
            trust_env=trust_env,
        )
        if session is not None and ssl_context is not None:
            raise ConfigurationError(
                "ssl_context applies to the client's own session; with session=..., set TLS"
                " on that session's connector (aiohttp.TCPConnector(ssl=...))",
                setting="ssl_context",
            )
        if session is not None:
            limit = getattr(session.connector, "limit", 0) or self._config.max_connections
            self._pool_limit = min(limit, self._config.max_connections)
        else:
            self._pool_limit = self._config.max_connections
        self._transport = Transport(self._config, session)

    @property
    def config(self) -> ClientConfig:
        """The resolved, frozen settings (the API key is hidden from its repr)."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._transport.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<AsyncKMSClient base_url={self._config.base_url!r} "
            f"api_version={self._config.api_version!r} {state}>"
        )

    async def __aenter__(self) -> AsyncKMSClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connection pool. Idempotent.

        A session passed in as ``session=`` is left open for its owner. Using the
        client afterwards raises :class:`~phala_kms.errors.ClientStateError`.
        """
        await self._transport.aclose()

    def _version(self, override: str | None, pinned: str | None = None) -> str:
        if override is not None:
            text = override.strip() if isinstance(override, str) else ""
            # It becomes a header value: printable ASCII only (aiohttp would raise a bare
            # ValueError for a control character, and non-ASCII is not portable).
            if not text or not header_safe(text):
                raise InvalidArgumentError(
                    "api_version must be a non-empty str of printable ASCII like '2026-06-23'",
                    argument="api_version",
                )
            return text
        return pinned or self._config.api_version

    # ------------------------------------------------------------------ node-centric

    async def get_kms_list(
        self,
        page: int = 1,
        page_size: int = 20,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
    ) -> Paginated[KMSInfo]:
        """List KMS nodes, one page at a time.

        ``GET /kms?page=&page_size=&is_onchain=`` with ``X-Phala-Version: 2026-05-22``
        (node-centric shape) unless ``api_version`` overrides it.

        Args:
            page: The page number, from 1.
            page_size: Items per page, 1..100.
            is_onchain: ``True`` for on-chain KMS only, ``False`` for off-chain only,
                ``None`` (default) for both.
            api_version: Override the pinned ``X-Phala-Version`` for this call.

        Returns:
            The page: ``items`` (``KMSInfo``), ``total``, ``page``, ``page_size``, ``pages``.

        Raises:
            InvalidArgumentError: ``page`` < 1, ``page_size`` outside 1..100, or a
                non-bool ``is_onchain``; nothing is sent.
            ConfigurationError: No API key is configured.
            ClientStateError: The client is closed or used from another event loop.
            TransportError: No usable response after the allowed retries.
            APIStatusError: An error status (e.g. ``AuthenticationError`` for 401).
            RedirectError: The API answered with a redirect.
            ResponseValidationError: The body is not JSON or does not fit the model.
        """
        params = _page_params(page, page_size, is_onchain)
        return await self._transport.get(
            "/kms",
            Paginated[KMSInfo],
            version=self._version(api_version, NODE_API_VERSION),
            params=params,
        )

    async def iter_kms_list(
        self,
        page_size: int = 100,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
    ) -> AsyncIterator[KMSInfo]:
        """Yield every KMS node of every page, fetching pages as they are needed.

        Pages are ``GET /kms`` calls as in :meth:`get_kms_list`, from page 1 until
        the server's ``pages`` is reached (or a page comes back empty).

        Args:
            page_size: Items per request, 1..100.
            is_onchain: As in :meth:`get_kms_list`.
            api_version: As in :meth:`get_kms_list`.

        Yields:
            Each ``KMSInfo`` in server order.

        Raises:
            The errors of :meth:`get_kms_list`, when the page that needs them is fetched.
        """
        _page_params(1, page_size, is_onchain)  # bad arguments fail before any request
        pages = awalk_pages(
            lambda page: self.get_kms_list(page, page_size, is_onchain, api_version=api_version)
        )
        async for item in pages:
            yield item

    async def get_kms_info(self, kms_id: str, *, api_version: str | None = None) -> KMSInfo:
        """Read one KMS node.

        ``GET /kms/{kms_id}`` with ``X-Phala-Version: 2026-05-22`` (node-centric
        shape) unless ``api_version`` overrides it.

        Args:
            kms_id: A KMS id (``kms_...``) or slug (``phala``).
            api_version: Override the pinned ``X-Phala-Version`` for this call.

        Returns:
            The ``KMSInfo``.

        Raises:
            InvalidArgumentError: ``kms_id`` is empty, ``.``/``..``, over 256 characters,
                or ``"on-chain"`` (an API route, not a KMS); nothing is sent.
            NotFoundError: No such KMS (404, ``error_code`` ``ERR-02-011``).
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = kms_segment(kms_id, "kms_id")
        return await self._transport.get(
            f"/kms/{segment}", KMSInfo, version=self._version(api_version, NODE_API_VERSION)
        )

    async def get_app_env_encrypt_pubkey(
        self, kms: str, app_id: str, *, api_version: str | None = None
    ) -> AppEnvEncryptPubKey:
        """Fetch the X25519 public key that an app's environment variables are encrypted to.

        ``GET /kms/{kms}/pubkey/{app_id}`` with the client's ``X-Phala-Version``
        (never pinned to an old version: that can route to a dead KMS replica).

        The key is **not verified** here: anyone able to tamper with the response
        could substitute their own key. Prefer
        :meth:`get_verified_app_env_encrypt_pubkey`, or verify with
        :func:`phala_kms.verify_env_encrypt_public_key`.

        Args:
            kms: A KMS id, a slug, or a KMS type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_id: The app id: 40 hex characters (20 bytes), ``0x`` optional.
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            The key: ``public_key`` (64 hex), ``signature`` (130 hex), and
            ``timestamp``/``signature_v1`` when the server sends them.

        Raises:
            InvalidArgumentError: A malformed ``app_id`` or ``kms`` (``"on-chain"`` is an
                API route, not a KMS); nothing is sent.
            NotFoundError: No such KMS.
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = kms_segment(kms, "kms")
        app = app_id_hex(app_id)
        return await self._transport.get(
            f"/kms/{segment}/pubkey/{app}", AppEnvEncryptPubKey, version=self._version(api_version)
        )

    async def get_kms_on_chain_detail(
        self, chain: str, *, api_version: str | None = None
    ) -> KMSOnChainDetail:
        """Read the on-chain KMS contracts of a chain, with their devices and OS images.

        ``GET /kms/on-chain/{chain}`` with the client's ``X-Phala-Version``.

        Args:
            chain: A chain name, e.g. ``"base"`` or ``"ethereum"``.
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            The ``KMSOnChainDetail`` (``contracts`` may be empty).

        Raises:
            InvalidArgumentError: ``chain`` is empty or malformed; nothing is sent.
            BadRequestError: The chain is not supported (400).
            UnprocessableEntityError: The server rejected the chain name (422).
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = path_segment(chain, "chain")
        return await self._transport.get(
            f"/kms/on-chain/{segment}", KMSOnChainDetail, version=self._version(api_version)
        )

    async def next_app_ids(self, counts: int = 1, *, api_version: str | None = None) -> NextAppIDs:
        """Predict the next app ids (and their nonces) on the Phala KMS.

        ``GET /kms/phala/next_app_id?counts=`` with the client's ``X-Phala-Version``.
        A prediction, not a reservation.

        Args:
            counts: How many ids, 1..20.
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            ``NextAppIDs`` whose ``app_ids`` hold ``app_id`` (40 hex) and ``nonce``.

        Raises:
            InvalidArgumentError: ``counts`` outside 1..20; nothing is sent.
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        params = {"counts": int_param(counts, "counts", 1, 20)}
        return await self._transport.get(
            "/kms/phala/next_app_id", NextAppIDs, version=self._version(api_version), params=params
        )

    # ------------------------------------------------------------------ contract-centric

    async def list_kms_contracts(
        self,
        page: int = 1,
        page_size: int = 20,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
    ) -> Paginated[KMSContract]:
        """List KMS contracts (contract-centric view), one page at a time.

        ``GET /kms?page=&page_size=&is_onchain=`` with ``X-Phala-Version: 2026-06-23``
        unless ``api_version`` overrides it.

        Args:
            page: The page number, from 1.
            page_size: Items per page, 1..100.
            is_onchain: ``True`` on-chain only, ``False`` off-chain only, ``None`` both.
            api_version: Override the pinned ``X-Phala-Version`` for this call.

        Returns:
            The page of ``KMSContract`` items.

        Raises:
            The errors of :meth:`get_kms_list`.
        """
        params = _page_params(page, page_size, is_onchain)
        return await self._transport.get(
            "/kms",
            Paginated[KMSContract],
            version=self._version(api_version, CONTRACT_API_VERSION),
            params=params,
        )

    async def iter_kms_contracts(
        self,
        page_size: int = 100,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
    ) -> AsyncIterator[KMSContract]:
        """Yield every KMS contract of every page (see :meth:`list_kms_contracts`).

        Raises:
            The errors of :meth:`list_kms_contracts`, when the page that needs them is fetched.
        """
        _page_params(1, page_size, is_onchain)
        pages = awalk_pages(
            lambda page: self.list_kms_contracts(
                page, page_size, is_onchain, api_version=api_version
            )
        )
        async for item in pages:
            yield item

    async def get_kms_contract(self, slug: str, *, api_version: str | None = None) -> KMSContract:
        """Read one KMS contract (contract-centric view).

        ``GET /kms/{slug}`` with ``X-Phala-Version: 2026-06-23`` unless overridden.
        Its ``k256_pubkey`` is the root key that signs the KMS's app keys: see
        :meth:`get_verified_app_env_encrypt_pubkey` for what trusting it means.

        Args:
            slug: The contract's slug (e.g. ``"phala"``, ``"base"``) or id.
            api_version: Override the pinned ``X-Phala-Version`` for this call.

        Returns:
            The ``KMSContract``.

        Raises:
            InvalidArgumentError: ``slug`` is empty, malformed or ``"on-chain"``;
                nothing is sent.
            NotFoundError: No such contract.
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = kms_segment(slug, "slug")
        return await self._transport.get(
            f"/kms/{segment}", KMSContract, version=self._version(api_version, CONTRACT_API_VERSION)
        )

    async def list_kms_contract_nodes(
        self, slug: str, *, api_version: str | None = None
    ) -> KMSContractNodes:
        """List the nodes serving one KMS contract (not paginated).

        ``GET /kms/{slug}/nodes`` with ``X-Phala-Version: 2026-06-23`` unless overridden.

        Args:
            slug: The contract's slug or id.
            api_version: Override the pinned ``X-Phala-Version`` for this call.

        Returns:
            ``KMSContractNodes`` with ``items`` and ``total``.

        Raises:
            InvalidArgumentError: ``slug`` is empty, malformed or ``"on-chain"``;
                nothing is sent.
            NotFoundError: No such contract.
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = kms_segment(slug, "slug")
        return await self._transport.get(
            f"/kms/{segment}/nodes",
            KMSContractNodes,
            version=self._version(api_version, CONTRACT_API_VERSION),
        )

    # ------------------------------------------------------------------ verified keys

    async def get_verified_app_env_encrypt_pubkey(
        self,
        kms: str,
        app_id: str,
        *,
        trusted_signer: str | bytes,
        max_age: float = 300.0,
        api_version: str | None = None,
    ) -> AppEnvEncryptPubKey:
        """Fetch an app's env-encryption public key and prove the trusted KMS signed it.

        ``GET /kms/{kms}/pubkey/{app_id}``, then
        :func:`phala_kms.verify_env_encrypt_public_key`: the timestamped
        ``signature_v1`` is checked (with freshness, ``max_age``) when the response
        has one, else the legacy ``signature`` (which has no freshness and can be
        replayed, but still binds the key to this app and KMS).

        Where the trusted signer comes from is your choice, and it decides what you
        trust:

        * a **pinned** value in your code or configuration (the KMS's root
          ``k256_pubkey`` you recorded once): trusts only that key;
        * ``(await client.get_kms_on_chain_detail("base")).contracts[i].k256_pubkey``:
          trusts the Phala Cloud API's report of the on-chain contract (check it
          against the chain itself for full independence);
        * ``(await client.get_kms_contract("phala")).k256_pubkey``: trusts the
          Phala Cloud API, the same party that serves the key, so it guards
          against corruption in transit and confused KMS routing, not against the
          API itself.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            trusted_signer: The KMS root secp256k1 public key (compressed or
                uncompressed, as bytes or hex with optional ``0x``) or its Ethereum
                address.
            max_age: For timestamped signatures, the oldest accepted, in seconds.
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            The verified ``AppEnvEncryptPubKey``.

        Raises:
            SignatureVerificationError: The signature is malformed, stale, from the
                future, or not by ``trusted_signer``; or ``trusted_signer`` itself is
                unusable (``reason="invalid_trusted_signer"``, raised before any request).
            The errors of :meth:`get_app_env_encrypt_pubkey`.
        """
        from .crypto import check_trusted_signer

        check_trusted_signer(trusted_signer)  # an unusable signer fails before any request
        key = await self.get_app_env_encrypt_pubkey(kms, app_id, api_version=api_version)
        _verify(key, app_id, trusted_signer, max_age)
        return key

    async def encrypt_env_vars_for_app(
        self,
        kms: str,
        app_id: str,
        env_vars: Mapping[str, str] | Iterable[EnvVar | tuple[str, str]],
        *,
        trusted_signer: str | bytes,
        api_version: str | None = None,
    ) -> str:
        """Fetch and verify an app's key, then encrypt environment variables to it.

        :meth:`get_verified_app_env_encrypt_pubkey` followed by
        :func:`phala_kms.encrypt_env_vars`. The env vars are checked first, so a bad
        name fails before any request.

        Args:
            kms: A KMS id, slug, or type.
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            env_vars: A mapping of name to value, or an iterable of ``EnvVar`` or
                ``(name, value)`` pairs (read once).
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`.
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            Lowercase hex for the API's ``encrypted_env`` fields (see
            :func:`phala_kms.encrypt_env_vars` for the layout).

        Raises:
            InvalidArgumentError: A bad env var name or value type; nothing is sent.
            The errors of :meth:`get_verified_app_env_encrypt_pubkey`.
        """
        from .crypto import encrypt_env_plaintext, env_vars_plaintext

        # Build the plaintext once, before any request: env_vars may be a one-shot
        # iterable, and what was checked must be exactly what is encrypted.
        plaintext = env_vars_plaintext(env_vars)
        key = await self.get_verified_app_env_encrypt_pubkey(
            kms, app_id, trusted_signer=trusted_signer, api_version=api_version
        )
        return encrypt_env_plaintext(plaintext, key.public_key_bytes)

    # ------------------------------------------------------------------ fan-out

    @overload
    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        trusted_signer: str | bytes | _Unverified = ...,
        max_age: float = ...,
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey]: ...

    @overload
    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        trusted_signer: str | bytes | _Unverified = ...,
        max_age: float = ...,
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey | PhalaKMSError]: ...

    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = 32,
        return_exceptions: bool = False,
        trusted_signer: str | bytes | _Unverified = UNVERIFIED,
        max_age: float = 300.0,
        on_progress: ProgressCallback | None = None,
        api_version: str | None = None,
    ) -> list[AppEnvEncryptPubKey] | list[AppEnvEncryptPubKey | PhalaKMSError]:
        """Fetch the env-encryption public keys of many apps concurrently.

        One ``GET /kms/{kms}/pubkey/{app_id}`` per distinct app id (ids equal after
        normalising ``0x`` and case are fetched once), at most ``concurrency`` in
        flight and never more than the connection pool allows. A fixed set of
        workers pulls ids one by one, so memory stays flat however many ids you
        pass. Each request retries on its own per the client's retry policy.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional).
            concurrency: The most requests in flight at once, >= 1.
            return_exceptions: If ``False`` (default), the first failure cancels
                every request in flight and is raised. If ``True``, each failed id's
                slot holds its typed :class:`~phala_kms.errors.PhalaKMSError`
                (including an ``InvalidArgumentError`` for a malformed id) and the
                batch carries on.
            trusted_signer: If given, each key is verified as in
                :meth:`get_verified_app_env_encrypt_pubkey`; a key that fails is a
                :class:`~phala_kms.errors.SignatureVerificationError`. Omitted (the
                :data:`UNVERIFIED` default), keys are fetched unverified. ``None`` is
                refused, so a missing ``k256_pubkey`` cannot disable verification.
            max_age: With ``trusted_signer``, the oldest timestamped signature
                accepted, in seconds.
            on_progress: Called as ``on_progress(done, total)`` after each distinct
                well-formed id finishes, successfully or not, on the event loop;
                ``total`` counts those ids (malformed ids are never sent, so they are
                not counted).
            api_version: Override the client's ``X-Phala-Version`` for these calls.

        Returns:
            One entry per input id, in input order (duplicates share one result).

        Raises:
            InvalidArgumentError: ``concurrency`` < 1, a malformed ``kms``, or (when
                ``return_exceptions`` is ``False``) a malformed app id; nothing is sent.
            SignatureVerificationError: ``trusted_signer`` is given but unusable,
                ``None`` included (``reason="invalid_trusted_signer"``); nothing is sent.
            PhalaKMSError: With ``return_exceptions=False``, the first failure of any
                request, as raised by :meth:`get_app_env_encrypt_pubkey` (or
                :class:`~phala_kms.errors.SignatureVerificationError`).
        """
        int_param(concurrency, "concurrency", 1)
        kms_segment(kms, "kms")
        self._version(api_version)
        signer = None if trusted_signer is UNVERIFIED else trusted_signer
        if signer is not None or trusted_signer is None:
            from .crypto import check_trusted_signer

            check_trusted_signer(signer)  # None raises: fail closed
        # Normalise and deduplicate up front: a malformed id fails before any request.
        slot_of: dict[str, int] = {}
        unique: list[str] = []
        slots: list[int] = []
        invalid: dict[int, PhalaKMSError] = {}
        for position, raw in enumerate(app_ids):
            try:
                app = app_id_hex(raw)
            except InvalidArgumentError as err:
                if not return_exceptions:
                    raise InvalidArgumentError(
                        f"app_ids[{position}]: {err.message}", argument="app_ids"
                    ) from None
                invalid[position] = err
                slots.append(-1)
                continue
            slot = slot_of.get(app)
            if slot is None:
                slot = slot_of[app] = len(unique)
                unique.append(app)
            slots.append(slot)
        del slot_of

        results: list[AppEnvEncryptPubKey | PhalaKMSError | None] = [None] * len(unique)
        total = len(unique)
        done = 0
        pending = iter(range(total))

        async def worker() -> None:
            nonlocal done
            for index in pending:
                app = unique[index]
                try:
                    key = await self.get_app_env_encrypt_pubkey(kms, app, api_version=api_version)
                    if signer is not None:
                        _verify(key, app, signer, max_age)
                    results[index] = key
                except PhalaKMSError as err:
                    if not return_exceptions:
                        raise
                    results[index] = err
                done += 1
                if on_progress is not None:
                    on_progress(done, total)

        workers = min(concurrency, self._pool_limit, total)
        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        try:
            if tasks:
                finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in finished:
                    failure = None if task.cancelled() else task.exception()
                    if failure is not None:
                        raise failure
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

        out: list[Any] = []
        for position, slot in enumerate(slots):
            out.append(invalid[position] if slot < 0 else results[slot])
        return out


def _verify(
    key: AppEnvEncryptPubKey, app_id: str, trusted_signer: str | bytes, max_age: float
) -> None:
    """Verify a fetched key, preferring the timestamped signature when present."""
    from .crypto import verify_env_encrypt_public_key as verify

    if key.signature_v1 is not None and key.timestamp is not None:
        verify(
            key.public_key,
            key.signature_v1,
            app_id,
            trusted_signer=trusted_signer,
            timestamp=key.timestamp,
            max_age=max_age,
        )
    else:
        verify(key.public_key, key.signature, app_id, trusted_signer=trusted_signer)
