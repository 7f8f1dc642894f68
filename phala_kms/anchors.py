"""Trust anchors: where the KMS root key (``k256_pubkey``) you verify app keys against
comes from, and what each source protects against.

Every app key is signed by its KMS's secp256k1 root key, so verifying a key is only as
good as the root key it is compared with. :func:`resolve_trusted_signer` (behind
``AsyncKMSClient.get_trusted_signer``) asks the sources you name and requires **all of
them to agree** on one key:

``"pinned"``
    A value you recorded once and keep in your own configuration. Trusts only that key;
    a compromised API, node or RPC cannot change it. It does not follow a rotation.
``"api"``
    The Phala Cloud API's ``GET /kms/{kms}`` (contract view, else node view). The same
    party serves the app keys, so alone it guards against transit corruption and KMS
    mis-routing, not against the API itself.
``"chain"``
    The DstackKms contract itself: ``eth_call`` of ``kmsInfo()`` at the contract address
    the API names, over a JSON-RPC URL you choose, after ``eth_chainId`` matched the
    contract's chain (a wrong RPC fails closed). Trusts the chain (and your RPC
    provider), not the API: the API can only point at the contract, and a wrong address
    yields a key that will not match the others.
``"node"``
    The KMS nodes themselves: ``POST {node_url}/prpc/GetMeta?json``'s ``k256_pubkey``,
    for every node of ``GET /kms/{kms}/nodes`` (or the URLs you give), over verified
    TLS. Trusts the node operators and the TLS PKI, not the API's report.

Sources are read in that order; the first failure (unreachable, wrong chain, garbage,
no key) is raised as it is, and disagreement raises
``SignatureVerificationError(reason="anchor_mismatch")`` listing every source and the
key it reported. :func:`check_app_registered` reads the contract's
``registeredApps(app_id)``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from ._evm import chain_id as rpc_chain_id
from ._evm import kms_info_k256_pubkey, registered_app, require_eth_abi
from ._hex import parse_hex
from ._peer import PeerClient, check_peer_url
from .errors import InvalidArgumentError, NotFoundError, SignatureVerificationError
from .models import KMSNodeMeta, TrustedSigner

if TYPE_CHECKING:
    from ._endpoints import KMSEndpoints
    from .crypto import SignerLike

__all__ = [
    "SOURCES",
    "api_root_key",
    "check_app_registered",
    "node_meta",
    "resolve_trusted_signer",
]

SOURCES: Final = ("pinned", "api", "chain", "node")
"""Every trust-anchor source, in the order they are read."""


def _compressed(value: object) -> bytes | None:
    """A secp256k1 key (hex or bytes; SEC1 33/65 bytes or bare 64) as compressed bytes."""
    from .crypto import check_trusted_signer

    if isinstance(value, str) and parse_hex(value, 20) is not None:
        return None  # an address, not a key
    try:
        is_address, raw = check_trusted_signer(value)  # type: ignore[arg-type]
    except SignatureVerificationError:
        return None
    return None if is_address else raw


def _key_or_raise(value: object, source: str) -> bytes:
    key = _compressed(value)
    if key is None:
        raise SignatureVerificationError(
            f"{source} reported {str(value)[:80]!r}, which is not a secp256k1 public key",
            reason="malformed_anchor",
            sources=(source,),
        )
    return key


async def api_root_key(
    client: KMSEndpoints, kms: str, api_version: str | None = None
) -> tuple[str, str]:
    """The KMS root key as the Cloud API reports it, and which response said so.

    ``GET /kms/{kms}`` as a contract; if no contract has that name, as a node, and when
    the node omits its key, the key of the contract it serves (``GET /kms`` pages,
    matched by chain id and contract address).

    Returns:
        ``(k256_pubkey as sent, source line)``.

    Raises:
        SignatureVerificationError: The API reports no key
            (``reason="invalid_trusted_signer"``).
        The errors of ``get_kms_contract`` and ``get_kms_info``.
    """
    key: str | None
    try:
        key = (await client.get_kms_contract(kms, api_version=api_version)).k256_pubkey
        source = f"api: GET /kms/{kms} (contract view) k256_pubkey"
    except NotFoundError:
        node = await client.get_kms_info(kms, api_version=api_version)
        key = node.k256_pubkey
        source = f"api: GET /kms/{kms} (node view) k256_pubkey"
        if not key:  # the node omits it: take its contract's (same chain and address)
            address = (node.kms_contract_address or "").lower()
            async for contract in client.iter_kms_contracts(api_version=api_version):
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
            sources=(source,),
        )
    return key, source


async def _contract_location(
    client: KMSEndpoints, kms: str, api_version: str | None
) -> tuple[str, int]:
    """``(contract address, chain id)`` of a KMS from the API's contract (else node) view."""
    try:
        contract = await client.get_kms_contract(kms, api_version=api_version)
        address: str | None = contract.contract_address if contract.is_onchain else None
        chain: int | None = contract.chain_id
    except NotFoundError:
        node = await client.get_kms_info(kms, api_version=api_version)
        address, chain = node.kms_contract_address, node.chain_id
    if not address or chain is None or parse_hex(address, 20) is None:
        raise SignatureVerificationError(
            f"KMS {kms!r} has no contract on a chain (the API names none), so the chain"
            " cannot vouch for its root key",
            reason="anchor_unavailable",
            sources=(f"chain: GET /kms/{kms} contract_address",),
        )
    return address, chain


