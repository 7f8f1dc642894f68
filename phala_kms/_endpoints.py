"""The API's endpoints, one coroutine each; :class:`~phala_kms.AsyncKMSClient` adds key handling."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ._base_client import BaseKMSClient
from ._constants import CONTRACT_API_VERSION, NODE_API_VERSION
from ._pagination import awalk_pages, check_max_pages
from ._params import app_id_hex, int_param, kms_segment, page_params, path_segment
from .models import (
    AppEnvEncryptPubKey,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    Paginated,
)

__all__ = ["KMSEndpoints"]

_KMS_SEGMENTS_KEPT = 64
"""How many checked ``kms`` arguments a client remembers (a caller names a few KMS)."""


class KMSEndpoints(BaseKMSClient):
    """One coroutine per endpoint of ``/api/v1/kms``; see :class:`~phala_kms.AsyncKMSClient`."""

    _kms_segments: dict[str, str]
    """``kms`` arguments already checked, and their path segments (set by the base client)."""

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
        params = page_params(page, page_size, is_onchain)
        return await self._get(
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
        max_pages: int | None = None,
    ) -> AsyncIterator[KMSInfo]:
        """Yield every KMS node of every page, fetching pages as they are needed.

        Pages are ``GET /kms`` calls as in :meth:`get_kms_list`, from page 1 until
        the server's ``pages`` is reached (or a page comes back empty). The walk
        cannot loop: a server that ignores ``?page`` or promises more pages than its
        first ``total`` allows is a ``ResponseValidationError``.

        Args:
            page_size: Items per request, 1..100.
            is_onchain: As in :meth:`get_kms_list`.
            api_version: As in :meth:`get_kms_list`.
            max_pages: The most pages fetched (>= 1), or ``None`` for no limit but
                the server's ``total``.

        Yields:
            Each ``KMSInfo`` in server order.

        Raises:
            InvalidArgumentError: A bad ``page_size``, ``is_onchain`` or ``max_pages``,
                before any request.
            ResponseValidationError: More pages follow page ``max_pages`` (raised
                after its items), or the paging cannot end.
            The errors of :meth:`get_kms_list`, when the page that needs them is fetched.
        """
        page_params(1, page_size, is_onchain)  # bad arguments fail before any request
        check_max_pages(max_pages)
        pages = awalk_pages(
            lambda page: self.get_kms_list(page, page_size, is_onchain, api_version=api_version),
            max_pages,
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
        return await self._get(
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
        segment = self._kms_segments.get(kms) if type(kms) is str else None
        if segment is None:
            segment = kms_segment(kms, "kms")
            if len(self._kms_segments) < _KMS_SEGMENTS_KEPT:
                self._kms_segments[kms] = segment
        app = app_id_hex(app_id)
        return await self._get(
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
        return await self._get(
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
        return await self._get(
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
        params = page_params(page, page_size, is_onchain)
        return await self._get(
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
        max_pages: int | None = None,
    ) -> AsyncIterator[KMSContract]:
        """Yield every KMS contract of every page (see :meth:`list_kms_contracts`).

        Args:
            page_size, is_onchain, api_version, max_pages: As in :meth:`iter_kms_list`.

        Raises:
            InvalidArgumentError, ResponseValidationError: As in :meth:`iter_kms_list`.
            The errors of :meth:`list_kms_contracts`, when the page that needs them is fetched.
        """
        page_params(1, page_size, is_onchain)
        check_max_pages(max_pages)
        pages = awalk_pages(
            lambda page: self.list_kms_contracts(
                page, page_size, is_onchain, api_version=api_version
            ),
            max_pages,
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
        return await self._get(
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
        return await self._get(
            f"/kms/{segment}/nodes",
            KMSContractNodes,
            version=self._version(api_version, CONTRACT_API_VERSION),
        )
