"""Print the offline embedding model's speed: abstracts/s, query latency p50, peak RSS.

Usage: python benchmarks/embeddings_speed.py [--n 100] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qa.corpus import load_corpus
from qa.embeddings import MiniLMEmbeddings, token_length

QUESTION = "How does retrieval-augmented generation reduce hallucination?"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100, help="abstracts to embed")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    texts = [f"{p.title}\n{p.abstract}" for p in load_corpus()[: args.n]]
    tokens = [min(token_length(t) + 2, 256) for t in texts]
    model = MiniLMEmbeddings(batch_size=args.batch, threads=args.threads)
    rss_before = peak_rss_mb()

    start = time.perf_counter()
    model.embed_query("warm up")  # verifies the files and loads the session
    load_s = time.perf_counter() - start

    start, cpu = time.perf_counter(), time.process_time()
    model.embed_documents(texts)
    docs_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu

    latencies = []
    for _ in range(30):
        start = time.perf_counter()
        model.embed_query(QUESTION)
        latencies.append(time.perf_counter() - start)

    print(f"texts                 {len(texts)} (mean {statistics.mean(tokens):.0f} tokens)")
    print(f"batch / threads       {args.batch} / {args.threads}")
    print(f"first use (load)      {load_s:.2f} s")
    print(f"throughput            {len(texts) / docs_s:.1f} abstracts/s ({docs_s:.2f} s wall)")
    print(f"CPU cost              {cpu_s / len(texts) * 1000:.0f} ms CPU per abstract")
    print(f"query latency p50     {statistics.median(latencies) * 1000:.1f} ms")
    print(f"peak RSS              {peak_rss_mb():.0f} MB (before model: {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()
