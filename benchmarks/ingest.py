"""Print ingest time and throughput for the bundled seeds (517 papers) into a fresh index.

Phases, each in a fresh Python process (cold imports, cold model) on a fresh temp
QA_PERSIST_DIR:

  cached   the first-start path (`ensure_index()` then one `qa.retrieve`): vectors come from the
           shipped cache seeds/vectors/*.npz; wall time counts from process start.
  rerun    `build_index()` again on the same directory: nothing new to write.
  embed    no vector cache (qa.index.VECTOR_CACHE_DIR monkeypatched to an empty dir): every
           chunk is embedded by the local model, i.e. the embedding-bound throughput.

Usage: python benchmarks/ingest.py [--skip-embed] [--server]
  --server  also run `cached` and `rerun` against a real `chroma run` server (QA_CHROMA_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import chroma_server, du_bytes, line, mb, temp_dir


def child(phase: str) -> None:
    """Runs inside the measured process; prints one JSON line for the parent."""
    t0 = time.perf_counter()
    import qa.index
    from qa.config import get_settings

    imported = time.perf_counter() - t0
    settings = get_settings()
    out: dict = {"import_s": imported}
    if phase == "embed":
        qa.index.VECTOR_CACHE_DIR = Path(os.environ["BENCH_EMPTY_CACHE"])
    if phase == "cached":
        from qa.retrieval import retrieve

        t = time.perf_counter()
        qa.index.ensure_index(settings, progress=False)
        out["ensure_s"] = time.perf_counter() - t
        t = time.perf_counter()
        retrieve("retrieval-augmented generation for question answering", settings=settings)
        out["first_query_s"] = time.perf_counter() - t
        # what ensure_index did, re-read from the store
        index = qa.index.open_index(settings)
        out["chunks"] = index.count()
        out["papers"] = index.corpus.count()
    else:
        report = qa.index.build_index(settings=settings, progress=False)
        out.update(
            build_s=report.seconds,
            papers=report.papers,
            added=report.added,
            unchanged=report.unchanged,
            chunks=report.chunks_written,
            from_cache=report.vectors_from_cache,
            computed=report.vectors_computed,
        )
    out["total_in_process_s"] = time.perf_counter() - t0
    print("BENCH " + json.dumps(out), flush=True)


def run_phase(phase: str, env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", phase],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    rows = [r for r in proc.stdout.splitlines() if r.startswith("BENCH ")]
    if proc.returncode or not rows:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"phase {phase} failed ({proc.returncode})")
    return wall, json.loads(rows[-1][6:])


def report(mode: str, phase: str, wall: float, r: dict) -> None:
    tag = f"{mode} {phase}"
    if phase == "cached":
        line(
            f"{tag}: process start -> index ready",
            f"{r['import_s'] + r['ensure_s']:.2f} s (imports {r['import_s']:.2f}, "
            f"ensure_index {r['ensure_s']:.2f})",
        )
        line(
            f"{tag}: + first retrieve (model, BM25)",
            f"{r['first_query_s']:.2f} s; process wall {wall:.2f} s",
        )
        line(
            f"{tag}: throughput",
            f"{r['papers'] / r['ensure_s']:.0f} papers/s, {r['chunks'] / r['ensure_s']:.0f} "
            f"chunks/s ({r['papers']} papers, {r['chunks']} chunks)",
        )
        return
    build = r["build_s"]
    line(
        f"{tag}: build_index",
        f"{build:.2f} s; process wall {wall:.2f} s (imports {r['import_s']:.2f})",
    )
    detail = (
        f"{r['added']} added, {r['unchanged']} unchanged, {r['chunks']} chunks written, "
        f"{r['from_cache']} cached / {r['computed']} computed"
    )
    line(f"{tag}: result", detail)
    if r["chunks"]:
        line(
            f"{tag}: throughput",
            f"{r['added'] / build:.1f} papers/s, {r['chunks'] / build:.1f} chunks/s",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-embed", action="store_true", help="skip the uncached phase")
    parser.add_argument("--server", action="store_true", help="also measure server mode")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    base = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    base["ORT_DISABLE_TELEMETRY"] = "1"
    with temp_dir("bench-ingest-") as tmp:
        env = dict(base, QA_PERSIST_DIR=str(tmp / "store"))
        for phase in ("cached", "rerun"):
            wall, r = run_phase(phase, env)
            report("embedded", phase, wall, r)
        line("embedded: index size on disk", mb(du_bytes(tmp / "store")))

        if not args.skip_embed:
            (tmp / "empty-cache").mkdir()
            env = dict(
                base, QA_PERSIST_DIR=str(tmp / "store2"), BENCH_EMPTY_CACHE=str(tmp / "empty-cache")
            )
            wall, r = run_phase("embed", env)
            report("embedded", "no-cache", wall, r)

        if args.server:
            with chroma_server(tmp / "server") as url:
                env = dict(base, QA_CHROMA_URL=url, QA_PERSIST_DIR=str(tmp / "unused"))
                for phase in ("cached", "rerun"):
                    wall, r = run_phase(phase, env)
                    report("server", phase, wall, r)
            line("server: index size on disk", mb(du_bytes(tmp / "server")))


if __name__ == "__main__":
    main()
