"""The fake's CVMs: ``GET /api/v1/cvms/{cvm_id}``, enough of it to encrypt for a CVM.

The body follows the official SDK's CVM detail (Phala-Network/phala-cloud
``js/src/types/cvm_info_v20251028.ts`` ``CvmDetailV20251028Schema``: ``app_id``,
``kms_info`` as a ``KmsInfo`` with ``id``, ``slug``, ``url``, ``version``, ``chain_id``,
``kms_contract_address``, ``gateway_app_id``, ``k256_pubkey``; ``encrypted_env_pubkey``),
plus ``kms_contract_id`` (``python/src/phala_cloud/models``, which deprecates ``kms_id``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ._catalogue import JSON_CONTENT_TYPE, Catalogue, app_id_bytes, derive_app_key, dumps

__all__ = ["CVMStore"]


class CVMStore:
    """The CVMs a fake serves; safe to change from any thread."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._cvms: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(
        self,
        kms: str = "phala",
        *,
        app_id: str | None = None,
        kms_info: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Add a CVM whose env is encrypted for KMS ``kms``; return its id.

        Args:
            kms: A node id or slug (that node is its ``kms_info``), or a contract id,
                slug or KMS type (its first node is).
            app_id: 40 hex characters; default a fresh one per CVM.
            kms_info: Fields to set in (or, with ``None`` values, add as nulls to) the
                ``kms_info`` object, e.g. ``{"slug": None}``.
            **fields: More top-level fields, as sent.

        Raises:
            KeyError: No such KMS, or it has no node.
        """
        node = self._catalogue.node(kms)
        contract = node.contract if node is not None else self._catalogue.resolve(kms)
        if contract is None:
            raise KeyError(f"no KMS with id, slug or type {kms!r}")
        if node is None:
            if not contract.nodes:
                raise KeyError(f"KMS {kms!r} has no node")
            node = contract.nodes[0]
        with self._lock:
            number = len(self._cvms) + 1
            cvm_id = f"cvm_{hashlib.sha256(f'cvm:{number}'.encode()).hexdigest()[:12]}"
            app = app_id or hashlib.sha256(f"cvm-app:{number}".encode()).hexdigest()[:40]
            public = derive_app_key(contract.root_key, app_id_bytes(app)).public_key
            info = {
                key: node.info.get(key)
                for key in ("id", "slug", "url", "version", "chain_id", "kms_contract_address")
            }
            info.update(
                gateway_app_id=node.info.get("gateway_app_id"),
                k256_pubkey=contract.k256_pubkey,
                encrypted_env_pubkey=public.hex(),
            )
            info.update(kms_info or {})
            self._cvms[cvm_id] = {
                "id": cvm_id,
                "name": f"fake-cvm-{number}",
                "status": "running",
                "app_id": app,
                "kms_id": node.id,
                "kms_contract_id": contract.id,
                "kms_info": info,
                **fields,
            }
        return cvm_id

    async def route(self, request: web.Request, contract_shape: bool) -> web.Response:
        """``GET /cvms/{cvm_id}``: the CVM, or a 404 ``{"detail": "CVM not found"}``."""
        with self._lock:
            cvm = self._cvms.get(request.match_info["cvm_id"])
            body = None if cvm is None else dumps(cvm)
        if body is None:
            return web.Response(
                body=dumps({"detail": "CVM not found"}).encode(),
                status=404,
                content_type=JSON_CONTENT_TYPE,
            )
        return web.Response(body=body.encode(), content_type=JSON_CONTENT_TYPE)
