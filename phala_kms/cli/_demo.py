"""``phala-kms demo``: walk the whole SDK, step by step, timing and checking each step.

With no API key and no base URL configured, the demo starts the embedded fake API
(:mod:`phala_kms.testing`) on a loopback port in a background thread and runs every
step against it, including the ones only a fake allows: decrypting with the app's
private key and injecting a 503. Pointed at a real API (``--base-url`` /
``--api-key`` or their environment variables) it runs the read-only steps only.

Every step checks its own result and the demo exits non-zero if any step fails.
The sync :class:`~phala_kms.KMSClient` does the reads; the async
:class:`~phala_kms.AsyncKMSClient` does the key fan-out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cli import ExitCode, describe_error, exit_code_for

if TYPE_CHECKING:
    from rich.console import Console

    from .models import AppEnvEncryptPubKey, KMSContract, KMSInfo, NextAppID
    from .sync import KMSClient
    from .testing import FakeKMSServer, ThreadedFakeKMSServer

__all__ = ["FAKE_SERVER_OPTIONS", "SAMPLE_ENV", "StepFailed", "run_demo"]

SAMPLE_ENV: dict[str, str] = {
    "DATABASE_URL": "postgres://demo:not-a-real-password@db.internal:5432/app",
    "API_TOKEN": "demo-token-7f3a9c1e5b",
    "GREETING": "héllo, wörld ✓",
}
"""The env vars the demo encrypts for every app (sample values, never printed)."""

FAKE_SERVER_OPTIONS: dict[str, Any] = {}
"""Extra :class:`~phala_kms.testing.FakeKMSServer` arguments for the embedded fake."""

FAKE_APPS = 300
REMOTE_APPS = 20
CHAIN = "base"
CHAIN_ID = 8453
PAGE_SIZE = 20
NEXT_IDS = 5
UNKNOWN_KMS_ID = "kms_demoDoesNotExist"


class StepFailed(Exception):
    """A step's result did not pass its check."""


class _Skip(Exception):
    """A step cannot run here (it needs the embedded fake, or an earlier step failed)."""


class _Step:
    def __init__(self, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.status = "pending"
        self.seconds = 0.0
        self.details: list[str] = []
        self.error: BaseException | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "details": self.details,
            "error": None if self.error is None else _error_text(self.error),
        }


def _error_text(err: BaseException) -> str:
    from .errors import PhalaKMSError

    if isinstance(err, PhalaKMSError):
        return describe_error(err)
    if isinstance(err, (StepFailed, _Skip)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _short(value: str | None, keep: int = 10) -> str:
    if value is None:
        return "-"
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-6:]}"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def _demo_app_ids(first: list[str], total: int) -> list[str]:
    """``total`` distinct app ids: ``first``, then ids derived from a counter."""
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


