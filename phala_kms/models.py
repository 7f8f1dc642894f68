"""Typed, frozen results of the Phala Cloud KMS API.

Every class is an immutable ``attrs`` class whose field names are the API's own.
Nullable fields are ``Optional`` with a ``None`` default, so a field the server
leaves out decodes the same as an explicit ``null``. Fields a newer API adds that
this version does not know are never dropped: they are kept, as sent, in the
``extra`` mapping of the object that carried them.

Hex strings are kept as the server sent them except where noted: the public key and
signatures of :class:`AppEnvEncryptPubKey` are normalised to lowercase hex without
``0x`` and length-checked when decoded, because they feed cryptography.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, NoReturn, TypeVar

import attrs

__all__ = [
    "AppEnvEncryptPubKey",
    "CVMInfo",
    "CVMKMSInfo",
    "KMSContract",
    "KMSContractNode",
    "KMSContractNodes",
    "KMSInfo",
    "KMSNodeMeta",
    "KMSOnChainDetail",
    "NextAppID",
    "NextAppIDs",
    "OnChainDevice",
    "OnChainKMSContract",
    "OnChainOSImage",
    "Paginated",
    "TrustedSigner",
    "VerifiedAppEnvEncryptPubKey",
]

T = TypeVar("T")


class ReadOnlyDict(dict[str, Any]):
    """A ``dict`` that refuses changes: what ``extra`` holds.

    Being a real ``dict``, it pickles, deep-copies and serialises with ``json`` like
    one; every method that would change it raises ``TypeError``.
    """

    __slots__ = ()

    def _read_only(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("extra is read-only (the response as sent)")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadOnlyDict, (dict(self),))

    def __copy__(self) -> ReadOnlyDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ReadOnlyDict:
        import copy

        return ReadOnlyDict(copy.deepcopy(dict(self), memo))


_EMPTY = ReadOnlyDict()


def _extra() -> Any:
    """The ``extra`` field: unknown response keys, as sent, read-only.

    It takes part in ``==`` but not in ``hash()``, so models stay hashable."""
    return attrs.field(default=_EMPTY, repr=False, converter=_freeze_mapping, hash=False)


def _freeze_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    if isinstance(value, ReadOnlyDict):
        return value
    return ReadOnlyDict(value)


@attrs.frozen(kw_only=True)
class KMSInfo:
    """One KMS node, node-centric shape (``GET /kms`` and ``GET /kms/{kms_id}`` at
    API version ``2026-05-22``).

    Attributes:
        id: The KMS's hashed id, e.g. ``"kms_abc123def456"``.
        url: The KMS node's RPC base URL.
        version: The node's software version as sent (not normalised: ``"0.5.7"``,
            ``"v0.5.7"``, ``"0.5.7-3f2a9c1"``).
        slug: A readable name such as ``"phala"`` or ``"kms-base-prod7"``, or ``None``.
        chain_id: The EVM chain id of its KMS contract (1 Ethereum, 8453 Base), or
            ``None`` for the off-chain Phala KMS.
        kms_contract_address: ``0x`` + 40 hex, case as sent, or ``None``.
        gateway_app_id: ``0x``-prefixed hex, or ``None``.
        k256_pubkey: The KMS root secp256k1 public key (compressed, 33 bytes as hex,
            with or without ``0x``) that signs app keys, or ``None`` when not sent.
        extra: Response fields this version does not know, as sent.
    """

    id: str
    url: str
    version: str
    slug: str | None = None
    chain_id: int | None = None
    kms_contract_address: str | None = None
    gateway_app_id: str | None = None
    k256_pubkey: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class Paginated(Generic[T]):
    """One page of a paginated list.

    Attributes:
        items: The page's items, in the server's order.
        total: How many items exist across all pages.
        page: This page's number, from 1.
        page_size: The requested page size (1..100).
        pages: How many pages exist; 0 when ``total`` is 0.
        extra: Response fields this version does not know, as sent.
    """

    items: tuple[T, ...]
    total: int
    page: int
    page_size: int
    pages: int
    extra: Mapping[str, Any] = _extra()

    @property
    def has_next(self) -> bool:
        """Whether a page after this one exists: this page is not empty and is not the
        last of ``pages``. The one "is there another page" rule; the iterators use it."""
        return bool(self.items) and self.page < self.pages


@attrs.frozen(kw_only=True)
class AppEnvEncryptPubKey:
    """The X25519 public key an app's environment variables are encrypted to
    (``GET /kms/{kms}/pubkey/{app_id}``), with the KMS root key's signature over it.

    The hex fields are normalised on decode to lowercase without ``0x`` and checked
    for length, so ``bytes.fromhex`` on them always works.

    Attributes:
        public_key: 64 hex characters: the 32-byte X25519 public key.
        signature: 130 hex characters: the 65-byte secp256k1 signature ``r || s || v``
            over the legacy (untimestamped) message.
        timestamp: Unix time in seconds at which the KMS signed ``signature_v1``, or
            ``None`` when the server did not send one.
        signature_v1: 130 hex characters: the signature over the timestamped message,
            or ``None`` when not sent.
        extra: Response fields this version does not know, as sent.
    """

    public_key: str
    signature: str
    timestamp: int | None = None
    signature_v1: str | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def public_key_bytes(self) -> bytes:
        """The 32-byte X25519 public key."""
        return bytes.fromhex(self.public_key)


@attrs.frozen(kw_only=True)
class OnChainDevice:
    """A device (TEE machine) registered with an on-chain KMS contract.

    Attributes:
        device_id: The device id as hex.
        node_name: The node's name, e.g. ``"prod7"``, or ``None``.
        on_chain_allowed: ``True`` or ``False`` when the contract's allow-list is
            known, ``None`` when unknown.
        extra: Response fields this version does not know, as sent.
    """

    device_id: str
    node_name: str | None = None
    on_chain_allowed: bool | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class OnChainOSImage:
    """A dstack OS image known to an on-chain KMS contract.

    Attributes:
        name: The image name, e.g. ``"dstack-0.5.7"``.
        version: The image version, e.g. ``"0.5.7"``.
        os_image_hash: The image measurement hash as hex, or ``None``.
        on_chain_allowed: ``True``/``False`` when known, ``None`` when unknown.
        extra: Response fields this version does not know, as sent.
    """

    name: str
    version: str
    os_image_hash: str | None = None
    on_chain_allowed: bool | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class OnChainKMSContract:
    """One KMS contract on a chain.

    Attributes:
        contract_address: ``0x`` + 40 hex, case as sent.
        chain_id: The EVM chain id, e.g. 8453.
        chain_name: The chain's name, e.g. ``"base"``.
        k256_pubkey: The KMS root secp256k1 public key as hex, or ``None``.
        ca_pubkey: The KMS CA public key as hex, or ``None``.
        gateway_contract_address: ``0x`` + 40 hex, or ``None``.
        devices: The registered devices.
        os_images: The known OS images.
        extra: Response fields this version does not know, as sent.
    """

    contract_address: str
    chain_id: int
    chain_name: str
    k256_pubkey: str | None = None
    ca_pubkey: str | None = None
    gateway_contract_address: str | None = None
    devices: tuple[OnChainDevice, ...] = ()
    os_images: tuple[OnChainOSImage, ...] = ()
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class KMSOnChainDetail:
    """The on-chain KMS contracts of one chain (``GET /kms/on-chain/{chain}``).

    Attributes:
        chain_name: The chain's name, e.g. ``"base"``.
        chain_id: The EVM chain id, e.g. 8453.
        contracts: The chain's KMS contracts; may be empty.
        extra: Response fields this version does not know, as sent.
    """

    chain_name: str
    chain_id: int
    contracts: tuple[OnChainKMSContract, ...] = ()
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class NextAppID:
    """A predicted app id on the Phala KMS, with the nonce to provision it with.

    Attributes:
        app_id: 40 lowercase hex characters (20 bytes), without ``0x`` (checked and
            normalised on decode).
        nonce: The deployer nonce (>= 0, checked on decode) to pass back with ``app_id``.
        extra: Response fields this version does not know, as sent.
    """

    app_id: str
    nonce: int
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class NextAppIDs:
    """The next app ids on the Phala KMS (``GET /kms/phala/next_app_id``).

    A prediction, not a reservation: another deployment can take an id first.

    Attributes:
        app_ids: The predicted ids, in order.
        extra: Response fields this version does not know, as sent.
    """

    app_ids: tuple[NextAppID, ...]
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class KMSContract:
    """One KMS, contract-centric shape (``GET /kms`` and ``GET /kms/{slug}`` at API
    version ``2026-06-23``).

    Attributes:
        id: The contract entry's id.
        contract_address: The contract's address (``0x`` + 40 hex), or the sentinel
            ``"phala"`` for the off-chain Phala KMS: check :attr:`is_onchain` before
            treating it as an address.
        chain_id: The EVM chain id, **0** for the off-chain Phala KMS.
        node_count: How many KMS nodes serve this contract.
        slug: A readable name such as ``"base"``, or ``None``.
        label: A display label, or ``None``.
        k256_pubkey: The KMS root secp256k1 public key as hex, or ``None``.
        ca_pubkey: The KMS CA public key as hex, or ``None``.
        extra: Response fields this version does not know, as sent.
    """

    id: str
    contract_address: str
    chain_id: int
    node_count: int
    slug: str | None = None
    label: str | None = None
    k256_pubkey: str | None = None
    ca_pubkey: str | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def is_onchain(self) -> bool:
        """``False`` for the off-chain Phala KMS (``chain_id`` 0, address ``"phala"``)."""
        return self.chain_id != 0 and self.contract_address.lower() != "phala"


@attrs.frozen(kw_only=True)
class KMSContractNode:
    """One node serving a KMS contract (``GET /kms/{slug}/nodes``).

    Attributes:
        id: The node's id.
        url: The node's RPC base URL.
        version: The node's software version as sent.
        kms_type: The KMS type, e.g. ``"phala"``, ``"base"``, ``"ethereum"``.
        slug: A readable name, or ``None``.
        extra: Response fields this version does not know, as sent.
    """

    id: str
    url: str
    version: str
    kms_type: str
    slug: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class KMSContractNodes:
    """The nodes of one KMS contract (``GET /kms/{slug}/nodes``; not paginated).

    Attributes:
        items: The nodes.
        total: How many nodes there are.
        extra: Response fields this version does not know, as sent.
    """

    items: tuple[KMSContractNode, ...]
    total: int
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class TrustedSigner:
    """A KMS root secp256k1 public key to verify app keys against, and where it came from.

    Made by :meth:`phala_kms.AsyncKMSClient.get_trusted_signer`; accepted wherever a
    ``trusted_signer`` is.

    Attributes:
        k256_pubkey: The agreed root key: ``"0x"`` + 66 lowercase hex (SEC1 compressed
            secp256k1), or, when a pinned Ethereum address was the only source, that
            address (``"0x"`` + 40 hex).
        sources: One line per source that agreed on it, in the order read
            (``pinned``, ``api``, ``chain``, ``node``), e.g.
            ``("api: GET /kms/phala (contract view) k256_pubkey",)``.
    """

    k256_pubkey: str
    sources: tuple[str, ...]


@attrs.frozen(kw_only=True)
class VerifiedAppEnvEncryptPubKey:
    """An app's env-encryption public key whose signature was checked, and exactly what
    was checked (nothing unverified is carried over from the response).

    Made by ``get_verified_app_env_encrypt_pubkey`` (and its fan-out and node twins)
    and :func:`phala_kms.crypto.verify_app_env_encrypt_pubkey`.

    Attributes:
        public_key: 64 lowercase hex characters: the 32-byte X25519 public key.
        app_id: 40 lowercase hex characters: the app id the signature binds the key to.
        scheme: ``"signature_v1"`` when the timestamped signature was verified (with
            freshness), ``"signature"`` when only the legacy, replayable one was.
        signature: 130 hex characters: the signature that was verified (the
            ``signature_v1`` for that scheme, else the legacy ``signature``).
        signer: The recovered signer: ``"0x"`` + 66 hex, SEC1 compressed; it matched
            the trusted signer.
        timestamp: The signed Unix time in seconds when ``scheme`` is
            ``"signature_v1"``; ``None`` for the legacy scheme (an unsigned
            ``timestamp`` in the response is never reported here).
    """

    public_key: str
    app_id: str
    scheme: str
    signature: str
    signer: str
    timestamp: int | None = None

    @property
    def public_key_bytes(self) -> bytes:
        """The 32-byte X25519 public key."""
        return bytes.fromhex(self.public_key)

    @property
    def timestamped(self) -> bool:
        """Whether the timestamped ``signature_v1`` (bounded replay window) was verified."""
        return self.scheme == "signature_v1"


@attrs.frozen(kw_only=True)
class KMSNodeMeta:
    """A KMS node's own metadata (``POST {node_url}/prpc/GetMeta?json``), unverified.

    Field names and encodings are the dstack KMS's ``GetMetaResponse`` (bytes as hex);
    source: Dstack-TEE/dstack ``kms/rpc/proto/kms_rpc.proto`` and
    ``kms/src/main_service.rs::get_meta``.

    Attributes:
        k256_pubkey: The node's root secp256k1 key as hex (SEC1 compressed, 33 bytes),
            or ``None`` when not sent.
        ca_cert: The KMS CA certificate (PEM), or ``None``.
        allow_any_upgrade: Whether the KMS runs with a dev auth policy, or ``None``.
        is_dev: Whether the KMS is a development instance, or ``None``.
        chain_id: The chain of its KMS contract, or ``None`` (off-chain).
        kms_contract_address: Its KMS contract address, or ``None``.
        gateway_app_id: The trusted gateway's app id, or ``None``.
        app_auth_implementation: The app-auth implementation address, or ``None``.
        extra: Response fields this version does not know, as sent
            (e.g. ``bootstrap_info``).
    """

    k256_pubkey: str | None = None
    ca_cert: str | None = None
    allow_any_upgrade: bool | None = None
    is_dev: bool | None = None
    chain_id: int | None = None
    kms_contract_address: str | None = None
    gateway_app_id: str | None = None
    app_auth_implementation: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class CVMKMSInfo:
    """The KMS a CVM's environment is encrypted for (the ``kms_info`` of ``GET /cvms/{id}``).

    Only what picking and checking the KMS needs is modelled; every other field is
    kept in ``extra``. Source: Phala-Network/phala-cloud ``js/src/types/kms_info.ts``
    (``KmsInfoSchema``) and ``python/src/phala_cloud/models/cvms.py``.

    Attributes:
        id: The KMS id, e.g. ``"kms_abc123"``, or ``None``.
        slug: The KMS slug, e.g. ``"phala"`` or ``"kms-base-prod7"``, or ``None``.
        k256_pubkey: The KMS root key as the API reports it for this CVM, or ``None``.
        extra: Every other field, as sent (``url``, ``chain_id``,
            ``encrypted_env_pubkey``, ...).
    """

    id: str | None = None
    slug: str | None = None
    k256_pubkey: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen(kw_only=True)
class CVMInfo:
    """One CVM (``GET /cvms/{cvm_id}``), as far as encrypting its environment needs.

    Attributes:
        app_id: The CVM's app id (hex, as sent), or ``None``.
        kms_info: The KMS its environment is encrypted for, or ``None``.
        extra: Every other field, as sent (``id``, ``name``, ``status``, ...).
    """

    app_id: str | None = None
    kms_info: CVMKMSInfo | None = None
    extra: Mapping[str, Any] = _extra()
