"""Per-stage timing of `qa.retrieve`, by wrapping qa.retrieval's functions in this process only.

Stages (nested calls are counted once, in the stage that makes them):
  ensure_index  get_retriever's ensure_index() (first use of an index only)
  keyword       Retriever.keyword (staleness check, BM25 over every chunk, top-n)
  embed_query   the query vector (in a worker thread, overlapped with keyword and vectors)
  dense         Retriever.dense_candidates (Chroma query: HNSW, ids and distances)
  vectors       Retriever.vectors (the keyword top's stored vectors: from the in-memory chunk
                table up to QA_CHUNK_CACHE chunks, else one Chroma get)
  hits          Retriever._to_hits (grouping; papers' first chunks and best chunks' texts, from
                the chunk table or one Chroma get)
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict

STAGES = ("ensure_index", "keyword", "embed_query", "vectors", "dense", "hits")


class StageTimer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = {}
        self._undo: list = []

    def _wrap(self, owner, attr: str, stage: str) -> None:
        original = getattr(owner, attr)
        own = attr in vars(owner)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._current[stage] = self._current.get(stage, 0.0) + time.perf_counter() - t

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original if own else None))

    def install(self, embeddings) -> None:
        import qa.retrieval as r

        self._wrap(r, "ensure_index", "ensure_index")
        self._wrap(r.Retriever, "keyword", "keyword")
        self._wrap(r.Retriever, "dense_candidates", "dense")
        self._wrap(r.Retriever, "vectors", "vectors")
        self._wrap(r.Retriever, "_to_hits", "hits")
        self._wrap(embeddings, "embed_query", "embed_query")

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self._undo):
            if original is None:
                delattr(owner, attr)  # an instance attribute we added
            else:
                setattr(owner, attr, original)
        self._undo.clear()

    def begin(self) -> None:
        self._current = {}

    def end(self) -> None:
        for stage in STAGES:
            self.samples[stage].append(self._current.get(stage, 0.0))

    def summary(self) -> str:
        parts = []
        for stage in STAGES:
            ms = [s * 1000 for s in self.samples.get(stage, [])]
            if ms:
                parts.append(f"{stage} {statistics.median(ms):.1f}")
        return "median ms: " + ", ".join(parts)


def chunks_in_memory(retriever, wait: float = 60.0) -> bool:
    """Whether the reader holds the index's chunks in memory (QA_CHUNK_CACHE): read in the
    background after the first question, so wait for it when the index is small enough."""
    if len(retriever.keyword_index.ids) > retriever.index.settings.chunk_cache:
        return False
    deadline = time.monotonic() + wait
    while retriever.keyword_index.chunk_table() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return retriever.keyword_index.chunk_table() is not None


def measure_retrieve(settings, questions: list[str], rounds: int = 2, warmup: int = 10) -> dict:
    """Cold first call, then warm latencies of `qa.retrieve` over `questions` × `rounds`."""
    import qa.keyword_index
    from qa.retrieval import get_retriever, retrieve

    # the first call builds the keyword index (Chroma get of all documents + bm25s): time it
    builds: list[float] = []
    original = qa.keyword_index.KeywordIndex.rebuild

    def timed_rebuild(self, index):
        t = time.perf_counter()
        try:
            return original(self, index)
        finally:
            builds.append(time.perf_counter() - t)

    qa.keyword_index.KeywordIndex.rebuild = timed_rebuild
    first_timer = StageTimer()
    from qa.embeddings import get_embeddings

    first_timer.install(get_embeddings(settings.embeddings))
    try:
        first_timer.begin()
        t = time.perf_counter()
        retrieve(questions[0], settings=settings)
        first = time.perf_counter() - t
        first_timer.end()
    finally:
        first_timer.uninstall()
        qa.keyword_index.KeywordIndex.rebuild = original
    kw_build = sum(builds)
    retriever = get_retriever(settings)
    for q in questions[:warmup]:
        retrieve(q, settings=settings)
    in_memory = chunks_in_memory(retriever)
    timer = StageTimer()
    timer.install(retriever.index.embeddings)
    latencies, cpu = [], []
    try:
        for _ in range(rounds):
            for q in questions:
                timer.begin()
                t, c = time.perf_counter(), time.process_time()
                retrieve(q, settings=settings)
                latencies.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                timer.end()
    finally:
        timer.uninstall()
    return {
        "first": first,
        "first_stages": first_timer,
        "kw_build": kw_build,
        "latencies": latencies,
        "cpu": cpu,
        "stages": timer,
        "in_memory": in_memory,
    }
