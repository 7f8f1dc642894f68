"""Independent trust anchors for the KMS root key, against a real EVM.

``get_trusted_signer(kms, sources=...)`` reads the root key from every named source
(pinned, the API, the DstackKms contract over JSON-RPC, the KMS nodes) and requires them
all to agree. The chain source runs against a real EVM (eth-tester with py-evm) behind a
JSON-RPC endpoint on 127.0.0.1 (:class:`phala_kms.testing.FakeChainRPC`), executing a
contract written here.

The contract
------------
There is no Solidity compiler here, so the contract is assembled by hand (see
:func:`kms_contract`). It has DstackKms's two public getters
(Dstack-TEE/dstack ``dstack/kms/auth-eth/contracts/DstackKms.sol``)::

    // runtime
    sel = calldataload(0) >> 224
    if sel == keccak256("kmsInfo()")[:4]:              jump INFO
    if sel == keccak256("registeredApps(address)")[:4]: jump REG
    revert(0, 0)                                      // like Solidity: no fallback
    INFO: codecopy(0, BLOB, len(BLOB)); return(0, len(BLOB))
    REG:  mstore(0, sload(calldataload(4))); return(0, 32)
    BLOB: abi.encode(k256Pubkey, caPubkey, quote, eventlog)  // (bytes,bytes,bytes,bytes)

    // creation: for each registered app: sstore(app, 1); then return the runtime
    sstore(app_i, 1) ...; codecopy(0, RUNTIME, len(RUNTIME)); return(0, len(RUNTIME))

``registeredApps`` keeps its flags at the slot named by the address itself rather than
Solidity's ``keccak256(key . slot)``: the getter's behaviour (``bool`` for an address) is
what the SDK sees, and that is the same. Variants drop the ``kmsInfo`` branch (a
contract without it) or return a blob that is not valid ABI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import eth_abi
import pytest

from phala_kms import (
    APIStatusError,
    ConfigurationError,
    ConnectRefusedError,
    InvalidArgumentError,
    ResponseValidationError,
    SignatureVerificationError,
    TrustedSigner,
)
from phala_kms._evm import KMS_INFO_SELECTOR, REGISTERED_APPS_SELECTOR
from phala_kms.crypto import ethereum_address, keccak256
from phala_kms.testing import (
    EthTesterEVM,
    FakeChainRPC,
    FakeKMSServer,
    NonJSONFault,
    decrypt_env_vars,
)

REGISTERED = "a1" * 20
UNREGISTERED = "b2" * 20
KMS = "kms_local"  # the fake's node for the contract deployed on the EVM

# --------------------------------------------------------------------------- the assembler

STOP, EQ, SHR, CALLDATALOAD, CODECOPY = b"\x00", b"\x14", b"\x1c", b"\x35", b"\x39"
MSTORE, SLOAD, SSTORE, JUMPI, JUMPDEST = b"\x52", b"\x54", b"\x55", b"\x57", b"\x5b"
DUP1, RETURN, REVERT = b"\x80", b"\xf3", b"\xfd"


def push(value: bytes | int, size: int | None = None) -> bytes:
    """``PUSH<n> value`` (n = 1..32 bytes)."""
    raw = value if isinstance(value, bytes) else value.to_bytes(size or 1, "big")
    assert 1 <= len(raw) <= 32
    return bytes([0x5F + len(raw)]) + raw


def assemble(*parts: bytes | tuple[str, str]) -> bytes:
    """Join code; ``("label", name)`` marks a JUMPDEST, ``("to", name)`` pushes its offset
    (PUSH2), ``("blob", "")`` marks where trailing data starts (PUSH2 of its offset)."""

    def size(part: bytes | tuple[str, str]) -> int:
        if isinstance(part, bytes):
            return len(part)
        return {"label": 1, "to": 3, "blob": 3, "end": 0}[part[0]]

    labels: dict[str, int] = {}
    offset = 0
    for part in parts:
        if isinstance(part, tuple) and part[0] in ("label", "end"):
            labels[part[1]] = offset
        offset += size(part)
    code = b""
    for part in parts:
        if isinstance(part, bytes):
            code += part
        elif part[0] == "label":
            code += JUMPDEST
        elif part[0] in ("to", "blob"):
            code += push(labels[part[1]], 2)
    return code


def kms_contract(
    k256_pubkey: bytes | None, registered: list[str], *, blob: bytes | None = None
) -> bytes:
    """Creation code of a minimal DstackKms: ``kmsInfo()`` answers ``k256_pubkey`` (or
    ``blob`` as is), ``registeredApps(a)`` is true for ``registered``; ``k256_pubkey=None``
    and no ``blob`` leaves ``kmsInfo()`` out (it reverts)."""
    if blob is None and k256_pubkey is not None:
        blob = eth_abi.encode(
            ["bytes", "bytes", "bytes", "bytes"], [k256_pubkey, b"\x02" * 33, b"quote", b"log"]
        )
    dispatch: list[bytes | tuple[str, str]] = [
        push(0), CALLDATALOAD, push(0xE0), SHR,
    ]  # fmt: skip
    if blob is not None:
        dispatch += [DUP1, push(KMS_INFO_SELECTOR), EQ, ("to", "info"), JUMPI]
    dispatch += [
        DUP1, push(REGISTERED_APPS_SELECTOR), EQ, ("to", "reg"), JUMPI,
        push(0), DUP1, REVERT,
        ("label", "reg"), push(4), CALLDATALOAD, SLOAD, push(0), MSTORE,
        push(32), push(0), RETURN,
    ]  # fmt: skip
    if blob is not None:
        n = len(blob).to_bytes(2, "big")
        dispatch += [
            ("label", "info"), push(n), ("blob", "data"), push(0), CODECOPY,
            push(n), push(0), RETURN,
            ("end", "data"),
        ]  # fmt: skip
    runtime = assemble(*dispatch) + (blob or b"")
    init: list[bytes] = []
    for app in registered:
        init += [push(1), push(bytes.fromhex(app)), SSTORE]
    head = b"".join(init)
    n = len(runtime).to_bytes(2, "big")
    # codecopy(0, len(head) + 15, n); return(0, n): 15 bytes of copying code follow head
    tail = push(n) + push(len(head) + 15, 2) + push(0) + CODECOPY + push(n) + push(0) + RETURN
    assert len(tail) == 15
    return head + tail + runtime


def test_the_selectors_are_the_getters() -> None:
    # checked against eth-utils' function_signature_to_4byte_selector
    assert KMS_INFO_SELECTOR == keccak256(b"kmsInfo()")[:4] == bytes.fromhex("09177063")
    assert keccak256(b"registeredApps(address)")[:4] == REGISTERED_APPS_SELECTOR
    assert bytes.fromhex("a6c4cce9") == REGISTERED_APPS_SELECTOR


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def evm() -> EthTesterEVM:
    return EthTesterEVM()


@pytest.fixture
def chain(evm: EthTesterEVM) -> Iterator[FakeChainRPC]:
    with FakeChainRPC.in_thread(evm) as rpc:
        yield rpc


@pytest.fixture
def deployed(evm: EthTesterEVM) -> Iterator[tuple[FakeKMSServer, str]]:
    """A fake API whose KMS ``kms_local`` has a contract on the EVM, storing its root key."""
    address = evm.next_contract_address()
    node = {
        "id": KMS,
        "slug": "kms-local",
        "url": "https://kms.local.invalid",
        "version": "v0.5.7",
        "chain_id": evm.chain_id,
        "kms_contract_address": address,
        "gateway_app_id": None,
    }
    with FakeKMSServer.in_thread(phala_node_count=2, extra_nodes=[node]) as server:
        root = bytes.fromhex(server.k256_pubkey_for(KMS)[2:])
        assert evm.deploy(kms_contract(root, [REGISTERED])) == address
        yield server, address


def on(make_client: Any, server: FakeKMSServer) -> Any:
    """A client driver (either kind, per the test's parameter) for another fake API."""
    return make_client(api_key=server.api_key, base_url=server.base_url)


def contract_id(server: FakeKMSServer) -> str:
    (contract,) = [c for c in server.contracts if c["chain_id"] not in (0, 1, 8453)]
    return str(contract["id"])


# --------------------------------------------------------------------------- agreement


def test_every_source_agrees_on_the_root_key(
    make_client: Any, deployed: tuple[FakeKMSServer, str], chain: FakeChainRPC
) -> None:
    server, address = deployed
    kms = on(make_client, server)
    root = server.k256_pubkey_for(KMS)
    ref = contract_id(server)
    rpc = chain.url.rstrip("/")  # URLs are normalised without their trailing "/"
    signer = kms.get_trusted_signer(
        ref, sources=("node", "chain", "api", "pinned"), pinned=root, rpc_url=chain.url
    )
    assert isinstance(signer, TrustedSigner)
    assert signer.k256_pubkey == root
    assert signer.sources == (
        "pinned: the caller's k256_pubkey",
        f"api: GET /kms/{ref} (contract view) k256_pubkey",
        f"chain: eth_call kmsInfo() at {address} on chain {chain.evm.chain_id} via {rpc}",
        f"node: POST {server.url}/node/{KMS}/prpc/GetMeta?json k256_pubkey",
    )
    assert chain.methods == ["eth_chainId", "eth_call"]
    key = kms.get_verified_app_env_encrypt_pubkey(ref, REGISTERED, trusted_signer=signer)
    assert key.signer == root
    by_address = kms.get_trusted_signer(
        ref, sources=("pinned", "chain"), pinned=ethereum_address(root), rpc_url=chain.url
    )
    assert by_address.k256_pubkey == root


def test_a_node_id_finds_its_contract_through_the_node_view(
    make_client: Any, deployed: tuple[FakeKMSServer, str], chain: FakeChainRPC
) -> None:
    server, _ = deployed
    signer = on(make_client, server).get_trusted_signer(
        KMS, sources=("api", "chain"), rpc_url=chain.url
    )
    assert signer.k256_pubkey == server.k256_pubkey_for(KMS)


def test_a_chain_that_disagrees_is_an_anchor_mismatch(
    make_client: Any, evm: EthTesterEVM, chain: FakeChainRPC
) -> None:
    address = evm.next_contract_address()
    node = {"id": KMS, "url": "https://x.invalid", "version": "1", "chain_id": evm.chain_id,
            "kms_contract_address": address}  # fmt: skip
    with FakeKMSServer.in_thread(phala_node_count=1, extra_nodes=[node]) as server:
        impostor = bytes.fromhex(server.k256_pubkey_for("base")[2:])
        evm.deploy(kms_contract(impostor, []))
        with pytest.raises(SignatureVerificationError) as caught:
            on(make_client, server).get_trusted_signer(
                KMS, sources=("api", "chain"), rpc_url=chain.url
            )
    err = caught.value
    assert err.reason == "anchor_mismatch"
    assert [line.split(":")[0] for line in err.sources] == ["api", "chain"]
    assert err.sources[1].endswith(server.k256_pubkey_for("base"))
    assert "disagree" in str(err)


def test_a_pinned_key_that_disagrees_is_an_anchor_mismatch(kms: Any, server: FakeKMSServer) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer(
            "phala", sources=("pinned", "api"), pinned=server.k256_pubkey_for("base")
        )
    assert caught.value.reason == "anchor_mismatch"
    assert caught.value.sources[0].startswith("pinned: ")
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer(
            "phala",
            sources=("pinned", "api"),
            pinned=ethereum_address(server.k256_pubkey_for("base")),
        )
    assert caught.value.reason == "anchor_mismatch"


def test_a_pinned_key_alone_is_its_own_anchor(kms: Any, server: FakeKMSServer) -> None:
    root = server.k256_pubkey_for("base")
    signer = kms.get_trusted_signer("base", sources=("pinned",), pinned=root.upper()[2:])
    assert signer == TrustedSigner(k256_pubkey=root, sources=("pinned: the caller's k256_pubkey",))
    assert server.total_requests == 0


def test_an_rpc_answering_garbage_fails_closed(
    make_client: Any, deployed: tuple[FakeKMSServer, str]
) -> None:
    server, _ = deployed  # its own port answers POST / with a 405, not JSON-RPC
    with pytest.raises(APIStatusError):
        on(make_client, server).get_trusted_signer(KMS, sources=("chain",), rpc_url=server.url)


def test_nodes_that_disagree_are_an_anchor_mismatch(kms: Any, server: FakeKMSServer) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer(
            "base",
            sources=("api", "node"),
            node_urls=[server.node_url("kms-base-prod7"), server.node_url("ethereum")],
        )
    assert caught.value.reason == "anchor_mismatch"
    assert [line.split(":")[0] for line in caught.value.sources] == ["api", "node", "node"]


def test_nodes_listed_by_the_api_are_asked(kms: Any, server: FakeKMSServer) -> None:
    signer = kms.get_trusted_signer("base", sources=("node",))
    assert signer.k256_pubkey == server.k256_pubkey_for("base")
    assert len(signer.sources) == 3
    assert all("X-API-Key" not in r.headers for r in server.requests if r.route == "node_meta")


# --------------------------------------------------------------------------- fail closed


def test_an_unreachable_rpc_fails_closed(
    make_client: Any, deployed: tuple[FakeKMSServer, str], closed_port: int
) -> None:
    server, _ = deployed
    with pytest.raises(ConnectRefusedError):
        on(make_client, server).get_trusted_signer(
            KMS, sources=("api", "chain"), rpc_url=f"http://127.0.0.1:{closed_port}"
        )


def test_an_rpc_of_another_chain_fails_closed(
    kms: Any, server: FakeKMSServer, chain: FakeChainRPC
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer("base", sources=("chain",), rpc_url=chain.url)  # Base is 8453
    assert caught.value.reason == "wrong_chain"
    assert chain.methods == ["eth_chainId"]  # nothing read from the wrong chain


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (kms_contract(None, []), "anchor_unavailable"),  # no kmsInfo(): it reverts
        (kms_contract(None, [], blob=b"\x00" * 31 + b"\x80" + b"\x00" * 40), "malformed_anchor"),
        (kms_contract(b"\x05" * 33, []), "malformed_anchor"),  # not a curve point
        (kms_contract(b"", []), "anchor_unavailable"),  # kmsInfo never set
    ],
    ids=["no-kmsInfo", "malformed-abi", "not-a-key", "empty-key"],
)
def test_a_contract_that_cannot_vouch_fails_closed(
    make_client: Any, evm: EthTesterEVM, chain: FakeChainRPC, code: bytes, reason: str
) -> None:
    address = evm.next_contract_address()
    node = {"id": KMS, "url": "https://x.invalid", "version": "1", "chain_id": evm.chain_id,
            "kms_contract_address": address}  # fmt: skip
    with FakeKMSServer.in_thread(phala_node_count=1, extra_nodes=[node]) as server:
        evm.deploy(code)
        with pytest.raises(SignatureVerificationError) as caught:
            on(make_client, server).get_trusted_signer(
                KMS, sources=("api", "chain"), rpc_url=chain.url
            )
    assert caught.value.reason == reason
    assert caught.value.sources[0].startswith("chain: ")


