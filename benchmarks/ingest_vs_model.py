"""`qa.build_index` with the default local model vs the model alone on the same texts.

Issue 13's target: ingest reaches ≥ 0.9× the throughput of the embedding model by itself,
i.e. recording, chunking, Chroma writes and the keyword index hide behind the embedding.
Same process, same run: the model alone embeds the chunk texts of N bundled papers (chunked
beforehand, one `embed_documents` call: the model at its best, its texts sorted by length
over the whole set), and `build_index` ingests the same papers into a fresh store with no
vector cache (`qa.index.VECTOR_CACHE_DIR` pointed at an empty folder, so every vector is
computed).

The two are measured in `--rounds` rounds, A/B then B/A (the order flips each round, so a
load that drifts over a run weighs on both sides alike), and each round's ratio is printed
with the median of them. On a shared 2-core machine a single model–ingest–model sequence
gave 0.92×, 0.81× and 0.63× in three runs while the CPU ratio stayed 0.92–1.03×: the wall
ratio of one pair mostly measured what else ran in those seconds. CPU seconds of this process
(all threads) are printed beside wall time as the steadier figure.

Usage: python benchmarks/ingest_vs_model.py [--papers 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import default_settings, line, peak_rss_mb, temp_dir


def timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    """(result, wall s, CPU s of this process)."""
    t, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--papers", type=int, default=300, help="bundled papers (≤ 517)")
    parser.add_argument("--rounds", type=int, default=3, help="model/ingest pairs, order flipped")
    args = parser.parse_args()
    default_settings()

    import qa.index
    from qa.config import Settings, get_settings
    from qa.corpus import load_corpus
    from qa.embeddings import get_embeddings
    from qa.ingest import build_index

    papers = load_corpus()[: args.papers]
    texts = [c.text for p in papers for c in qa.index.chunk_paper(p, get_settings().chunk_tokens)]
    model = get_embeddings()
    model.embed_documents(texts[:8])  # load the ONNX session before either side is timed
    walls: list[float] = []
    cpus: list[float] = []
    with temp_dir("bench-ingest-model-") as tmp:
        (tmp / "no-cache").mkdir()
        qa.index.VECTOR_CACHE_DIR = tmp / "no-cache"

        def alone() -> tuple[float, float]:
            _, wall, cpu = timed(model.embed_documents, texts)
            line("  model alone", f"{len(texts)} chunks in {wall:.1f} s = "
                 f"{len(texts) / wall:.1f} chunks/s, CPU {cpu:.1f} s")  # fmt: skip
            return wall, cpu

        def ingest(r: int) -> tuple[float, float]:
            settings = Settings(persist_dir=tmp / f"qa-{r}")
            report, wall, cpu = timed(build_index, papers, settings=settings, progress=False)
            line("  qa.build_index, no vector cache", f"{report.chunks_written} chunks "
                 f"({report.vectors_computed} computed) in {wall:.1f} s = "
                 f"{report.chunks_written / wall:.1f} chunks/s, "
                 f"{len(papers) / wall:.1f} papers/s, CPU {cpu:.1f} s")  # fmt: skip
            return wall, cpu

        for r in range(args.rounds):
            print(f"round {r + 1} ({'model first' if r % 2 == 0 else 'ingest first'})")
            if r % 2 == 0:
                (model_s, model_cpu), (ingest_s, ingest_cpu) = alone(), ingest(r)
            else:
                (ingest_s, ingest_cpu), (model_s, model_cpu) = ingest(r), alone()
            walls.append(model_s / ingest_s)
            cpus.append(model_cpu / ingest_cpu)
            line("  ratio (ingest / model, throughput)",
                 f"{walls[-1]:.2f}x wall, {cpus[-1]:.2f}x CPU")  # fmt: skip
        line("median ratio over the rounds", f"{statistics.median(walls):.2f}x wall, "
             f"{statistics.median(cpus):.2f}x CPU ({args.rounds} rounds: "
             f"{', '.join(f'{w:.2f}' for w in walls)})")  # fmt: skip
        line("peak RSS of this process", f"{peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
