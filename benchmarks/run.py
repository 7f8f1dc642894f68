"""Benchmarks: phala-kms against bare aiohttp and the official ``phala-cloud`` SDK.

Run ``nox -s bench`` or, in an environment with the bench dependencies,
``python benchmarks/run.py`` (about 2-3 minutes on 2 cores). It starts the
``phala_kms.testing`` fake API in a separate process on 127.0.0.1, warms its
signature cache, then runs every scenario for every contender in interleaved rounds,
prints a table of medians and ratios with the targets marked PASS/MISS, and writes
every raw figure to ``benchmarks/results/latest.json``. See ``benchmarks/README.md``.

Only ratios within one run mean anything: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_crypto  # noqa: E402  (a sibling script, found through sys.path above)
from _clients import (  # noqa: E402
    NODE_API_VERSION,
    PAGE_SIZE,
    Contender,
    app_ids,
    make_contenders,
)
from _server import ServerProcess  # noqa: E402

MB = 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    key: str  # the op name in Contender.ops
    title: str
    count: int  # requests (or items) per run
    unit: str
    higher_is_better: bool
    contenders: tuple[str, ...]
    repeat: int = 1  # timed repetitions of the operation per run (short operations)


@dataclass(frozen=True)
class Sizes:
    sequential: int = 2_000
    fanout: int = 5_000
    rss_small: int = 1_000
    rss_large: int = 10_000
    pages: int = 50
    warm_ids: int = 128


FULL = Sizes()
QUICK = Sizes(sequential=200, fanout=500, rss_small=100, rss_large=1_000)


def scenarios(sizes: Sizes) -> list[Scenario]:
    return [
        Scenario(
            "sequential",
            f"sequential: {sizes.sequential:,} pubkey GETs, one at a time",
            sizes.sequential,
            "us/call",
            False,
            ("aiohttp", "async", "sync", "pc_async", "pc_sync"),
        ),
        Scenario(
            "fanout",
            f"fan-out: {sizes.fanout:,} pubkey GETs, concurrency 64",
            sizes.fanout,
            "req/s",
            True,
            ("aiohttp", "async", "async_gather", "sync", "pc_async", "pc_sync"),
        ),
        Scenario(
            "unbounded",
            f"fan-out: {sizes.fanout:,} pubkey GETs, unbounded asyncio.gather",
            sizes.fanout,
            "req/s",
            True,
            ("aiohttp", "async", "pc_async"),
        ),
        Scenario(
            "pages",
            f"iter_kms_list: {sizes.pages} pages of {PAGE_SIZE} nodes (10 walks per run)",
            sizes.pages * PAGE_SIZE,
            "ms/50 pages",
            False,
            ("aiohttp", "async", "sync", "pc_async", "pc_sync"),
            repeat=10,
        ),
    ]


# --------------------------------------------------------------------------- measuring


class Meter:
    """Wall time, this process's CPU time and the server process's CPU time of one run."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self.wall = self.cpu = self.server_cpu = 0.0

    def start(self) -> None:
        self._s0 = self._server.cpu_seconds()
        self._c0 = time.process_time()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        self.server_cpu = self._server.cpu_seconds() - self._s0


