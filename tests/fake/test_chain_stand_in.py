"""The pure-Python DstackKms stand-in answers like the real EVM running the test contract.

:class:`phala_kms.testing.DstackKmsStandIn` runs no bytecode: it answers ``kmsInfo()`` and
``registeredApps(address)`` by selector. Here its answers are compared with those of a
real EVM (eth-tester with py-evm) executing :func:`dstack_kms_init_code` for the same key
and apps, decoded with eth-abi; then the SDK's chain anchor runs against it over
JSON-RPC (:class:`phala_kms.testing.FakeChainRPC`), with both clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import eth_abi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms import SignatureVerificationError, TrustedSigner
from phala_kms._evm import KMS_INFO_SELECTOR, REGISTERED_APPS_SELECTOR
from phala_kms.crypto import keccak256
from phala_kms.testing import (
    ChainBackend,
    DstackKmsStandIn,
    EthTesterEVM,
    FakeChainRPC,
    FakeKMSServer,
)
from phala_kms.testing._chain import ExecutionReverted, dstack_kms_init_code
from tests.helpers import ClientDriver

KMS_INFO = "0x" + KMS_INFO_SELECTOR.hex()
KMS = "kms_stand_in"
ADDRESS = "0x" + "5a" * 20  # where the fake's KMS says its contract is
REGISTERED = "c3" * 20
UNREGISTERED = "d4" * 20
ROOT = bytes.fromhex("02" + "11" * 32)  # a sample key: bytes only, never checked here


def registered_apps(app: bytes) -> str:
    """Calldata of ``registeredApps(app)``."""
    return "0x" + (REGISTERED_APPS_SELECTOR + eth_abi.encode(["address"], [app])).hex()


def kms_info(backend: ChainBackend, address: str) -> tuple[bytes, bytes, bytes, bytes]:
    out = backend.call(address, KMS_INFO)
    decoded: tuple[bytes, bytes, bytes, bytes] = eth_abi.decode(
        ["bytes", "bytes", "bytes", "bytes"], bytes.fromhex(out[2:])
    )
    return decoded


def is_registered(backend: ChainBackend, address: str, app: bytes) -> bool:
    (flag,) = eth_abi.decode(
        ["bool"], bytes.fromhex(backend.call(address, registered_apps(app))[2:])
    )
    return bool(flag)


@pytest.fixture(scope="module")
def evm() -> EthTesterEVM:
    return EthTesterEVM()


# --------------------------------------------------------------------------- same answers


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k256=st.binary(min_size=0, max_size=97),
    ca=st.binary(min_size=0, max_size=70),
    apps=st.lists(st.binary(min_size=20, max_size=20), max_size=3, unique=True),
    other=st.binary(min_size=20, max_size=20),
)
def test_the_stand_in_answers_like_the_evm(
    evm: EthTesterEVM, k256: bytes, ca: bytes, apps: list[bytes], other: bytes
) -> None:
    """For any key, CA key and apps, both chains' getters decode to the values given."""
    real = evm.deploy(dstack_kms_init_code(k256, apps, ca_pubkey=ca))
    stand_in = DstackKmsStandIn()
    fake = stand_in.put_contract(k256, apps, ca_pubkey=ca)
    for backend, address in ((evm, real), (stand_in, fake)):
        assert kms_info(backend, address) == (k256, ca, b"", b"")
        for app in apps:
            assert is_registered(backend, address, app) is True
        assert is_registered(backend, address, other) is (other in apps)
    # byte for byte, not only after decoding
    assert stand_in.call(fake, KMS_INFO) == evm.call(real, KMS_INFO)


def test_both_revert_on_an_unknown_selector_and_answer_nothing_without_code(
    evm: EthTesterEVM,
) -> None:
    real = evm.deploy(dstack_kms_init_code(ROOT))
    stand_in = DstackKmsStandIn()
    fake = stand_in.put_contract(ROOT)
    unknown = "0x" + keccak256(b"owner()")[:4].hex()
    nowhere = "0x" + "77" * 20
    for backend, address in ((evm, real), (stand_in, fake)):
        with pytest.raises(ExecutionReverted):
            backend.call(address, unknown)
        with pytest.raises(ExecutionReverted):
            backend.call(address, "0x")  # no selector at all
        assert backend.call(nowhere, KMS_INFO) == "0x"


def test_registered_apps_with_a_bad_argument_reverts_as_solidity_would() -> None:
    stand_in = DstackKmsStandIn()
    address = stand_in.put_contract(ROOT, [bytes.fromhex(REGISTERED)])
    selector = "0x" + REGISTERED_APPS_SELECTOR.hex()
    with pytest.raises(ExecutionReverted):
        stand_in.call(address, selector)  # the argument is missing
    with pytest.raises(ExecutionReverted):
        stand_in.call(address, selector + "00" * 31)  # one byte short
    dirty = "ff" * 12 + REGISTERED  # upper 12 bytes set: not an address
    with pytest.raises(ExecutionReverted):
        stand_in.call(address, selector + dirty)


