"""The fake's KMS nodes: the dstack KMS's pRPC methods, served on the fake's own port.

A real KMS node answers ``POST {node_url}/prpc/{Method}?json`` with a JSON body, bytes
fields as hex (Dstack-TEE/dstack ``dstack/kms/rpc/proto/kms_rpc.proto``, served with
``prpc``'s serde extension; ``dstack/vmm/src/vmm-cli.py`` reads them with
``bytes.fromhex``). Each node of the catalogue is served at
``{server.url}/node/{ref}``, where ``ref`` is a node id or slug, or a contract id, slug or
KMS type (then it answers for that contract); ``GET /api/v1/kms/{slug}/nodes`` lists
every node with that URL. Nodes need no API key and share the contract's root key.

``GetAppEnvEncryptPubKey`` always answers the timestamped form too (as the dstack KMS
does: ``kms/src/main_service.rs``), timestamped with the fake's ``clock``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .._hex import parse_hex
from ._catalogue import JSON_CONTENT_TYPE, Catalogue, Contract, derive_app_key, dumps
from ._catalogue import sign_timestamped as _sign_timestamped

__all__ = ["NODE_PREFIX", "NODE_ROUTE_NAMES", "add_node_routes", "node_path"]

NODE_PREFIX = "/node"
"""Where the fake's KMS nodes live on its port: ``{server.url}/node/{ref}``."""

NODE_ROUTE_NAMES = ("node_pubkey", "node_meta")
"""Route names (for counters) of ``GetAppEnvEncryptPubKey`` and ``GetMeta``."""

_FAKE_CA = (
    "-----BEGIN CERTIFICATE-----\nZmFrZSBLTVMgQ0EgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
)


def node_path(ref: str) -> str:
    """The path of the fake node ``ref`` (a node id or slug, or a contract ref)."""
    return f"{NODE_PREFIX}/{ref}"


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        body=dumps({"error": message}).encode(), status=status, content_type=JSON_CONTENT_TYPE
    )


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=dumps(body).encode(), content_type=JSON_CONTENT_TYPE)


def _meta(contract: Contract) -> dict[str, Any]:
    onchain = contract.chain_id != 0
    return {
        "ca_cert": _FAKE_CA,
        "allow_any_upgrade": False,
        "k256_pubkey": contract.k256_pubkey[2:],
        "bootstrap_info": None,
        "is_dev": False,
        "gateway_app_id": None,
        "kms_contract_address": contract.contract_address if onchain else None,
        "chain_id": contract.chain_id if onchain else None,
        "app_auth_implementation": None,
    }


def add_node_routes(app: web.Application, catalogue: Catalogue, clock: Callable[[], float]) -> None:
    """Serve the catalogue's nodes on ``app`` (``POST`` pRPC; ``GET`` too for ``GetMeta``).

    Args:
        app: The fake's application (its middleware logs and faults these routes too).
        catalogue: Where ``ref`` is looked up (:meth:`Catalogue.resolve`).
        clock: Returns the Unix time in seconds for ``timestamp``.
    """

    def contract_of(request: web.Request) -> Contract | None:
        return catalogue.resolve(request.match_info["ref"])

    async def pubkey(request: web.Request) -> web.Response:
        contract = contract_of(request)
        if contract is None:
            return _error(404, "no such KMS node")
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return _error(400, "invalid JSON body")
        raw = body.get("app_id") if isinstance(body, dict) else None
        app_id = parse_hex(raw, None) if isinstance(raw, str) else None
        if app_id is None:
            return _error(400, "app_id must be hex")
        if len(app_id) != 20:
            return _error(400, "app_id must be 20 bytes")
        key = derive_app_key(contract.root_key, app_id)
        timestamp = int(clock())
        signature_v1 = _sign_timestamped(contract.root_key, app_id, key.public_key, timestamp)
        return _ok(
            {
                "public_key": key.public_key.hex(),
                "signature": key.signature.hex(),
                "timestamp": timestamp,
                "signature_v1": signature_v1.hex(),
            }
        )

    async def meta(request: web.Request) -> web.Response:
        contract = contract_of(request)
        if contract is None:
            return _error(404, "no such KMS node")
        return _ok(_meta(contract))

    base = NODE_PREFIX + "/{ref:[^/]+}/prpc/"
    app.router.add_post(base + "GetAppEnvEncryptPubKey", pubkey, name="node_pubkey")
    resource = app.router.add_resource(base + "GetMeta", name="node_meta")
    resource.add_route("POST", meta)
    resource.add_route("GET", meta)
