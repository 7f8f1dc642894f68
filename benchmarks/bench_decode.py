"""Decoding one 100-item ``/kms`` page: phala-kms vs phala-cloud (pydantic) vs ``json.loads``.

The page is the fake API's node-centric ``GET /kms?page=1&page_size=100`` body (995
off-chain + 5 on-chain nodes: mixed nulls, a ``k256_pubkey`` on some items, an unknown
``region`` on others), fetched once. Each contender then runs in a fresh interpreter of
its own (no allocator or cache state shared with another contender), warms up, and times
``--number`` back-to-back decodes ``--repeats`` times; its figure for the round is the
median of those. Rounds are interleaved and the order rotates each round; the table
shows the median over rounds, and every ratio is taken between medians of this run.

Contenders:

* ``json.loads``: parsing alone, the floor every contender pays.
* ``phala-kms structure``: ``json.loads`` + ``phala_kms._convert.structure(...,
  Paginated[KMSInfo])``, strict, unknown keys kept in ``extra``.
* ``phala-kms decode_response``: what the client runs on a 200 response (the same, plus
  the status dispatch).
* ``phala-kms converter only``: ``json.loads`` + the cattrs slow path alone
  (``structure_checked``), i.e. the decode before the generated fast path.
* ``phala-cloud``: ``json.loads`` + ``GetKmsListResponse.model_validate``, what
  phala-cloud's client does with ``response.json()``.
* ``pydantic model_validate_json``: pydantic parsing the bytes itself (Rust JSON
  parser); phala-cloud does not use it, shown for reference.
* ``phala-kms structure, orjson``: ``orjson.loads`` + ``structure``, to show what
  orjson would save (phala-kms does not use it); unavailable unless orjson is installed.

Run: ``python benchmarks/bench_decode.py`` (``--rounds 7 --number 500 --repeats 7``;
``--quick`` for a smoke run). phala-cloud is installed with ``pip install --no-deps
phala-cloud`` (see noxfile.py's bench session); when it cannot be imported its rows
say so and the run carries on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOADS = "json.loads"
OURS = "phala-kms structure"
OURS_RESPONSE = "phala-kms decode_response"
OURS_SLOW = "phala-kms converter only"
PHALA_CLOUD = "phala-cloud"
PYDANTIC_JSON = "pydantic model_validate_json"
OURS_ORJSON = "phala-kms structure, orjson"
CONTENDERS = [LOADS, OURS, OURS_RESPONSE, OURS_SLOW, PHALA_CLOUD, PYDANTIC_JSON, OURS_ORJSON]
LABELS = {
    LOADS: "json.loads alone",
    OURS: "json.loads + structure(Paginated[KMSInfo])",
    OURS_RESPONSE: "decode_response(200, body, Paginated[KMSInfo])",
    OURS_SLOW: "json.loads + cattrs converter only (before)",
    PHALA_CLOUD: "json.loads + GetKmsListResponse.model_validate",
    PYDANTIC_JSON: "GetKmsListResponse.model_validate_json (ref.)",
    OURS_ORJSON: "orjson.loads + structure (ref., if installed)",
}


def fetch_page() -> bytes:
    """The fake API's 100-item node-centric ``/kms`` page, as sent."""
    from phala_kms._constants import HEADER_API_KEY, HEADER_VERSION, NODE_API_VERSION
    from phala_kms.testing import FakeKMSServer

    with FakeKMSServer.in_thread(phala_node_count=995) as server:
        request = urllib.request.Request(  # noqa: S310 - the loopback fake
            f"{server.base_url}/kms?page=1&page_size=100",
            headers={HEADER_API_KEY: server.api_key, HEADER_VERSION: NODE_API_VERSION},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback fake
            body: bytes = resp.read()
    if len(json.loads(body)["items"]) != 100:
        raise RuntimeError("the fake did not return 100 items")
    return body


def make_case(name: str, body: bytes) -> Callable[[], object]:
    """The decode ``name`` stands for (imports only what that contender needs)."""
    if name == LOADS:
        return lambda: json.loads(body)
    if name == OURS_ORJSON:
        import orjson

        from phala_kms._convert import structure
        from phala_kms.models import KMSInfo, Paginated

        return lambda: structure(orjson.loads(body), Paginated[KMSInfo])
    if name in (OURS, OURS_SLOW, OURS_RESPONSE):
        from phala_kms._convert import structure, structure_checked
        from phala_kms._responses import decode_response
        from phala_kms.models import KMSInfo, Paginated

        model = Paginated[KMSInfo]
        if name == OURS:
            return lambda: structure(json.loads(body), model)
        if name == OURS_SLOW:
            return lambda: structure_checked(json.loads(body), model)
        headers = {"Content-Type": "application/json"}
        return lambda: decode_response(
            status=200, headers=headers, body=body, method="GET", url="u", now=0.0, model=model
        )
    from phala_cloud.models import GetKmsListResponse

    if name == PHALA_CLOUD:
        return lambda: GetKmsListResponse.model_validate(json.loads(body))
    if name == PYDANTIC_JSON:
        return lambda: GetKmsListResponse.model_validate_json(body)
    raise ValueError(name)


def child(name: str, body_path: str, number: int, repeats: int) -> None:
    """Time one contender in this (fresh) process; print microseconds per decode as JSON."""
    func = make_case(name, Path(body_path).read_bytes())
    for _ in range(max(50, number // 5)):  # warm up: imports, generated code, caches
        func()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            func()
        samples.append((time.perf_counter() - start) / number * 1e6)
    print(json.dumps({"us": statistics.median(samples), "samples": samples}))


def run_child(name: str, body_path: str, number: int, repeats: int) -> float | str:
    """Microseconds per decode from a fresh interpreter, or the reason it failed."""
    args = [sys.executable, __file__, "--child", name, "--body", body_path]
    args += ["--number", str(number), "--repeats", str(repeats)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return lines[-1]
    return float(json.loads(done.stdout)["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=500, help="decodes per timed repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per process")
    parser.add_argument("--quick", action="store_true", help="1 round, few calls (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.body, opts.number, opts.repeats)
        return
    if opts.quick:
        opts.rounds, opts.number, opts.repeats = 1, 50, 3

    body = fetch_page()
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        body_path = str(Path(tmp) / "kms_page_100.json")
        Path(body_path).write_bytes(body)
        for round_no in range(opts.rounds):
            shift = round_no % len(CONTENDERS)
            for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                if name in failures:
                    continue
                got = run_child(name, body_path, opts.number, opts.repeats)
                if isinstance(got, str):
                    failures[name] = got
                else:
                    results[name].append(got)
            print(f"round {round_no + 1}/{opts.rounds} done", file=sys.stderr)
    report(body, results, failures, opts)


def report(
    body: bytes, results: dict[str, list[float]], failures: dict[str, str], opts: Any
) -> None:
    medians = {name: statistics.median(v) for name, v in results.items() if v}
    best = {name: min(v) for name, v in results.items() if v}
    loads, loads_best = medians.get(LOADS, float("nan")), best.get(LOADS, float("nan"))
    pc, pc_best = medians.get(PHALA_CLOUD), best.get(PHALA_CLOUD)
    print(
        f"\ndecode of one 100-item /kms page ({len(body):,} bytes): us per decode; median and "
        f"best of {opts.rounds} rounds (a fresh process per contender per round, "
        f"{opts.repeats} x {opts.number} calls each)"
    )
    print(
        f"  {'contender':<50} {'median':>9} {'x loads':>8} {'x p-cloud':>9}"
        f" {'best':>9} {'x loads':>8} {'x p-cloud':>9}"
    )
    for name in CONTENDERS:
        if name in failures:
            print(f"  {LABELS[name]:<50} unavailable: {failures[name]}")
            continue
        us, low = medians[name], best[name]
        vs_pc = f"{us / pc:8.2f}x" if pc else f"{'-':>9}"
        vs_pc_best = f"{low / pc_best:8.2f}x" if pc_best else f"{'-':>9}"
        print(
            f"  {LABELS[name]:<50} {us:6.1f} us {us / loads:7.2f}x {vs_pc}"
            f" {low:6.1f} us {low / loads_best:7.2f}x {vs_pc_best}"
        )
    if pc and pc_best and OURS in medians:
        ratio, ratio_best = medians[OURS] / pc, best[OURS] / pc_best
        verdict = "PASS" if ratio <= 1.0 else "MISS"
        print(
            f"\n  target: phala-kms decode <= phala-cloud's: {verdict} {ratio:.2f}x by median,"
            f" {ratio_best:.2f}x best round; work beyond json.loads (median): phala-kms"
            f" {medians[OURS] - loads:.1f} us, phala-cloud {pc - loads:.1f} us"
        )


if __name__ == "__main__":
    main()
