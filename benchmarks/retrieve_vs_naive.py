"""`qa.retrieve` (hybrid) vs a naive LangChain + Chroma dense search, side by side, one run.

Both search the same collection (the 517 bundled papers, built from the shipped vector cache
in a temp dir) with the same MiniLM query embedding and the same golden questions. The naive
search is `langchain_chroma.Chroma(...).similarity_search(q, k)`: embed the question, one
Chroma query, documents back; no keyword channel, no grouping, no filters. Calls alternate
(naive, hybrid, naive, ...) so load on this shared machine hits both alike. Prints p50/p95 of
each and the ratio of the p50s (issue 13's target: ≤ 1.2), and the CPU time per call, which
follows load less than wall time does.

`--chunk-cache 0` times the path of an index larger than QA_CHUNK_CACHE (the keyword top's
vectors and the hits' records read from Chroma per question instead of held in memory).

Usage: python benchmarks/retrieve_vs_naive.py [--rounds 3] [--k 5] [--since 2020-01-01]
       [--embed-threads N] [--chunk-cache N]
"""

from __future__ import annotations

import argparse
import time

from _common import cpu_summary, default_settings, latency_summary, line, pct, questions, temp_dir
from _stages import chunks_in_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the questions")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--since", help="time qa.retrieve with this date filter")
    parser.add_argument("--embed-threads", type=int, help="QA_EMBED_THREADS for this run")
    parser.add_argument("--chunk-cache", type=int, help="QA_CHUNK_CACHE for this run")
    args = parser.parse_args()
    default_settings(embed_threads=args.embed_threads, chunk_cache=args.chunk_cache)

    from langchain_chroma import Chroma

    from qa.config import Settings
    from qa.ingest import build_index
    from qa.retrieval import get_retriever, retrieve

    qs = questions()
    with temp_dir("bench-naive-") as tmp:
        settings = Settings(persist_dir=tmp / "store")
        report = build_index(settings=settings, progress=False)
        threads = settings.embed_threads
        line("index", f"{report.papers} papers, {report.chunks_written} chunks, {threads=}")
        index = get_retriever(settings).index
        naive = Chroma(
            client=index.client,
            collection_name=index.name,
            embedding_function=index.embeddings,
        )
        filt = {"since": args.since} if args.since else {}
        for q in qs[:10]:  # warm-up: model loaded, keyword index loaded, caches hot
            naive.similarity_search(q, k=args.k)
            retrieve(q, k=args.k, settings=settings, **filt)
        line("chunks held in memory", str(chunks_in_memory(get_retriever(settings))))
        times: dict[str, list[float]] = {"naive": [], "hybrid": []}
        cpu: dict[str, list[float]] = {"naive": [], "hybrid": []}
        for _ in range(args.rounds):
            for q in qs:
                t, c = time.perf_counter(), time.process_time()
                naive.similarity_search(q, k=args.k)
                times["naive"].append(time.perf_counter() - t)
                cpu["naive"].append(time.process_time() - c)
                t, c = time.perf_counter(), time.process_time()
                retrieve(q, k=args.k, settings=settings, **filt)
                times["hybrid"].append(time.perf_counter() - t)
                cpu["hybrid"].append(time.process_time() - c)
        label = f"qa.retrieve hybrid{' since ' + args.since if args.since else ''}"
        line("naive LangChain Chroma similarity_search", latency_summary(times["naive"]))
        line(label, latency_summary(times["hybrid"]))
        ratio = pct(times["hybrid"], 50) / pct(times["naive"], 50)
        line("ratio of p50s (hybrid / naive)", f"{ratio:.2f}x")
        line("CPU per call (all threads), naive", cpu_summary(cpu["naive"]))
        line("CPU per call (all threads), hybrid", cpu_summary(cpu["hybrid"]))


if __name__ == "__main__":
    main()
