"""The benchmark's fake API server, in a process of its own.

``python benchmarks/_server.py --nodes N --cache N`` runs
:func:`phala_kms.testing.run_fake_server` on a free loopback port (it prints the base
URL and API key, then serves until SIGINT). :class:`ServerProcess` starts it, reads
those lines back, and reads the process's own CPU time from ``/proc/<pid>/stat`` so
a benchmark can show the server was not its bottleneck.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


class ServerProcess:
    """A fake KMS API server running in a child process on 127.0.0.1.

    Args:
        phala_node_count: Off-chain nodes to list (the fake adds 5 on-chain ones).
        signature_cache_size: Signed keys the fake keeps; make it hold every app id the
            benchmark uses, so that after warming no request pays for a signature.
    """

    def __init__(self, *, phala_node_count: int, signature_cache_size: int) -> None:
        self._args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--nodes",
            str(phala_node_count),
            "--cache",
            str(signature_cache_size),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.api_key = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the child and wait until it prints its address."""
        proc = subprocess.Popen(
            self._args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._proc = proc
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while not (self.base_url and self.api_key):
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake server did not start")
            name, _, value = line.strip().removeprefix("export ").partition("=")
            if name == "PHALA_CLOUD_API_PREFIX":
                self.base_url = value
            elif name == "PHALA_CLOUD_API_KEY":
                self.api_key = value
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"unexpected server address {self.base_url!r}")
        return self

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user + system), in seconds."""
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        """The server process's resident set size now."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        """Stop the child (SIGINT, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake KMS API for the benchmarks.")
    parser.add_argument("--nodes", type=int, default=995, help="off-chain KMS nodes (995)")
    parser.add_argument("--cache", type=int, default=20_000, help="signed keys kept (20000)")
    args = parser.parse_args()
    from phala_kms.testing import run_fake_server

    run_fake_server(
        "127.0.0.1",
        0,
        phala_node_count=args.nodes,
        signature_cache_size=args.cache,
        request_log_size=1_000,
    )


if __name__ == "__main__":
    main()
