"""A chain behind a JSON-RPC endpoint on 127.0.0.1, for testing the chain trust anchor.

:class:`FakeChainRPC` serves a chain as JSON-RPC 2.0 over HTTP (``eth_chainId``,
``eth_call``, ``eth_blockNumber``), the calls :mod:`phala_kms.anchors` makes. The chain
is anything with the :class:`ChainBackend` interface; two come with this module:

* :class:`EthTesterEVM`, a real in-process Ethereum chain (``eth-tester`` with the
  ``py-evm`` backend, imported on first use: ``pip install 'eth-tester[py-evm]' py-evm``)
  that deploys contracts and runs their bytecode. The SDK's own tests of the chain
  anchor use it, with :func:`dstack_kms_init_code` (a minimal contract with DstackKms's
  two public getters, hand-assembled: no Solidity compiler needed)::

      evm = EthTesterEVM()
      address = evm.deploy(dstack_kms_init_code(root_key, [app_id]))
      async with FakeChainRPC(evm) as rpc:         # or: with FakeChainRPC.in_thread(evm) as rpc:
          await client.get_trusted_signer("kms", sources=("chain",), rpc_url=rpc.url)

* :class:`DstackKmsStandIn`, pure Python and instant: it answers DstackKms's two
  getters by selector for the contracts put on it, and runs no bytecode. It exists so
  that ``phala-kms demo`` and your own tests can exercise the chain anchor without
  py-evm (large, published only as pre-releases)::

      chain = DstackKmsStandIn()
      address = chain.put_contract(root_key, [app_id])
      with FakeChainRPC.in_thread(chain) as rpc:
          ...

A revert answers the JSON-RPC error ``{"code": 3, "message": "execution reverted"}``.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web

from ._listen import LoopbackServer
from ._thread import ServerThread

__all__ = [
    "ChainBackend",
    "DstackKmsStandIn",
    "EthTesterEVM",
    "ExecutionReverted",
    "FakeChainRPC",
    "ThreadedFakeChainRPC",
    "dstack_kms_init_code",
]


def _abi_bytes(*items: bytes) -> bytes:
    """The ABI encoding of a tuple of ``bytes`` values (head of offsets, then each value
    as its 32-byte length and its data padded to 32 bytes)."""
    head, tail = b"", b""
    for item in items:
        head += (32 * len(items) + len(tail)).to_bytes(32, "big")
        tail += len(item).to_bytes(32, "big") + item + b"\x00" * (-len(item) % 32)
    return head + tail


def dstack_kms_init_code(
    k256_pubkey: bytes, registered_apps: Iterable[bytes] = (), *, ca_pubkey: bytes = b""
) -> bytes:
    """Creation code of a minimal contract with DstackKms's public getters.

    Its runtime answers ``kmsInfo()`` with ``(k256_pubkey, ca_pubkey, b"", b"")``
    ABI-encoded as ``(bytes, bytes, bytes, bytes)``, ``registeredApps(address)`` with
    ``true`` for each of ``registered_apps`` (kept at the storage slot named by the
    address, not Solidity's mapping slot: the getter's answer is the same), and reverts
    on anything else, like Solidity without a fallback (Dstack-TEE/dstack
    ``dstack/kms/auth-eth/contracts/DstackKms.sol``). Hand-assembled::

        sel = calldataload(0) >> 224
        if sel == KMS_INFO_SELECTOR: codecopy(0, BLOB, n); return(0, n)
        if sel == REGISTERED_APPS_SELECTOR: mstore(0, sload(calldataload(4))); return(0, 32)
        revert(0, 0)

    Args:
        k256_pubkey: The root key to store (SEC1 bytes; stored as given).
        registered_apps: 20-byte app ids whose ``registeredApps`` is true.
        ca_pubkey: The ``caPubkey`` member.

    Returns:
        Bytecode for :meth:`EthTesterEVM.deploy`.
    """
    from .._evm import KMS_INFO_SELECTOR, REGISTERED_APPS_SELECTOR

    blob = _abi_bytes(k256_pubkey, ca_pubkey, b"", b"")
    n = len(blob).to_bytes(2, "big")
    info, reg, data = 45, 32, 61  # offsets of the two JUMPDESTs and of the blob
    runtime = (
        b"\x60\x00\x35\x60\xe0\x1c"  # PUSH1 0 CALLDATALOAD PUSH1 224 SHR
        + b"\x80\x63" + KMS_INFO_SELECTOR + b"\x14\x61" + info.to_bytes(2, "big") + b"\x57"
        + b"\x80\x63" + REGISTERED_APPS_SELECTOR + b"\x14\x61" + reg.to_bytes(2, "big") + b"\x57"
        + b"\x60\x00\x80\xfd"  # revert(0, 0)
        + b"\x5b\x60\x04\x35\x54\x60\x00\x52\x60\x20\x60\x00\xf3"  # REG
        + b"\x5b\x61" + n + b"\x61" + data.to_bytes(2, "big") + b"\x60\x00\x39"  # INFO
        + b"\x61" + n + b"\x60\x00\xf3"
    )  # fmt: skip
    assert len(runtime) == data
    runtime += blob
    # creation: sstore(app, 1) for each app; codecopy(0, RUNTIME, size); return(0, size)
    head = b"".join(b"\x60\x01\x73" + bytes(app) + b"\x55" for app in registered_apps)
    size = len(runtime).to_bytes(2, "big")
    start = (len(head) + 15).to_bytes(2, "big")  # 15: the copy-and-return code below
    tail = b"\x61" + size + b"\x61" + start + b"\x60\x00\x39" + b"\x61" + size + b"\x60\x00\xf3"
    return head + tail + runtime


class EthTesterEVM:
    """An in-process EVM chain: ``eth-tester`` over ``py-evm``. Thread-safe.

    Importing ``py-evm`` (and ``py_ecc``) raises the process-wide recursion limit to
    100,000; the limit is put back afterwards, since at that depth a deeply nested JSON
    body overflows the C stack (a crash) instead of raising ``RecursionError``. Contracts
    that call each other 1,024 deep would need it raised again.

    Raises:
        ImportError: ``eth-tester`` or ``py-evm`` is not installed.
    """

    def __init__(self) -> None:
        limit = sys.getrecursionlimit()
        try:
            from eth_tester import EthereumTester, PyEVMBackend

            self._tester = EthereumTester(PyEVMBackend())
        finally:
            sys.setrecursionlimit(limit)
        self._account: str = self._tester.get_accounts()[0]
        self._lock = threading.Lock()

    @property
    def chain_id(self) -> int:
        """The chain id ``eth_chainId`` reports (eth-tester's default chain)."""
        return int(self._tester.backend.chain.chain_id)

    @property
    def account(self) -> str:
        """The funded account that deploys and calls (checksummed address)."""
        return self._account

    def next_contract_address(self) -> str:
        """The address :meth:`deploy` will give the next contract (``0x`` + 40 hex, lower)."""
        import rlp

        from ..crypto import keccak256

        with self._lock:
            nonce = self._tester.get_nonce(self._account)
        sender = bytes.fromhex(self._account[2:])
        return "0x" + keccak256(rlp.encode([sender, nonce]))[12:].hex()

    def deploy(self, init_code: bytes) -> str:
        """Deploy a contract; return its address (``0x`` + 40 hex, lower case).

        Args:
            init_code: The creation bytecode (it returns the runtime code).

        Raises:
            RuntimeError: The deployment failed or left no code.
        """
        with self._lock:
            tx = self._tester.send_transaction(
                {
                    "from": self._account,
                    "data": "0x" + init_code.hex(),
                    "gas": 3_000_000,
                    "value": 0,
                    "gas_price": 10**10,
                }
            )
            receipt = self._tester.get_transaction_receipt(tx)
            address = receipt.get("contract_address")
            code = self._tester.get_code(address) if address else "0x"
        if not address or code in ("0x", b""):
            raise RuntimeError("the contract deployment failed or left no code")
        return str(address).lower()

    def call(self, to: str, data: str) -> str:
        """Run a read-only call at the latest block; return its output as ``0x`` hex.

        Raises:
            ExecutionReverted: The call reverted.
        """
        from eth_tester.exceptions import TransactionFailed

        with self._lock:
            try:
                out = self._tester.call({"from": self._account, "to": to, "data": data}, "latest")
            except TransactionFailed as err:
                raise ExecutionReverted(str(err)) from err
        return out if isinstance(out, str) else "0x" + bytes(out).hex()

    def block_number(self) -> int:
        """The latest block's number."""
        with self._lock:
            return int(self._tester.get_block_by_number("latest")["number"])


class ExecutionReverted(Exception):
    """A call reverted on the chain (:class:`EthTesterEVM` or :class:`DstackKmsStandIn`)."""


class ChainBackend(Protocol):
    """What :class:`FakeChainRPC` serves: :class:`EthTesterEVM` and
    :class:`DstackKmsStandIn` both have it."""

    @property
    def chain_id(self) -> int:
        """The chain id ``eth_chainId`` reports."""
        ...

    def call(self, to: str, data: str) -> str:
        """Run a read-only call at the latest block; return its output as ``0x`` hex.

        Args:
            to: The called address, ``0x`` + 40 hex.
            data: The calldata, ``0x`` + hex.

        Raises:
            ExecutionReverted: The call reverted.
            ValueError: ``to`` or ``data`` is malformed (an ``invalid params`` error).
        """
        ...

    def block_number(self) -> int:
        """The latest block's number."""
        ...


_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_CALLDATA_RE = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_WORD = 32


def _address(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ADDRESS_RE.fullmatch(value):
        raise ValueError(f"{what} must be 0x and 40 hex characters, not {value!r:.60}")
    return value.lower()


def _app_address(app: bytes) -> bytes:
    app = bytes(app)
    if len(app) != 20:
        raise ValueError(f"a registered app id is 20 bytes, not {len(app)}")
    return app


class DstackKmsStandIn:
    """A chain of DstackKms contracts in pure Python: no EVM, no bytecode. Thread-safe.

    Each contract put on it with :meth:`put_contract` answers DstackKms's two public
    getters (Dstack-TEE/dstack ``dstack/kms/auth-eth/contracts/DstackKms.sol``) by
    the calldata's 4-byte selector:

    * ``kmsInfo()`` (:data:`phala_kms._evm.KMS_INFO_SELECTOR`): ``(k256Pubkey,
      caPubkey, quote, eventlog)`` ABI-encoded as ``(bytes, bytes, bytes, bytes)``,
      with ``quote`` and ``eventlog`` empty;
    * ``registeredApps(address)``: an ABI ``bool`` (one 32-byte word), true for the
      contract's registered apps. Calldata too short for the argument, or an argument
      whose upper 12 bytes are not zero, reverts (as Solidity's ABI decoder does);
    * any other selector reverts (Solidity without a fallback).

    A call to an address holding no contract returns empty output (``0x``), as a real
    chain does for an account without code.

    The SDK's own tests of the chain anchor run against a real EVM
    (:class:`EthTesterEVM` executing :func:`dstack_kms_init_code`), and this stand-in's
    answers are tested to decode to the same values. It runs no bytecode, so it proves
    nothing about a contract: it exists so that ``phala-kms demo`` and your own tests of
    code that *uses* the chain anchor run without py-evm.

    Args:
        chain_id: The chain id ``eth_chainId`` reports (default 31337, the chain id of
            local development chains).
    """

    def __init__(self, chain_id: int = 31337) -> None:
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id < 1:
            raise ValueError(f"chain_id must be a positive integer, not {chain_id!r}")
        self._chain_id = chain_id
        self._contracts: dict[str, tuple[bytes, frozenset[bytes]]] = {}
        self._puts = 0
        self._lock = threading.Lock()

    @property
    def chain_id(self) -> int:
        """The chain id ``eth_chainId`` reports."""
        return self._chain_id

    def next_contract_address(self) -> str:
        """The address :meth:`put_contract` gives the next contract placed without an
        address (``0x`` + 40 hex, lower case; derived from a counter, like a deployer's
        nonce)."""
        with self._lock:
            return self._next_address_locked()

    def put_contract(
        self,
        k256_pubkey: bytes,
        registered_apps: Iterable[bytes] = (),
        *,
        ca_pubkey: bytes = b"",
        address: str | None = None,
    ) -> str:
        """Put a DstackKms at ``address`` (replacing any there); return its address.

        Args:
            k256_pubkey: ``kmsInfo().k256Pubkey``: the KMS root key (SEC1 bytes,
                stored as given).
            registered_apps: 20-byte app ids whose ``registeredApps`` is true.
            ca_pubkey: ``kmsInfo().caPubkey``.
            address: Where (``0x`` + 40 hex); default :meth:`next_contract_address`.

        Returns:
            The address, ``0x`` + 40 hex, lower case.

        Raises:
            ValueError: ``address`` is not an address, or an app id is not 20 bytes.
        """
        apps = frozenset(_app_address(app) for app in registered_apps)
        blob = _abi_bytes(bytes(k256_pubkey), bytes(ca_pubkey), b"", b"")
        where = _address(address, "address") if address is not None else None
        with self._lock:
            if where is None:
                where = self._next_address_locked()
            self._contracts[where] = (blob, apps)
            self._puts += 1
        return where

    def _next_address_locked(self) -> str:
        from ..crypto import keccak256

        return "0x" + keccak256(b"phala-kms DstackKmsStandIn %d" % self._puts)[12:].hex()

    def call(self, to: str, data: str) -> str:
        """Answer a read-only call as the contract at ``to`` would; ``0x`` hex.

        Raises:
            ExecutionReverted: An unknown selector, or ``registeredApps`` with an
                argument that is missing or not an address.
            ValueError: ``to`` or ``data`` is malformed.
        """
        from .._evm import KMS_INFO_SELECTOR, REGISTERED_APPS_SELECTOR

        target = _address(to, "to")
        if not isinstance(data, str) or not _CALLDATA_RE.fullmatch(data):
            raise ValueError(f"data must be 0x and an even number of hex digits, not {data!r:.60}")
        calldata = bytes.fromhex(data[2:])
        with self._lock:
            contract = self._contracts.get(target)
        if contract is None:
            return "0x"  # no code at that address: the call returns nothing
        blob, apps = contract
        selector = calldata[:4]
        if selector == KMS_INFO_SELECTOR:
            return "0x" + blob.hex()
        if selector == REGISTERED_APPS_SELECTOR:
            word = calldata[4 : 4 + _WORD]
            if len(word) < _WORD or any(word[:12]):
                raise ExecutionReverted("registeredApps: the argument is not an ABI address")
            return "0x" + (word[12:] in apps).to_bytes(_WORD, "big").hex()
        raise ExecutionReverted(f"no function with selector 0x{selector.hex()}")

    def block_number(self) -> int:
        """The latest block's number: one block per contract put."""
        with self._lock:
            return self._puts


def _reply(
    request_id: Any, result: Any = None, error: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is None:
        body["result"] = result
    else:
        body["error"] = error
    return web.json_response(body)


class FakeChainRPC(LoopbackServer):
    """JSON-RPC 2.0 over HTTP for a chain, on a loopback port.

    Attributes:
        evm: The chain it serves: an :class:`EthTesterEVM`, a
            :class:`DstackKmsStandIn`, or anything else with the
            :class:`ChainBackend` interface.
        methods: Every method called, in order.
    """

    def __init__(self, evm: ChainBackend, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.evm = evm
        self.methods: list[str] = []
        super().__init__(host, port)

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``http://127.0.0.1:PORT/``.

        Raises:
            RuntimeError: Not started.
        """
        if self._port is None:
            raise RuntimeError("the fake chain RPC has not been started")
        return f"http://{self._host}:{self._port}/"

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            call = json.loads(await request.read())
        except ValueError:
            return _reply(None, error={"code": -32700, "message": "parse error"})
        if not isinstance(call, dict):
            return _reply(None, error={"code": -32600, "message": "invalid request"})
        method, params, rid = call.get("method"), call.get("params") or [], call.get("id")
        self.methods.append(str(method))
        if method == "eth_chainId":
            return _reply(rid, hex(self.evm.chain_id))
        if method == "eth_blockNumber":
            return _reply(rid, hex(self.evm.block_number()))
        if method == "eth_call" and params and isinstance(params[0], dict):
            tx = params[0]
            try:
                return _reply(rid, self.evm.call(str(tx.get("to")), str(tx.get("data", "0x"))))
            except ExecutionReverted:
                return _reply(rid, error={"code": 3, "message": "execution reverted"})
            except ValueError as err:
                return _reply(rid, error={"code": -32602, "message": f"invalid params: {err}"})
        return _reply(rid, error={"code": -32601, "message": f"method not found: {method}"})

    def _make_runner(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/", self._handle)
        return web.AppRunner(app, access_log=None, handle_signals=False)

    _what = "fake chain RPC"

    @classmethod
    def in_thread(cls, evm: ChainBackend, **kwargs: Any) -> ThreadedFakeChainRPC:
        """Run it on its own loop in a background thread: ``with ... as rpc:``."""
        return ThreadedFakeChainRPC(cls(evm, **kwargs), thread_name="phala-kms-fake-chain")


class ThreadedFakeChainRPC(ServerThread[FakeChainRPC]):
    """A :class:`FakeChainRPC` on its own event loop in a background thread."""
