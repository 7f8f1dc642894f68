"""``AsyncKMSClient``: the asyncio client for the Phala Cloud KMS API.

Its endpoints come from :mod:`phala_kms._endpoints` (one coroutine each, over the
retried GET of :mod:`phala_kms._base_client`); this module adds what the keys are
for: the trusted-signer lookup, verified keys, encryption, and the fan-out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, overload

from ._constants import DEFAULT_CONCURRENCY, DEFAULT_MAX_AGE
from ._endpoints import KMSEndpoints
from ._fanout import ProgressCallback, fan_out
from ._params import app_id_hex, int_param, kms_segment
from .errors import PhalaKMSError
from .models import AppEnvEncryptPubKey, TrustedSigner

if TYPE_CHECKING:
    from .crypto import EnvVarsLike, SignerLike

__all__ = ["AsyncKMSClient", "ProgressCallback"]


class AsyncKMSClient(KMSEndpoints):
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
        max_response_bytes: The largest response body read, in bytes after
            decompression (default 16 MiB): a larger success body is a
            ``ResponseValidationError``, a larger error body is cut there.

    Raises:
        ConfigurationError: A setting is unusable (bad base URL, non-positive
            timeout, both ``max_retries`` and ``retry_policy`` given, ``ssl_context``
            together with ``session``, ...).
    """

    # ------------------------------------------------------------------ verified keys

    async def get_trusted_signer(
        self, kms: str, *, api_version: str | None = None
    ) -> TrustedSigner:
        """Look up a KMS's root secp256k1 key (``k256_pubkey``) as the Cloud API reports it.

        ``GET /kms/{kms}`` as a contract (:meth:`get_kms_contract`); if no contract
        has that name, as a node (:meth:`get_kms_info`), and when the node omits its
        key, the key of the contract it serves (``GET /kms`` pages, matched by chain id
        and contract address).

        This trusts the Phala Cloud API, the same party that serves app keys: it
        guards against corruption in transit and KMS mis-routing, not against the API
        itself. A key pinned in your own configuration is a stronger anchor.

        Args:
            kms: A KMS slug or id (``"phala"``, ``"base"``, ``kms_...``).
            api_version: Override the pinned ``X-Phala-Version`` of these calls.

        Returns:
            A :class:`~phala_kms.models.TrustedSigner` with ``sources`` saying which
            response gave the key; pass it as ``trusted_signer``.

        Raises:
            SignatureVerificationError: The API reports no ``k256_pubkey`` for this KMS
                (``reason="invalid_trusted_signer"``).
            InvalidArgumentError, NotFoundError, ConfigurationError, ClientStateError,
            TransportError, APIStatusError, RedirectError, ResponseValidationError: as
            in :meth:`get_kms_contract` and :meth:`get_kms_info`.
        """
        from .errors import NotFoundError, SignatureVerificationError

        key: str | None
        try:
            key = (await self.get_kms_contract(kms, api_version=api_version)).k256_pubkey
            source = f"api: GET /kms/{kms} (contract view) k256_pubkey"
        except NotFoundError:
            node = await self.get_kms_info(kms, api_version=api_version)
            key = node.k256_pubkey
            source = f"api: GET /kms/{kms} (node view) k256_pubkey"
            if not key:  # the node omits it: take its contract's (same chain and address)
                address = (node.kms_contract_address or "").lower()
                async for contract in self.iter_kms_contracts(api_version=api_version):
                    same = (
                        contract.chain_id == node.chain_id
                        and contract.contract_address.lower() == address
                        if node.chain_id is not None
                        else not contract.is_onchain
                    )
                    if same and contract.k256_pubkey:
                        key = contract.k256_pubkey
                        source = (
                            "api: GET /kms (contract view) k256_pubkey of"
                            f" {contract.slug or contract.id}, the contract node {kms} serves"
                        )
                        break
        if not key:
            raise SignatureVerificationError(
                f"the API reports no k256_pubkey for KMS {kms!r}, so there is nothing to"
                " verify against; pin the KMS root key instead",
                reason="invalid_trusted_signer",
            )
        return TrustedSigner(k256_pubkey=key, sources=(source,))

    async def get_verified_app_env_encrypt_pubkey(
        self,
        kms: str,
        app_id: str,
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        api_version: str | None = None,
    ) -> AppEnvEncryptPubKey:
        """Fetch an app's env-encryption public key and prove the trusted KMS signed it.

        ``GET /kms/{kms}/pubkey/{app_id}``, then
        :func:`phala_kms.crypto.verify_app_env_encrypt_pubkey`: the timestamped
        ``signature_v1`` is checked (with freshness, ``max_age``) when the response
        has one, else the legacy ``signature`` (which has no freshness and can be
        replayed, but still binds the key to this app and KMS).

        Where the trusted signer comes from is your choice, and it decides what you
        trust:

        * a **pinned** value in your code or configuration (the KMS's root
          ``k256_pubkey`` you recorded once): trusts only that key;
        * the ``k256_pubkey`` of a contract in :meth:`get_kms_on_chain_detail`:
          trusts the Phala Cloud API's report of the on-chain contract (check it
          against the chain itself for full independence);
        * :meth:`get_trusted_signer` (the contract view's ``k256_pubkey``): trusts the
          Phala Cloud API, the same party that serves the key, so it guards against
          corruption in transit and confused KMS routing, not against the API itself.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            trusted_signer: The KMS root secp256k1 public key (compressed or
                uncompressed, as bytes or hex with optional ``0x``), its Ethereum
                address, or a :class:`~phala_kms.models.TrustedSigner`.
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
        from .crypto import check_trusted_signer, verify_app_env_encrypt_pubkey

        check_trusted_signer(trusted_signer)  # an unusable signer fails before any request
        key = await self.get_app_env_encrypt_pubkey(kms, app_id, api_version=api_version)
        verify_app_env_encrypt_pubkey(key, app_id, trusted_signer=trusted_signer, max_age=max_age)
        return key

    async def encrypt_env_vars_for_app(
        self,
        kms: str,
        app_id: str,
        env_vars: EnvVarsLike,
        *,
        trusted_signer: SignerLike,
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
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey | PhalaKMSError]: ...

    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        return_exceptions: bool = False,
        on_progress: ProgressCallback | None = None,
        api_version: str | None = None,
    ) -> list[AppEnvEncryptPubKey] | list[AppEnvEncryptPubKey | PhalaKMSError]:
        """Fetch the env-encryption public keys of many apps concurrently, **unverified**.

        One ``GET /kms/{kms}/pubkey/{app_id}`` per distinct app id (ids equal after
        normalising ``0x`` and case are fetched once), at most ``concurrency`` in
        flight and never more than the connection pool allows. A fixed set of
        workers pulls ids one by one, so memory stays flat however many ids you
        pass. Each request retries on its own per the client's retry policy. To
        encrypt to these keys, use :meth:`get_verified_app_env_encrypt_pubkeys`.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional).
            concurrency: The most requests in flight at once, >= 1.
            return_exceptions: If ``False`` (default), the first failure cancels
                every request in flight and is raised. If ``True``, each failed id's
                slot holds its typed :class:`~phala_kms.errors.PhalaKMSError`
                (including an ``InvalidArgumentError`` for a malformed id) and the
                batch carries on.
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
            PhalaKMSError: With ``return_exceptions=False``, the first failure of any
                request, as raised by :meth:`get_app_env_encrypt_pubkey`.
        """
        return await self._fan_out(
            kms, app_ids, None, DEFAULT_MAX_AGE, concurrency, return_exceptions, on_progress,
            api_version,
        )  # fmt: skip

    @overload
    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = ...,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey]: ...

    @overload
    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = ...,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey | PhalaKMSError]: ...

    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        concurrency: int = DEFAULT_CONCURRENCY,
        return_exceptions: bool = False,
        on_progress: ProgressCallback | None = None,
        api_version: str | None = None,
    ) -> list[AppEnvEncryptPubKey] | list[AppEnvEncryptPubKey | PhalaKMSError]:
        """Fetch many apps' env-encryption public keys concurrently and verify each one.

        :meth:`get_app_env_encrypt_pubkeys`, with every key verified as in
        :meth:`get_verified_app_env_encrypt_pubkey`; a key that fails is a
        :class:`~phala_kms.errors.SignatureVerificationError` (raised, or in its slot
        with ``return_exceptions=True``).

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional).
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`. Required:
                ``None`` is refused, so a missing ``k256_pubkey`` cannot disable
                verification.
            max_age: The oldest timestamped signature accepted, in seconds.
            concurrency, return_exceptions, on_progress, api_version: As in
                :meth:`get_app_env_encrypt_pubkeys`.

        Returns:
            One verified key (or error) per input id, in input order.

        Raises:
            SignatureVerificationError: ``trusted_signer`` is unusable, ``None``
                included (``reason="invalid_trusted_signer"``; nothing is sent), or,
                with ``return_exceptions=False``, a key did not verify.
            The errors of :meth:`get_app_env_encrypt_pubkeys`.
        """
        from .crypto import check_trusted_signer

        check_trusted_signer(trusted_signer)  # None raises: fail closed, before any request
        return await self._fan_out(
            kms, app_ids, trusted_signer, max_age, concurrency, return_exceptions, on_progress,
            api_version,
        )  # fmt: skip

    async def _fan_out(
        self,
        kms: str,
        app_ids: Iterable[str],
        trusted_signer: SignerLike | None,
        max_age: float,
        concurrency: int,
        return_exceptions: bool,
        on_progress: ProgressCallback | None,
        api_version: str | None,
    ) -> list[AppEnvEncryptPubKey] | list[AppEnvEncryptPubKey | PhalaKMSError]:
        int_param(concurrency, "concurrency", 1)
        segment = kms_segment(kms, "kms")
        version = self._version(api_version)

        async def fetch(app: str) -> AppEnvEncryptPubKey:
            # ids were checked once up front: no second validation per request
            key = await self._get(
                f"/kms/{segment}/pubkey/{app}", AppEnvEncryptPubKey, version=version
            )
            if trusted_signer is not None:
                from .crypto import verify_app_env_encrypt_pubkey

                verify_app_env_encrypt_pubkey(
                    key, app, trusted_signer=trusted_signer, max_age=max_age
                )
            return key

        return await fan_out(
            app_ids,
            fetch,
            normalise=app_id_hex,
            workers=min(concurrency, self._pool_limit),
            return_exceptions=return_exceptions,
            on_progress=on_progress,
            argument="app_ids",
        )
