"""Steps 11 to 14 of ``phala-kms demo``: the chain of trust, end to end.

Against the embedded fake and an in-process chain (:class:`ChainStandIn`): the DstackKms
contract's ``kmsInfo()`` gives the root key, the API and the KMS nodes agree with it,
the app key's ``signature_v1`` verifies against it, and what is encrypted to that key
opens with the app's private key. The chain is a real EVM (eth-tester, py-evm: the
``[test]`` extra) when those import, else the pure-Python
:class:`~phala_kms.testing.DstackKmsStandIn`; step 11 says which. So a plain ``[cli]``
install (which brings eth-abi, the chain anchor's ABI decoder) runs every step; they
are skipped, saying why, only when eth-abi itself is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._output import short
from ._step import Skip, Step, StepFailed, check, require, require_fake

if TYPE_CHECKING:
    from ..models import KMSContract, TrustedSigner, VerifiedAppEnvEncryptPubKey
    from ..sync import KMSClient
    from ..testing import DstackKmsStandIn, EthTesterEVM, FakeKMSServer

__all__ = [
    "EVM_PACKAGES",
    "LOCAL_KMS_ID",
    "ChainStandIn",
    "ChainSteps",
    "load_chain_stand_in",
]

LOCAL_KMS_ID = "kms_demoLocalChain"
"""The fake's KMS node whose contract the demo puts on the in-process chain."""
REGISTERED_APP = hashlib.sha256(b"phala-kms-demo-registered-app").hexdigest()[:40]
"""The app id the demo's contract registers."""
UNREGISTERED_APP = hashlib.sha256(b"phala-kms-demo-unknown-app").hexdigest()[:40]

EVM_PACKAGES: tuple[tuple[str, str], ...] = (("eth_tester", "eth-tester"), ("eth", "py-evm"))
"""What a real EVM needs (module, distribution): the ``[test]`` extra, not ``[cli]``."""


class ChainStandIn:
    """The demo's in-process chain and, once the contract is on it, its JSON-RPC endpoint.

    The chain is a real EVM (:class:`~phala_kms.testing.EthTesterEVM`, which runs the
    contract's bytecode) when eth-tester and py-evm are installed, else the pure-Python
    :class:`~phala_kms.testing.DstackKmsStandIn`, which answers the same two getters
    without an EVM; the SDK reads either over the same JSON-RPC.

    Args:
        backend: The chain.
        description: Which chain it is, for the step's details.
    """

    def __init__(self, backend: EthTesterEVM | DstackKmsStandIn, description: str) -> None:
        self.backend = backend
        self.description = description
        self.address = backend.next_contract_address()
        self.url: str | None = None
        self._rpc: Any = None

    @property
    def chain_id(self) -> int:
        """The chain id the RPC reports."""
        return self.backend.chain_id

    def node_info(self) -> dict[str, Any]:
        """The fake's ``KmsInfo`` for the KMS whose contract will be at :attr:`address`."""
        return {
            "id": LOCAL_KMS_ID,
            "slug": None,
            "url": "https://kms.demo-local.invalid",
            "version": "v0.5.7",
            "chain_id": self.chain_id,
            "kms_contract_address": self.address,
            "gateway_app_id": None,
        }

    def deploy(self, k256_pubkey: bytes, registered: list[bytes]) -> str:
        """Put the DstackKms on the chain and serve the chain; return the RPC URL."""
        from ..testing import DstackKmsStandIn, FakeChainRPC
        from ..testing._chain import dstack_kms_init_code

        if isinstance(self.backend, DstackKmsStandIn):
            address = self.backend.put_contract(k256_pubkey, registered, address=self.address)
        else:
            address = self.backend.deploy(dstack_kms_init_code(k256_pubkey, registered))
        if address != self.address:
            raise StepFailed(f"the contract landed at {address}, not {self.address}")
        self._rpc = FakeChainRPC.in_thread(self.backend)
        self.url = str(self._rpc.start().url)
        return self.url

    def stop(self) -> None:
        """Stop serving the chain (a no-op when not started)."""
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            rpc.stop()


