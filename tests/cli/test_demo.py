"""``phala-kms demo``: the embedded-fake walk-through, a real subprocess, a failing step,
and the read-only mode against an API given by URL and key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result

from phala_kms.cli import ExitCode, _demo, cli
from phala_kms.testing import CONTRACT_API_VERSION, FakeKMSServer

STEP_TITLES = [
    "List every KMS node across all pages",
    "Read one KMS node",
    "List the KMS contracts",
    "Read Base's on-chain KMS detail",
    "Predict the next app ids",
    "Fan out verified public-key fetches",
    "Encrypt a sample env for every app",
    "Round trip: decrypt one with the app's private key",
    "Show a typed error",
    "Survive an injected 503 with one retry",
    "Deploy a DstackKms stand-in on an in-process chain",
    "Read the KMS root key from the chain",
    "Cross-check the root key: chain, API and nodes agree",
    "Verify the app key (signature_v1), encrypt, decrypt with the app's key",
]
FAKE_ONLY = {8, 10, 11, 12, 13, 14}
CHAIN_STEPS = (11, 12, 13, 14)


def demo(*args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "demo"], catch_exceptions=False)


def test_demo_against_the_embedded_fake() -> None:
    result = demo()
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "against the embedded fake API at http://127.0.0.1:" in out
    for title in STEP_TITLES:
        assert title in out
    assert "FAIL" not in out
    assert "51 unique nodes" in out  # 50, and the KMS whose contract is on the local EVM
    assert "get_kms_on_chain_detail('base')" in out
    assert "trusted signer = contracts[0].k256_pubkey" in out
    assert "300 keys, every signature verified" in out
    assert "every value matches (values not shown)" in out
    assert "raised NotFoundError" in out
    assert "request_id='req_fake" in out
    assert "retrying GET" in out
    assert "(retry 1 of 2) after ServerError 503" in out
    # the chain of trust, end to end
    assert "eth-tester + py-evm (a real EVM running the bytecode): chain " in out
    assert "eth_chainId = " in out
    assert "eth_call kmsInfo()" in out
    assert "3 sources agree on" in out
    assert "SignatureVerificationError(reason='anchor_mismatch')" in out
    assert "(app_not_registered)" in out
    assert "signature_v1 verified (timestamp" in out
    assert "the app's private key opens it: 3 variables, every value matches" in out
    assert "Summary: 14 of 14 steps ok (0 failed, 0 skipped)" in out
    for value in _demo.SAMPLE_ENV.values():
        assert value not in result.output
    assert "\x1b[" not in out


def test_demo_json_report() -> None:
    result = demo("--json", "--max-retries", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["mode"] == "fake"
    assert report["counts"] == {"ok": 14, "failed": 0, "skipped": 0}
    assert [step["title"] for step in report["steps"]] == STEP_TITLES
    assert all(step["status"] == "ok" and step["error"] is None for step in report["steps"])
    assert "Summary:" in result.stderr  # people's output moves to stderr


def test_demo_fan_out_size_is_configurable() -> None:
    result = CliRunner().invoke(cli, ["demo", "--apps", "12", "--concurrency", "4"])
    assert result.exit_code == 0, result.output
    assert "12 keys, every signature verified" in result.stdout
    assert "concurrency=4" in result.stdout


def test_demo_as_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHALA_CLOUD_")}
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "phala_kms.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Summary: 14 of 14 steps ok" in proc.stdout
    assert "retrying GET" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_failing_step_fails_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without on-chain contracts there is no Base signer: that step fails, the steps that
    need it are skipped, the others still run, and the exit code is non-zero."""
    monkeypatch.setattr(_demo, "FAKE_SERVER_OPTIONS", {"include_onchain": False})
    result = demo("--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    status = {step["number"]: step["status"] for step in report["steps"]}
    assert status[4] == "failed"
    assert status[6] == status[7] == status[8] == "skipped"
    assert status[1] == status[9] == status[10] == "ok"
    # the chain of trust needs no Base contract: its KMS is on the local EVM
    assert all(status[number] == "ok" for number in CHAIN_STEPS)
    assert "no KMS contract on base" in report["steps"][3]["error"]
    assert report["ok"] is False
    assert "FAIL" in result.stderr


def test_a_typed_error_sets_the_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step failing with an SDK error exits with that error's code (here 5, network)."""
    from phala_kms.errors import ConnectRefusedError
    from phala_kms.sync import KMSClient

    def refused(self: KMSClient, *args: object, **kwargs: object) -> None:
        raise ConnectRefusedError("connection to 127.0.0.1:1 refused")

    monkeypatch.setattr(KMSClient, "next_app_ids", refused)
    result = demo()
    assert result.exit_code == ExitCode.NETWORK
    assert "ConnectRefusedError" in result.stdout
    assert "13 of 14 steps ok (1 failed, 0 skipped)" in result.stdout


def test_without_an_evm_the_chain_steps_run_on_the_pure_python_stand_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pip install -e '.[cli]'`` brings eth-abi but no EVM (eth-tester, py-evm): the
    chain of trust then runs on the pure-Python DstackKms stand-in, every step ok, and
    step 11 says which chain it used."""
    monkeypatch.setitem(sys.modules, "eth_tester", None)
    result = demo("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["counts"] == {"ok": 14, "failed": 0, "skipped": 0}
    steps = {step["number"]: step for step in report["steps"]}
    where = steps[11]["details"][0]
    assert where.startswith("DstackKmsStandIn (pure Python, no EVM")
    assert "eth-tester not installed" in where
    assert "pip install -e '.[cli,test]'" in where
    assert "eth-tester + py-evm" not in result.stderr
    assert "eth_call kmsInfo()" in " ".join(steps[12]["details"])
    assert "3 sources agree on" in " ".join(steps[13]["details"])
    assert "every value matches" in " ".join(steps[14]["details"])
    assert "51 unique nodes" in " ".join(steps[1]["details"])


def test_without_eth_abi_the_chain_steps_are_skipped_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eth-abi (part of ``[cli]``) missing: the demo still exits 0, every other step ok,
    the chain steps skipped, saying to reinstall with the [cli] extra."""
    monkeypatch.setitem(sys.modules, "eth_abi", None)
    result = demo("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["counts"] == {"ok": 10, "failed": 0, "skipped": 4}
    for step in report["steps"]:
        assert step["status"] == ("skipped" if step["number"] in CHAIN_STEPS else "ok"), step
    why = report["steps"][10]["details"][0]
    assert "eth-abi, which is not installed" in why
    assert "pip install -e '.[cli]'" in why
    assert "50 unique nodes" in " ".join(report["steps"][0]["details"])


def test_demo_read_only_against_a_given_api(server: FakeKMSServer) -> None:
    """With a base URL and key (here: a fake standing in for the real API), only the
    read-only steps run; no fault is injected and nothing is decrypted."""
    result = CliRunner().invoke(
        cli,
        ["--json", "demo"],
        env={"PHALA_CLOUD_API_PREFIX": server.base_url, "PHALA_CLOUD_API_KEY": server.api_key},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "remote"
    assert report["base_url"] == server.base_url
    for step in report["steps"]:
        assert step["status"] == ("skipped" if step["number"] in FAKE_ONLY else "ok"), step
    assert "20 keys, every signature verified" in " ".join(report["steps"][5]["details"])
    assert server.injections == []
    # one read (step 2), get_trusted_signer("base")'s contract lookup (step 4), one 404
    # (step 9); no 503 retry
    assert server.route_counts.get("kms_info", 0) == 3
    lookups = [(r.path.rsplit("/", 1)[-1], r.phala_version) for r in server.requests]
    assert ("base", CONTRACT_API_VERSION) in lookups
    assert server.api_key not in result.output


def test_demo_with_a_url_but_no_key_exits_3(server: FakeKMSServer) -> None:
    result = CliRunner().invoke(cli, ["--base-url", server.base_url, "demo"])
    assert result.exit_code == ExitCode.AUTH
    assert "error: a base URL is set but no API key" in result.stderr
    assert "hint: set PHALA_CLOUD_API_KEY" in result.stderr
    assert server.total_requests == 0


def test_demo_with_a_wrong_key_fails_with_auth_code(server: FakeKMSServer) -> None:
    result = CliRunner().invoke(
        cli, ["--base-url", server.base_url, "--api-key", "phak_wrong_key_123456", "demo"]
    )
    assert result.exit_code == ExitCode.AUTH
    assert "PermissionDeniedError" in result.stdout
    assert "phak_wrong_key_123456" not in result.output
