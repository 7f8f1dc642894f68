"""Pressure benchmarks: rate limits, outages, a full pool, a huge streaming fan-out.

``python benchmarks/pressure.py`` runs every scenario in a fresh Python process (so
no state, pool or rate estimate carries over) against the ``phala_kms.testing`` fake
on 127.0.0.1: in a thread of that process for the HTTP-behaviour scenarios (at a few
hundred requests per second it is far from busy), and in a process of its own for the
memory scenario (so its RSS is not counted). It prints one table with each scenario's
figures and target, and writes them to ``benchmarks/results/pressure.json``.

``--only NAME[,NAME]`` runs some scenarios; ``--quick`` runs smaller sizes (smoke
test, figures meaningless); ``--repeat N`` runs each scenario N times (each in a fresh
process) and reports every run. ``--scenario NAME`` is the child's entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

RATE, BURST = 300, 30


def app_ids(count: int, offset: int = 0) -> Iterator[str]:
    """Distinct app ids, made lazily."""
    for i in range(offset, offset + count):
        yield f"{i + 1:040x}"


def vm_hwm() -> float:
    """Peak RSS of this process (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- scenarios


def _errors(results: list[Any]) -> int:
    from phala_kms import PhalaKMSError

    return sum(isinstance(r, PhalaKMSError) for r in results)


def rate_limited(kind: str, ids: int) -> dict[str, Any]:
    """``ids`` pubkey calls against 429 + Retry-After: 1 at 300 req/s, burst 30."""
    from phala_kms import AsyncKMSClient, KMSClient, PhalaKMSError
    from phala_kms.testing import FakeKMSServer, RateLimit

    with FakeKMSServer.in_thread(signature_cache_size=ids + 100) as server:
        # warm the fake's signature cache first, unlimited, so it is not the bottleneck
        with KMSClient(server.api_key, server.base_url) as warm:
            warm.get_app_env_encrypt_pubkeys("phala", app_ids(ids), concurrency=64)
        server.reset()
        server.rate_limit = RateLimit(rate=RATE, burst=BURST, retry_after=1)
        keys = list(app_ids(ids))
        started = time.perf_counter()
        if kind == "threads":
            failures = 0
            lock = threading.Lock()
            with KMSClient(server.api_key, server.base_url) as client:
                chunks = [keys[i::16] for i in range(16)]

                def run(chunk: list[str]) -> None:
                    nonlocal failures
                    for app in chunk:
                        try:
                            client.get_app_env_encrypt_pubkey("phala", app)
                        except PhalaKMSError:
                            with lock:
                                failures += 1

                threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        else:

            async def main() -> int:
                async with AsyncKMSClient(server.api_key, server.base_url) as client:
                    if kind == "fanout":
                        results = await client.get_app_env_encrypt_pubkeys(
                            "phala", keys, concurrency=64, return_exceptions=True
                        )
                    else:  # plain gather over single calls
                        results = await asyncio.gather(
                            *(client.get_app_env_encrypt_pubkey("phala", k) for k in keys),
                            return_exceptions=True,
                        )
                    return _errors(list(results))

            failures = asyncio.run(main())
        wall = time.perf_counter() - started
        total = server.total_requests
        limited = server.rate_limited_count
    ideal = ids / RATE
    return {
        "ids": ids,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "requests": total,
        "rate_limited": limited,
        "rate_limited_pct": 100 * limited / max(total, 1),
        "failures": failures,
    }


def outage(ids: int, fraction: float) -> dict[str, Any]:
    """A fan-out over ``ids`` while ``fraction`` of requests get a 503, default policy."""
    from phala_kms import AsyncKMSClient, RetryPolicy
    from phala_kms.testing import FakeKMSServer, Outage

    with FakeKMSServer.in_thread(signature_cache_size=ids + 100) as server:
        server.outage = Outage(fraction=fraction, seed=10)

        async def main() -> tuple[int, float, int, list[int]]:
            from phala_kms import PhalaKMSError

            async with AsyncKMSClient(server.api_key, server.base_url) as client:
                results = await client.get_app_env_encrypt_pubkeys(
                    "phala", list(app_ids(ids)), return_exceptions=True
                )
                budget = client._retrier.budget
                attempts = [r.attempts for r in results if isinstance(r, PhalaKMSError)]
                return _errors(results), budget.tokens, budget.denied, attempts

        started = time.perf_counter()
        failures, tokens, denied, attempts = asyncio.run(main())
        wall = time.perf_counter() - started
        total = server.total_requests
    policy = RetryPolicy()
    budget = policy.retry_budget or 0.0
    return {
        "ids": ids,
        "fraction": fraction,
        "wall_s": wall,
        "requests": total,
        "amplification": total / ids,
        "limit": 1.1 * ids + budget,
        "max_retries": policy.max_retries,
        # an id is lost when all its attempts fail: fraction ** attempts each
        "expected_failures": ids * fraction ** (policy.max_retries + 1),
        "failures": failures,
        "budget_left": tokens,
        "retries_denied": denied,
        "failed_after_attempts": sorted(set(attempts)),
    }


def full_pool(calls: int = 20, latency: float = 0.3) -> dict[str, Any]:
    """``calls`` concurrent calls of ``latency`` s through a pool of 2, timeout=1, no retries."""
    from phala_kms import APITimeoutError, AsyncKMSClient, PhalaKMSError
    from phala_kms.testing import FakeKMSServer, LatencyFault

    with FakeKMSServer.in_thread() as server:
        server.inject("app_pubkey", LatencyFault(latency), times=None)

        async def main() -> tuple[int, int]:
            async with AsyncKMSClient(
                server.api_key, server.base_url, max_connections=2, timeout=1, max_retries=0
            ) as client:
                results = await asyncio.gather(
                    *(client.get_app_env_encrypt_pubkey("phala", k) for k in app_ids(calls)),
                    return_exceptions=True,
                )
            timeouts = sum(isinstance(r, APITimeoutError) for r in results)
            return timeouts, sum(isinstance(r, PhalaKMSError) for r in results)

        started = time.perf_counter()
        timeouts, failures = asyncio.run(main())
        wall = time.perf_counter() - started
        seen = server.total_requests
    return {
        "calls": calls,
        "timeouts": timeouts,
        "failures": failures,
        "server_saw": seen,
        "wall_s": wall,
    }


def streaming(ids: int) -> dict[str, Any]:
    """Stream ``ids`` keys (a lazy generator of ids) at concurrency 64; peak RSS."""
    from _server import ServerProcess

    with ServerProcess(phala_node_count=5, signature_cache_size=2_000) as server:
        from phala_kms import AsyncKMSClient, PhalaKMSError

        async def main() -> tuple[int, int, float]:
            async with AsyncKMSClient(server.api_key, server.base_url) as client:
                got = failures = 0
                before = vm_hwm()
                async for _app, key in client.iter_app_env_encrypt_pubkeys(
                    "phala", app_ids(ids), concurrency=64
                ):
                    got += 1
                    failures += isinstance(key, PhalaKMSError)
                return got, failures, before

        started = time.perf_counter()
        got, failures, before = asyncio.run(main())
        wall = time.perf_counter() - started
    return {
        "ids": ids,
        "yielded": got,
        "failures": failures,
        "wall_s": wall,
        "rss_before_mb": before,
        "peak_rss_mb": vm_hwm(),
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[], dict[str, Any]]


def scenarios(quick: bool) -> list[Scenario]:
    n = 600 if quick else 3_000
    o = 400 if quick else 2_000
    big = 10_000 if quick else 100_000
    return [
        Scenario("ratelimit_fanout", lambda: rate_limited("fanout", n)),
        Scenario("ratelimit_gather", lambda: rate_limited("gather", n)),
        Scenario("ratelimit_threads", lambda: rate_limited("threads", n)),
        Scenario("outage", lambda: outage(o, 1.0)),
        Scenario("blip", lambda: outage(o, 0.1)),
        Scenario("pool", full_pool),
        Scenario("stream_small", lambda: streaming(1_000)),
        Scenario("stream_large", lambda: streaming(big)),
    ]


# --------------------------------------------------------------------------- report


def _row(name: str, figures: str, target: str, ok: bool | None) -> str:
    mark = "    " if ok is None else ("PASS" if ok else "MISS")
    return f"  {mark}  {name:<42} {figures:<60} {target}"


def _ratios(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['ratio']:.2f}x" for r in runs)


def report(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The table: one row per scenario; with several runs, the median run's figures
    (and every run's ratio or failures), a target met only when every run meets it."""
    lines = ["pressure scenarios (loopback, fake server; each scenario a fresh process)"]
    for key, label in (
        ("ratelimit_fanout", "rate limit: fan-out, concurrency 64"),
        ("ratelimit_gather", "rate limit: asyncio.gather of single calls"),
        ("ratelimit_threads", "rate limit: one KMSClient, 16 threads"),
    ):
        runs = results.get(key)
        if not runs:
            continue
        r = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
        figures = (
            f"{r['ids']:,} ids {r['wall_s']:.1f} s ({r['ratio']:.2f}x ideal {r['ideal_s']:.0f} s),"
            f" 429s {r['rate_limited_pct']:.1f}%, {sum(x['failures'] for x in runs)} failed"
        )
        if len(runs) > 1:
            figures += f"; {len(runs)} runs: {_ratios(runs)}"
        if key == "ratelimit_fanout":
            ok = all(
                x["ratio"] <= 1.2 and x["rate_limited_pct"] <= 5 and x["failures"] == 0
                for x in runs
            )
            target = "<= 1.2x, <= 5 % 429s, 0 failed"
        else:
            ok = all(x["failures"] == 0 for x in runs)
            target = "0 failed"
        lines.append(_row(label, figures, target, ok))
    if runs := results.get("outage"):
        r = runs[-1]
        figures = (
            f"{r['ids']:,} ids: {r['requests']:,} requests ({r['amplification']:.2f}x),"
            f" {r['wall_s']:.1f} s"
        )
        lines.append(
            _row(
                "outage: every request 503, default policy",
                figures,
                f"<= {r['limit']:,.0f} (1.1x ids + budget)",
                all(x["requests"] <= x["limit"] for x in runs),
            )
        )
    if runs := results.get("blip"):
        r = runs[-1]
        lost = [x["failures"] for x in runs]
        figures = (
            f"{r['ids']:,} ids, max_retries={r['max_retries']}: {r['requests']:,} requests,"
            f" lost {'+'.join(map(str, lost))} in {len(runs)} run(s)"
            f" (expected {r['expected_failures']:.2g} a run),"
            f" {sum(x['retries_denied'] for x in runs)} retries denied by the budget"
        )
        lines.append(_row("blip: 10 % random 503s", figures, "0 failed", not any(lost)))
    if runs := results.get("pool"):
        r = runs[-1]
        figures = (
            f"{r['timeouts']} of {r['calls']} timed out, server saw {r['server_saw']},"
            f" {r['wall_s']:.1f} s"
        )
        lines.append(
            _row(
                "pool of 2: 20 x 0.3 s calls, timeout=1",
                figures,
                "0 timeouts",
                all(x["timeouts"] == 0 for x in runs),
            )
        )
    smalls, larges = results.get("stream_small"), results.get("stream_large")
    if smalls and larges:
        small, large = smalls[-1], larges[-1]
        growth = large["peak_rss_mb"] - small["peak_rss_mb"]
        figures = (
            f"{small['peak_rss_mb']:.1f} MB (1,000) -> {large['peak_rss_mb']:.1f} MB"
            f" ({large['ids']:,}): +{growth:.1f} MB, {large['wall_s']:.1f} s"
        )
        ok = growth <= 20 and large["yielded"] == large["ids"] and large["failures"] == 0
        lines.append(_row("streaming fan-out peak RSS", figures, "within 20 MB", ok))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", help="run one scenario here and print its JSON")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--json", default=str(HERE / "results" / "pressure.json"))
    args = parser.parse_args()
    table = {s.name: s for s in scenarios(args.quick)}
    if args.scenario:
        print(json.dumps(table[args.scenario].run()))
        return
    names = args.only.split(",") if args.only else list(table)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        command = [sys.executable, __file__, "--scenario", name] + (
            ["--quick"] if args.quick else []
        )
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{name}: FAILED\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            run = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(name, []).append(run)
            print(f"{name}: {time.perf_counter() - started:.1f} s {run}", flush=True)
    print()
    print("\n".join(report(results)))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