def run_http(
    contender: Contender,
    scenario: Scenario,
    ids: Sequence[str],
    warm: Sequence[str],
    server: ServerProcess,
) -> dict[str, float]:
    """One timed run: open a client, warm it (untimed), time the operation, close."""
    op = contender.ops[scenario.key]
    sequential = contender.ops.get("sequential", contender.ops[scenario.key])
    meter = Meter(server)
    if contender.style == "async":

        async def main() -> object:
            client = await contender.open()
            try:
                await sequential(client, warm[:16])
                if scenario.key not in ("sequential", "pages"):
                    await op(client, warm)  # opens the pool's connections
                gc.collect()
                meter.start()
                for _ in range(scenario.repeat):
                    result = await op(client, ids)
                meter.stop()
                return result
            finally:
                await contender.close(client)

        result = asyncio.run(main())
    else:
        client = contender.open()
        try:
            sequential(client, warm[:16])
            if scenario.key not in ("sequential", "pages"):
                op(client, warm)
            gc.collect()
            meter.start()
            for _ in range(scenario.repeat):
                result = op(client, ids)
            meter.stop()
        finally:
            contender.close(client)
    expected = scenario.count
    got = result if isinstance(result, int) else (None if result is None else len(result))
    if got is not None and got != expected:
        raise RuntimeError(f"{contender.name} {scenario.key}: {got} results, expected {expected}")
    return {
        "wall_s": meter.wall,
        "client_cpu_s": meter.cpu,
        "server_cpu_s": meter.server_cpu,
        "requests": (scenario.count if scenario.key != "pages" else 50) * scenario.repeat,
    }


