"""The fake's data: KMS contracts, their nodes, their keys, and the JSON they serve.

A :class:`Contract` is one KMS root of trust: the off-chain Phala KMS (contract
sentinel ``"phala"``, ``chain_id`` 0 in the contract shape, ``null`` in node items)
or an on-chain KMS contract on Base (8453) or Ethereum (1). Each contract holds a
secp256k1 root private key and derives every app's X25519 key from it, the way the
dstack KMS does: the same (contract, app_id) always gives the same key. A
:class:`Node` is one KMS node (a ``KmsInfo`` item) that belongs to a contract.

Everything here is deterministic in ``seed``: two fakes built with the same seed
advertise the same ids and root keys and hand out the same app keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey
from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._hex import parse_hex

__all__ = [
    "CHAIN_NAMES",
    "JSON_CONTENT_TYPE",
    "AppKey",
    "Catalogue",
    "Contract",
    "Node",
    "SIGNATURE_PREFIX",
    "app_id_bytes",
    "build_catalogue",
    "derive_app_key",
    "dumps",
    "keccak256",
    "sign_timestamped",
]

SIGNATURE_PREFIX = b"dstack-env-encrypt-pubkey:"
"""What every signed env-encryption public key message starts with (prefix and ``:``)."""

CHAIN_NAMES = {8453: "base", 1: "ethereum"}
"""The chains with on-chain KMS contracts: chain id -> the name ``/kms/on-chain/{chain}`` takes."""

JSON_CONTENT_TYPE = "application/json"
"""The ``Content-Type`` of every JSON response the fake sends."""

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Quirk-laden, fixture-like values. Addresses and hashes are made up.
_BASE_ADDRESS = "0x2f83172A49584C017F2B256F0FB2Dca14126Ba9C"
_ETH_ADDRESS = "0x4B2c5E9a1F0d3C7b8A6e2D1f9C0b3A5e7D8c6F41"
_ETH_GATEWAY_ADDRESS = "0x9cD1e0B7a26F4c3E8d5B1A0f7E6c2D9b4A3e8F10"
_PHALA_VERSIONS = ("0.5.7", "v0.5.7", "0.5.6", "0.5.8-3f2a9c1", "v0.5.5")


def dumps(obj: object) -> str:
    """Serialise ``obj`` as compact JSON, the way every fake response is written."""
    return json.dumps(obj, separators=(",", ":"))


def keccak256(data: bytes) -> bytes:
    """Return the Keccak-256 digest (Ethereum's, not NIST SHA3-256) of ``data``."""
    return keccak.new(data=data, digest_bits=256).digest()


def app_id_bytes(app_id: str | bytes) -> bytes:
    """Return an app id as its 20 raw bytes.

    Args:
        app_id: 20 raw bytes, or 40 hex characters with or without ``0x``.

    Raises:
        ValueError: ``app_id`` is not 20 bytes / 40 hex characters.
    """
    raw = parse_hex(app_id, 20)
    if raw is None:
        if isinstance(app_id, bytes):
            raise ValueError(f"app_id must be 20 bytes, got {len(app_id)}")
        raise ValueError(f"app_id must be 40 hex characters with or without 0x, got {app_id!r}")
    return raw


def _digest(seed: str, *parts: object) -> bytes:
    material = ":".join([seed, *(str(part) for part in parts)])
    return hashlib.sha256(material.encode()).digest()


def _ident(seed: str, *parts: object, length: int = 8) -> str:
    number = int.from_bytes(_digest(seed, "ident", *parts), "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, 62)
        chars.append(_BASE62[index])
    return "".join(chars)


def _hex(seed: str, *parts: object, nbytes: int = 32) -> str:
    return _digest(seed, "hex", *parts)[:nbytes].hex()


@dataclass(frozen=True)
class AppKey:
    """One app's env-encryption key on one KMS contract, signed by the KMS root key.

    Attributes:
        private_key: the 32-byte X25519 private key (raw, as HMAC produced it).
        public_key: the 32-byte X25519 public key.
        signature: the 65-byte legacy signature ``r || s || v`` (``v`` in {0, 1}).
    """

    private_key: bytes
    public_key: bytes
    signature: bytes


def derive_app_key(root: PrivateKey, app_id: bytes) -> AppKey:
    """Derive and sign an app's X25519 key from a KMS root key, like the dstack KMS.

    The X25519 private key is ``HMAC-SHA256(root_secret, b"app-env-key:" + app_id)``;
    the signature is a recoverable secp256k1 ECDSA signature over
    ``keccak256(b"dstack-env-encrypt-pubkey:" + app_id + public_key)``.

    Args:
        root: the KMS root secp256k1 private key.
        app_id: the app id's 20 raw bytes.
    """
    private = hmac.new(root.secret, b"app-env-key:" + app_id, hashlib.sha256).digest()
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    digest = keccak256(SIGNATURE_PREFIX + app_id + public)
    return AppKey(private, public, root.sign_recoverable(digest, hasher=None))


def sign_timestamped(root: PrivateKey, app_id: bytes, public_key: bytes, timestamp: int) -> bytes:
    """Sign the timestamped (``signature_v1``) message: prefix, app id, u64 BE timestamp, key."""
    message = SIGNATURE_PREFIX + app_id + timestamp.to_bytes(8, "big") + public_key
    return root.sign_recoverable(keccak256(message), hasher=None)


@dataclass(eq=False)
class Contract:
    """One KMS root of trust (the Phala KMS or an on-chain KMS contract).

    Attributes:
        id: the hashed contract id (``kc_...``).
        slug: short name, e.g. ``phala``, ``base``; may be ``None``.
        label: display label; may be ``None``.
        contract_address: ``0x`` + 40 hex, or the sentinel ``"phala"``.
        chain_id: 0 for the Phala KMS, else the EVM chain id.
        kms_type: the KMS type (``phala``, ``base``, ``ethereum``) the pubkey route accepts.
        root_key: the secp256k1 root private key.
        ca_pubkey: the advertised CA public key, or ``None``.
        gateway_contract_address: on-chain detail field, or ``None``.
        devices: on-chain detail ``devices`` items.
        os_images: on-chain detail ``os_images`` items.
        nodes: the nodes serving this contract, in catalogue order.
    """

    id: str
    slug: str | None
    label: str | None
    contract_address: str
    chain_id: int
    kms_type: str
    root_key: PrivateKey
    ca_pubkey: str | None = None
    gateway_contract_address: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    os_images: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    @property
    def k256_pubkey(self) -> str:
        """The root public key, SEC1 compressed, as lowercase hex with ``0x``."""
        return "0x" + self.root_key.public_key.format(compressed=True).hex()

    @property
    def chain_name(self) -> str | None:
        """``base`` or ``ethereum`` for contracts on those chains, else ``None``."""
        return CHAIN_NAMES.get(self.chain_id)

    def contract_item(self) -> dict[str, Any]:
        """The ``KmsContract`` JSON object (API version ``2026-06-23``)."""
        return {
            "id": self.id,
            "slug": self.slug,
            "label": self.label,
            "contract_address": self.contract_address,
            "chain_id": self.chain_id,
            "k256_pubkey": self.k256_pubkey,
            "ca_pubkey": self.ca_pubkey,
            "node_count": len(self.nodes),
        }

    def onchain_item(self) -> dict[str, Any]:
        """The contract object of ``GET /kms/on-chain/{chain}``."""
        return {
            "contract_address": self.contract_address,
            "chain_id": self.chain_id,
            "chain_name": self.chain_name,
            "k256_pubkey": self.k256_pubkey,
            "ca_pubkey": self.ca_pubkey,
            "gateway_contract_address": self.gateway_contract_address,
            "devices": self.devices,
            "os_images": self.os_images,
        }


@dataclass(eq=False)
class Node:
    """One KMS node: its ``KmsInfo`` JSON exactly as served, and its contract.

    Attributes:
        info: the ``KmsInfo`` object (unknown fields such as ``region`` kept).
        contract: the contract this node serves.
    """

    info: dict[str, Any]
    contract: Contract

    @property
    def id(self) -> str:
        """The node's id."""
        return str(self.info["id"])

    @property
    def slug(self) -> str | None:
        """The node's slug, or ``None``."""
        slug = self.info.get("slug")
        return None if slug is None else str(slug)

    @property
    def is_onchain(self) -> bool:
        """Whether the node serves an on-chain contract (``chain_id`` not null)."""
        return self.info.get("chain_id") is not None

    def contract_node_item(self) -> dict[str, Any]:
        """The ``KmsContractNode`` JSON object of ``GET /kms/{slug}/nodes``."""
        return {
            "id": self.id,
            "slug": self.slug,
            "url": self.info.get("url"),
            "version": self.info.get("version"),
            "kms_type": self.contract.kms_type,
        }


class Catalogue:
    """Every contract and node the fake serves, with the lookups its routes need."""

    def __init__(self, contracts: Sequence[Contract], nodes: Sequence[Node]) -> None:
        """Index ``contracts`` and ``nodes`` (catalogue order is serving order)."""
        self.contracts: tuple[Contract, ...] = tuple(contracts)
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._contract_refs: dict[str, Contract] = {}
        self._node_refs: dict[str, Node] = {}
        self._type_refs: dict[str, Contract] = {}
        for contract in self.contracts:
            if contract.slug is not None:
                self._contract_refs.setdefault(contract.slug, contract)
            self._type_refs.setdefault(contract.kms_type, contract)
        for contract in self.contracts:  # ids win over slugs
            self._contract_refs[contract.id] = contract
        for node in self.nodes:
            if node.slug is not None:
                self._node_refs.setdefault(node.slug, node)
        for node in self.nodes:
            self._node_refs[node.id] = node

    @property
    def phala(self) -> Contract:
        """The off-chain Phala KMS contract (always present)."""
        return self._type_refs["phala"]

    def contract(self, ref: str) -> Contract | None:
        """Find a contract by id or slug (the contract-centric ``/kms/{slug}`` lookup)."""
        return self._contract_refs.get(ref)

    def node(self, ref: str) -> Node | None:
        """Find a node by id or slug (the node-centric ``/kms/{kms_id}`` lookup)."""
        return self._node_refs.get(ref)

    def resolve(self, ref: str) -> Contract | None:
        """Find the contract a KMS id, slug or type names (the pubkey route's lookup).

        Tried in order: contract id or slug, node id or slug (its contract), KMS type.
        """
        contract = self._contract_refs.get(ref)
        if contract is not None:
            return contract
        node = self._node_refs.get(ref)
        if node is not None:
            return node.contract
        return self._type_refs.get(ref)


def _root_key(seed: str, name: str) -> PrivateKey:
    return PrivateKey(_digest(seed, "root-key", name))


def _phala_node(seed: str, index: int, contract: Contract) -> dict[str, Any]:
    number = index + 1
    info: dict[str, Any] = {
        "id": "kms_" + _ident(seed, "phala-node", number),
        "slug": "phala" if index == 0 else f"phala-prod{number}",
        "url": f"https://kms.dstack-pha-prod{number}.phala.network",
        "version": _PHALA_VERSIONS[index % len(_PHALA_VERSIONS)],
        "chain_id": None,
        "kms_contract_address": None,
        "gateway_app_id": None,
    }
    if index % 9 == 8:
        info["slug"] = None
    if index % 4 == 0:
        info["k256_pubkey"] = contract.k256_pubkey
    if index % 10 == 5:
        info["region"] = "eu-west"
    return info


def _onchain_contracts(seed: str) -> list[tuple[Contract, list[dict[str, Any]]]]:
    base = Contract(
        id="kc_" + _ident(seed, "contract", "base"),
        slug="base",
        label="Base KMS",
        contract_address=_BASE_ADDRESS,
        chain_id=8453,
        kms_type="base",
        root_key=_root_key(seed, "base"),
        devices=[
            {"device_id": _hex(seed, "device", 1), "node_name": "prod7", "on_chain_allowed": True},
            {"device_id": _hex(seed, "device", 2), "on_chain_allowed": None},
            {"device_id": _hex(seed, "device", 3), "node_name": None, "on_chain_allowed": False},
        ],
        os_images=[
            {
                "name": "dstack-0.5.7",
                "version": "0.5.7",
                "os_image_hash": _hex(seed, "os-image", "0.5.7"),
                "on_chain_allowed": True,
            },
            {
                "name": "dstack-dev-0.5.8",
                "version": "v0.5.8",
                "os_image_hash": None,
                "on_chain_allowed": None,
            },
            {
                "name": "dstack-0.4.2",
                "version": "0.4.2",
                "os_image_hash": _hex(seed, "os-image", "0.4.2"),
                "on_chain_allowed": False,
            },
        ],
    )
    base_key = base.root_key.public_key.format(compressed=True).hex()
    base_nodes: list[dict[str, Any]] = [
        {
            "id": "kms_" + _ident(seed, "base-node", 7),
            "slug": "kms-base-prod7",
            "url": "https://kms.dstack-base-prod7.phala.network",
            "version": "v0.5.7",
            "chain_id": 8453,
            "kms_contract_address": _BASE_ADDRESS,
            "gateway_app_id": "0x" + _hex(seed, "gateway-app", "base", nbytes=20),
            "k256_pubkey": base.k256_pubkey,
        },
        {
            "id": "kms_" + _ident(seed, "base-node", 9),
            "slug": "kms-base-prod9",
            "url": "https://kms.dstack-base-prod9.phala.network",
            "version": "0.5.7-3f2a9c1",
            "chain_id": 8453,
            "kms_contract_address": _BASE_ADDRESS.lower(),
            "gateway_app_id": None,
            "region": "us-east",
        },
        {
            "id": "kms_" + _ident(seed, "base-node", 11),
            "slug": "kms-base-prod11",
            "url": "https://kms.dstack-base-prod11.phala.network",
            "version": "0.5.8",
            "chain_id": 8453,
            "kms_contract_address": "0x" + _BASE_ADDRESS[2:].upper(),
            "gateway_app_id": None,
            "k256_pubkey": base_key.upper(),
        },
    ]
    ethereum = Contract(
        id="kc_" + _ident(seed, "contract", "ethereum"),
        slug="ethereum",
        label="Ethereum KMS",
        contract_address=_ETH_ADDRESS,
        chain_id=1,
        kms_type="ethereum",
        root_key=_root_key(seed, "ethereum"),
        ca_pubkey="0x" + _hex(seed, "ca-pubkey", "ethereum", nbytes=33),
        gateway_contract_address=_ETH_GATEWAY_ADDRESS,
        devices=[
            {
                "device_id": _hex(seed, "device", 10),
                "node_name": "eth-prod1",
                "on_chain_allowed": True,
            },
        ],
        os_images=[
            {
                "name": "dstack-0.5.6",
                "version": "v0.5.6",
                "os_image_hash": _hex(seed, "os-image", "0.5.6"),
                "on_chain_allowed": True,
            },
        ],
    )
    eth_nodes: list[dict[str, Any]] = [
        {
            "id": "kms_" + _ident(seed, "eth-node", 1),
            "slug": None,
            "url": "https://kms.dstack-eth-prod1.phala.network",
            "version": "0.5.6",
            "chain_id": 1,
            "kms_contract_address": _ETH_ADDRESS,
            "gateway_app_id": None,
        },
        {
            "id": "kms_" + _ident(seed, "eth-node", 2),
            "slug": "kms-eth-prod2",
            "url": "https://kms.dstack-eth-prod2.phala.network",
            "version": "v0.5.7",
            "chain_id": 1,
            "kms_contract_address": _ETH_ADDRESS.lower(),
            "gateway_app_id": "0x" + _hex(seed, "gateway-app", "ethereum", nbytes=20),
            "k256_pubkey": ethereum.k256_pubkey,
        },
    ]
    return [(base, base_nodes), (ethereum, eth_nodes)]


def _contract_for_extra(
    seed: str, info: Mapping[str, Any], contracts: list[Contract], phala: Contract
) -> Contract:
    chain_id = info.get("chain_id")
    if chain_id is None:
        return phala
    address = str(info.get("kms_contract_address") or "").lower()
    for contract in contracts:
        if contract.chain_id == chain_id and contract.contract_address.lower() == address:
            return contract
    name = f"{chain_id}:{address}"
    contract = Contract(
        id="kc_" + _ident(seed, "contract", name),
        slug=None,
        label=None,
        contract_address=str(info.get("kms_contract_address") or "0x" + "0" * 40),
        chain_id=int(chain_id),
        kms_type=CHAIN_NAMES.get(int(chain_id), "custom"),
        root_key=_root_key(seed, name),
    )
    contracts.append(contract)
    return contract


def build_catalogue(
    *,
    seed: str,
    phala_node_count: int,
    include_onchain: bool,
    extra_nodes: Iterable[Mapping[str, Any]],
) -> Catalogue:
    """Build the fake's catalogue.

    Args:
        seed: makes ids, hashes and root keys deterministic.
        phala_node_count: how many off-chain Phala KMS nodes to list (>= 0).
        include_onchain: add the Base (3 nodes) and Ethereum (2 nodes) KMS contracts.
        extra_nodes: more ``KmsInfo`` objects, served as given. Each joins the contract
            with the same ``chain_id`` and (case-insensitive) ``kms_contract_address``,
            the Phala KMS when ``chain_id`` is null, or a new contract with its own
            root key.

    Raises:
        ValueError: a count is negative or an extra node has no ``id``.
    """
    if phala_node_count < 0:
        raise ValueError("phala_node_count must be >= 0")
    phala = Contract(
        id="kc_" + _ident(seed, "contract", "phala"),
        slug="phala",
        label="Phala KMS",
        contract_address="phala",
        chain_id=0,
        kms_type="phala",
        root_key=_root_key(seed, "phala"),
    )
    contracts = [phala]
    infos: list[tuple[dict[str, Any], Contract]] = [
        (_phala_node(seed, index, phala), phala) for index in range(phala_node_count)
    ]
    if include_onchain:
        # List two Phala nodes first, then the on-chain nodes, then the rest: page 1
        # of a default listing shows every shape.
        onchain: list[tuple[dict[str, Any], Contract]] = []
        for contract, node_infos in _onchain_contracts(seed):
            contracts.append(contract)
            onchain.extend((info, contract) for info in node_infos)
        infos[2:2] = onchain
    for extra in extra_nodes:
        if "id" not in extra:
            raise ValueError("every extra node needs an 'id'")
        infos.append((dict(extra), _contract_for_extra(seed, extra, contracts, phala)))
    nodes = []
    for info, contract in infos:
        node = Node(info, contract)
        contract.nodes.append(node)
        nodes.append(node)
    return Catalogue(contracts, nodes)
