"""Reading the DstackKms contract over EVM JSON-RPC: ``eth_chainId`` and two ``eth_call`` s.

The contract (Dstack-TEE/dstack ``dstack/kms/auth-eth/contracts/DstackKms.sol``) keeps
``struct KmsInfo { bytes k256Pubkey; bytes caPubkey; bytes quote; bytes eventlog; }`` in
the public state variable ``kmsInfo`` (getter ``kmsInfo()`` returns the four members as
``(bytes, bytes, bytes, bytes)``) and ``mapping(address => bool) public registeredApps``
(getter ``registeredApps(address) -> bool``). A call is JSON-RPC 2.0 ``eth_call`` with
``{"to": address, "data": selector ++ ABI-encoded args}`` at block ``"latest"``.

ABI data is decoded with ``eth-abi`` (the ``[chain]`` extra), imported on first use.
Every failure is typed and fails closed (see :mod:`phala_kms.anchors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import attrs

from ._hex import parse_hex
from ._peer import PeerClient
from ._responses import clip
from .errors import ConfigurationError, SignatureVerificationError

__all__ = [
    "KMS_INFO_SELECTOR",
    "REGISTERED_APPS_SELECTOR",
    "chain_id",
    "kms_info_k256_pubkey",
    "registered_app",
    "require_eth_abi",
]


def _selector(signature: bytes) -> bytes:
    from .crypto import keccak256

    return keccak256(signature)[:4]


KMS_INFO_SELECTOR: Final = _selector(b"kmsInfo()")
"""``keccak256("kmsInfo()")[:4]``: the getter of DstackKms's public ``kmsInfo``."""

REGISTERED_APPS_SELECTOR: Final = _selector(b"registeredApps(address)")
"""``keccak256("registeredApps(address)")[:4]``: the getter of ``registeredApps``."""

_QUANTITY: Final = re.compile(r"0x[0-9a-fA-F]{1,64}")


@attrs.frozen(kw_only=True)
class _Reply:
    """A JSON-RPC 2.0 response: ``result`` (hex text for the methods used here) or ``error``."""

    result: str | None = None
    error: Any = None
    extra: Any = attrs.field(factory=dict)


def require_eth_abi() -> Any:
    """Import ``eth_abi`` (the ``[chain]`` extra).

    Returns:
        The ``eth_abi`` module.

    Raises:
        ConfigurationError: ``eth-abi`` is not installed (``setting="chain"``): install
            ``phala-kms[chain]``.
    """
    try:
        import eth_abi
    except ImportError as err:
        raise ConfigurationError(
            "the chain trust anchor decodes the contract's ABI with eth-abi, which is not"
            " installed: pip install 'phala-kms[chain]'",
            setting="chain",
        ) from err
    return eth_abi


def _unavailable(message: str, source: str) -> SignatureVerificationError:
    return SignatureVerificationError(message, reason="anchor_unavailable", sources=(source,))


def _malformed(message: str, source: str) -> SignatureVerificationError:
    return SignatureVerificationError(message, reason="malformed_anchor", sources=(source,))


async def _call(
    peer: PeerClient, rpc_url: str, method: str, params: Sequence[Any], source: str
) -> str:
    reply = await peer.post_json(
        rpc_url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, _Reply
    )
    if reply.error is not None or reply.result is None:
        error = reply.error if isinstance(reply.error, dict) else {"message": reply.error}
        raise _unavailable(
            f"{method} failed at {rpc_url}: {clip(str(error.get('message')), 200)}", source
        )
    return reply.result


async def chain_id(peer: PeerClient, rpc_url: str, source: str) -> int:
    """The chain an RPC serves (``eth_chainId``).

    Raises:
        SignatureVerificationError: ``reason="anchor_unavailable"`` (a JSON-RPC error)
            or ``"malformed_anchor"`` (not a hex quantity).
        TransportError, APIResponseError: The RPC is unreachable or answered garbage.
    """
    result = await _call(peer, rpc_url, "eth_chainId", [], source)
    if not _QUANTITY.fullmatch(result):
        raise _malformed(f"eth_chainId at {rpc_url} answered {clip(result, 80)!r}", source)
    return int(result, 16)


async def _eth_call(
    peer: PeerClient, rpc_url: str, address: str, data: bytes, source: str
) -> bytes:
    call = {"to": address, "data": "0x" + data.hex()}
    result = await _call(peer, rpc_url, "eth_call", [call, "latest"], source)
    raw = parse_hex(result, None)
    if raw is None or not result.startswith("0x"):
        raise _malformed(f"eth_call at {rpc_url} answered {clip(result, 80)!r}", source)
    return raw


async def kms_info_k256_pubkey(peer: PeerClient, rpc_url: str, address: str, source: str) -> bytes:
    """``kmsInfo().k256Pubkey`` of the DstackKms contract at ``address``.

    Returns:
        The SEC1-encoded root key bytes, as stored (not yet checked as a curve point).

    Raises:
        SignatureVerificationError: ``reason="anchor_unavailable"`` (an empty answer:
            no DstackKms at that address, or ``kmsInfo`` not set; or a revert) or
            ``"malformed_anchor"`` (data that is not ``(bytes, bytes, bytes, bytes)``).
        ConfigurationError: ``eth-abi`` is missing.
        TransportError, APIResponseError: The RPC is unreachable or answered garbage.
    """
    eth_abi = require_eth_abi()
    data = await _eth_call(peer, rpc_url, address, KMS_INFO_SELECTOR, source)
    if not data:
        raise _unavailable(
            f"kmsInfo() at {address} returned nothing: no DstackKms contract there", source
        )
    try:
        k256, _ca, _quote, _eventlog = eth_abi.decode(["bytes", "bytes", "bytes", "bytes"], data)
    except Exception as err:  # eth_abi raises DecodingError and friends
        raise _malformed(
            f"kmsInfo() at {address} returned {len(data)} bytes that are not ABI"
            f" (bytes, bytes, bytes, bytes): {err}",
            source,
        ) from err
    if not k256:
        raise _unavailable(f"kmsInfo() at {address} has an empty k256Pubkey", source)
    return bytes(k256)


async def registered_app(
    peer: PeerClient, rpc_url: str, address: str, app_id: bytes, source: str
) -> bool:
    """``registeredApps(app_id)`` of the DstackKms contract at ``address``.

    Args:
        app_id: The app id's 20 bytes (an app id is an address).

    Raises:
        SignatureVerificationError: ``reason="anchor_unavailable"`` (a revert or an
            empty answer) or ``"malformed_anchor"`` (not an ABI ``bool``).
        ConfigurationError: ``eth-abi`` is missing.
        TransportError, APIResponseError: The RPC is unreachable or answered garbage.
    """
    eth_abi = require_eth_abi()
    args: bytes = eth_abi.encode(["address"], [app_id])
    data = await _eth_call(peer, rpc_url, address, REGISTERED_APPS_SELECTOR + args, source)
    if not data:
        raise _unavailable(f"registeredApps() at {address} returned nothing", source)
    try:
        (registered,) = eth_abi.decode(["bool"], data)
    except Exception as err:
        raise _malformed(
            f"registeredApps() at {address} did not return a bool: {err}", source
        ) from err
    return bool(registered)
