"""Throughput of phala_kms.crypto: env-var encryption and public-key verification.

Run ``python benchmarks/bench_crypto.py`` (a few seconds). Each case is timed with
``time.perf_counter`` over several rounds of a calibrated number of calls; the
median round is reported as operations per second. ``--json PATH`` also writes
the raw figures. When ``dstack_sdk`` is installed its equivalents are timed too,
as a baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from phala_kms.crypto import (
    encrypt_env_vars,
    env_encrypt_pubkey_message,
    keccak256,
    recover_env_encrypt_pubkey_signer,
    verify_env_encrypt_public_key,
)


def _calibrate(func: Callable[[], object], min_time: float) -> int:
    """The number of calls that takes at least ``min_time`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            func()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return number
        number = max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.1))


def _measure(func: Callable[[], object], rounds: int, min_time: float) -> dict[str, Any]:
    number = _calibrate(func, min_time)
    per_round: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            func()
        per_round.append(number / (time.perf_counter() - start))
    return {
        "ops_per_sec_median": statistics.median(per_round),
        "ops_per_sec_rounds": per_round,
        "calls_per_round": number,
        "rounds": rounds,
    }


def _cases() -> dict[str, Callable[[], object]]:
    recipient = X25519PrivateKey.generate().public_key().public_bytes_raw()
    recipient_hex = recipient.hex()
    env = {f"VAR_{i}": f"value-{i}-" + "x" * 24 for i in range(10)}

    signer = PrivateKey()
    trusted = "0x" + signer.public_key.format(compressed=True).hex()
    app_id = os.urandom(20).hex()
    public_key = os.urandom(32).hex()
    stamp = int(time.time())
    legacy = signer.sign_recoverable(
        keccak256(env_encrypt_pubkey_message(public_key, app_id)), hasher=None
    ).hex()
    stamped = signer.sign_recoverable(
        keccak256(env_encrypt_pubkey_message(public_key, app_id, stamp)), hasher=None
    ).hex()

    cases: dict[str, Callable[[], object]] = {
        "encrypt_env_vars (10 vars)": lambda: encrypt_env_vars(env, recipient_hex),
        "verify legacy": lambda: verify_env_encrypt_public_key(
            public_key, legacy, app_id, trusted_signer=trusted
        ),
        "verify timestamped": lambda: verify_env_encrypt_public_key(
            public_key, stamped, app_id, trusted_signer=trusted, timestamp=stamp
        ),
        "recover only (legacy)": lambda: recover_env_encrypt_pubkey_signer(
            public_key, legacy, app_id
        ),
    }
    try:
        from dstack_sdk.encrypt_env_vars import EnvVar as DstackEnvVar
        from dstack_sdk.encrypt_env_vars import encrypt_env_vars_sync
        from dstack_sdk.verify_env_encrypt_public_key import verify_env_encrypt_public_key as dv
    except ImportError:
        return cases
    dstack_env = [DstackEnvVar(k, v) for k, v in env.items()]
    pk_bytes, sig_bytes = bytes.fromhex(public_key), bytes.fromhex(stamped)
    cases["baseline: dstack_sdk encrypt_env_vars_sync"] = lambda: encrypt_env_vars_sync(
        dstack_env, recipient_hex
    )
    cases["baseline: dstack_sdk verify (timestamped)"] = lambda: dv(
        pk_bytes, sig_bytes, app_id, stamp
    )
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write raw figures here")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (5)")
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="seconds per round, at least (0.1)"
    )
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, func in _cases().items():
            results[name] = figures = _measure(func, args.rounds, args.min_time)
            ops = figures["ops_per_sec_median"]
            print(f"{name:<45} {ops:>12,.0f} ops/s  {1e6 / ops:>8.1f} us/op")

    if args.json is not None:
        report = {
            "python": sys.version,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "timer": "time.perf_counter",
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
