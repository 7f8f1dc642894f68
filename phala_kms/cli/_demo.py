"""``phala-kms demo``: walk the whole SDK, step by step, timing and checking each step.

With no API key and no base URL configured, the demo starts the embedded fake API
(:mod:`phala_kms.testing`) on a loopback port in a background thread and runs every
step against it, including the ones only a fake allows: decrypting with the app's
private key, injecting a 503, and the chain of trust against an in-process chain holding
a DstackKms stand-in: a real EVM (eth-tester + py-evm, the ``[test]`` extra) when those
are installed, else the pure-Python :class:`~phala_kms.testing.DstackKmsStandIn`, so a
``[cli]`` install runs every step. Pointed at a real API (``--base-url`` /
``--api-key`` or their environment variables) it runs the read-only steps only.

Every step checks its own result and the demo exits non-zero if any step fails,
ending (like every other command) with an ``error:`` line for the first failure and
the error table's ``hint:`` for it (a bad API key: check ``PHALA_CLOUD_API_KEY``).
The sync :class:`~phala_kms.KMSClient` does the reads; the async
:class:`~phala_kms.AsyncKMSClient` does the key fan-out. The steps themselves are in
:mod:`phala_kms.cli._demo_steps` (1 to 10) and :mod:`phala_kms.cli._demo_chain` (11 to
14, the chain of trust); this module starts the fake, runs them and sums up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
)
from ._exit import ExitCode, Failure
from ._output import emit_json, inert, stderr, stdout
from ._present import report
from ._settings import concurrency_option, current_settings, json_option

if TYPE_CHECKING:
    from rich.console import Console

    from ..testing import FakeKMSServer, ThreadedFakeKMSServer
    from ._demo_chain import ChainStandIn
    from ._demo_steps import Demo

__all__ = ["FAKE_SERVER_OPTIONS", "SAMPLE_ENV", "demo_command", "run_demo"]

SAMPLE_ENV: dict[str, str] = {
    "DATABASE_URL": "postgres://demo:not-a-real-password@db.internal:5432/app",
    "API_TOKEN": "demo-token-7f3a9c1e5b",
    "GREETING": "héllo, wörld ✓",
}
"""The env vars the demo encrypts for every app (sample values, never printed)."""

FAKE_SERVER_OPTIONS: dict[str, Any] = {}
"""Extra :class:`~phala_kms.testing.FakeKMSServer` arguments for the embedded fake."""

FAKE_APPS = 300
"""App ids in the fan-out against the embedded fake."""

REMOTE_APPS = 20
"""App ids in the fan-out against a real API."""


def _start_fake(chain: ChainStandIn | None) -> ThreadedFakeKMSServer:
    """The embedded fake: timestamped signatures on, plus (with a chain) the KMS whose
    contract the demo deploys there."""
    from ..testing import FakeKMSServer

    options: dict[str, Any] = {"timestamped_signatures": True}
    if chain is not None:
        options["extra_nodes"] = [chain.node_info()]
    return FakeKMSServer.in_thread(**{**options, **FAKE_SERVER_OPTIONS})


def _run_steps(
    console: Console,
    client_kwargs: dict[str, Any],
    server: FakeKMSServer | None,
    apps: int | None,
    concurrency: int,
    chain: ChainStandIn | None,
    chain_skip: str | None,
) -> Demo:
    from ..sync import KMSClient
    from ._demo_steps import Demo

    demo = Demo(
        console=console,
        client_kwargs=client_kwargs,
        server=server,
        sample_env=SAMPLE_ENV,
        apps=apps if apps is not None else (FAKE_APPS if server is not None else REMOTE_APPS),
        concurrency=concurrency,
        chain=chain,
        chain_skip=chain_skip,
    )
    with KMSClient(**client_kwargs) as client:
        demo.run(client)
    return demo


def _summarize(
    console: Console, demo: Demo, seconds: float
) -> tuple[dict[str, int], int, str | None, str | None]:
    """Print the summary line; return the status counts, the exit code, and the first
    failure and its hint (``None`` when every step that ran passed)."""
    from ._step import duration, error_text, failure_hint

    counts = {
        status: sum(s.status == status for s in demo.steps)
        for status in ("ok", "failed", "skipped")
    }
    ran = counts["ok"] + counts["failed"]
    colour = "green" if not counts["failed"] else "red"
    console.print(
        f"[bold {colour}]Summary:[/bold {colour}] {counts['ok']} of {ran} steps ok"
        f" ({counts['failed']} failed, {counts['skipped']} skipped) in {duration(seconds)}",
        soft_wrap=True,
    )
    failed = [step for step in demo.steps if step.error is not None]
    if not failed:
        return counts, int(ExitCode.OK), None, None
    # the first failure sets the code and the hint: an SDK error's own (the error
    # table's, as for every other command); a failed check (StepFailed) is the generic 1
    first = failed[0]
    assert first.error is not None
    code, hint = failure_hint(first.error)
    message = (
        f"{counts['failed']} of {ran} demo steps failed; first: step {first.number},"
        f" {error_text(first.error)}"
    )
    return counts, code, message, hint


def run_demo(
    *,
    api_key: str | None,
    base_url: str | None,
    api_version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    apps: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
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
        apps: App ids in the fan-out (default :data:`FAKE_APPS` with the fake,
            :data:`REMOTE_APPS` otherwise).
        concurrency: Requests in flight during the fan-out.
        json_output: Print the step report as JSON on stdout (steps go to stderr).

    Returns:
        0 when every step that ran passed; else the exit code of the first failed
        step's error (1 for a failed check), after an ``error:`` line and the
        ``hint:`` for that error on stderr.

    Raises:
        Failure: A base URL is set but no API key (exit code 3).
    """
    import time

    from rich.markup import escape

    from .._version import __version__

    console = stderr() if json_output else stdout()
    use_fake = api_key is None and base_url is None
    if not use_fake and api_key is None:
        raise Failure(
            "a base URL is set but no API key",
            f"set {ENV_API_KEY} or pass --api-key (or unset both to run against the embedded fake)",
            ExitCode.AUTH,
            kind="NoAPIKey",
        )

    from ._demo_chain import load_chain_stand_in

    started = time.perf_counter()
    chain, chain_skip = load_chain_stand_in() if use_fake else (None, None)
    threaded = _start_fake(chain) if use_fake else None
    try:
        server = threaded.start() if threaded is not None else None
        if server is not None:
            target, api_key = server.base_url, server.api_key
            where = f"the embedded fake API at {target} (no API key or base URL configured)"
        else:
            target = base_url or DEFAULT_BASE_URL
            where = f"{target} (read-only steps; the fake-only ones are skipped)"
        console.print(
            f"[bold]phala-kms {__version__} demo[/bold] against {escape(inert(where))}",
            soft_wrap=True,
        )
        client_kwargs: dict[str, Any] = {
            "api_key": api_key,
            "base_url": target,
            "api_version": api_version,
            "timeout": timeout,
            "max_retries": max_retries,
        }
        demo = _run_steps(console, client_kwargs, server, apps, concurrency, chain, chain_skip)
    finally:
        if chain is not None:
            chain.stop()
        if threaded is not None:
            threaded.stop()
    total = time.perf_counter() - started
    counts, code, message, hint = _summarize(console, demo, total)
    if json_output:
        emit_json(
            {
                "ok": code == ExitCode.OK,
                "mode": "fake" if server is not None else "remote",
                "base_url": target,
                "total_seconds": round(total, 4),
                "counts": counts,
                "exit_code": code,
                "error": message,
                "hint": hint,
                "steps": [step.as_json() for step in demo.steps],
            }
        )
    if message is not None:
        report(message, hint)
    return code


