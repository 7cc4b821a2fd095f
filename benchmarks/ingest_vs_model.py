"""`qa.build_index` with the default local model vs the model alone on the same texts.

Issue 13's target: ingest reaches ≥ 0.9× the throughput of the embedding model by itself,
i.e. recording, chunking, Chroma writes and the keyword index hide behind the embedding.
Same process, same run: the model alone embeds the chunk texts of N bundled papers (chunked
beforehand, one `embed_documents` call: the model at its best), then `build_index` ingests
the same papers into a fresh store with no vector cache (`qa.index.VECTOR_CACHE_DIR` pointed
at an empty folder, so every vector is computed), then the model alone again; the ratio uses
the mean of the two model runs, which bracket the ingest against drifting load.

Usage: python benchmarks/ingest_vs_model.py [--papers 300]
"""

from __future__ import annotations

import argparse
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
    with temp_dir("bench-ingest-model-") as tmp:
        (tmp / "no-cache").mkdir()
        qa.index.VECTOR_CACHE_DIR = tmp / "no-cache"
        _, model_s1, model_cpu1 = timed(model.embed_documents, texts)
        line("model alone (1st)", f"{len(texts)} chunks in {model_s1:.1f} s = "
             f"{len(texts) / model_s1:.1f} chunks/s, CPU {model_cpu1:.1f} s")  # fmt: skip
        settings = Settings(persist_dir=tmp / "qa")
        report, ingest_s, ingest_cpu = timed(build_index, papers, settings=settings, progress=False)
        line("qa.build_index, no vector cache", f"{report.chunks_written} chunks "
             f"({report.vectors_computed} computed) in {ingest_s:.1f} s = "
             f"{report.chunks_written / ingest_s:.1f} chunks/s, "
             f"{len(papers) / ingest_s:.1f} papers/s, CPU {ingest_cpu:.1f} s")  # fmt: skip
        _, model_s2, model_cpu2 = timed(model.embed_documents, texts)
        line("model alone (2nd)", f"{len(texts)} chunks in {model_s2:.1f} s = "
             f"{len(texts) / model_s2:.1f} chunks/s, CPU {model_cpu2:.1f} s")  # fmt: skip
        model_s, model_cpu = (model_s1 + model_s2) / 2, (model_cpu1 + model_cpu2) / 2
        line("ratio (ingest / model, throughput)", f"{model_s / ingest_s:.2f}x")
        line("ratio of CPU (model / ingest)", f"{model_cpu / ingest_cpu:.2f}x")
        line("peak RSS of this process", f"{peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
