"""Steps 1 to 10 of ``phala-kms demo``, each timed, checked and printed as it finishes.

:class:`Demo` runs them in order, then the chain of trust (steps 11 to 14, in
:mod:`phala_kms.cli._demo_chain`); a step hands its results to later ones through the
demo's attributes, and a step whose input is missing (an earlier failure) or that
needs the embedded fake (when pointed at a real API) is skipped, not failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._constants import CONTRACT_API_VERSION
from .._hex import canonical_hex
from ._demo_chain import ChainStandIn, ChainSteps
from ._logging import sdk_log_handler
from ._output import inert, progress_bar, short
from ._present import describe_error
from ._step import Skip, Step, StepFailed, check, duration, error_text, require, require_fake

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
    from ..testing import FakeKMSServer

__all__ = ["CHAIN", "Demo"]

CHAIN = "base"
CHAIN_ID = 8453
PAGE_SIZE = 20
NEXT_IDS = 5
UNKNOWN_KMS_ID = "kms_demoDoesNotExist"


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
        self.chain_steps = ChainSteps(
            server=server, chain=chain, chain_skip=chain_skip, sample_env=sample_env
        )

    # -- running ----------------------------------------------------------------------

    def run(self, client: KMSClient) -> None:
        """Run every step with ``client`` doing the reads, printing each as it ends."""
        chained = self.chain_steps
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
            (
                "Deploy a DstackKms stand-in on an in-process chain",
                lambda s: chained.deploy_contract(s, self.contracts),
            ),
            ("Read the KMS root key from the chain", lambda s: chained.chain_root(s, client)),
            (
                "Cross-check the root key: chain, API and nodes agree",
                lambda s: chained.agree(s, client),
            ),
            (
                "Verify the app key (signature_v1), encrypt, decrypt with the app's key",
                lambda s: chained.chain_round_trip(s, client),
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
        except Skip as skip:
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

    # -- steps ------------------------------------------------------------------------

    def list_nodes(self, step: Step, client: KMSClient) -> None:
        first = client.get_kms_list(1, PAGE_SIZE)
        step.details.append(
            f"get_kms_list(page=1, page_size={PAGE_SIZE}): total={first.total}, pages={first.pages}"
        )
        self.nodes = list(client.iter_kms_list(page_size=PAGE_SIZE))
        ids = [node.id for node in self.nodes]
        check(len(ids) == first.total, f"iter_kms_list yielded {len(ids)}, total is {first.total}")
        check(len(set(ids)) == len(ids), "iter_kms_list yielded a KMS twice")
        check(bool(ids), "the API lists no KMS at all")
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
        require(self.nodes, "the KMS list")
        wanted = self.nodes[0]
        kms = client.get_kms_info(wanted.id)
        check(kms == wanted, f"get_kms_info({wanted.id!r}) differs from its list entry")
        chain = "off-chain" if kms.chain_id is None else f"chain {kms.chain_id}"
        step.details.append(
            f"get_kms_info({kms.id!r}): slug={kms.slug!r}, version {kms.version}, {chain},"
            f" url {kms.url}"
        )
        step.details.append("equal to its entry in the list (frozen attrs models compare by value)")

    def list_contracts(self, step: Step, client: KMSClient) -> None:
        self.contracts = list(client.iter_kms_contracts(page_size=PAGE_SIZE))
        check(bool(self.contracts), "the API lists no KMS contract")
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
        check(detail.chain_id == CHAIN_ID, f"chain_id is {detail.chain_id}, not {CHAIN_ID}")
        check(bool(detail.contracts), f"no KMS contract on {CHAIN}")
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
        check(
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
        check(len(self.next_ids) == NEXT_IDS, f"got {len(self.next_ids)} ids, asked for {NEXT_IDS}")
        for item in self.next_ids:
            check(
                canonical_hex(item.app_id, 20) is not None, f"app_id {item.app_id!r} is not 40 hex"
            )
        nonces = [item.nonce for item in self.next_ids]
        step.details.append(
            f"next_app_ids({NEXT_IDS}): {self.next_ids[0].app_id} (nonce {nonces[0]})"
            f" … nonces {nonces[0]}..{nonces[-1]} (a prediction, not a reservation)"
        )

    def fan_out(self, step: Step) -> None:
        import asyncio

        require(self.trusted_signer, f"the trusted signer from {CHAIN}'s on-chain detail")
        signer = self.trusted_signer
        assert signer is not None
        app_ids = _demo_app_ids([item.app_id for item in self.next_ids], self.apps)
        started = time.perf_counter()
        keys = asyncio.run(self._fetch_keys(app_ids, signer))
        elapsed = time.perf_counter() - started
        check(len(keys) == len(app_ids), f"got {len(keys)} keys for {len(app_ids)} app ids")
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
            check(not wrong, f"{len(wrong)} key(s) differ from the fake's, e.g. {wrong[:1]}")
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

        require(self.keys, "the fetched keys")
        expected = 2 * (60 + len(env_vars_plaintext(self.sample_env)))
        started = time.perf_counter()
        self.ciphertexts = {
            app_id: encrypt_env_vars(self.sample_env, key.public_key_bytes)
            for app_id, key in self.keys.items()
        }
        elapsed = time.perf_counter() - started
        lengths = {len(text) for text in self.ciphertexts.values()}
        check(lengths == {expected}, f"ciphertext lengths {sorted(lengths)}, expected {expected}")
        check(
            len(set(self.ciphertexts.values())) == len(self.ciphertexts),
            "two ciphertexts are equal (ephemeral keys must differ)",
        )
        step.details.append(
            f"encrypt_env_vars({{{', '.join(self.sample_env)}}}, key) for"
            f" {len(self.ciphertexts)} apps in {duration(elapsed)}: {expected} hex chars each"
            " (60-byte overhead), all distinct"
        )

    def round_trip(self, step: Step) -> None:
        server = require_fake(self.server)
        require(self.ciphertexts, "the ciphertexts")
        from ..errors import InvalidArgumentError
        from ..testing import decrypt_env_vars

        app_id, ciphertext = next(iter(self.ciphertexts.items()))
        opened = decrypt_env_vars(ciphertext, server.app_private_key(CHAIN, app_id))
        got = {item.key: item.value for item in opened}
        check(
            [item.key for item in opened] == list(self.sample_env),
            "the decrypted names differ from the sample's",
        )
        check(got == dict(self.sample_env), "the decrypted values differ from the sample's")
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
            check(err.status == 404, f"status is {err.status}, not 404")
            if self.server is not None:
                check(bool(err.request_id), "the NotFoundError has no request_id")
            step.details.append(f"get_kms_info({UNKNOWN_KMS_ID!r}) raised {describe_error(err)}")
            step.details.append(
                f"err.status={err.status}, err.error_code={err.error_code!r},"
                f" err.request_id={err.request_id!r}, err.attempts={err.attempts}"
                " (a 404 is not retried)"
            )
        else:
            raise StepFailed(f"get_kms_info({UNKNOWN_KMS_ID!r}) did not raise NotFoundError")

    def retried_503(self, step: Step) -> None:
        server = require_fake(self.server)
        require(self.nodes, "a KMS id from the list")
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
        check(kms.id == target, f"got KMS {kms.id!r}, wanted {target!r}")
        check(injection.hits == 1, f"the 503 fired {injection.hits} times, not once")
        check(len(retries) == 1, f"{len(retries)} retries logged, expected exactly 1")
        check(served == 2, f"the fake served {served} requests, expected 2 (503 + retry)")
        step.details.append(f"get_kms_info({target!r}) succeeded on attempt 2 of {served}")