async def _chain_key(
    client: KMSEndpoints, peer: PeerClient, kms: str, rpc_url: str, api_version: str | None
) -> tuple[bytes, str]:
    address, chain = await _contract_location(client, kms, api_version)
    source = f"chain: eth_call kmsInfo() at {address} on chain {chain} via {rpc_url}"
    served = await rpc_chain_id(peer, rpc_url, source)
    if served != chain:
        raise SignatureVerificationError(
            f"{rpc_url} serves chain {served}, but KMS {kms!r}'s contract is on chain"
            f" {chain}: refusing to read it there",
            reason="wrong_chain",
            sources=(source,),
        )
    raw = await kms_info_k256_pubkey(peer, rpc_url, address, source)
    return _key_or_raise(raw, source), source


async def _node_urls(client: KMSEndpoints, kms: str, api_version: str | None) -> list[str]:
    nodes = await client.list_kms_contract_nodes(kms, api_version=api_version)
    urls = [check_peer_url(node.url, "node_url") for node in nodes.items]
    if not urls:
        raise SignatureVerificationError(
            f"the API lists no nodes for KMS {kms!r}; pass node_urls",
            reason="anchor_unavailable",
            sources=(f"node: GET /kms/{kms}/nodes",),
        )
    return urls


async def node_meta(peer: PeerClient, node_url: str) -> KMSNodeMeta:
    """``POST {node_url}/prpc/GetMeta?json`` (empty JSON body).

    Raises:
        TransportError, APIResponseError: The node is unreachable or answered garbage.
    """
    return await peer.post_json(f"{node_url}/prpc/GetMeta?json", {}, KMSNodeMeta)


def _check_sources(sources: object) -> tuple[str, ...]:
    if isinstance(sources, str) or not isinstance(sources, Iterable):
        raise InvalidArgumentError(
            f"sources must be a tuple of names from {SOURCES}, e.g. ('api', 'chain')",
            argument="sources",
        )
    names = tuple(dict.fromkeys(sources))
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise InvalidArgumentError(
            f"sources must name one or more of {SOURCES}; got {names!r}", argument="sources"
        )
    return tuple(name for name in SOURCES if name in names)


