"""The fourteen steps of ``phala-kms demo``, each timed, checked and printed as it finishes.

:class:`Demo` runs them in order; a step hands its results to later ones through the
demo's attributes, and a step whose input is missing (an earlier failure) or that
needs the embedded fake (when pointed at a real API) is skipped, not failed.

Steps 11 to 14 walk the chain of trust end to end against the fake and an in-process
chain (:class:`ChainStandIn`): the DstackKms contract's ``kmsInfo()`` gives the root key,
the API and the KMS nodes agree with it, the app key's ``signature_v1`` verifies
against it, and what is encrypted to that key opens with the app's private key. The
chain is a real EVM (eth-tester, py-evm: the ``[test]`` extra) when those import, else
the pure-Python :class:`~phala_kms.testing.DstackKmsStandIn`; step 11 says which. So a
plain ``[cli]`` install (which brings eth-abi, the chain anchor's ABI decoder) runs every
step; they are skipped, saying why, only when eth-abi itself is missing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._constants import CONTRACT_API_VERSION
from .._hex import canonical_hex
from ..errors import PhalaKMSError
from ._logging import sdk_log_handler
from ._present import describe_error, exit_code_for, hint_for, inert, progress_bar, short

if TYPE_CHECKING:
    from rich.console import Console

    from ..models import (
        KMSContract,
        KMSInfo,
        NextAppID,
        TrustedSigner,
        VerifiedAppEnvEncryptPubKey,
    )
    from ..sync import KMSClient
    from ..testing import DstackKmsStandIn, EthTesterEVM, FakeKMSServer

__all__ = [
    "CHAIN",
    "EVM_PACKAGES",
    "LOCAL_KMS_ID",
    "ChainStandIn",
    "Demo",
    "Step",
    "StepFailed",
    "duration",
    "error_text",
    "failure_hint",
    "load_chain_stand_in",
]

CHAIN = "base"
CHAIN_ID = 8453
PAGE_SIZE = 20
NEXT_IDS = 5
UNKNOWN_KMS_ID = "kms_demoDoesNotExist"
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


class StepFailed(Exception):
    """A step's result did not pass its check."""


class _Skip(Exception):
    """A step cannot run here (it needs the embedded fake, or an earlier step failed)."""


