"""Print `qa.retrieve` latency (p50/p95, warm) over the golden questions at the seeds' 517 papers.

Builds a fresh index from the bundled seeds (shipped vector cache) in a temp dir, then times
every question of evals/golden.jsonl `--rounds` times after a short warm-up; the first call
(model load + keyword index build) is printed separately, as is a per-stage breakdown.
Embedded mode, then server mode against a real `chroma run` subprocess (QA_CHROMA_URL).

Usage: python benchmarks/retrieve_latency.py [--rounds 2] [--no-server] [--embed-threads N]
       [--chunk-cache N]
"""

from __future__ import annotations

import argparse

from _common import (
    chroma_server,
    cpu_summary,
    default_settings,
    latency_summary,
    line,
    questions,
    temp_dir,
)
from _stages import measure_retrieve


def run(label: str, settings, qs: list[str], rounds: int) -> None:
    from qa.index import build_index

    report = build_index(settings=settings, progress=False)
    line(f"{label}: index", f"{report.papers} papers, {report.chunks_written} chunks")
    m = measure_retrieve(settings, qs, rounds=rounds)
    line(f"{label}: first retrieve (cold)", f"{m['first'] * 1000:.0f} ms")
    line(f"{label}: first retrieve stages", m["first_stages"].summary())
    line(f"{label}: keyword index build (in 1st call)", f"{m['kw_build'] * 1000:.0f} ms")
    line(f"{label}: chunks held in memory", str(m["in_memory"]))
    line(f"{label}: retrieve warm", latency_summary(m["latencies"]))
    line(f"{label}: client CPU per retrieve", cpu_summary(m["cpu"]))
    line(f"{label}: stages", m["stages"].summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions")
    parser.add_argument("--no-server", action="store_true", help="embedded mode only")
    parser.add_argument("--embed-threads", type=int, help="QA_EMBED_THREADS for this run")
    parser.add_argument("--chunk-cache", type=int, help="QA_CHUNK_CACHE for this run")
    args = parser.parse_args()

    default_settings(embed_threads=args.embed_threads, chunk_cache=args.chunk_cache)
    from qa.config import Settings

    qs = questions()
    threads = Settings().embed_threads
    print(f"{len(qs)} golden questions, {args.rounds} rounds, embed_threads={threads}", flush=True)
    with temp_dir("bench-retrieve-") as tmp:
        run("embedded", Settings(persist_dir=tmp / "store"), qs, args.rounds)
        if not args.no_server:
            with chroma_server(tmp / "server") as url:
                settings = Settings(chroma_url=url, persist_dir=tmp / "unused")
                run("server", settings, qs, args.rounds)


if __name__ == "__main__":
    main()