class _Demo:
    def __init__(
        self,
        *,
        console: Console,
        progress_console: Console,
        client_kwargs: dict[str, Any],
        server: FakeKMSServer | None,
        apps: int,
        concurrency: int,
    ) -> None:
        self.console = console
        self.progress_console = progress_console
        self.client_kwargs = client_kwargs
        self.server = server
        self.apps = apps
        self.concurrency = concurrency
        self.steps: list[_Step] = []
        # Results handed from step to step.
        self.nodes: list[KMSInfo] = []
        self.contracts: list[KMSContract] = []
        self.trusted_signer: str | None = None
        self.next_ids: list[NextAppID] = []
        self.keys: dict[str, AppEnvEncryptPubKey] = {}
        self.ciphertexts: dict[str, str] = {}

    # -- running ----------------------------------------------------------------------

    def run(self, client: KMSClient) -> None:
        plan: list[tuple[str, Callable[[_Step], None]]] = [
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
        ]
        for number, (title, func) in enumerate(plan, 1):
            self.run_step(_Step(number, title), func)

    def run_step(self, step: _Step, func: Callable[[_Step], None]) -> None:
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

    def print_step(self, step: _Step) -> None:
        from rich.markup import escape

        tag = {
            "ok": "[green]  ok  [/green]",
            "failed": "[bold red] FAIL [/bold red]",
            "skipped": "[yellow] skip [/yellow]",
        }[step.status]
        self.console.print(
            f"{tag} {step.number:>2}. [bold]{escape(step.title)}[/bold]"
            f"  [dim]{_duration(step.seconds)}[/dim]",
            soft_wrap=True,
        )
        for line in step.details:
            self.console.print(f"          {escape(line)}", soft_wrap=True)
        if step.error is not None:
            self.console.print(
                f"          [red]{escape(_error_text(step.error))}[/red]", soft_wrap=True
            )

    def require_fake(self) -> FakeKMSServer:
        if self.server is None:
            raise _Skip("skipped: needs the embedded fake (run without --base-url/--api-key)")
        return self.server

    @staticmethod
    def require(value: Any, what: str) -> None:
        if not value:
            raise _Skip(f"skipped: needs {what} from an earlier step")

    # -- steps ------------------------------------------------------------------------

    def list_nodes(self, step: _Step, client: KMSClient) -> None:
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

    def read_one(self, step: _Step, client: KMSClient) -> None:
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

    def list_contracts(self, step: _Step, client: KMSClient) -> None:
        self.contracts = list(client.iter_kms_contracts(page_size=PAGE_SIZE))
        _check(bool(self.contracts), "the API lists no KMS contract")
        parts = [
            f"{c.slug or c.id} ({'chain ' + str(c.chain_id) if c.is_onchain else 'off-chain'},"
            f" {c.node_count} nodes)"
            for c in self.contracts
        ]
        step.details.append(
            f"iter_kms_contracts (API 2026-06-23): {len(self.contracts)} contract(s): "
            + ", ".join(parts)
        )

    def onchain(self, step: _Step, client: KMSClient) -> None:
        detail = client.get_kms_on_chain_detail(CHAIN)
        _check(detail.chain_id == CHAIN_ID, f"chain_id is {detail.chain_id}, not {CHAIN_ID}")
        _check(bool(detail.contracts), f"no KMS contract on {CHAIN}")
        contract = detail.contracts[0]
        _check(contract.k256_pubkey is not None, "the contract has no k256_pubkey")
        self.trusted_signer = contract.k256_pubkey
        step.details.append(
            f"get_kms_on_chain_detail({CHAIN!r}): {len(detail.contracts)} contract(s);"
            f" {contract.contract_address}: {len(contract.devices)} device(s),"
            f" {len(contract.os_images)} OS image(s)"
        )
        step.details.append(
            f"trusted signer = contracts[0].k256_pubkey = {contract.k256_pubkey}: the API's"
            " report of the on-chain contract (check it against Base itself for full independence)"
        )
        twin = next(
            (
                c
                for c in self.contracts
                if c.chain_id == detail.chain_id
                and c.contract_address.lower() == contract.contract_address.lower()
            ),
            None,
        )
        if twin is not None and twin.k256_pubkey is not None:
            same = twin.k256_pubkey.lower().removeprefix("0x") == (
                contract.k256_pubkey or ""
            ).lower().removeprefix("0x")
            _check(same, "the contract view and the on-chain view disagree on k256_pubkey")
            step.details.append("cross-check: the contract view reports the same k256_pubkey")

    def next_app_ids(self, step: _Step, client: KMSClient) -> None:
        result = client.next_app_ids(NEXT_IDS)
        self.next_ids = list(result.app_ids)
        _check(
            len(self.next_ids) == NEXT_IDS, f"got {len(self.next_ids)} ids, asked for {NEXT_IDS}"
        )
        for item in self.next_ids:
            _check(
                len(item.app_id) == 40 and all(c in "0123456789abcdefABCDEF" for c in item.app_id),
                f"app_id {item.app_id!r} is not 40 hex",
            )
        nonces = [item.nonce for item in self.next_ids]
        step.details.append(
            f"next_app_ids({NEXT_IDS}): {self.next_ids[0].app_id} (nonce {nonces[0]})"
            f" … nonces {nonces[0]}..{nonces[-1]} (a prediction, not a reservation)"
        )

    def fan_out(self, step: _Step) -> None:
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
            f"AsyncKMSClient.get_app_env_encrypt_pubkeys({CHAIN!r}, <{len(app_ids)} app ids>,"
            f" concurrency={self.concurrency}, trusted_signer=<{CHAIN} k256_pubkey>)"
        )
        step.details.append(
            f"{len(keys)} keys, every signature verified against {_short(signer)}"
            f" in {_duration(elapsed)} ({len(keys) / max(elapsed, 1e-9):.0f} keys/s)"
        )
        if self.server is not None:
            wrong = [
                app_id
                for app_id, key in self.keys.items()
                if key.public_key_bytes != self.server.app_public_key(CHAIN, app_id)
            ]
            _check(not wrong, f"{len(wrong)} key(s) differ from the fake's, e.g. {wrong[:1]}")
            step.details.append("each equals the key the fake derives for its app")

    async def _fetch_keys(self, app_ids: list[str], signer: str) -> list[AppEnvEncryptPubKey]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from .client import AsyncKMSClient

        async with AsyncKMSClient(**self.client_kwargs) as client:
            with Progress(
                TextColumn("   verified keys"),
                BarColumn(),
                MofNCompleteColumn(),
                console=self.progress_console,
                transient=True,
                disable=not self.progress_console.is_terminal,
            ) as progress:
                task = progress.add_task("keys", total=len(app_ids))

                def on_progress(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                return await client.get_app_env_encrypt_pubkeys(
                    CHAIN,
                    app_ids,
                    concurrency=self.concurrency,
                    trusted_signer=signer,
                    on_progress=on_progress,
                )

    def encrypt(self, step: _Step) -> None:
        from .crypto import encrypt_env_vars

        self.require(self.keys, "the fetched keys")
        plaintext = json.dumps(
            {"env": [{"key": k, "value": v} for k, v in SAMPLE_ENV.items()]},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        expected = 2 * (60 + len(plaintext))
        started = time.perf_counter()
        self.ciphertexts = {
            app_id: encrypt_env_vars(SAMPLE_ENV, key.public_key_bytes)
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
            f"encrypt_env_vars({{{', '.join(SAMPLE_ENV)}}}, key) for {len(self.ciphertexts)} apps"
            f" in {_duration(elapsed)}: {expected} hex chars each (60-byte overhead), all distinct"
        )

    def round_trip(self, step: _Step) -> None:
        server = self.require_fake()
        self.require(self.ciphertexts, "the ciphertexts")
        from .errors import InvalidArgumentError
        from .testing import decrypt_env_vars

        app_id, ciphertext = next(iter(self.ciphertexts.items()))
        private_key = server.app_private_key(CHAIN, app_id)
        opened = decrypt_env_vars(ciphertext, private_key)
        got = {item.key: item.value for item in opened}
        _check(
            [item.key for item in opened] == list(SAMPLE_ENV),
            "the decrypted names differ from the sample's",
        )
        _check(got == SAMPLE_ENV, "the decrypted values differ from the sample's")
        step.details.append(
            f"server.app_private_key({CHAIN!r}, {app_id}) + decrypt_env_vars: {len(opened)}"
            f" variables ({', '.join(got)}), every value matches (values not shown)"
        )
        other_id = next((a for a in self.ciphertexts if a != app_id), None)
        if other_id is not None:
            try:
                decrypt_env_vars(ciphertext, server.app_private_key(CHAIN, other_id))
            except InvalidArgumentError:
                step.details.append("another app's private key cannot open it (GCM tag fails)")
            else:
                raise StepFailed("another app's private key opened the ciphertext")

    def typed_error(self, step: _Step, client: KMSClient) -> None:
        from .errors import NotFoundError

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

    def retried_503(self, step: _Step) -> None:
        server = self.require_fake()
        self.require(self.nodes, "a KMS id from the list")
        from ._config import RetryPolicy
        from .sync import KMSClient
        from .testing import StatusFault

        target = self.nodes[0].id
        records: list[logging.LogRecord] = []

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Capture(logging.INFO)
        logger = logging.getLogger("phala_kms")
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        policy = RetryPolicy(max_retries=2, initial_backoff=0.05, max_backoff=0.05, jitter=0.0)
        kwargs = {k: v for k, v in self.client_kwargs.items() if k != "max_retries"}
        before = server.route_counts.get("kms_info", 0)
        injection = server.inject("kms_info", StatusFault(503, message="injected by the demo"))
        try:
            with KMSClient(**kwargs, retry_policy=policy) as client:
                kms = client.get_kms_info(target)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
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


def _start_fake() -> ThreadedFakeKMSServer:
    from .testing import FakeKMSServer

    return FakeKMSServer.in_thread(**FAKE_SERVER_OPTIONS)


def run_demo(
    *,
    api_key: str | None,
    base_url: str | None,
    api_version: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 3,
    apps: int | None = None,
    concurrency: int = 32,
    json_output: bool = False,
) -> int:
    """Run the demo and return the exit code (0 when every step that ran passed).

    Args:
        api_key: The API key, or ``None``. With neither it nor ``base_url`` the demo
            runs against the embedded fake.
        base_url: The API prefix, or ``None`` (the default Phala Cloud API when
            ``api_key`` is set).
        api_version: The ``X-Phala-Version`` for calls that do not pin their own.
        timeout: Seconds per request attempt.
        max_retries: Retries of safe failures.
        apps: App ids in the fan-out (default 300 with the fake, 20 otherwise).
        concurrency: Requests in flight during the fan-out.
        json_output: Print the step report as JSON on stdout (steps go to stderr).
    """
    from rich.console import Console
    from rich.markup import escape

    from ._config import DEFAULT_BASE_URL
    from ._version import __version__
    from .sync import KMSClient

    console = Console(stderr=json_output, highlight=False)
    progress_console = Console(stderr=True, highlight=False)
    use_fake = api_key is None and base_url is None
    if not use_fake and api_key is None:
        console.print(
            "[red]error:[/red] a base URL is set but no API key: set PHALA_CLOUD_API_KEY or pass"
            " --api-key (or unset both to run against the embedded fake)",
            soft_wrap=True,
        )
        return int(ExitCode.AUTH)

    total_started = time.perf_counter()
    threaded = _start_fake() if use_fake else None
    try:
        server = threaded.start() if threaded is not None else None
        if server is not None:
            target, api_key = server.base_url, server.api_key
            where = f"the embedded fake API at {target} (no API key or base URL configured)"
        else:
            target = base_url or DEFAULT_BASE_URL
            where = f"{target} (read-only steps; the fake-only ones are skipped)"
        client_kwargs: dict[str, Any] = {
            "api_key": api_key,
            "base_url": target,
            "api_version": api_version,
            "timeout": timeout,
            "max_retries": max_retries,
        }
        console.print(
            f"[bold]phala-kms {__version__} demo[/bold] against {escape(where)}", soft_wrap=True
        )
        demo = _Demo(
            console=console,
            progress_console=progress_console,
            client_kwargs=client_kwargs,
            server=server,
            apps=apps if apps is not None else (FAKE_APPS if server is not None else REMOTE_APPS),
            concurrency=concurrency,
        )
        with KMSClient(**client_kwargs) as client:
            demo.run(client)
    finally:
        if threaded is not None:
            threaded.stop()
    total = time.perf_counter() - total_started

    counts = {
        status: sum(s.status == status for s in demo.steps)
        for status in ("ok", "failed", "skipped")
    }
    ran = counts["ok"] + counts["failed"]
    colour = "green" if not counts["failed"] else "red"
    console.print(
        f"[bold {colour}]Summary:[/bold {colour}] {counts['ok']} of {ran} steps ok"
        f" ({counts['failed']} failed, {counts['skipped']} skipped) in {_duration(total)}",
        soft_wrap=True,
    )
    failed = [s for s in demo.steps if s.status == "failed"]
    code = 0
    if failed:
        from .errors import PhalaKMSError

        first = failed[0].error
        code = int(exit_code_for(first)) if isinstance(first, PhalaKMSError) else 1
    if json_output:
        report = {
            "ok": not failed,
            "mode": "fake" if server is not None else "remote",
            "base_url": target,
            "total_seconds": round(total, 4),
            "counts": counts,
            "steps": [step.as_json() for step in demo.steps],
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return code