def load_chain_stand_in() -> tuple[ChainStandIn | None, str | None]:
    """The chain for steps 11 to 14: a real EVM when eth-tester and py-evm import, else
    the pure-Python stand-in; or ``None`` and why the steps will be skipped (only when
    eth-abi, which the ``[cli]`` extra brings, is missing)."""
    import importlib.util

    from ..testing import DstackKmsStandIn

    if importlib.util.find_spec("eth_abi") is None:
        return None, (
            "skipped: the chain trust anchor decodes the contract's answers with eth-abi,"
            " which is not installed; reinstall with the [cli] extra"
            " (`pip install -e '.[cli]'`)"
        )
    missing = [dist for module, dist in EVM_PACKAGES if importlib.util.find_spec(module) is None]
    if not missing:
        from ..testing import EthTesterEVM

        try:
            evm = EthTesterEVM()
        except ImportError as err:  # installed but broken
            missing = [f"a working eth-tester and py-evm ({err})"]
        else:
            return ChainStandIn(evm, "eth-tester + py-evm (a real EVM running the bytecode)"), None
    return ChainStandIn(
        DstackKmsStandIn(),
        "DstackKmsStandIn (pure Python, no EVM: it answers kmsInfo() and registeredApps()"
        f" by selector; {' and '.join(missing)} not installed, `pip install -e '.[cli,test]'`"
        " for a real EVM)",
    ), None