def test_an_address_without_code_fails_closed(
    make_client: Any, evm: EthTesterEVM, chain: FakeChainRPC
) -> None:
    node = {"id": KMS, "url": "https://x.invalid", "version": "1", "chain_id": evm.chain_id,
            "kms_contract_address": "0x" + "77" * 20}  # fmt: skip
    with (
        FakeKMSServer.in_thread(phala_node_count=1, extra_nodes=[node]) as server,
        pytest.raises(SignatureVerificationError) as caught,
    ):
        on(make_client, server).get_trusted_signer(KMS, sources=("chain",), rpc_url=chain.url)
    assert caught.value.reason == "anchor_unavailable"
    assert "returned nothing" in str(caught.value)


def test_an_off_chain_kms_has_no_chain_anchor(
    kms: Any, server: FakeKMSServer, chain: FakeChainRPC
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer("phala", sources=("chain",), rpc_url=chain.url)
    assert caught.value.reason == "anchor_unavailable"
    assert chain.methods == []


def test_an_unreachable_or_garbage_node_fails_closed(
    kms: Any, server: FakeKMSServer, closed_port: int
) -> None:
    with pytest.raises(ConnectRefusedError):
        kms.get_trusted_signer(
            "base", sources=("node",), node_urls=[f"http://127.0.0.1:{closed_port}"]
        )
    server.inject("/node/*", NonJSONFault(), times=None)
    with pytest.raises(ResponseValidationError):
        kms.get_trusted_signer("base", sources=("node",))


def test_a_node_without_a_key_fails_closed(kms: Any, server: FakeKMSServer) -> None:
    from phala_kms.testing import StatusFault

    server.inject("/node/*", StatusFault(200, body={"is_dev": False}), times=None)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer("base", sources=("api", "node"))
    assert caught.value.reason == "anchor_unavailable"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"sources": ("api", "moon")}, "sources"),
        ({"sources": "api"}, "sources"),
        ({"sources": ()}, "sources"),
        ({"sources": ("chain",)}, "rpc_url"),
        ({"sources": ("chain",), "rpc_url": "http://rpc.example.com"}, "rpc_url"),
        ({"sources": ("pinned",)}, "pinned"),
        ({"sources": ("api",), "pinned": "02" + "11" * 32}, "pinned"),
        ({"sources": ("node",), "node_urls": ["http://kms.example.com"]}, "node_url"),
    ],
)
def test_arguments_are_checked_before_anything_is_sent(
    kms: Any, server: FakeKMSServer, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        kms.get_trusted_signer("base", **kwargs)
    assert caught.value.argument == argument
    assert server.total_requests == 0


def test_the_chain_source_names_its_extra_when_eth_abi_is_missing(
    kms: Any, server: FakeKMSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "eth_abi", None)
    with pytest.raises(ConfigurationError) as caught:
        kms.get_trusted_signer("base", sources=("chain",), rpc_url="https://rpc.example.com")
    assert "phala-kms[chain]" in str(caught.value)
    assert server.total_requests == 0


# --------------------------------------------------------------------------- registeredApps


def test_check_registered(
    make_client: Any, deployed: tuple[FakeKMSServer, str], chain: FakeChainRPC
) -> None:
    server, _ = deployed
    driver = on(make_client, server)
    driver.check_app_registered(KMS, "0x" + REGISTERED.upper(), rpc_url=chain.url)
    with pytest.raises(SignatureVerificationError) as caught:
        driver.check_app_registered(KMS, UNREGISTERED, rpc_url=chain.url)
    assert caught.value.reason == "app_not_registered"
    root = server.k256_pubkey_for(KMS)
    sealed = driver.encrypt_env_vars_for_app(
        KMS, REGISTERED, {"A": "1"}, trusted_signer=root, check_registered=True,
        rpc_url=chain.url,
    )  # fmt: skip
    assert [v.key for v in decrypt_env_vars(sealed, server.app_private_key(KMS, REGISTERED))] == [
        "A"
    ]
    before = server.route_counts.get("app_pubkey", 0)
    with pytest.raises(SignatureVerificationError) as caught:
        driver.encrypt_env_vars_for_app(
            KMS, UNREGISTERED, {"A": "1"}, trusted_signer=root, check_registered=True,
            rpc_url=chain.url,
        )  # fmt: skip
    assert caught.value.reason == "app_not_registered"
    assert server.route_counts.get("app_pubkey", 0) == before  # failed before the key fetch
    with pytest.raises(InvalidArgumentError):
        driver.encrypt_env_vars_for_app(
            KMS, REGISTERED, {"A": "1"}, trusted_signer=root, check_registered=True
        )


def test_check_registered_on_the_wrong_chain_fails_closed(
    kms: Any, server: FakeKMSServer, chain: FakeChainRPC
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.check_app_registered("base", REGISTERED, rpc_url=chain.url)
    assert caught.value.reason == "wrong_chain"
