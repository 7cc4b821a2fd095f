"""Print what the relevance gate costs per question, and what its `topic_other` words add.

Builds a fresh index from the bundled seeds in a temp dir, retrieves every golden question
once, then times `qa.relevance.relevance()` on those hits: as shipped with an empty sentence
cache (each paper's sentences embedded the first time it is a hit), as shipped warm
(`--rounds` passes), and with `TOPIC_WORDS = 0` (no per-word or sentence embeddings: the
features before `topic_other`/`topic_gap`; the model is the shipped one, only the time is of
interest). The differences are what the two features add per question.

Usage: python benchmarks/gate_latency.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from _common import default_settings, latency_summary, line, questions, temp_dir


def timed(settings, asked: list[tuple[str, list]], rounds: int) -> list[float]:
    from qa import relevance

    seconds = []
    for _ in range(rounds):
        for question, hits in asked:
            start = time.perf_counter()
            relevance.relevance(question, hits, settings)
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the questions")
    args = parser.parse_args()

    default_settings()
    from qa import relevance
    from qa.config import Settings
    from qa.index import build_index
    from qa.retrieval import retrieve

    qs = questions()
    with temp_dir("bench-gate-") as tmp:
        settings = Settings(persist_dir=tmp / "store")
        build_index(settings=settings, progress=False)
        asked = [(q, retrieve(q, settings.k, settings=settings)) for q in qs]
        timed(settings, asked[:10], 1)  # warm-up: model, keyword index, idf
        relevance._sentences.clear()
        line("gate per question (cold sentences)", latency_summary(timed(settings, asked, 1)))
        line("gate per question (warm)", latency_summary(timed(settings, asked, args.rounds)))
        shipped = relevance.TOPIC_WORDS
        relevance.TOPIC_WORDS = 0
        try:
            line("gate per question (no topic words)", latency_summary(timed(settings, asked, 1)))
        finally:
            relevance.TOPIC_WORDS = shipped


if __name__ == "__main__":
    main()
