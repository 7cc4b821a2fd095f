"""Print how long rebuilding the whole corpus record takes (issue 9), on a fresh temp store.

Each step is a real `qa` process (wall time, cold imports included), in order:

  first      `qa ingest`: records the 517 bundled papers and builds the index (vector cache)
  user       `qa ingest mine.jsonl`: 20 papers of a user's own (embedded by the model)
  rebuild    `qa ingest --rebuild`: the whole record (537 papers) into a new collection beside
             the old one, switched when complete; seed vectors from the shipped cache
  re-embed   the same rebuild with no vector cache: every chunk embedded again, i.e. what a
             change of embedding model costs with a model as fast as the default MiniLM
  sync       in-process cost of the reader's per-question check for a writer's commit
             (`open_index()`: one read of the record's generation)

Usage: python benchmarks/rebuild.py [--server]   (--server: against a real `chroma run`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, chroma_server, line, temp_dir

REEMBED = """
from pathlib import Path
import qa.index, qa.ingest
qa.index.VECTOR_CACHE_DIR = Path("/nonexistent")
report = qa.ingest.build_index([], rebuild=True, progress=False)
print(report.summary())
"""

SYNC = """
import time
from qa.index import open_index
open_index()
t = time.perf_counter()
for _ in range(1000):
    open_index()
print(f"{(time.perf_counter() - t):.4f}")
"""


def timed(args: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, done.stdout.strip().splitlines()[-1]


def run(env: dict, tag: str, work: Path) -> None:
    qa = [sys.executable, "-m", "qa.cli"]
    mine = work / "mine.jsonl"
    rows = [
        {
            "arxiv_id": f"2599.{i:05d}",
            "title": f"Sparse estimator study {i}",
            "abstract": f"We introduce estimator {i} for sparse regression and study its bias "
            f"on noisy tabular data with {i + 10} features and heavy-tailed noise.",
        }
        for i in range(20)
    ]
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step, args in (
        ("first", [*qa, "ingest"]),
        ("user", [*qa, "ingest", str(mine)]),
        ("rebuild", [*qa, "ingest", "--rebuild"]),
        ("re-embed", [sys.executable, "-c", REEMBED]),
    ):
        seconds, summary = timed(args, env)
        line(f"{tag}: {step}", f"{seconds:.1f} s wall")
        print(f"    {summary}", flush=True)
    seconds, out = timed([sys.executable, "-c", SYNC], env)
    # seconds for 1000 calls = milliseconds per call
    line(f"{tag}: sync check per question", f"{float(out):.3f} ms per open_index()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="use a real `chroma run` server")
    args = parser.parse_args()
    with temp_dir("qa-rebuild-") as work:
        env = {**os.environ, "QA_PERSIST_DIR": str(work / "store"), "PYTHONPATH": str(ROOT)}
        env.pop("QA_CHROMA_URL", None)
        if args.server:
            with chroma_server(work / "server") as url:
                run({**env, "QA_CHROMA_URL": url}, "server", work)
        else:
            run(env, "embedded", work)


if __name__ == "__main__":
    main()
