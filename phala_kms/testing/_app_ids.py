"""The app ids the fake predicts for the next deployments (``GET /kms/phala/next_app_id``).

The real API derives them from the deployer's nonce: the prediction stays the same
until an app is deployed. The fake has no deployments of its own, so a test says
"an app was deployed" with :meth:`AppIdSequence.deploy` (``FakeKMSServer.deploy_app``).
"""

from __future__ import annotations

import threading

from ._catalogue import keccak256

__all__ = ["AppIdSequence"]


class AppIdSequence:
    """Deterministic app ids by nonce, and the nonce the next deployment gets.

    Safe to use from any thread.
    """

    def __init__(self, seed: str, first_nonce: int) -> None:
        """Start at ``first_nonce``; ``seed`` makes every app id deterministic."""
        self._prefix = f"{seed}:app-id:".encode()
        self._first = first_nonce
        self._next = first_nonce
        self._lock = threading.Lock()

    def app_id(self, nonce: int) -> str:
        """The app id (40 hex, no ``0x``) of the deployment with ``nonce``."""
        return keccak256(self._prefix + nonce.to_bytes(8, "big"))[12:].hex()

    @property
    def next_nonce(self) -> int:
        """The nonce of the next deployment."""
        return self._next

    def predict(self, counts: int) -> list[tuple[int, str]]:
        """The ``(nonce, app_id)`` of the next ``counts`` deployments; changes nothing."""
        first = self._next
        return [(nonce, self.app_id(nonce)) for nonce in range(first, first + counts)]

    def deploy(self) -> str:
        """Use up the next nonce and return the app id it had."""
        with self._lock:
            nonce = self._next
            self._next += 1
        return self.app_id(nonce)

    def reset(self) -> None:
        """Rewind to the first nonce."""
        with self._lock:
            self._next = self._first
