"""Developer sessions: `nox -s tests lint typing`, plus `stress`, `bench` and `pressure` on demand.

* tests: the suite on every installed Python 3.10-3.13, against the built wheel, with
  binary-only dependencies (what users install), not the source tree.
* lint / typing: ruff (check and format check) and mypy --strict (the package, and
  tests/typing: typical user code type-checked against the public API).
* stress: the bounded load test (not part of the default run).
* bench: the benchmarks against bare aiohttp, requests and the official `phala-cloud` SDK.
* pressure: rate limits, outages, a full pool, streaming (benchmarks/pressure.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox
import tomllib

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYTHONS = [
    c.rsplit(" ", 1)[-1]
    for c in PYPROJECT["project"]["classifiers"]
    if c.startswith("Programming Language :: Python :: 3.")
]


def _expose_pyenv_versions() -> None:
    """Let pyenv's shims resolve every installed 3.x at once (`python3.10`, `python3.13`...)."""
    if os.environ.get("PYENV_VERSION") or not shutil.which("pyenv"):
        return
    result = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True)
    versions = [v for v in result.stdout.split() if v.startswith("3.") and "/" not in v]
    if versions:
        current = subprocess.run(["pyenv", "version-name"], capture_output=True, text=True)
        first = [v for v in current.stdout.strip().split(":") if v in versions]
        os.environ["PYENV_VERSION"] = ":".join(first + [v for v in versions if v not in first])


def _installed(version: str) -> bool:
    exe = shutil.which(f"python{version}")
    if exe is None:
        return False
    return subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0


_expose_pyenv_versions()


def _build_wheel(session: nox.Session) -> str:
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), silent=True)
    (wheel,) = dist.glob("phala_kms-*.whl")
    return str(wheel)


@nox.session(python=[v for v in PYTHONS if _installed(v)])
def tests(session: nox.Session) -> None:
    """Run the test suite against the built wheel (binary-only dependencies)."""
    wheel = _build_wheel(session)
    session.install("--only-binary=:all:", f"{wheel}[cli,test]")
    # The version does not change between builds: force the fresh wheel over a reused venv's.
    session.install("--force-reinstall", "--no-deps", wheel)
    # Run a copy of the tests from a folder without ./phala_kms, so they import the wheel.
    work = Path(session.create_tmp()) / "suite"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):  # the suite checks what they promise
        shutil.copy(ROOT / name, work / name)
    session.chdir(work)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    paths = ("phala_kms", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package and on tests/typing (user code against the public API)."""
    session.install("-e", ".[cli,test]", "mypy")
    session.run("mypy", "--strict", "phala_kms")
    session.run("mypy", "--strict", "tests/typing")


@nox.session
def stress(session: nox.Session) -> None:
    """The bounded load test: 10,000 requests at concurrency 256, 10% faulted."""
    session.install("-e", ".[cli,test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "stress",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "tests",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: phala-kms vs bare aiohttp, requests and the official phala-cloud SDK (~8 min).

    Arguments after ``--`` go to benchmarks/run.py (``--quick``, ``--rounds``,
    ``--pc-rounds``, ``--only``, ``--json``).
    """
    session.install("-e", ".[cli,test,bench]")
    # phala-cloud pins pysha3, which does not build on Python 3.11+: install it without
    # its dependencies. The ones it really uses (dstack-sdk, httpx, pydantic) come with
    # the test extra; name httpx and pydantic anyway in case that extra changes.
    session.install("--no-deps", "phala-cloud")
    session.install("httpx", "pydantic")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def pressure(session: nox.Session) -> None:
    """Pressure scenarios against the fake: rate limit, outage, blip, pool, streaming (~2 min).

    Arguments after ``--`` go to benchmarks/pressure.py (``--quick`` for a smoke run,
    ``--only NAME[,NAME]``, ``--repeat N``, ``--json PATH``).
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/pressure.py", *session.posargs)