class ChainSteps:
    """Steps 11 to 14 and what they hand each other.

    Args:
        server: The embedded fake, or ``None`` against a real API (the steps are then
            skipped).
        chain: The in-process chain, or ``None``.
        chain_skip: Why there is no chain (the steps say it when skipped).
        sample_env: The env vars encrypted in step 14 (values never printed).
    """

    def __init__(
        self,
        *,
        server: FakeKMSServer | None,
        chain: ChainStandIn | None,
        chain_skip: str | None,
        sample_env: Mapping[str, str],
    ) -> None:
        self.server = server
        self.chain = chain
        self.chain_skip = chain_skip
        self.sample_env = sample_env
        self.local_kms: str | None = None  # the contract on the local chain, as the API names it
        self.chain_signer: TrustedSigner | None = None
        self.local_key: VerifiedAppEnvEncryptPubKey | None = None

    def require_chain(self) -> tuple[FakeKMSServer, ChainStandIn]:
        """The fake and the in-process chain; skips the step when either is missing."""
        server = require_fake(self.server)
        if self.chain is None:
            raise Skip(self.chain_skip or "skipped: no in-process chain")
        return server, self.chain

    def deploy_contract(self, step: Step, contracts: Sequence[KMSContract]) -> None:
        """Step 11: put the contract on the chain; find the API's name for it in ``contracts``."""
        server, chain = self.require_chain()
        require(contracts, "the KMS contract list")
        root = server.k256_pubkey_for(LOCAL_KMS_ID)
        url = chain.deploy(bytes.fromhex(root[2:]), [bytes.fromhex(REGISTERED_APP)])
        self.local_kms = next(
            (c.slug or c.id for c in contracts if c.chain_id == chain.chain_id), None
        )
        check(self.local_kms is not None, "the API lists no contract on the local chain")
        step.details.append(f"{chain.description}: chain {chain.chain_id}, JSON-RPC at {url}")
        step.details.append(
            f"contract {chain.address}: kmsInfo() holds KMS {LOCAL_KMS_ID}'s root key,"
            f" registeredApps({short(REGISTERED_APP)}) is true; the API names it as"
            f" contract {self.local_kms}"
        )

    def chain_root(self, step: Step, client: KMSClient) -> None:
        """Step 12: read the root key from the contract, over JSON-RPC only."""
        server, chain = self.require_chain()
        require(self.local_kms, "the deployed contract")
        assert self.local_kms is not None
        signer = client.get_trusted_signer(self.local_kms, sources=("chain",), rpc_url=chain.url)
        check(
            signer.k256_pubkey == server.k256_pubkey_for(LOCAL_KMS_ID),
            "the chain's root key is not the KMS's",
        )
        self.chain_signer = signer
        step.details.append(
            f"get_trusted_signer({self.local_kms!r}, sources=('chain',), rpc_url=...):"
            f" eth_chainId = {chain.chain_id}, the contract's chain; eth_call kmsInfo()"
        )
        step.details.append(f"root key (k256Pubkey) = {signer.k256_pubkey}")

    def agree(self, step: Step, client: KMSClient) -> None:
        """Step 13: the API, the chain and the nodes agree; a contradicted pin is refused."""
        from ..errors import SignatureVerificationError

        server, chain = self.require_chain()
        require(self.chain_signer, "the root key from the chain")
        assert self.local_kms is not None
        assert self.chain_signer is not None
        signer = client.get_trusted_signer(
            self.local_kms, sources=("api", "chain", "node"), rpc_url=chain.url
        )
        check(signer.k256_pubkey == self.chain_signer.k256_pubkey, "the agreed key changed")
        kinds = [line.split(":", 1)[0] for line in signer.sources]
        check(kinds[:2] == ["api", "chain"] and "node" in kinds, f"sources {kinds}")
        step.details.append(
            f"get_trusted_signer(sources=('api', 'chain', 'node')): {len(signer.sources)}"
            f" sources agree on {short(signer.k256_pubkey)}"
        )
        step.details.extend(f"  {line}" for line in signer.sources)
        impostor = server.k256_pubkey  # the Phala KMS's: another KMS's root key
        try:
            client.get_trusted_signer(
                self.local_kms, sources=("pinned", "chain"), pinned=impostor, rpc_url=chain.url
            )
        except SignatureVerificationError as err:
            check(err.reason == "anchor_mismatch", f"reason {err.reason!r}")
            step.details.append(
                f"a pinned key of another KMS ({short(impostor)}) is refused:"
                f" SignatureVerificationError(reason={err.reason!r})"
            )
        else:
            raise StepFailed("a pinned key that the chain contradicts was accepted")
        self.chain_signer = signer

    def chain_round_trip(self, step: Step, client: KMSClient) -> None:
        """Step 14: registered app, verified key (API and node), encrypt, decrypt."""
        from ..errors import SignatureVerificationError
        from ..testing import decrypt_env_vars

        server, chain = self.require_chain()
        require(self.chain_signer, "the agreed root key")
        signer, kms = self.chain_signer, self.local_kms
        assert signer is not None
        assert kms is not None
        assert chain.url is not None
        client.check_app_registered(kms, REGISTERED_APP, rpc_url=chain.url)
        try:
            client.check_app_registered(kms, UNREGISTERED_APP, rpc_url=chain.url)
        except SignatureVerificationError as err:
            check(err.reason == "app_not_registered", f"reason {err.reason!r}")
        else:
            raise StepFailed("an app the contract does not list passed check_app_registered")
        step.details.append(
            f"check_app_registered: registeredApps({short(REGISTERED_APP)}) is true;"
            f" {short(UNREGISTERED_APP)} is refused (app_not_registered)"
        )
        key = client.get_verified_app_env_encrypt_pubkey(
            kms, REGISTERED_APP, trusted_signer=signer, require_timestamped=True
        )
        check(key.scheme == "signature_v1", f"scheme {key.scheme!r}")
        check(key.signer == signer.k256_pubkey, "the key's signer is not the agreed root key")
        node_key = client.get_verified_app_env_encrypt_pubkey_from_node(
            server.node_url(LOCAL_KMS_ID), REGISTERED_APP, trusted_signer=signer,
            require_timestamped=True,
        )  # fmt: skip
        check(node_key.public_key == key.public_key, "the node serves another app key")
        step.details.append(
            f"app key {short(key.public_key)}: {key.scheme} verified (timestamp"
            f" {key.timestamp}), signed by the agreed root key; the KMS node serves the same key"
        )
        ciphertext = client.encrypt_env_vars_for_app(
            kms, REGISTERED_APP, self.sample_env, trusted_signer=signer,
            require_timestamped=True, check_registered=True, rpc_url=chain.url,
        )  # fmt: skip
        opened = decrypt_env_vars(ciphertext, server.app_private_key(kms, REGISTERED_APP))
        got = {item.key: item.value for item in opened}
        check(got == dict(self.sample_env), "the decrypted values differ from the sample's")
        step.details.append(
            f"encrypt_env_vars_for_app(..., check_registered=True): {len(ciphertext)} hex"
            f" chars; the app's private key opens it: {len(got)} variables, every value"
            " matches (values not shown)"
        )
        self.local_key = key
