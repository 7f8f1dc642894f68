"""The benchmark's fake API server, in a process of its own, over plain HTTP and TLS.

``python benchmarks/_server.py --nodes N --cache N --ca-dir DIR`` runs a
:class:`phala_kms.testing.FakeKMSServer` on a free loopback port and serves the same
application over TLS on a second one, with a certificate for ``127.0.0.1`` from a
throwaway ``trustme`` CA whose PEM it writes to ``DIR/ca.pem``. It prints the two
base URLs and the API key, then serves until SIGINT. :class:`ServerProcess` starts
it, reads those lines back, and reads the process's CPU time from
``/proc/<pid>/stat`` so a run can show the server was not its bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
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
        ca_dir: Where the server writes its CA certificate (``ca.pem``); by default a
            temporary folder, removed by :meth:`stop`.
    """

    def __init__(
        self, *, phala_node_count: int, signature_cache_size: int, ca_dir: Path | None = None
    ) -> None:
        self._own_dir = None
        if ca_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="phala-kms-bench-ca-")
            ca_dir = Path(self._own_dir.name)
        self._args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--nodes",
            str(phala_node_count),
            "--cache",
            str(signature_cache_size),
            "--ca-dir",
            str(ca_dir),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.tls_base_url = ""
        self.api_key = ""
        self.ca_file = str(ca_dir / "ca.pem")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the child and wait until it prints its addresses."""
        # The server stands in for a remote API: keep its own cost low and steady, so
        # that it neither dilutes nor varies the clients' figures. glibc would otherwise
        # map and unmap asyncio's 256 KiB read buffer on every read of the server's
        # (until some large allocation raises its threshold, at a random moment).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}
        proc = subprocess.Popen(
            self._args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        self._proc = proc
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while not (self.base_url and self.tls_base_url and self.api_key):
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake server did not start")
            name, _, value = line.strip().partition("=")
            if name == "BASE_URL":
                self.base_url = value
            elif name == "TLS_BASE_URL":
                self.tls_base_url = value
            elif name == "API_KEY":
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
        if self._own_dir is not None:
            self._own_dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(nodes: int, cache: int, ca_dir: Path) -> None:
    import ssl

    import trustme
    from aiohttp import web

    from phala_kms.testing import FakeKMSServer

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_dir / "ca.pem"))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with FakeKMSServer(
        phala_node_count=nodes, signature_cache_size=cache, request_log_size=1_000
    ) as server:
        # The same application on a second, TLS, port: the fake has no TLS option of
        # its own, so a TLS site joins its runner (a private attribute, benchmark only).
        site = web.TCPSite(server._runner, "127.0.0.1", 0, ssl_context=tls)  # type: ignore[arg-type]
        await site.start()
        tls_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        prefix = server.base_url.removeprefix(server.url)
        print(f"BASE_URL={server.base_url}")
        print(f"TLS_BASE_URL=https://127.0.0.1:{tls_port}{prefix}")
        print(f"API_KEY={server.api_key}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake KMS API for the benchmarks.")
    parser.add_argument("--nodes", type=int, default=995, help="off-chain KMS nodes (995)")
    parser.add_argument("--cache", type=int, default=20_000, help="signed keys kept (20000)")
    parser.add_argument("--ca-dir", type=Path, required=True, help="where to write ca.pem")
    args = parser.parse_args()
    asyncio.run(_serve(args.nodes, args.cache, args.ca_dir))


if __name__ == "__main__":
    main()