@click.command("demo")
@json_option
@click.option(
    "--apps",
    type=click.IntRange(1, 5000),
    default=None,
    help=f"App ids in the key fan-out [default: {FAKE_APPS} against the fake,"
    f" {REMOTE_APPS} against a real API].",
)
@concurrency_option("Requests in flight during the fan-out.")
def demo_command(apps: int | None, concurrency: int) -> None:
    """Walk the whole SDK, step by step, with timings and checks.

    With no API key and no base URL configured (options or environment), it starts
    the embedded fake API in-process and runs every step, including a decryption
    round trip, a retried 503 and the chain of trust (the KMS root key read from a
    DstackKms contract on an in-process chain, cross-checked with the API and the
    nodes, an app key's signature_v1 verified against it, a ciphertext the app's
    key opens). The chain is a real EVM when eth-tester and py-evm are installed,
    else a pure-Python stand-in; the step says which. With --base-url/--api-key (or
    their environment variables) it runs the read-only steps against that API.
    Exits non-zero if a step misbehaves.
    """
    settings = current_settings()
    code = run_demo(
        api_key=settings.api_key,
        base_url=settings.base_url,
        api_version=settings.api_version,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        apps=apps,
        concurrency=concurrency,
        json_output=settings.json_output,
    )
    if code:
        click.get_current_context().exit(code)
