"""Helpers shared by the benchmark scripts: load, timing stats, a real `chroma run` server, du.

Benchmarks print figures; they never assert. Every figure is printed next to the machine's
load average, since this 2-core box is shared with other work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

GOLDEN = ROOT / "evals" / "golden.jsonl"


def default_settings(**overrides: object) -> None:
    """Run on the defaults: drop the caller's QA_* variables, then set `overrides`
    (`embed_threads=2` → QA_EMBED_THREADS=2; None leaves a setting at its default)."""
    for var in [v for v in os.environ if v.startswith("QA_")]:
        del os.environ[var]
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"QA_{name.upper()}"] = str(value)


def load() -> str:
    """`uptime`-style load average and core count, e.g. "load 1.92/1.70/1.40 on 2 cores"."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} on {os.cpu_count()} cores"


def line(label: str, value: str) -> None:
    """One figure, with the load at the moment it was measured."""
    print(f"{label:<44} {value:<44} [{load()}]", flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {pct(ms, 50):.1f} ms  p95 {pct(ms, 95):.1f} ms  "
        f"mean {statistics.mean(ms):.1f}  max {max(ms):.1f}  (n={len(ms)})"
    )


def cpu_summary(seconds: list[float]) -> str:
    """CPU time (all threads of this process) per call: less sensitive to other load."""
    ms = [s * 1000 for s in seconds]
    return f"p50 {pct(ms, 50):.1f} ms  p95 {pct(ms, 95):.1f} ms  mean {statistics.mean(ms):.1f}"


def questions() -> list[str]:
    """The golden set's questions (follow-ups use their own text; history is ignored)."""
    with GOLDEN.open() as f:
        return [json.loads(row)["question"] for row in f if row.strip()]


def du_bytes(path: Path) -> int:
    """Disk usage (allocated blocks, like `du -s`) of everything under `path`."""
    total = 0
    for p in Path(path).rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file():
            total += st.st_blocks * 512
    return total


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def chroma_server(path: Path, timeout: float = 60.0) -> Iterator[str]:
    """A real `chroma run --path <path> --host 127.0.0.1 --port <free>`; yields its URL."""
    chroma = Path(sys.executable).parent / "chroma"
    port = free_port()
    log = open(path.parent / f"chroma-{port}.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, ANONYMIZED_TELEMETRY="False"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chroma run exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    msg = f"chroma run did not answer within {timeout:.0f} s"
                    raise RuntimeError(msg) from exc
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def server_pid(url: str) -> int | None:
    """PID of the `chroma run` listening on `url`'s port (Linux /proc), if found."""
    port = url.rsplit(":", 1)[1].encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in cmd and port in cmd and any(b"chroma" in c for c in cmd):
            return int(proc.name)
    return None


def server_rss_mb(url: str) -> float | None:
    pid = server_pid(url)
    return None if pid is None else proc_rss_mb(pid)


def proc_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of process `pid` (Linux /proc): now (VmRSS) or its peak (VmHWM)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(f"{field}:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process (all threads): this one, or `pid`."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_rss_mb() -> float:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