async def resolve_trusted_signer(
    client: KMSEndpoints,
    kms: str,
    *,
    sources: Iterable[str] = ("api",),
    pinned: SignerLike | None = None,
    rpc_url: str | None = None,
    node_urls: Iterable[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    api_version: str | None = None,
) -> TrustedSigner:
    """The KMS root key, from every named source, all agreeing (see the module docstring).

    Arguments are checked before any request. Raises as documented on
    ``AsyncKMSClient.get_trusted_signer``.
    """
    from .crypto import check_trusted_signer

    names = _check_sources(sources)
    if ("pinned" in names) != (pinned is not None):
        raise InvalidArgumentError(
            "pass pinned=KEY together with 'pinned' in sources (and neither without the other)",
            argument="pinned",
        )
    pinned_parsed = check_trusted_signer(pinned) if pinned is not None else None
    if "chain" in names:
        if rpc_url is None:
            raise InvalidArgumentError(
                "the 'chain' source needs rpc_url (an EVM JSON-RPC URL)", argument="rpc_url"
            )
        rpc_url = check_peer_url(rpc_url, "rpc_url")
        require_eth_abi()
    given_nodes = None
    if node_urls is not None:
        if isinstance(node_urls, str):
            raise InvalidArgumentError("node_urls must be a list of URLs", argument="node_urls")
        given_nodes = [check_peer_url(url, "node_url") for url in node_urls]
    client._transport.check_open()

    reports: list[tuple[str, bytes]] = []
    if "api" in names:
        key, source = await api_root_key(client, kms, api_version)
        reports.append((source, _key_or_raise(key, source)))
    async with PeerClient(client.config, ssl_context) as peer:
        if "chain" in names:
            assert rpc_url is not None
            key_bytes, source = await _chain_key(client, peer, kms, rpc_url, api_version)
            reports.append((source, key_bytes))
        if "node" in names:
            urls = given_nodes or await _node_urls(client, kms, api_version)
            for url in urls:
                source = f"node: POST {url}/prpc/GetMeta?json k256_pubkey"
                meta = await node_meta(peer, url)
                if not meta.k256_pubkey:
                    raise SignatureVerificationError(
                        f"{url} reports no k256_pubkey", reason="anchor_unavailable",
                        sources=(source,),
                    )  # fmt: skip
                reports.append((source, _key_or_raise(meta.k256_pubkey, source)))
    return _agreed(kms, pinned_parsed, reports)


def _agreed(
    kms: str, pinned: tuple[bool, bytes] | None, reports: list[tuple[str, bytes]]
) -> TrustedSigner:
    """The one key every report (and the pinned value) names, or ``anchor_mismatch``."""
    from .crypto import ethereum_address

    keys = {key for _, key in reports}
    pinned_address = None
    if pinned is not None:
        is_address, value = pinned
        if is_address:
            pinned_address = value
        else:
            keys.add(value)
        kind = "Ethereum address" if is_address else "k256_pubkey"
        reports = [(f"pinned: the caller's {kind}", value), *reports]
    agree = len(keys) <= 1
    if agree and pinned_address is not None and keys:
        (only,) = keys
        agree = bytes.fromhex(ethereum_address(only)[2:]) == pinned_address
    if not agree:
        lines = tuple(f"{source}: 0x{key.hex()}" for source, key in reports)
        raise SignatureVerificationError(
            f"the trust anchors of KMS {kms!r} disagree on its root key: " + "; ".join(lines),
            reason="anchor_mismatch",
            sources=lines,
        )
    root = next(iter(keys)) if keys else reports[0][1]
    return TrustedSigner(
        k256_pubkey="0x" + root.hex(), sources=tuple(source for source, _ in reports)
    )


async def check_app_registered(
    client: KMSEndpoints,
    kms: str,
    app_id: str,
    *,
    rpc_url: str,
    ssl_context: ssl.SSLContext | None = None,
    api_version: str | None = None,
) -> None:
    """Require the KMS contract's ``registeredApps(app_id)`` to be true.

    Raises as documented on ``AsyncKMSClient.check_app_registered``.
    """
    from ._params import app_id_hex

    app = bytes.fromhex(app_id_hex(app_id))
    url = check_peer_url(rpc_url, "rpc_url")
    require_eth_abi()
    address, chain = await _contract_location(client, kms, api_version)
    source = f"chain: eth_call registeredApps(0x{app.hex()}) at {address} on chain {chain}"
    async with PeerClient(client.config, ssl_context) as peer:
        served = await rpc_chain_id(peer, url, source)
        if served != chain:
            raise SignatureVerificationError(
                f"{url} serves chain {served}, but KMS {kms!r}'s contract is on chain {chain}",
                reason="wrong_chain",
                sources=(source,),
            )
        if not await registered_app(peer, url, address, app, source):
            raise SignatureVerificationError(
                f"app 0x{app.hex()} is not registered with KMS {kms!r}'s contract {address}"
                f" on chain {chain}: its CVM could not get keys from this KMS",
                reason="app_not_registered",
                sources=(source,),
            )