def guarded(contender: Contender, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is recorded (and reported), not fatal."""
    try:
        return func()
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".strip()[:500]
        print(f"\n  {contender.label} failed: {message}", flush=True)
        return {"error": message}


def metric(scenario: Scenario, run: dict[str, float]) -> float:
    if scenario.key == "sequential":
        return run["wall_s"] / scenario.count * 1e6
    if scenario.key == "pages":
        return run["wall_s"] / scenario.repeat * 1e3
    return scenario.count / run["wall_s"]


def warm_server(server: ServerProcess, ids: Sequence[str]) -> dict[str, float]:
    """Fetch every benchmark id once (signs and caches them) and every /kms page."""
    import aiohttp

    async def main() -> None:
        headers = {"X-API-Key": server.api_key}
        async with aiohttp.ClientSession(headers=headers) as session:
            semaphore = asyncio.Semaphore(64)

            async def one(app: str) -> None:
                async with semaphore, session.get(f"{server.base_url}/kms/phala/pubkey/{app}") as r:
                    r.raise_for_status()
                    await r.read()

            await asyncio.gather(*(one(app) for app in ids))
            params = {"page": "1", "page_size": "100"}
            async with session.get(
                f"{server.base_url}/kms",
                params=params,
                headers={"X-Phala-Version": NODE_API_VERSION},
            ) as r:
                r.raise_for_status()

    figures = {}
    for name in ("first_pass", "second_pass"):
        s0, t0 = server.cpu_seconds(), time.perf_counter()
        asyncio.run(main())
        wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - s0
        figures[f"{name}_wall_s"] = wall
        figures[f"{name}_server_cpu_s"] = cpu
        figures[f"{name}_server_cpu_us_per_request"] = cpu / len(ids) * 1e6
    return figures


def fetch_kms_page(server: ServerProcess) -> bytes:
    """The raw body of a 100-item node-centric ``/kms`` page."""
    import aiohttp

    async def main() -> bytes:
        headers = {"X-API-Key": server.api_key, "X-Phala-Version": NODE_API_VERSION}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{server.base_url}/kms", params={"page": "1", "page_size": "100"}) as resp,
        ):
            resp.raise_for_status()
            return await resp.read()

    body = asyncio.run(main())
    if len(json.loads(body)["items"]) != 100:
        raise RuntimeError("the fake did not return 100 items")
    return body


def rss_child(name: str, count: int, server: ServerProcess) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "_clients.py"),
            "rss",
            name,
            str(count),
            server.base_url,
            server.api_key,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"RSS child {name} {count} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


IMPORTS = {
    "import phala_kms": "import phala_kms",
    "import aiohttp": "import aiohttp",
    "from phala_kms import AsyncKMSClient": "from phala_kms import AsyncKMSClient",
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


def micro_cases(body: bytes, pc_ok: bool) -> dict[str, Callable[[], object]]:
    from phala_kms._convert import structure
    from phala_kms.models import KMSInfo, Paginated

    cases: dict[str, Callable[[], object]] = {
        "decode: json.loads only": lambda: json.loads(body),
        "decode: json.loads + cattrs Paginated[KMSInfo] (phala_kms)": lambda: structure(
            json.loads(body), Paginated[KMSInfo]
        ),
    }
    if pc_ok:
        from phala_cloud.models import GetKmsListResponse

        cases["decode: json.loads + pydantic GetKmsListResponse (phala-cloud)"] = lambda: (
            GetKmsListResponse.model_validate(json.loads(body))
        )
    for name, func in bench_crypto._cases().items():
        label = name.replace("baseline: dstack_sdk", "dstack_sdk (= phala-cloud's)")
        cases[f"crypto: {label}"] = func
    return cases


def timed_calls(func: Callable[[], object], number: int) -> float:
    """Operations per second over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        func()
    return number / (time.perf_counter() - start)


# --------------------------------------------------------------------------- reporting


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit in ("req/s", "ops/s"):
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float, b: float) -> str:
    if a != a or b != b or not b:
        return "n/a"
    return f"{a / b:.2f}x"


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
    for dist in (
        "phala-kms",
        "aiohttp",
        "cattrs",
        "attrs",
        "phala-cloud",
        "httpx",
        "pydantic",
        "dstack-sdk",
        "coincurve",
        "cryptography",
    ):
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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument(
        "--pc-rounds",
        type=int,
        default=3,
        help="of those, how many include the slow phala-cloud HTTP runs (3)",
    )
    parser.add_argument(
        "--rss-rounds",
        type=int,
        default=3,
        help="of those, how many include the RSS children (3; phala-cloud: 1)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write the raw figures (benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="seconds per micro-benchmark round (0.1)"
    )
    parser.add_argument(
        "--import-samples",
        type=int,
        default=3,
        help="fresh-interpreter imports per statement per round (3)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    info = machine()
    print(
        f"phala-kms benchmarks: Python {info['python']}, {info['cpu_count']} cores, "
        f"{info['cpu_model']}, load average {info['load_average_at_start'][0]:.2f}"
    )

    ids = app_ids(max(sizes.rss_large, sizes.fanout, sizes.sequential))
    warm = app_ids(sizes.warm_ids, offset=len(ids))
    # 995 off-chain + 5 on-chain nodes: exactly 50 pages of 20.
    nodes = sizes.pages * PAGE_SIZE - 5
    raw: dict[str, Any] = {
        "machine": info,
        "sizes": sizes.__dict__,
        "rounds": args.rounds,
        "pc_rounds": args.pc_rounds,
        "rss_rounds": args.rss_rounds,
    }
    http_runs: list[dict[str, Any]] = []
    rss_runs: list[dict[str, Any]] = []
    import_runs: dict[str, list[float]] = {name: [] for name in IMPORTS}
    micro_runs: dict[str, list[float]] = {}

    with ServerProcess(phala_node_count=nodes, signature_cache_size=2 * len(ids)) as server:
        print(f"fake server pid {server.pid} at {server.base_url}; warming its cache ...")
        raw["server_warm_up"] = warmed = warm_server(server, [*ids, *warm])
        print(
            f"server CPU per pubkey request: {warmed['first_pass_server_cpu_us_per_request']:.0f}"
            f" us signing, {warmed['second_pass_server_cpu_us_per_request']:.0f} us cached"
        )
        contenders = make_contenders(server.base_url, server.api_key)
        pc_problem = contenders["pc_async"].unavailable
        if pc_problem:
            print(f"phala-cloud unavailable: {pc_problem}")
        raw["phala_cloud_unavailable"] = pc_problem
        plan = scenarios(sizes)
        page_body = fetch_kms_page(server)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cases = micro_cases(page_body, pc_ok=pc_problem is None)
            numbers = {name: bench_crypto._calibrate(f, args.min_time) for name, f in cases.items()}
        with tempfile.TemporaryDirectory(prefix="phala-kms-bench-pyc-") as pycache:
            imports = {k: v for k, v in IMPORTS.items() if pc_problem is None or "cloud" not in k}
            for statement in imports.values():  # untimed: writes the .pyc files
                import_seconds(statement, pycache)
            for round_no in range(args.rounds):
                print(f"round {round_no + 1}/{args.rounds}:", end="", flush=True)
                for scenario in plan:
                    t0 = time.perf_counter()
                    names = [
                        n
                        for n in scenario.contenders
                        if not contenders[n].unavailable
                        and (round_no < args.pc_rounds or not n.startswith("pc_"))
                    ]
                    shift = round_no % len(names)
                    for name in names[shift:] + names[:shift]:  # rotate the order per round
                        run = guarded(
                            contenders[name],
                            lambda name=name, scenario=scenario: run_http(
                                contenders[name], scenario, ids[: scenario.count], warm, server
                            ),
                        )
                        run.update(scenario=scenario.key, contender=name, round=round_no + 1)
                        http_runs.append(run)
                    print(f" {scenario.key} {time.perf_counter() - t0:.0f} s,", end="", flush=True)
                t0 = time.perf_counter()
                for name in ("aiohttp", "async", "sync", "pc_async", "pc_sync"):
                    # RSS hardly varies between runs; phala-cloud's take ~25 s: run it once.
                    limit = 1 if name.startswith("pc_") else args.rss_rounds
                    if contenders[name].unavailable or round_no >= limit:
                        continue
                    for count in (sizes.rss_small, sizes.rss_large):
                        rss = guarded(
                            contenders[name],
                            lambda name=name, count=count: rss_child(name, count, server),
                        )
                        rss.update(contender=name, ids=count, round=round_no + 1)
                        rss_runs.append(rss)
                print(f" rss {time.perf_counter() - t0:.0f} s,", end="", flush=True)
                t0 = time.perf_counter()
                for _ in range(args.import_samples):
                    for label, statement in imports.items():
                        import_runs[label].append(import_seconds(statement, pycache))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    for name, func in cases.items():
                        micro_runs.setdefault(name, []).append(timed_calls(func, numbers[name]))
                print(f" imports+micro {time.perf_counter() - t0:.0f} s", flush=True)
        raw["server_rss_bytes_at_end"] = server.rss_bytes()

    elapsed = time.perf_counter() - started
    raw.update(
        http=http_runs,
        rss=rss_runs,
        imports=import_runs,
        micro={
            k: {"ops_per_sec_rounds": v, "calls_per_round": numbers[k]}
            for k, v in micro_runs.items()
        },
        elapsed_s=elapsed,
    )
    summary = report(plan, contenders, http_runs, rss_runs, import_runs, micro_runs, sizes)
    raw["summary"] = summary
    print(
        f"\ntotal bench time {elapsed:.0f} s ({args.rounds} rounds, phala-cloud in "
        f"{min(args.pc_rounds, args.rounds)}"
        f"{', quick sizes' if args.quick else ''})"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"raw figures: {args.json}")
    return 0


def report(
    plan: list[Scenario],
    contenders: dict[str, Contender],
    http_runs: list[dict[str, Any]],
    rss_runs: list[dict[str, Any]],
    import_runs: dict[str, list[float]],
    micro_runs: dict[str, list[float]],
    sizes: Sizes,
) -> dict[str, Any]:
    """Print the table and the targets; return the medians and verdicts."""
    summary: dict[str, Any] = {"http": {}, "targets": []}
    print(
        "\nHTTP scenarios (median of rounds; ratio = this row's figure / the baseline's;"
        " phala-cloud baseline of the same style, async or sync)"
    )
    header = (
        f"  {'contender':<28}{'median':>10} {'unit':<12}{'vs aiohttp':>11}"
        f"{'vs phala-cloud':>15}{'client CPU/req':>16}{'server CPU':>12}"
    )
    for scenario in plan:
        better = "higher" if scenario.higher_is_better else "lower"
        print(f"\n{scenario.title}  ({scenario.unit}, {better} is better)")
        print(header)
        medians: dict[str, dict[str, float]] = {}
        for name in scenario.contenders:
            runs = [
                r
                for r in http_runs
                if r["scenario"] == scenario.key and r["contender"] == name and "error" not in r
            ]
            if not runs:
                continue
            medians[name] = {
                "value": median([metric(scenario, r) for r in runs]),
                "client_cpu_us_per_request": median(
                    [r["client_cpu_s"] / r["requests"] * 1e6 for r in runs]
                ),
                "server_cpu_share": median([r["server_cpu_s"] / r["wall_s"] for r in runs]),
                "rounds": len(runs),
            }
        summary["http"][scenario.key] = medians
        for name in scenario.contenders:
            contender = contenders[name]
            if name not in medians:
                errors = [
                    r["error"]
                    for r in http_runs
                    if r["contender"] == name and r["scenario"] == scenario.key and "error" in r
                ]
                reason = contender.unavailable or (f"failed: {errors[0]}" if errors else "not run")
                print(f"  {contender.label:<28}{'unavailable':>10}  ({reason[:90]})")
                continue
            row = medians[name]
            base_pc = "pc_sync" if contender.style == "sync" else "pc_async"
            nan = float("nan")
            print(
                f"  {contender.label:<28}{fmt(row['value'], scenario.unit):>10} "
                f"{scenario.unit:<12}"
                f"{ratio(row['value'], medians.get('aiohttp', {}).get('value', nan)):>11}"
                f"{ratio(row['value'], medians.get(base_pc, {}).get('value', nan)):>15}"
                f"{row['client_cpu_us_per_request']:>13.0f} us"
                f"{row['server_cpu_share']:>11.0%}"
            )

    print(
        "\npeak RSS of a fresh process fanning out at concurrency 64 (VmHWM, MB; median of rounds)"
    )
    print(
        f"  {'contender':<28}{f'{sizes.rss_small:,} ids':>10}{f'{sizes.rss_large:,} ids':>11}"
        f"{'growth':>9}{'RSS before fan-out':>20}"
    )
    rss_summary: dict[str, dict[str, float]] = {}
    for name in ("aiohttp", "async", "sync", "pc_async", "pc_sync"):
        runs = [r for r in rss_runs if r["contender"] == name and "error" not in r]
        small_runs = [r["peak_rss"] for r in runs if r["ids"] == sizes.rss_small]
        large_runs = [r["peak_rss"] for r in runs if r["ids"] == sizes.rss_large]
        if not small_runs or not large_runs:
            why = contenders[name].unavailable or "failed (see above)"
            print(f"  {contenders[name].label:<28}{'unavailable':>10}  ({why[:90]})")
            continue
        small, large = median(small_runs) / MB, median(large_runs) / MB
        before = median([r["rss_before_fanout"] for r in runs]) / MB
        rss_summary[name] = {"small_mb": small, "large_mb": large, "before_mb": before}
        print(
            f"  {contenders[name].label:<28}{small:>10.1f}{large:>11.1f}"
            f"{large - small:>+9.1f}{before:>20.1f}   (n={len(large_runs)})"
        )
    summary["rss"] = rss_summary

    print("\nimport time in a fresh interpreter (ms, median; start-up excluded, .pyc warm)")
    import_medians = {k: median(v) * 1e3 for k, v in import_runs.items() if v}
    for label, value in import_medians.items():
        print(
            f"  {label:<40}{value:>8.1f} ms{ratio(value, import_medians['import aiohttp']):>9}"
            f"  (n={len(import_runs[label])})"
        )
    summary["imports_ms"] = import_medians

    print(
        "\nmicro-benchmarks (ops/s, median of rounds; 100-item /kms page; crypto from "
        "bench_crypto.py)"
    )
    micro_medians = {k: median(v) for k, v in micro_runs.items()}
    loads = micro_medians.get("decode: json.loads only", float("nan"))
    for name, ops in micro_medians.items():
        extra = ""
        if name.startswith("decode:"):
            extra = f"  {ratio(1 / ops, 1 / loads)} the cost of json.loads alone"
        print(f"  {name:<66}{ops:>10,.0f} ops/s {1e6 / ops:>9.1f} us{extra}")
    summary["micro_ops_per_sec"] = micro_medians

    # ------------------------------------------------------------------ targets
    http = summary["http"]

    def value(scenario: str, name: str) -> float:
        return float(http.get(scenario, {}).get(name, {}).get("value", float("nan")))

    def cpu(scenario: str, name: str) -> float:
        row = http.get(scenario, {}).get(name, {})
        return float(row.get("client_cpu_us_per_request", float("nan")))

    # (label, figure, bound, pass, context)
    targets: list[tuple[str, float, str, bool, str]] = []
    fan = value("fanout", "async") / value("fanout", "aiohttp")
    fan_cpu = cpu("fanout", "aiohttp") / cpu("fanout", "async")
    targets.append(
        (
            "fan-out throughput AsyncKMSClient / bare aiohttp (c=64)",
            fan,
            ">= 0.85",
            fan >= 0.85,
            f"by client CPU per request: {fan_cpu:.2f}",
        )
    )
    seq_async = value("sequential", "async") / value("sequential", "aiohttp")
    targets.append(
        (
            "sequential per-call cost AsyncKMSClient / bare aiohttp",
            seq_async,
            "<= 1.25",
            seq_async <= 1.25,
            f"client CPU: {cpu('sequential', 'async') / cpu('sequential', 'aiohttp'):.2f}",
        )
    )
    seq_sync = value("sequential", "sync") / value("sequential", "aiohttp")
    targets.append(
        (
            "sequential per-call cost KMSClient / bare aiohttp",
            seq_sync,
            "<= 1.5",
            seq_sync <= 1.5,
            f"client CPU: {cpu('sequential', 'sync') / cpu('sequential', 'aiohttp'):.2f}",
        )
    )
    imp = import_medians["import phala_kms"] / import_medians["import aiohttp"]
    targets.append(("import phala_kms / import aiohttp", imp, "<= 1.0", imp <= 1.0, ""))
    for name in ("async", "sync"):
        if name in rss_summary:
            r = rss_summary[name]
            targets.append(
                (
                    f"{contenders[name].label} {sizes.rss_large:,}-id peak RSS (MB)",
                    r["large_mb"],
                    "<= 120",
                    r["large_mb"] <= 120,
                    "",
                )
            )
            growth = r["large_mb"] - r["small_mb"]
            per_id = growth * MB / max(1, sizes.rss_large - sizes.rss_small)
            targets.append(
                (
                    f"{contenders[name].label} RSS growth {sizes.rss_small:,} -> "
                    f"{sizes.rss_large:,} ids (MB)",
                    growth,
                    "<= 10 (flat)",
                    growth <= 10,
                    f"{per_id:.0f} bytes per extra id",
                )
            )
    print("\ntargets (ratios within this run)")
    for label, figure, bound, ok, context in targets:
        note = f"; {context}" if context else ""
        print(f"  {'PASS' if ok else 'MISS'}  {label:<56}{figure:>7.2f}  (target {bound}{note})")
        summary["targets"].append(
            {"target": label, "figure": figure, "bound": bound, "pass": ok, "context": context}
        )
    busiest = max(
        (
            (row["server_cpu_share"], key, name)
            for key, rows in http.items()
            for name, row in rows.items()
        ),
        default=(0.0, "", ""),
    )
    print(
        f"\nserver process: busiest median {busiest[0]:.0%} of one core ({busiest[1]}, "
        f"{contenders[busiest[2]].label if busiest[2] else '-'}).",
        end=" ",
    )
    if busiest[0] >= 0.75:
        print(
            "That is close to saturation: wall-time ratios there are squeezed toward 1, "
            "so compare client CPU per request too."
        )
    else:
        print("It was not the bottleneck.")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
