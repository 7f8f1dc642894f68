"""``AsyncKMSClient``: the asyncio client for the Phala Cloud KMS API.

Its endpoints come from :mod:`phala_kms._endpoints` (one coroutine each, over the
retried GET of :mod:`phala_kms._base_client`), the fan-out over many apps from
:mod:`phala_kms._batch`, and the node, chain and CVM calls from :mod:`phala_kms._trusted`;
this module adds what the keys are for: the trusted-signer lookup, verified keys and
encryption.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._batch import KeyBatchEndpoints
from ._constants import DEFAULT_MAX_AGE
from ._fanout import ProgressCallback
from ._secrets import Hidden
from ._trusted import TrustedKeyEndpoints
from .errors import InvalidArgumentError
from .models import TrustedSigner, VerifiedAppEnvEncryptPubKey

if TYPE_CHECKING:
    from .crypto import EnvVarsLike, SignerLike

__all__ = ["AsyncKMSClient", "ProgressCallback"]


class AsyncKMSClient(TrustedKeyEndpoints, KeyBatchEndpoints):
    """An asyncio client for the Phala Cloud KMS API (``/api/v1/kms...``).

    Use it as an async context manager, or call :meth:`aclose` when done. One
    client holds one connection pool; share it across tasks (it is safe for
    concurrent use within its event loop) rather than creating one per request.
    A client garbage-collected unclosed emits one ``ResourceWarning`` naming
    ``phala_kms.AsyncKMSClient`` and closes its pool itself.

    Each attempt is logged at DEBUG on the ``phala_kms`` logger (method, path,
    status or error type, elapsed ms, attempt number, request id); each retry at
    INFO. The API key is never logged, and never appears in an error or a ``repr``.

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
        max_response_bytes: The largest success body read, in bytes after
            decompression (default 16 MiB): a larger one is a
            ``ResponseValidationError``. An error body (status >= 300) is read up to
            64 KiB whatever this says, and the rest is never downloaded.
        trace_configs: ``aiohttp.TraceConfig`` objects for the client's own session,
            so aiohttp request tracing sees every attempt, e.g.
            ``[opentelemetry.instrumentation.aiohttp_client.create_trace_config()]``
            for one OpenTelemetry span per attempt. Not with ``session`` (give them
            to that session instead).
        pool_timeout: The longest wait for a free connection, in seconds, before a
            :class:`~phala_kms.errors.PoolTimeoutError`, which is not retried
            (nothing was sent). Default ``None``: wait as long as it takes. Either
            way ``timeout`` starts only once a request holds a connection, so calls
            queued behind a full pool are not timed out while they wait; a
            ``RetryPolicy.deadline`` still bounds the whole call.
        max_requests_per_second: A fixed cap on the send rate of the whole client,
            for a known quota (at most 20 ms worth at once). Default
            ``None``. Either way the client paces itself when the server throttles
            it (see "Rate limits" below).

    Rate limits:
        A 429 (or a 503 with ``Retry-After``) holds back every new request of this
        client until the ``Retry-After`` moment, not only the retry of the request
        that got it. From the first throttle on, the client also paces its requests
        at the rate it estimates the server accepts, and climbs back when the
        throttling stops (see :mod:`phala_kms._throttle`). Retries draw from a
        retry budget shared by the client (``RetryPolicy.retry_budget``), so an
        outage does not multiply the load.

    Raises:
        ConfigurationError: A setting is unusable (bad base URL, a non-``str`` or
            non-ASCII API key, non-positive timeout, both ``max_retries`` and
            ``retry_policy`` given, ``ssl_context`` or ``trace_configs`` together with
            ``session``, an item of ``trace_configs`` that is not an
            ``aiohttp.TraceConfig``, ...).
    """

    # ------------------------------------------------------------------ verified keys

    async def get_trusted_signer(
        self,
        kms: str,
        *,
        sources: Iterable[str] = ("api",),
        pinned: SignerLike | None = None,
        rpc_url: str | None = None,
        node_urls: Iterable[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        api_version: str | None = None,
    ) -> TrustedSigner:
        """Establish a KMS's root secp256k1 key (``k256_pubkey``) from independent sources
        that must all agree (:mod:`phala_kms.anchors`).

        Sources, read in this order whatever the order given:

        * ``"pinned"``: ``pinned``, a value from your own configuration;
        * ``"api"`` (the default): ``GET /kms/{kms}`` as a contract
          (:meth:`get_kms_contract`), else as a node (:meth:`get_kms_info`), and when
          the node omits its key, the key of the contract it serves (``GET /kms``
          pages, matched by chain id and contract address). This alone trusts the Phala
          Cloud API, the same party that serves app keys;
        * ``"chain"``: ``eth_call`` of the DstackKms contract's ``kmsInfo()`` at the
          contract address of the API's contract view, over ``rpc_url``, after
          ``eth_chainId`` matched the contract's ``chain_id`` (needs the ``[chain]``
          extra);
        * ``"node"``: ``POST {url}/prpc/GetMeta?json`` on every node of
          :meth:`list_kms_contract_nodes` (or of ``node_urls``), its ``k256_pubkey``.

        Args:
            kms: A KMS slug or id (``"phala"``, ``"base"``, ``kms_...``).
            sources: Which of ``"pinned"``, ``"api"``, ``"chain"``, ``"node"`` to ask.
            pinned: The root key you recorded (or its Ethereum address), as bytes or
                hex; required with ``"pinned"`` and refused without it.
            rpc_url: The EVM JSON-RPC URL for ``"chain"``: ``https://``, or ``http://``
                only to loopback.
            node_urls: KMS node base URLs for ``"node"`` instead of the API's list.
            ssl_context: TLS trust for ``rpc_url`` and the nodes (default: the
                client's ``ssl_context``, else the system's; never unverified).
            api_version: Override the pinned ``X-Phala-Version`` of the API calls.

        Returns:
            A :class:`~phala_kms.models.TrustedSigner`: ``k256_pubkey`` the agreed key
            (``"0x"`` + 66 lowercase hex, SEC1 compressed; the pinned address when
            ``"pinned"`` is the only source and an address), ``sources`` one line per
            agreeing source; pass it as ``trusted_signer``.

        Raises:
            InvalidArgumentError: Unknown or empty ``sources``, ``pinned`` without
                ``"pinned"`` (or the reverse), ``"chain"`` without ``rpc_url``, a
                malformed URL; nothing is sent.
            ConfigurationError: ``"chain"`` without ``eth-abi`` installed
                (``pip install 'phala-kms[chain]'``).
            SignatureVerificationError: ``reason="anchor_mismatch"`` (sources disagree;
                ``sources`` lists each with its key), ``"invalid_trusted_signer"`` (a
                malformed ``pinned``, or the API reports no key), ``"anchor_unavailable"``
                (an off-chain KMS for ``"chain"``, a contract with no ``kmsInfo``, a
                node with no key, no nodes), ``"wrong_chain"``, ``"malformed_anchor"``.
            TransportError: The RPC or a node is unreachable (``ConnectRefusedError``,
                ``TLSError``, ``APITimeoutError``, ...).
            NotFoundError, ConfigurationError, ClientStateError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_contract` and
            :meth:`get_kms_info`; a redirect, error status or garbage from the RPC or a
            node too.
        """
        from .anchors import resolve_trusted_signer

        return await resolve_trusted_signer(
            self,
            kms,
            sources=sources,
            pinned=pinned,
            rpc_url=rpc_url,
            node_urls=node_urls,
            ssl_context=ssl_context,
            api_version=api_version,
        )

    async def get_verified_app_env_encrypt_pubkey(
        self,
        kms: str,
        app_id: str,
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        api_version: str | None = None,
    ) -> VerifiedAppEnvEncryptPubKey:
        """Fetch an app's env-encryption public key and prove the trusted KMS signed it.

        ``GET /kms/{kms}/pubkey/{app_id}``, then
        :func:`phala_kms.crypto.verify_app_env_encrypt_pubkey`: the timestamped
        ``signature_v1`` is checked (with freshness, ``max_age``) when the response
        has one, and then only it (no fallback to the legacy form); else the legacy
        ``signature`` (which has no freshness and can be replayed, but still binds the
        key to this app and KMS), unless ``require_timestamped``.

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
            require_timestamped: Refuse a key that offers only the legacy signature
                (``SignatureVerificationError(reason="legacy_signature")``).
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            A :class:`~phala_kms.models.VerifiedAppEnvEncryptPubKey` saying what was
            verified: ``public_key``, ``scheme`` (``"signature_v1"`` or
            ``"signature"``), the recovered ``signer``, and ``timestamp`` only when the
            timestamped signature was the one verified.

        Raises:
            SignatureVerificationError: The signature is malformed, stale, from the
                future, or not by ``trusted_signer``; a ``timestamp`` comes without
                ``signature_v1`` or the reverse (``reason="incomplete_signature_v1"``);
                only the legacy form under ``require_timestamped``
                (``reason="legacy_signature"``); or ``trusted_signer`` itself is
                unusable (``reason="invalid_trusted_signer"``, raised before any request).
            The errors of :meth:`get_app_env_encrypt_pubkey`.
        """
        from .crypto import check_trusted_signer, verify_app_env_encrypt_pubkey

        check_trusted_signer(trusted_signer)  # an unusable signer fails before any request
        key = await self.get_app_env_encrypt_pubkey(kms, app_id, api_version=api_version)
        return verify_app_env_encrypt_pubkey(
            key,
            app_id,
            trusted_signer=trusted_signer,
            max_age=max_age,
            require_timestamped=require_timestamped,
        )

    async def encrypt_env_vars_for_app(
        self,
        kms: str,
        app_id: str,
        env_vars: EnvVarsLike,
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        allowed_envs: Iterable[str] | None = None,
        allow_empty: bool = False,
        check_registered: bool = False,
        rpc_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        api_version: str | None = None,
    ) -> str:
        """Fetch and verify an app's key, then encrypt environment variables to it.

        :meth:`get_verified_app_env_encrypt_pubkey` followed by
        :func:`phala_kms.encrypt_env_vars`. The env vars are checked first (names,
        types, and what the TEE accepts at boot: :mod:`phala_kms.tee`), so a bad
        set fails before any request. With ``check_registered``, the KMS contract must
        list the app (:meth:`check_app_registered`) before the key is fetched.

        Args:
            kms: A KMS id, slug, or type.
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            env_vars: A mapping of name to value, or an iterable of ``EnvVar`` or
                ``(name, value)`` pairs (read once).
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`.
            max_age, require_timestamped: As in
                :meth:`get_verified_app_env_encrypt_pubkey`.
            allowed_envs: The app compose's ``allowed_envs``: a name outside it is
                refused (the TEE would silently drop it). ``None`` skips the check.
            allow_empty: Accept an empty set of env vars.
            check_registered: Require the KMS contract's ``registeredApps(app_id)``
                to be true first (an ``eth_call`` over ``rpc_url``).
            rpc_url: The EVM JSON-RPC URL for ``check_registered``.
            ssl_context: TLS trust for ``rpc_url`` (default: the system's).
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            Lowercase hex for the API's ``encrypted_env`` fields (see
            :func:`phala_kms.encrypt_env_vars` for the layout).

        Raises:
            InvalidArgumentError: A bad env var name or value type, an empty set
                without ``allow_empty``, a TEE limit exceeded, a name outside
                ``allowed_envs``, or ``check_registered`` without ``rpc_url``;
                nothing is sent.
            SignatureVerificationError: ``reason="app_not_registered"`` and the
                other errors of :meth:`check_app_registered`.
            The errors of :meth:`get_verified_app_env_encrypt_pubkey`.
        """
        from .crypto import encrypt_env_plaintext, env_vars_plaintext

        # Build the plaintext once, before any request: env_vars may be a one-shot
        # iterable, and what was checked must be exactly what is encrypted. env_vars
        # leaves this frame first: any error raised through it would show its values
        # to every traceback that captures locals (the plaintext's repr is redacted).
        hidden = Hidden(env_vars)
        del env_vars
        plaintext = env_vars_plaintext(
            hidden.value, allowed_envs=allowed_envs, allow_empty=allow_empty
        )
        del hidden
        if check_registered:
            if rpc_url is None:
                raise InvalidArgumentError(
                    "check_registered needs rpc_url (an EVM JSON-RPC URL)", argument="rpc_url"
                )
            await self.check_app_registered(
                kms, app_id, rpc_url=rpc_url, ssl_context=ssl_context, api_version=api_version
            )
        key = await self.get_verified_app_env_encrypt_pubkey(
            kms,
            app_id,
            trusted_signer=trusted_signer,
            max_age=max_age,
            require_timestamped=require_timestamped,
            api_version=api_version,
        )
        return encrypt_env_plaintext(plaintext, key.public_key_bytes)