def test_contracts_addresses_and_blocks() -> None:
    stand_in = DstackKmsStandIn(chain_id=1337)
    assert stand_in.chain_id == 1337
    assert stand_in.block_number() == 0
    first = stand_in.next_contract_address()
    assert stand_in.put_contract(ROOT) == first
    second = stand_in.next_contract_address()
    assert second != first
    assert stand_in.put_contract(b"\x03" * 33, address=ADDRESS.upper().replace("0X", "0x")) == (
        ADDRESS
    )
    assert stand_in.block_number() == 2
    assert kms_info(stand_in, ADDRESS)[0] == b"\x03" * 33
    assert kms_info(stand_in, first)[0] == ROOT
    stand_in.put_contract(b"\x02" * 33, address=ADDRESS)  # replaces the contract there
    assert kms_info(stand_in, ADDRESS)[0] == b"\x02" * 33


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.put_contract(ROOT, address="0x1234"), "address must be"),
        (lambda s: s.put_contract(ROOT, [b"\x01" * 19]), "20 bytes"),
        (lambda s: s.call("not an address", KMS_INFO), "to must be"),
        (lambda s: s.call(ADDRESS, "0xabc"), "even number of hex digits"),
        (lambda s: s.call(ADDRESS, "kmsInfo()"), "even number of hex digits"),
        (lambda s: DstackKmsStandIn(chain_id=0), "positive integer"),
    ],
)
def test_malformed_input_is_a_value_error(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call(DstackKmsStandIn())


# --------------------------------------------------------------------------- the SDK on it


def _node(chain_id: int) -> dict[str, object]:
    return {
        "id": KMS,
        "slug": None,
        "url": "https://kms.stand-in.invalid",
        "version": "v0.5.7",
        "chain_id": chain_id,
        "kms_contract_address": ADDRESS,
        "gateway_app_id": None,
    }


@pytest.fixture
def stand_in() -> DstackKmsStandIn:
    return DstackKmsStandIn()


@pytest.fixture
def rpc(stand_in: DstackKmsStandIn, server: FakeKMSServer) -> Iterator[FakeChainRPC]:
    root = bytes.fromhex(server.k256_pubkey_for(KMS)[2:])
    stand_in.put_contract(root, [bytes.fromhex(REGISTERED)], address=ADDRESS)
    with FakeChainRPC.in_thread(stand_in) as running:
        yield running


@pytest.mark.fake_kms_options(phala_node_count=1, extra_nodes=[_node(31337)])
def test_the_chain_anchor_reads_the_stand_in(
    kms: ClientDriver, server: FakeKMSServer, rpc: FakeChainRPC
) -> None:
    signer = kms.get_trusted_signer(KMS, sources=("chain",), rpc_url=rpc.url)
    assert isinstance(signer, TrustedSigner)
    assert signer.k256_pubkey == server.k256_pubkey_for(KMS)
    assert signer.sources[0].startswith(f"chain: eth_call kmsInfo() at {ADDRESS} on chain 31337")
    assert rpc.methods == ["eth_chainId", "eth_call"]
    # the contract's nodes are listed under the contract's id, as the API names it
    (contract,) = [c["id"] for c in server.contracts if c["chain_id"] == 31337]
    agreed = kms.get_trusted_signer(contract, sources=("api", "chain", "node"), rpc_url=rpc.url)
    assert [line.split(":", 1)[0] for line in agreed.sources] == ["api", "chain", "node"]
    assert agreed.k256_pubkey == signer.k256_pubkey
    kms.check_app_registered(KMS, REGISTERED, rpc_url=rpc.url)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.check_app_registered(KMS, UNREGISTERED, rpc_url=rpc.url)
    assert caught.value.reason == "app_not_registered"


@pytest.mark.fake_kms_options(phala_node_count=1, extra_nodes=[_node(31337)])
def test_a_key_the_stand_in_contradicts_is_refused(
    kms: ClientDriver, server: FakeKMSServer, stand_in: DstackKmsStandIn, rpc: FakeChainRPC
) -> None:
    other = server.k256_pubkey_for("base")
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer(KMS, sources=("pinned", "chain"), pinned=other, rpc_url=rpc.url)
    assert caught.value.reason == "anchor_mismatch"
    stand_in.put_contract(b"", address=ADDRESS)  # kmsInfo() set, but no key in it
    with pytest.raises(SignatureVerificationError) as empty:
        kms.get_trusted_signer(KMS, sources=("chain",), rpc_url=rpc.url)
    assert empty.value.reason == "anchor_unavailable"


@pytest.mark.fake_kms_options(phala_node_count=1, extra_nodes=[_node(8453)])
def test_the_stand_in_on_another_chain_is_refused(kms: ClientDriver, rpc: FakeChainRPC) -> None:
    """The KMS's contract is on 8453, the stand-in says 31337: nothing is read there."""
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_trusted_signer(KMS, sources=("chain",), rpc_url=rpc.url)
    assert caught.value.reason == "wrong_chain"
    assert rpc.methods == ["eth_chainId"]


async def test_over_json_rpc_reverts_and_bad_params_are_errors(
    stand_in: DstackKmsStandIn, http_session: aiohttp.ClientSession
) -> None:
    address = stand_in.put_contract(ROOT)

    async with FakeChainRPC(stand_in) as rpc:

        async def call(method: str, *params: object) -> dict[str, Any]:
            body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)}
            async with http_session.post(rpc.url, json=body) as response:
                reply: dict[str, Any] = await response.json()
            return reply

        info = await call("eth_call", {"to": address, "data": KMS_INFO}, "latest")
        reverted = await call("eth_call", {"to": address, "data": "0xdeadbeef"}, "latest")
        bad = await call("eth_call", {"to": address, "data": "0xz"}, "latest")
        chain_id = await call("eth_chainId")
        block = await call("eth_blockNumber")
    assert info["id"] == 7
    assert eth_abi.decode(["bytes"] * 4, bytes.fromhex(info["result"][2:]))[0] == ROOT
    assert reverted["error"] == {"code": 3, "message": "execution reverted"}
    assert bad["error"]["code"] == -32602
    assert (chain_id["result"], block["result"]) == ("0x7a69", "0x1")  # 31337, one contract