def error_text(err: BaseException) -> str:
    """A step's error in one line (not yet :func:`~phala_kms.cli._present.inert`)."""
    if isinstance(err, PhalaKMSError):
        return describe_error(err)
    if isinstance(err, (StepFailed, _Skip)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def failure_hint(err: BaseException) -> tuple[int, str]:
    """The exit code and hint for a step's error: the error table's for an SDK error
    (as every other command gives), else for a failed check or a bug."""
    if isinstance(err, PhalaKMSError):
        return int(exit_code_for(err)), hint_for(err)
    if isinstance(err, StepFailed):
        return 1, (
            "the API answered, but not as the step expects (see the FAIL step above);"
            " check --base-url / --api-version, or report it with the --json output"
        )
    return 1, "this is a bug in phala-kms (see the FAIL step above); please report it"


def duration(seconds: float) -> str:
    """``seconds`` for people: milliseconds under one second."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


class Step:
    """One step: its title, and once run its status, time, details and error."""

    def __init__(self, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.status = "pending"
        self.seconds = 0.0
        self.details: list[str] = []
        self.error: BaseException | None = None

    def as_json(self) -> dict[str, Any]:
        """The step as it appears in the ``--json`` report."""
        return {
            "number": self.number,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "details": self.details,
            "error": None if self.error is None else error_text(self.error),
        }


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def _demo_app_ids(first: list[str], total: int) -> list[str]:
    """``total`` distinct app ids: ``first``, then ids derived from a counter."""
    import hashlib

    ids = list(dict.fromkeys(first))[:total]
    counter = 0
    seen = set(ids)
    while len(ids) < total:
        app_id = hashlib.sha256(f"phala-kms-demo-app-{counter}".encode()).digest()[:20].hex()
        counter += 1
        if app_id not in seen:
            seen.add(app_id)
            ids.append(app_id)
    return ids


class Demo:
    """The demo's steps and what they hand each other.

    Args:
        console: Where the steps are printed.
        client_kwargs: The clients' keyword arguments (key, URL, timeouts, ...).
        server: The embedded fake, or ``None`` against a real API (the fake-only
            steps are then skipped).
        sample_env: The env vars encrypted for every app (values never printed).
        apps: App ids in the key fan-out.
        concurrency: Requests in flight during the fan-out.
        chain: The in-process chain for steps 11 to 14, or ``None``.
        chain_skip: Why there is no chain (those steps say it when skipped).
    """

    def __init__(
        self,
        *,
        console: Console,
        client_kwargs: dict[str, Any],
        server: FakeKMSServer | None,
        sample_env: Mapping[str, str],
        apps: int,
        concurrency: int,
        chain: ChainStandIn | None = None,
        chain_skip: str | None = None,
    ) -> None:
        self.console = console
        self.client_kwargs = client_kwargs
        self.server = server
        self.sample_env = sample_env
        self.apps = apps
        self.concurrency = concurrency
        self.steps: list[Step] = []
        # Results handed from step to step.
        self.nodes: list[KMSInfo] = []
        self.contracts: list[KMSContract] = []
        self.trusted_signer: TrustedSigner | None = None
        self.next_ids: list[NextAppID] = []
        self.keys: dict[str, VerifiedAppEnvEncryptPubKey] = {}
        self.ciphertexts: dict[str, str] = {}
        self.chain = chain
        self.chain_skip = chain_skip
        self.local_kms: str | None = None  # the contract on the local chain, as the API names it
        self.chain_signer: TrustedSigner | None = None
        self.local_key: VerifiedAppEnvEncryptPubKey | None = None

    # -- running ----------------------------------------------------------------------

    def run(self, client: KMSClient) -> None:
        """Run every step with ``client`` doing the reads, printing each as it ends."""
        plan: list[tuple[str, Callable[[Step], None]]] = [
            ("List every KMS node across all pages", lambda s: self.list_nodes(s, client)),
            ("Read one KMS node", lambda s: self.read_one(s, client)),
            ("List the KMS contracts", lambda s: self.list_contracts(s, client)),
            (f"Read {CHAIN.title()}'s on-chain KMS detail", lambda s: self.onchain(s, client)),
            ("Predict the next app ids", lambda s: self.next_app_ids(s, client)),
            ("Fan out verified public-key fetches", self.fan_out),
            ("Encrypt a sample env for every app", self.encrypt),
            ("Round trip: decrypt one with the app's private key", self.round_trip),
            ("Show a typed error", lambda s: self.typed_error(s, client)),
            ("Survive an injected 503 with one retry", self.retried_503),
            ("Deploy a DstackKms stand-in on an in-process chain", self.deploy_contract),
            ("Read the KMS root key from the chain", lambda s: self.chain_root(s, client)),
            (
                "Cross-check the root key: chain, API and nodes agree",
                lambda s: self.agree(s, client),
            ),
            (
                "Verify the app key (signature_v1), encrypt, decrypt with the app's key",
                lambda s: self.chain_round_trip(s, client),
            ),
        ]
        for number, (title, func) in enumerate(plan, 1):
            self.run_step(Step(number, title), func)

    def run_step(self, step: Step, func: Callable[[Step], None]) -> None:
        """Run one step, record its outcome and time, and print it."""
        self.steps.append(step)
        started = time.perf_counter()
        try:
            func(step)
        except _Skip as skip:
            step.status = "skipped"
            step.details.append(str(skip))
        except Exception as err:  # every failure is reported, none stops the demo
            step.status = "failed"
            step.error = err
        else:
            step.status = "ok"
        step.seconds = time.perf_counter() - started
        self.print_step(step)

    def print_step(self, step: Step) -> None:
        """Print a finished step: status, title, time, details and error."""
        from rich.markup import escape

        tag = {
            "ok": "[green]  ok  [/green]",
            "failed": "[bold red] FAIL [/bold red]",
            "skipped": "[yellow] skip [/yellow]",
        }[step.status]
        self.console.print(
            f"{tag} {step.number:>2}. [bold]{escape(step.title)}[/bold]"
            f"  [dim]{duration(step.seconds)}[/dim]",
            soft_wrap=True,
        )
        # details and errors quote the API's answers: shown inert
        for line in step.details:
            self.console.print(f"          {escape(inert(line))}", soft_wrap=True)
        if step.error is not None:
            self.console.print(
                f"          [red]{escape(inert(error_text(step.error)))}[/red]", soft_wrap=True
            )

    def require_fake(self) -> FakeKMSServer:
        """The embedded fake; skips the step against a real API."""
        if self.server is None:
            raise _Skip("skipped: needs the embedded fake (run without --base-url/--api-key)")
        return self.server

    @staticmethod
    def require(value: Any, what: str) -> None:
        """Skip the step unless an earlier step produced ``value``."""
        if not value:
            raise _Skip(f"skipped: needs {what} from an earlier step")

    # -- steps ------------------------------------------------------------------------

    def list_nodes(self, step: Step, client: KMSClient) -> None:
        first = client.get_kms_list(1, PAGE_SIZE)
        step.details.append(
            f"get_kms_list(page=1, page_size={PAGE_SIZE}): total={first.total}, pages={first.pages}"
        )
        self.nodes = list(client.iter_kms_list(page_size=PAGE_SIZE))
        ids = [node.id for node in self.nodes]
        _check(len(ids) == first.total, f"iter_kms_list yielded {len(ids)}, total is {first.total}")
        _check(len(set(ids)) == len(ids), "iter_kms_list yielded a KMS twice")
        _check(bool(ids), "the API lists no KMS at all")
        onchain = sum(node.chain_id is not None for node in self.nodes)
        step.details.append(
            f"iter_kms_list(page_size={PAGE_SIZE}) walked {first.pages} page(s): {len(ids)} unique"
            f" nodes ({len(ids) - onchain} off-chain Phala, {onchain} on-chain)"
        )
        with_extra = sum(bool(node.extra) for node in self.nodes)
        if with_extra:
            step.details.append(
                f"{with_extra} node(s) carry fields this SDK does not know, kept in .extra"
            )

    def read_one(self, step: Step, client: KMSClient) -> None:
        self.require(self.nodes, "the KMS list")
        wanted = self.nodes[0]
        kms = client.get_kms_info(wanted.id)
        _check(kms == wanted, f"get_kms_info({wanted.id!r}) differs from its list entry")
        chain = "off-chain" if kms.chain_id is None else f"chain {kms.chain_id}"
        step.details.append(
            f"get_kms_info({kms.id!r}): slug={kms.slug!r}, version {kms.version}, {chain},"
            f" url {kms.url}"
        )
        step.details.append("equal to its entry in the list (frozen attrs models compare by value)")

    def list_contracts(self, step: Step, client: KMSClient) -> None:
        self.contracts = list(client.iter_kms_contracts(page_size=PAGE_SIZE))
        _check(bool(self.contracts), "the API lists no KMS contract")
        parts = [
            f"{c.slug or c.id} ({'chain ' + str(c.chain_id) if c.is_onchain else 'off-chain'},"
            f" {c.node_count} nodes)"
            for c in self.contracts
        ]
        step.details.append(
            f"iter_kms_contracts (API {CONTRACT_API_VERSION}): {len(self.contracts)}"
            " contract(s): " + ", ".join(parts)
        )

    def onchain(self, step: Step, client: KMSClient) -> None:
        from ..crypto import check_trusted_signer
        from ..models import TrustedSigner

        detail = client.get_kms_on_chain_detail(CHAIN)
        _check(detail.chain_id == CHAIN_ID, f"chain_id is {detail.chain_id}, not {CHAIN_ID}")
        _check(bool(detail.contracts), f"no KMS contract on {CHAIN}")
        contract = detail.contracts[0]
        key = contract.k256_pubkey
        if key is None:
            raise StepFailed("the contract has no k256_pubkey")
        step.details.append(
            f"get_kms_on_chain_detail({CHAIN!r}): {len(detail.contracts)} contract(s);"
            f" {contract.contract_address}: {len(contract.devices)} device(s),"
            f" {len(contract.os_images)} OS image(s)"
        )
        step.details.append(
            f"trusted signer = contracts[0].k256_pubkey = {key}: the API's"
            " report of the on-chain contract (check it against Base itself for full independence)"
        )
        reported = client.get_trusted_signer(CHAIN)
        _check(
            check_trusted_signer(reported) == check_trusted_signer(key),  # parsed: same key
            "the contract view and the on-chain view disagree on k256_pubkey",
        )
        self.trusted_signer = TrustedSigner(
            k256_pubkey=key,
            sources=(f"api: GET /kms/on-chain/{CHAIN} contracts[0].k256_pubkey", *reported.sources),
        )
        step.details.append(
            f"cross-check: get_trusted_signer({CHAIN!r}) (the contract view) reports the same"
            " k256_pubkey"
        )

    def next_app_ids(self, step: Step, client: KMSClient) -> None:
        result = client.next_app_ids(NEXT_IDS)
        self.next_ids = list(result.app_ids)
        _check(
            len(self.next_ids) == NEXT_IDS, f"got {len(self.next_ids)} ids, asked for {NEXT_IDS}"
        )
        for item in self.next_ids:
            _check(
                canonical_hex(item.app_id, 20) is not None, f"app_id {item.app_id!r} is not 40 hex"
            )
        nonces = [item.nonce for item in self.next_ids]
        step.details.append(
            f"next_app_ids({NEXT_IDS}): {self.next_ids[0].app_id} (nonce {nonces[0]})"
            f" … nonces {nonces[0]}..{nonces[-1]} (a prediction, not a reservation)"
        )

    def fan_out(self, step: Step) -> None:
        import asyncio

        self.require(self.trusted_signer, f"the trusted signer from {CHAIN}'s on-chain detail")
        signer = self.trusted_signer
        assert signer is not None
        app_ids = _demo_app_ids([item.app_id for item in self.next_ids], self.apps)
        started = time.perf_counter()
        keys = asyncio.run(self._fetch_keys(app_ids, signer))
        elapsed = time.perf_counter() - started
        _check(len(keys) == len(app_ids), f"got {len(keys)} keys for {len(app_ids)} app ids")
        self.keys = dict(zip(app_ids, keys, strict=True))
        step.details.append(
            f"AsyncKMSClient.get_verified_app_env_encrypt_pubkeys({CHAIN!r},"
            f" <{len(app_ids)} app ids>, trusted_signer=<{CHAIN} k256_pubkey>,"
            f" concurrency={self.concurrency})"
        )
        step.details.append(
            f"{len(keys)} keys, every signature verified against {short(signer.k256_pubkey)}"
            f" in {duration(elapsed)} ({len(keys) / max(elapsed, 1e-9):.0f} keys/s)"
        )
        if self.server is not None:
            wrong = [
                app_id
                for app_id, key in self.keys.items()
                if key.public_key_bytes != self.server.app_public_key(CHAIN, app_id)
            ]
            _check(not wrong, f"{len(wrong)} key(s) differ from the fake's, e.g. {wrong[:1]}")
            step.details.append("each equals the key the fake derives for its app")

    async def _fetch_keys(
        self, app_ids: list[str], signer: TrustedSigner
    ) -> list[VerifiedAppEnvEncryptPubKey]:
        from ..client import AsyncKMSClient

        async with AsyncKMSClient(**self.client_kwargs) as client:
            with progress_bar("   verified keys", len(app_ids), transient=True) as on_progress:
                return await client.get_verified_app_env_encrypt_pubkeys(
                    CHAIN,
                    app_ids,
                    trusted_signer=signer,
                    concurrency=self.concurrency,
                    on_progress=on_progress,
                )

    def encrypt(self, step: Step) -> None:
        from ..crypto import encrypt_env_vars, env_vars_plaintext

        self.require(self.keys, "the fetched keys")
        expected = 2 * (60 + len(env_vars_plaintext(self.sample_env)))
        started = time.perf_counter()
        self.ciphertexts = {
            app_id: encrypt_env_vars(self.sample_env, key.public_key_bytes)
            for app_id, key in self.keys.items()
        }
        elapsed = time.perf_counter() - started
        lengths = {len(text) for text in self.ciphertexts.values()}
        _check(lengths == {expected}, f"ciphertext lengths {sorted(lengths)}, expected {expected}")
        _check(
            len(set(self.ciphertexts.values())) == len(self.ciphertexts),
            "two ciphertexts are equal (ephemeral keys must differ)",
        )
        step.details.append(
            f"encrypt_env_vars({{{', '.join(self.sample_env)}}}, key) for"
            f" {len(self.ciphertexts)} apps in {duration(elapsed)}: {expected} hex chars each"
            " (60-byte overhead), all distinct"
        )

    def round_trip(self, step: Step) -> None:
        server = self.require_fake()
        self.require(self.ciphertexts, "the ciphertexts")
        from ..errors import InvalidArgumentError
        from ..testing import decrypt_env_vars

        app_id, ciphertext = next(iter(self.ciphertexts.items()))
        opened = decrypt_env_vars(ciphertext, server.app_private_key(CHAIN, app_id))
        got = {item.key: item.value for item in opened}
        _check(
            [item.key for item in opened] == list(self.sample_env),
            "the decrypted names differ from the sample's",
        )
        _check(got == dict(self.sample_env), "the decrypted values differ from the sample's")
        step.details.append(
            f"server.app_private_key({CHAIN!r}, {app_id}) +"
            f" phala_kms.testing.decrypt_env_vars: {len(opened)} variables"
            f" ({', '.join(got)}), every value matches (values not shown)"
        )
        other_id = next((a for a in self.ciphertexts if a != app_id), None)
        if other_id is not None:
            try:
                decrypt_env_vars(ciphertext, server.app_private_key(CHAIN, other_id))
            except InvalidArgumentError:
                step.details.append("another app's private key cannot open it (GCM tag fails)")
            else:
                raise StepFailed("another app's private key opened the ciphertext")

    def typed_error(self, step: Step, client: KMSClient) -> None:
        from ..errors import NotFoundError

        try:
            client.get_kms_info(UNKNOWN_KMS_ID)
        except NotFoundError as err:
            _check(err.status == 404, f"status is {err.status}, not 404")
            if self.server is not None:
                _check(bool(err.request_id), "the NotFoundError has no request_id")
            step.details.append(f"get_kms_info({UNKNOWN_KMS_ID!r}) raised {describe_error(err)}")
            step.details.append(
                f"err.status={err.status}, err.error_code={err.error_code!r},"
                f" err.request_id={err.request_id!r}, err.attempts={err.attempts}"
                " (a 404 is not retried)"
            )
        else:
            raise StepFailed(f"get_kms_info({UNKNOWN_KMS_ID!r}) did not raise NotFoundError")

    def retried_503(self, step: Step) -> None:
        server = self.require_fake()
        self.require(self.nodes, "a KMS id from the list")
        from .._config import RetryPolicy
        from ..sync import KMSClient
        from ..testing import StatusFault

        target = self.nodes[0].id
        records: list[logging.LogRecord] = []

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        policy = RetryPolicy(max_retries=2, initial_backoff=0.05, max_backoff=0.05, jitter=0.0)
        kwargs = {k: v for k, v in self.client_kwargs.items() if k != "max_retries"}
        before = server.route_counts.get("kms_info", 0)
        injection = server.inject("kms_info", StatusFault(503, message="injected by the demo"))
        try:
            with (
                sdk_log_handler(Capture(logging.INFO)),
                KMSClient(**kwargs, retry_policy=policy) as client,
            ):
                kms = client.get_kms_info(target)
        finally:
            server.clear_faults()
        served = server.route_counts.get("kms_info", 0) - before
        retries = [r for r in records if r.getMessage().startswith("retrying")]
        step.details.append(
            "server.inject('kms_info', StatusFault(503), times=1); client with"
            " RetryPolicy(max_retries=2, initial_backoff=0.05, jitter=0)"
        )
        for record in retries:
            step.details.append(f"log {record.name} {record.levelname}: {record.getMessage()}")
        _check(kms.id == target, f"got KMS {kms.id!r}, wanted {target!r}")
        _check(injection.hits == 1, f"the 503 fired {injection.hits} times, not once")
        _check(len(retries) == 1, f"{len(retries)} retries logged, expected exactly 1")
        _check(served == 2, f"the fake served {served} requests, expected 2 (503 + retry)")
        step.details.append(f"get_kms_info({target!r}) succeeded on attempt 2 of {served}")

    # -- the chain of trust (steps 11 to 14) ----------------------------------------------

    def require_chain(self) -> tuple[FakeKMSServer, ChainStandIn]:
        """The fake and the in-process chain; skips the step when either is missing."""
        server = self.require_fake()
        if self.chain is None:
            raise _Skip(self.chain_skip or "skipped: no in-process chain")
        return server, self.chain

    def deploy_contract(self, step: Step) -> None:
        server, chain = self.require_chain()
        self.require(self.contracts, "the KMS contract list")
        root = server.k256_pubkey_for(LOCAL_KMS_ID)
        url = chain.deploy(bytes.fromhex(root[2:]), [bytes.fromhex(REGISTERED_APP)])
        self.local_kms = next(
            (c.slug or c.id for c in self.contracts if c.chain_id == chain.chain_id), None
        )
        _check(self.local_kms is not None, "the API lists no contract on the local chain")
        step.details.append(f"{chain.description}: chain {chain.chain_id}, JSON-RPC at {url}")
        step.details.append(
            f"contract {chain.address}: kmsInfo() holds KMS {LOCAL_KMS_ID}'s root key,"
            f" registeredApps({short(REGISTERED_APP)}) is true; the API names it as"
            f" contract {self.local_kms}"
        )

    def chain_root(self, step: Step, client: KMSClient) -> None:
        server, chain = self.require_chain()
        self.require(self.local_kms, "the deployed contract")
        assert self.local_kms is not None
        signer = client.get_trusted_signer(self.local_kms, sources=("chain",), rpc_url=chain.url)
        _check(
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
        from ..errors import SignatureVerificationError

        server, chain = self.require_chain()
        self.require(self.chain_signer, "the root key from the chain")
        assert self.local_kms is not None
        assert self.chain_signer is not None
        signer = client.get_trusted_signer(
            self.local_kms, sources=("api", "chain", "node"), rpc_url=chain.url
        )
        _check(signer.k256_pubkey == self.chain_signer.k256_pubkey, "the agreed key changed")
        kinds = [line.split(":", 1)[0] for line in signer.sources]
        _check(kinds[:2] == ["api", "chain"] and "node" in kinds, f"sources {kinds}")
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
            _check(err.reason == "anchor_mismatch", f"reason {err.reason!r}")
            step.details.append(
                f"a pinned key of another KMS ({short(impostor)}) is refused:"
                f" SignatureVerificationError(reason={err.reason!r})"
            )
        else:
            raise StepFailed("a pinned key that the chain contradicts was accepted")
        self.chain_signer = signer

    def chain_round_trip(self, step: Step, client: KMSClient) -> None:
        from ..errors import SignatureVerificationError
        from ..testing import decrypt_env_vars

        server, chain = self.require_chain()
        self.require(self.chain_signer, "the agreed root key")
        signer, kms = self.chain_signer, self.local_kms
        assert signer is not None
        assert kms is not None
        assert chain.url is not None
        client.check_app_registered(kms, REGISTERED_APP, rpc_url=chain.url)
        try:
            client.check_app_registered(kms, UNREGISTERED_APP, rpc_url=chain.url)
        except SignatureVerificationError as err:
            _check(err.reason == "app_not_registered", f"reason {err.reason!r}")
        else:
            raise StepFailed("an app the contract does not list passed check_app_registered")
        step.details.append(
            f"check_app_registered: registeredApps({short(REGISTERED_APP)}) is true;"
            f" {short(UNREGISTERED_APP)} is refused (app_not_registered)"
        )
        key = client.get_verified_app_env_encrypt_pubkey(
            kms, REGISTERED_APP, trusted_signer=signer, require_timestamped=True
        )
        _check(key.scheme == "signature_v1", f"scheme {key.scheme!r}")
        _check(key.signer == signer.k256_pubkey, "the key's signer is not the agreed root key")
        node_key = client.get_verified_app_env_encrypt_pubkey_from_node(
            server.node_url(LOCAL_KMS_ID), REGISTERED_APP, trusted_signer=signer,
            require_timestamped=True,
        )  # fmt: skip
        _check(node_key.public_key == key.public_key, "the node serves another app key")
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
        _check(got == dict(self.sample_env), "the decrypted values differ from the sample's")
        step.details.append(
            f"encrypt_env_vars_for_app(..., check_registered=True): {len(ciphertext)} hex"
            f" chars; the app's private key opens it: {len(got)} variables, every value"
            " matches (values not shown)"
        )
        self.local_key = key
