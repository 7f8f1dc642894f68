"""Benchmarks: phala-kms against bare aiohttp, requests and the official ``phala-cloud`` SDK.

Run ``nox -s bench`` or, in an environment with the bench dependencies,
``python benchmarks/run.py`` (about 4 minutes on 2 cores; ``--quick``: about 1).
It starts the ``phala_kms.testing`` fake API in a process of its own on 127.0.0.1
(plain HTTP and TLS), warms its signature cache, then measures every contender of
every scenario in a **fresh process of its own** (``_clients.py``), in interleaved
rounds whose order rotates. It prints medians, ratios within this run (the median of
each round's ratio, so drift between rounds cancels) and the physical floor of a
blocking call, marks the targets PASS/MISS, and writes every raw figure to
``benchmarks/results/latest.json``. See ``benchmarks/README.md``.

Only ratios within one run mean anything: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _clients import WARM_IDS, app_ids  # noqa: E402
from _server import ServerProcess  # noqa: E402

MB = 1024 * 1024

LABELS = {
    "hop_rct": "empty hop, run_coroutine_threadsafe",
    "hop_lock": "empty hop, task + lock handoff",
    "aiohttp": "bare aiohttp (caller's loop)",
    "aiohttp_workers": "bare aiohttp, 64 workers",
    "aiohttp_rct": "bare aiohttp via rct hop",
    "aiohttp_lock": "bare aiohttp via lock hop",
    "async": "AsyncKMSClient",
    "sync": "KMSClient",
    "requests": "requests.Session per thread",
    "pc_async": "phala-cloud async",
    "pc_sync": "phala-cloud sync",
}


@dataclass(frozen=True)
class Scenario:
    key: str  # unique: the row group in the table
    kind: str  # seq, fanout, threads: what _clients.py runs
    title: str
    count: int
    contenders: tuple[str, ...]
    baseline: str
    tls: bool = False
    threads: int = 1
    unit: str = "us/call"  # or req/s

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "req/s"


@dataclass(frozen=True)
class Sizes:
    sequential: int = 2_000
    fanout_small: int = 2_000
    fanout_large: int = 10_000
    threads: int = 2_000
    rounds: int = 5


FULL = Sizes()
QUICK = Sizes(sequential=600, fanout_small=1_000, fanout_large=3_000, threads=600, rounds=3)
PC = ("pc_async", "pc_sync")


def scenarios(sizes: Sizes) -> list[Scenario]:
    seq = ("hop_rct", "hop_lock", "aiohttp", "aiohttp_rct", "aiohttp_lock", "async", "sync")
    plan = [
        Scenario(
            "seq",
            "seq",
            f"sequential: {sizes.sequential:,} pubkey GETs, one at a time, plain HTTP",
            sizes.sequential,
            (*seq, *PC),
            "aiohttp",
        ),
        Scenario(
            "seq_tls",
            "seq",
            f"sequential over TLS (trustme CA on loopback): {sizes.sequential:,} pubkey GETs",
            sizes.sequential,
            ("aiohttp", "aiohttp_lock", "async", "sync"),
            "aiohttp",
            tls=True,
        ),
    ]
    for count in (sizes.fanout_small, sizes.fanout_large):
        plan.append(
            Scenario(
                f"fanout_{count}",
                "fanout",
                f"fan-out: {count:,} pubkey GETs, concurrency 64",
                count,
                ("aiohttp", "aiohttp_workers", "async", "sync")
                + (PC if count == sizes.fanout_small else ()),
                "aiohttp",
                unit="req/s",
            )
        )
    for threads in (1, 4, 16):
        plan.append(
            Scenario(
                f"threads_{threads}",
                "threads",
                f"threads: {sizes.threads:,} pubkey GETs split among {threads} thread(s)"
                " (one shared KMSClient; a requests.Session per thread)",
                sizes.threads,
                ("requests", "sync"),
                "requests",
                threads=threads,
                unit="req/s",
            )
        )
    return plan


# --------------------------------------------------------------------------- measuring


def child(
    scenario: Scenario, contender: str, server: ServerProcess, warm_offset: int
) -> dict[str, Any]:
    """One measurement in a fresh interpreter; a failure is recorded, not fatal."""
    spec = {
        "contender": contender,
        "scenario": scenario.kind,
        "count": scenario.count,
        "threads": scenario.threads,
        "base_url": server.tls_base_url if scenario.tls else server.base_url,
        "api_key": server.api_key,
        "ca_file": server.ca_file if scenario.tls else None,
        "server_pid": server.pid,
        "warm_offset": warm_offset,
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "_clients.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        print(f"\n  {contender} {scenario.key} failed: {message}", flush=True)
        return {"error": message}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def warm_server(server: ServerProcess, ids: Sequence[str]) -> dict[str, float]:
    """Fetch every benchmark id (signs and caches them), in a child of its own."""
    code = (
        "import asyncio, aiohttp, sys\n"
        "base, key, ids = sys.argv[1], sys.argv[2], sys.stdin.read().split(',')\n"
        "async def main():\n"
        "    sem = asyncio.Semaphore(64)\n"
        "    async with aiohttp.ClientSession(headers={'X-API-Key': key}) as s:\n"
        "        async def one(app):\n"
        "            async with sem, s.get(f'{base}/kms/phala/pubkey/{app}') as r:\n"
        "                r.raise_for_status(); await r.read()\n"
        "        await asyncio.gather(*(one(a) for a in ids))\n"
        "asyncio.run(main())\n"
    )
    s0, t0 = server.cpu_seconds(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, server.base_url, server.api_key],
        input=",".join(ids),
        text=True,
        check=True,
        timeout=600,
    )
    cpu = server.cpu_seconds() - s0
    return {
        "wall_s": time.perf_counter() - t0,
        "server_cpu_us_per_request": cpu / len(ids) * 1e6,
    }


IMPORTS = {
    "import phala_kms": "import phala_kms",
    "import aiohttp": "import aiohttp",
    "from phala_kms import KMSClient": "from phala_kms import KMSClient",
    "import phala_cloud": "import phala_cloud",
}


def import_seconds(statement: str, pycache: str) -> float:
    """Seconds to run ``statement`` in a fresh interpreter (start-up excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-X", f"pycache_prefix={pycache}", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return float(out.stdout.strip())


def phala_cloud_problem() -> str | None:
    out = subprocess.run(
        [sys.executable, "-c", "import phala_cloud, httpx"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode == 0:
        return None
    return (out.stderr.strip().splitlines() or ["import failed"])[-1][:200]


# --------------------------------------------------------------------------- reporting


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def metric(scenario: Scenario, run: dict[str, Any]) -> float:
    if scenario.unit == "req/s":
        return float(run["requests"] / run["wall_s"])
    return float(run["wall_s"] / run["requests"] * 1e6)


@dataclass
class Row:
    value: float
    ratio: float  # the median of each round's value / the baseline's value that round
    cpu_ratio: float  # the same for client CPU per request
    cpu_us: float
    server_share: float
    peak_rss_mb: float
    rounds: int
    ratios: list[float] = field(default_factory=list)


def summarise(scenario: Scenario, runs: list[dict[str, Any]]) -> dict[str, Row]:
    mine = [r for r in runs if r["scenario"] == scenario.key and "error" not in r]
    base = {r["round"]: metric(scenario, r) for r in mine if r["contender"] == scenario.baseline}
    base_cpu = {r["round"]: r["cpu_s"] for r in mine if r["contender"] == scenario.baseline}
    rows: dict[str, Row] = {}
    for name in scenario.contenders:
        own = [r for r in mine if r["contender"] == name]
        if not own:
            continue
        ratios = [metric(scenario, r) / base[r["round"]] for r in own if r["round"] in base]
        rows[name] = Row(
            value=median([metric(scenario, r) for r in own]),
            ratio=median(ratios),
            cpu_ratio=median(
                [r["cpu_s"] / base_cpu[r["round"]] for r in own if r["round"] in base]
            ),
            cpu_us=median([r["cpu_s"] / r["requests"] * 1e6 for r in own]),
            server_share=median([r["server_cpu_s"] / r["wall_s"] for r in own]),
            peak_rss_mb=median([r["peak_rss"] / MB for r in own]),
            rounds=len(own),
            ratios=ratios,
        )
    return rows


def fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit == "req/s" or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def report(plan: list[Scenario], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the tables and the targets; return the medians and verdicts."""
    summary: dict[str, Any] = {"scenarios": {}, "targets": []}
    tables: dict[str, dict[str, Row]] = {}
    for scenario in plan:
        rows = tables[scenario.key] = summarise(scenario, runs)
        better = "higher" if scenario.higher_is_better else "lower"
        print(f"\n{scenario.title}  ({scenario.unit}, {better} is better)")
        print(
            f"  {'contender':<38}{'median':>9} {'unit':<8}{'vs ' + scenario.baseline:>13}"
            f"{'CPU/req':>10}{'CPU vs':>8}{'server':>8}{'peak RSS':>10}"
        )
        for name in scenario.contenders:
            row = rows.get(name)
            if row is None:
                errors = [
                    r["error"]
                    for r in runs
                    if r["scenario"] == scenario.key and r["contender"] == name and "error" in r
                ]
                why = errors[0] if errors else "not run"
                print(f"  {LABELS[name]:<38}{'-':>9}  ({why[:80]})")
                continue
            floor = name.startswith("hop_")
            ratio = "" if floor else f"{row.ratio:.2f}x"
            cpu_ratio = "" if floor else f"{row.cpu_ratio:.2f}x"
            print(
                f"  {LABELS[name]:<38}{fmt(row.value, scenario.unit):>9} {scenario.unit:<8}"
                f"{ratio:>13}{row.cpu_us:>7.0f} us{cpu_ratio:>8}{row.server_share:>8.0%}"
                f"{row.peak_rss_mb:>7.1f} MB   (n={row.rounds})"
            )
        summary["scenarios"][scenario.key] = {k: vars(v) for k, v in rows.items()}

    keys = {s.key for s in plan}

    def ratio(key: str, name: str) -> float:
        row = tables.get(key, {}).get(name)
        return row.ratio if row is not None else float("nan")

    def cpu_ratio(key: str, name: str) -> float:
        row = tables.get(key, {}).get(name)
        return row.cpu_ratio if row is not None else float("nan")

    def cpu(key: str, name: str) -> float:
        row = tables.get(key, {}).get(name)
        return row.cpu_us if row is not None else float("nan")

    targets: list[tuple[str, float, str, bool, str]] = []
    for key, what in [(k, w) for k, w in (("seq", "plain"), ("seq_tls", "TLS")) if k in keys]:
        sync, floor = ratio(key, "sync"), ratio(key, "aiohttp_lock")
        cpu_sync, cpu_floor = cpu_ratio(key, "sync"), cpu_ratio(key, "aiohttp_lock")
        targets.append(
            (
                f"KMSClient / bare aiohttp, sequential, {what}",
                sync,
                "<= 1.30",
                sync <= 1.3,
                f"client CPU {cpu_sync:.2f}x",
            )
        )
        targets.append(
            (
                f"KMSClient - (bare aiohttp via the same hop), {what}",
                sync - floor,
                "<= 0.10",
                sync - floor <= 0.1,
                f"client CPU {cpu_sync - cpu_floor:+.2f}",
            )
        )
    for key in [s.key for s in plan if s.kind == "fanout"]:
        fan = ratio(key, "async")
        targets.append(
            (
                f"AsyncKMSClient fan-out / bare gather+sem ({key[7:]} ids)",
                fan,
                ">= 1.00",
                fan >= 1.0,
                f"client CPU {cpu_ratio(key, 'async'):.2f}x",
            )
        )
        per_request = cpu(key, "async") / cpu(key, "aiohttp_workers")
        targets.append(
            (
                f"CPU/req AsyncKMSClient / bare aiohttp, 64 workers ({key[7:]} ids)",
                per_request,
                "<= 1.10",
                per_request <= 1.1,
                "",
            )
        )
    for threads, bound in [
        (t, b) for t, b in ((1, 2.0), (4, 3.5), (16, 3.5)) if f"threads_{t}" in keys
    ]:
        value = ratio(f"threads_{threads}", "sync")
        targets.append(
            (
                f"KMSClient x{threads} threads / requests.Session per thread",
                value,
                f">= {bound}",
                value >= bound,
                f"client CPU {cpu_ratio(f'threads_{threads}', 'sync'):.2f}x",
            )
        )
    print("\ntargets (ratios within this run: the median of the per-round ratios)")
    for label, figure, bound, ok, context in targets:
        note = f"; {context}" if context else ""
        print(f"  {'PASS' if ok else 'MISS'}  {label:<62}{figure:>6.2f}  (target {bound}{note})")
        summary["targets"].append(
            {"target": label, "figure": figure, "bound": bound, "pass": ok, "context": context}
        )
    return summary


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("phala-kms", "aiohttp", "cattrs", "requests", "phala-cloud", "httpx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5; quick 3)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument(
        "--pc-rounds", type=int, default=2, help="rounds that include phala-cloud (2)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenario keys (seq,seq_tls,fanout_2000,...)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write the raw figures (benchmarks/results/latest.json)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or sizes.rounds
    info = machine()
    print(
        f"phala-kms benchmarks: Python {info['python']}, {info['cpu_count']} cores, "
        f"{info['cpu_model']}, load average {info['load_average_at_start'][0]:.2f}"
    )
    plan = scenarios(sizes)
    if args.only:
        wanted = set(args.only.split(","))
        plan = [s for s in plan if s.key in wanted]
    pc_problem = phala_cloud_problem()
    if pc_problem:
        print(f"phala-cloud not measured: {pc_problem}")
    largest = max(s.count for s in plan)
    raw: dict[str, Any] = {"machine": info, "sizes": vars(sizes), "rounds": rounds}
    runs: list[dict[str, Any]] = []
    imports: dict[str, list[float]] = {
        k: [] for k in IMPORTS if pc_problem is None or "cloud" not in k
    }
    with tempfile.TemporaryDirectory(prefix="phala-kms-bench-") as tmp:
        server = ServerProcess(
            phala_node_count=95, signature_cache_size=2 * largest + WARM_IDS, ca_dir=Path(tmp)
        )
        with server:
            print(f"fake server pid {server.pid} at {server.base_url} and {server.tls_base_url}")
            raw["server_warm_up"] = warm_server(
                server, [*app_ids(largest), *app_ids(WARM_IDS, offset=largest)]
            )
            for statement in imports:  # untimed: writes the .pyc files
                import_seconds(IMPORTS[statement], tmp)
            for round_no in range(rounds):
                print(f"round {round_no + 1}/{rounds}:", end="", flush=True)
                for scenario in plan:
                    t0 = time.perf_counter()
                    names = [
                        n
                        for n in scenario.contenders
                        if n not in PC or (pc_problem is None and round_no < args.pc_rounds)
                    ]
                    shift = round_no % len(names)
                    for name in names[shift:] + names[:shift]:  # rotate the order per round
                        run = child(scenario, name, server, largest)
                        run.update(scenario=scenario.key, contender=name, round=round_no + 1)
                        runs.append(run)
                    print(f" {scenario.key} {time.perf_counter() - t0:.0f} s,", end="", flush=True)
                for label in imports:
                    imports[label].append(import_seconds(IMPORTS[label], tmp))
                print(" imports", flush=True)
            raw["server_rss_bytes_at_end"] = server.rss_bytes()
    summary = report(plan, runs)
    print("\nimport time in a fresh interpreter (ms, median; start-up excluded, .pyc warm)")
    medians = {k: median(v) * 1e3 for k, v in imports.items()}
    for label, value in medians.items():
        print(f"  {label:<36}{value:>8.1f} ms  (n={len(imports[label])})")
    summary["imports_ms"] = medians
    elapsed = time.perf_counter() - started
    raw.update(runs=runs, imports=imports, summary=summary, elapsed_s=elapsed)
    print(f"\ntotal bench time {elapsed:.0f} s ({rounds} rounds{', quick' if args.quick else ''})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"raw figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
