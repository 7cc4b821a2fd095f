"""Killing a real subprocess at a chosen moment (the kill -9 tests of ingest and rebuild)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable

# `python -c STREAMED_INGEST VECTOR_CACHE JSONL`: a streamed ingest of many small upserts with
# every vector computed (an empty vector cache), for a kill to interrupt; prints start / done
STREAMED_INGEST = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import qa.index, qa.ingest
    from qa.snapshot import ingest_stream
    qa.index.VECTOR_CACHE_DIR = Path(sys.argv[1])  # empty: every vector is computed
    qa.ingest.WRITE_BATCH = 8                      # many small upserts to interrupt
    print("start", flush=True)
    ingest_stream(sys.argv[2], batch=12, progress=False)
    print("done", flush=True)
    """
)


def kill_when(
    child: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float = 0.05
) -> tuple[str, str]:
    """SIGKILL `child` as soon as `ready()` holds (checked every `poll` s for up to `timeout`
    s) and return its output; the test fails if the child ended on its own first."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and child.poll() is None:
            if ready():
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(poll)
    finally:
        if child.poll() is None:
            child.kill()
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"child was not killed mid-way: {out}\n{err}"
    return out, err
