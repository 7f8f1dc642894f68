"""Keys and anchors from beyond the Cloud API: KMS nodes, the chain, and CVMs.

:class:`TrustedKeyEndpoints` adds to the API's endpoints the coroutines that talk to a
KMS node directly (pRPC over verified TLS, never with the API key), read the DstackKms
contract over JSON-RPC (:mod:`phala_kms.anchors`), and encrypt for a CVM as the API
describes it. :class:`~phala_kms.AsyncKMSClient` inherits them.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._constants import DEFAULT_MAX_AGE
from ._endpoints import KMSEndpoints
from ._params import app_id_hex, path_segment
from ._peer import PeerClient, check_peer_url
from ._secrets import Hidden
from .errors import ResponseValidationError, SignatureVerificationError
from .models import AppEnvEncryptPubKey, CVMInfo, KMSNodeMeta, VerifiedAppEnvEncryptPubKey

if TYPE_CHECKING:
    from .crypto import EnvVarsLike, SignerLike

__all__ = ["TrustedKeyEndpoints", "check_cvm_signer", "cvm_target"]


class TrustedKeyEndpoints(KMSEndpoints):
    """KMS nodes, the KMS contract and CVMs; see :class:`~phala_kms.AsyncKMSClient`."""

    # ------------------------------------------------------------------ KMS nodes

    async def get_verified_app_env_encrypt_pubkey_from_node(
        self,
        node_url: str,
        app_id: str,
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> VerifiedAppEnvEncryptPubKey:
        """Fetch an app's env-encryption key straight from a KMS node and verify it.

        ``POST {node_url}/prpc/GetAppEnvEncryptPubKey?json`` with ``{"app_id": "<40
        hex>"}``; the node answers ``public_key``, ``signature``, ``signature_v1`` (hex
        of bytes) and ``timestamp`` (u64 seconds, a JSON number) (Dstack-TEE/dstack
        ``dstack/kms/rpc/proto/kms_rpc.proto`` ``PublicKeyResponse``; the JSON form as
        ``dstack/vmm/src/vmm-cli.py`` reads it). The key is then verified exactly as
        :meth:`get_verified_app_env_encrypt_pubkey` verifies the API's: this bypasses
        the Cloud API, not the signature check. The API key is never sent to the node.

        Args:
            node_url: The node's base URL (e.g. a ``url`` of :meth:`list_kms_contract_nodes`):
                ``https://``, or ``http://`` only to a loopback host.
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`.
            max_age: The oldest accepted timestamped signature, in seconds.
            require_timestamped: Refuse a key offering only the legacy signature.
            ssl_context: TLS trust for the node (e.g. its KMS CA); default the client's
                ``ssl_context``, else the system trust store. Never unverified.

        Returns:
            The :class:`~phala_kms.models.VerifiedAppEnvEncryptPubKey`.

        Raises:
            InvalidArgumentError: A malformed ``node_url``, ``app_id`` or
                ``ssl_context``; nothing is sent.
            SignatureVerificationError: As :meth:`get_verified_app_env_encrypt_pubkey`
                (``trusted_signer`` is checked before anything is sent).
            ClientStateError: The client is closed.
            TransportError: The node is unreachable (``ConnectRefusedError``,
                ``TLSError``, ``APITimeoutError``, ...).
            APIResponseError: A redirect, an error status, or a body that is not the
                key (``ResponseValidationError``).
        """
        from .crypto import check_trusted_signer, verify_app_env_encrypt_pubkey

        url = check_peer_url(node_url, "node_url")
        app = app_id_hex(app_id)
        check_trusted_signer(trusted_signer)
        self._transport.check_open()
        async with PeerClient(self._config, ssl_context) as peer:
            key = await peer.post_json(
                f"{url}/prpc/GetAppEnvEncryptPubKey?json", {"app_id": app}, AppEnvEncryptPubKey
            )
        return verify_app_env_encrypt_pubkey(
            key,
            app,
            trusted_signer=trusted_signer,
            max_age=max_age,
            require_timestamped=require_timestamped,
        )

    async def get_kms_node_meta(
        self, node_url: str, *, ssl_context: ssl.SSLContext | None = None
    ) -> KMSNodeMeta:
        """Read a KMS node's own metadata, **unverified** (its ``k256_pubkey`` is what
        the ``"node"`` trust anchor of :meth:`get_trusted_signer` compares).

        ``POST {node_url}/prpc/GetMeta?json`` with an empty JSON object; fields as in
        Dstack-TEE/dstack ``dstack/kms/rpc/proto/kms_rpc.proto`` ``GetMetaResponse``.

        Args:
            node_url: The node's base URL: ``https://``, or ``http://`` only to loopback.
            ssl_context: TLS trust for the node (default: the client's, else the system's).

        Returns:
            The :class:`~phala_kms.models.KMSNodeMeta`.

        Raises:
            InvalidArgumentError: A malformed ``node_url`` or ``ssl_context``.
            ClientStateError: The client is closed.
            TransportError: The node is unreachable.
            APIResponseError: A redirect, an error status, or a body that does not fit.
        """
        from .anchors import node_meta

        url = check_peer_url(node_url, "node_url")
        self._transport.check_open()
        async with PeerClient(self._config, ssl_context) as peer:
            return await node_meta(peer, url)

    # ------------------------------------------------------------------ the KMS contract

    async def check_app_registered(
        self,
        kms: str,
        app_id: str,
        *,
        rpc_url: str,
        ssl_context: ssl.SSLContext | None = None,
        api_version: str | None = None,
    ) -> None:
        """Require the KMS contract to list the app: ``registeredApps(app_id)`` is true.

        The contract address and chain id come from ``GET /kms/{kms}`` (contract view,
        else node view); then, over ``rpc_url``, ``eth_chainId`` must equal that chain
        id and ``eth_call`` of ``registeredApps(address)`` (DstackKms, Dstack-TEE/dstack
        ``dstack/kms/auth-eth/contracts/DstackKms.sol``) must return true. An app that
        is not registered cannot get its keys from this KMS, so encrypting for it would
        be pointless (or a sign of a wrong app id). Needs the ``[chain]`` extra.

        Args:
            kms: An on-chain KMS's slug or id (``"base"``, ``kms_...``).
            app_id: 40 hex characters (20 bytes), ``0x`` optional.
            rpc_url: An EVM JSON-RPC URL for that chain: ``https://``, or ``http://``
                only to loopback.
            ssl_context: TLS trust for ``rpc_url`` (default: the client's, else the
                system's).
            api_version: Override the pinned ``X-Phala-Version`` of the API calls.

        Raises:
            InvalidArgumentError: A malformed ``app_id`` or ``rpc_url``; nothing is sent.
            ConfigurationError: ``eth-abi`` is missing (``pip install 'phala-kms[chain]'``).
            SignatureVerificationError: ``reason="app_not_registered"``; or
                ``"wrong_chain"`` (the RPC serves another chain), ``"anchor_unavailable"``
                (an off-chain KMS, a revert, an empty answer) or ``"malformed_anchor"``.
            TransportError, APIResponseError: The API or the RPC failed.
        """
        from .anchors import check_app_registered

        await check_app_registered(
            self, kms, app_id, rpc_url=rpc_url, ssl_context=ssl_context, api_version=api_version
        )

    # ------------------------------------------------------------------ CVMs

    async def get_cvm(self, cvm_id: str, *, api_version: str | None = None) -> CVMInfo:
        """Read one CVM, as far as encrypting its environment needs.

        ``GET /cvms/{cvm_id}`` with the client's ``X-Phala-Version``. Only ``app_id``
        and ``kms_info``'s ``id``, ``slug`` and ``k256_pubkey`` are modelled (the
        official SDK's ``KmsInfoSchema``, Phala-Network/phala-cloud
        ``js/src/types/kms_info.ts``); everything else is kept in ``extra``.

        Args:
            cvm_id: The CVM's id (as the API names it, e.g. a hashed id or UUID).
            api_version: Override the client's ``X-Phala-Version`` for this call.

        Returns:
            The :class:`~phala_kms.models.CVMInfo`.

        Raises:
            InvalidArgumentError: ``cvm_id`` is empty or malformed; nothing is sent.
            NotFoundError: No such CVM.
            ConfigurationError, ClientStateError, TransportError, APIStatusError,
            RedirectError, ResponseValidationError: as in :meth:`get_kms_list`.
        """
        segment = path_segment(cvm_id, "cvm_id")
        return await self._get(f"/cvms/{segment}", CVMInfo, version=self._version(api_version))

    async def encrypt_env_vars_for_cvm(
        self,
        cvm_id: str,
        env_vars: EnvVarsLike,
        *,
        trusted_signer: SignerLike,
        kms: str | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        allowed_envs: Iterable[str] | None = None,
        allow_empty: bool = False,
        api_version: str | None = None,
    ) -> str:
        """Encrypt environment variables for an existing CVM, to the key of its own KMS.

        Checks the env vars (as :func:`phala_kms.encrypt_env_vars`), reads the CVM
        (:meth:`get_cvm`), picks its KMS by ``kms_info.slug``, else ``kms_info.id``
        (never by a chain name such as ``"base"``, which the pubkey route may not
        know), fetches and verifies the app's key
        (:meth:`get_verified_app_env_encrypt_pubkey`), and encrypts. When the CVM's
        ``kms_info`` reports a ``k256_pubkey`` that is not ``trusted_signer``, it fails
        closed: the CVM's KMS is not the one you trust.

        Args:
            cvm_id: The CVM's id.
            env_vars: A mapping of name to value, or an iterable of ``EnvVar`` or
                ``(name, value)`` pairs (read once).
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`.
            kms: Use this KMS id or slug instead of the CVM's ``kms_info``.
            max_age, require_timestamped: As in
                :meth:`get_verified_app_env_encrypt_pubkey`.
            allowed_envs, allow_empty: As in :meth:`encrypt_env_vars_for_app`.
            api_version: Override the client's ``X-Phala-Version`` for these calls.

        Returns:
            Lowercase hex for the API's ``encrypted_env`` fields.

        Raises:
            InvalidArgumentError: As :meth:`encrypt_env_vars_for_app`; nothing is sent.
            ResponseValidationError: The CVM has no ``app_id``, or (without ``kms``)
                its ``kms_info`` has neither ``slug`` nor ``id``.
            SignatureVerificationError: ``reason="anchor_mismatch"`` when the CVM's
                ``kms_info.k256_pubkey`` is not ``trusted_signer``; and the errors of
                :meth:`get_verified_app_env_encrypt_pubkey`.
            The errors of :meth:`get_cvm`.
        """
        from .crypto import (
            check_trusted_signer,
            encrypt_env_plaintext,
            env_vars_plaintext,
            verify_app_env_encrypt_pubkey,
        )

        hidden = Hidden(env_vars)  # the values leave this frame's locals first
        del env_vars
        plaintext = env_vars_plaintext(
            hidden.value, allowed_envs=allowed_envs, allow_empty=allow_empty
        )
        del hidden
        trusted = check_trusted_signer(trusted_signer)
        cvm = await self.get_cvm(cvm_id, api_version=api_version)
        chosen, app_id = cvm_target(cvm, cvm_id, kms)
        check_cvm_signer(cvm, cvm_id, trusted)
        fetched = await self.get_app_env_encrypt_pubkey(chosen, app_id, api_version=api_version)
        key = verify_app_env_encrypt_pubkey(
            fetched,
            app_id,
            trusted_signer=trusted_signer,
            max_age=max_age,
            require_timestamped=require_timestamped,
        )
        return encrypt_env_plaintext(plaintext, key.public_key_bytes)


def cvm_target(cvm: CVMInfo, cvm_id: str, kms: str | None = None) -> tuple[str, str]:
    """The KMS to ask for a CVM's key, and its app id.

    The KMS is ``kms`` when given, else ``kms_info.slug``, else ``kms_info.id`` (never
    a chain name such as ``"base"``).

    Args:
        cvm: The CVM as :meth:`TrustedKeyEndpoints.get_cvm` read it.
        cvm_id: Its id, for the message.
        kms: A KMS id or slug that overrides the CVM's ``kms_info``, or ``None``.

    Returns:
        ``(kms, app_id)``.

    Raises:
        ResponseValidationError: The CVM has no ``app_id``, or (without ``kms``) its
            ``kms_info`` has neither ``slug`` nor ``id``.
    """
    info = cvm.kms_info
    chosen = kms or (info.slug or info.id if info is not None else None)
    if not cvm.app_id or not chosen:
        missing = "app_id" if not cvm.app_id else "kms_info.slug or kms_info.id"
        raise ResponseValidationError(
            f"CVM {cvm_id!r} has no {missing}, so the key to encrypt to cannot be"
            " chosen" + ("; pass kms=... to name the KMS" if cvm.app_id else ""),
            model="CVMInfo",
            problems=(f"{missing}: required to encrypt for this CVM",),
            status=200,
            method="GET",
        )
    return chosen, cvm.app_id


def check_cvm_signer(cvm: CVMInfo, cvm_id: str, trusted: tuple[bool, bytes]) -> None:
    """Fail closed when the CVM's ``kms_info`` reports a root key that is not the trusted
    signer (nothing to check when it reports none).

    Args:
        cvm: The CVM as :meth:`TrustedKeyEndpoints.get_cvm` read it.
        cvm_id: Its id, for the message.
        trusted: The trusted signer as :func:`phala_kms.crypto.check_trusted_signer`
            parsed it: ``(is_address, 20-byte address or 33-byte compressed key)``.

    Raises:
        SignatureVerificationError: ``reason="anchor_mismatch"``.
    """
    from .anchors import _compressed
    from .crypto import ethereum_address

    reported = cvm.kms_info.k256_pubkey if cvm.kms_info is not None else None
    if not reported:
        return
    key = _compressed(reported)
    is_address, expected = trusted
    seen = None
    if key is not None:
        seen = bytes.fromhex(ethereum_address(key)[2:]) if is_address else key
    if seen != expected:
        raise SignatureVerificationError(
            f"CVM {cvm_id!r}'s kms_info reports root key {reported[:80]!r}, not the trusted"
            f" signer 0x{expected.hex()}: refusing to encrypt for another KMS",
            reason="anchor_mismatch",
            sources=(
                f"api: GET /cvms/{cvm_id} kms_info.k256_pubkey: {reported[:80]}",
                f"trusted_signer: 0x{expected.hex()}",
            ),
        )
