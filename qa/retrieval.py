"""Hybrid retrieval: BM25 (bm25s, stemmed) + dense (Chroma), fused, grouped into papers.

BM25 finds method names and rare terms, the dense channel finds paraphrases; each candidate
is scored in *both* channels (no zero for "not in the other top list"), then fused. The
keyword index (qa/keyword_index.py) is the one the writer saved for the committed state.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
from chromadb.errors import InternalError

from qa.citations import ARXIV_ID as CITED_ID
from qa.config import Settings, get_settings
from qa.corpus import Paper
from qa.filters import FilterMasks, Filters
from qa.index import Index, ensure_index, open_index, paper_from_metadata
from qa.keyword_index import STALE_CHECK_SECONDS, KeywordIndex, stems
from qa.wording import normalize_question

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "keyword", "dense"]
DENSE_OVERFETCH = 4  # filtered questions: neighbours asked for per candidate kept
DENSE_WIDEST = 4000  # the most neighbours one unfiltered query asks for before a `where`
# A filter allowing at most this many chunks (and whose over-fetched neighbours held too few)
# is searched among those chunks only: Chroma's `query(ids=…)`, no metadata read. Measured on
# 100k chunks (embedded, warm): ids 20 ms for 10k ids, 53 ms for 50k, vs 109 and 196 ms for a
# `where` selecting the same chunks, with the same 50 hits; a `where` grows with the
# collection (p95 4.4 s at 666k chunks), ids with the allowed chunks only; at 52,582 chunks a
# 273-chunk date window p50 34–48 ms vs 280–292 ms (benchmarks/README.md, issue 13). Wider filters
# widen one unfiltered query instead.
DENSE_IDS_MAX = 50_000
# ... and a filter allowing at most this many is ranked exactly instead: their vectors read
# with one `get` and ranked by numpy. Chroma's filtered search (ids or `where`) is approximate
# for so narrow a set: at 52,582 chunks its top 50 among 273 allowed held 22–39 of the exact
# top 50; the `get` costs what the search does up to ~300 ids (11.5 vs 13 ms), 59 vs 13 ms at
# 1,000 (benchmarks/README.md, issue 13).
DENSE_EXACT_MAX = 300
# Question embeddings run here, overlapped with the keyword search; a few threads so the UI's
# concurrent questions do not queue behind one another.
_EMBED_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qa-query-embed")
# A paper named in the question: `arXiv:ID`, `arxiv ID`, an arxiv.org URL, a bare new-style ID
# (`2306.15875`), or the `ref:` key of a paper without one. Unknown IDs are ignored.
_ID_IN_TEXT = re.compile(
    rf"(?:\barXiv:?\s*|\bref:|arxiv\.org/(?:abs|pdf)/|(?<![\w.]))"
    rf"({CITED_ID}|(?<=ref:)h[0-9a-f]{{12}})(?:v\d+)?",
    re.IGNORECASE,
)


@dataclass
class Hit:
    """One retrieved paper: its record, fused score, and the chunk that matched best."""

    paper: Paper
    score: float
    snippet: str
    dense: float = 0.0  # cosine similarity of the best chunk, in [-1, 1]
    keyword: float = 0.0  # BM25 score of the best chunk, normalised to the query's best
    coverage: float = 0.0  # IDF-weighted share of the question's words found in the chunk
    pinned: bool = False  # named in the question by its arXiv ID

    def to_dict(self) -> dict:
        return {
            "paper": self.paper.to_dict(),
            "score": round(self.score, 4),
            "dense": round(self.dense, 4),
            "keyword": round(self.keyword, 4),
            "coverage": round(self.coverage, 4),
            "snippet": self.snippet,
        }


# ---------------------------------------------------------------- chunk table


@dataclass(frozen=True, eq=False)
class ChunkTable:
    """Every chunk's stored vector and text, and every paper's first-chunk metadata, for one
    keyword-index state, held by a reader when the index has at most `QA_CHUNK_CACHE` chunks.

    A question then reads the keyword top's vectors (for their cosines) and its hits' papers
    and texts from memory instead of two Chroma `get`s: at 517 papers those were ~2.5 ms CPU
    of a ~16 ms call, and ~1.5x a naive dense search became ~1.15x
    (benchmarks/retrieve_vs_naive.py). The values are Chroma's own, so results are unchanged;
    a chunk it lacks (written after it was read) is fetched from Chroma as before.
    """

    ids: list[str]  # the keyword index's id list: which state this table is for
    row_of: dict[str, int]  # ... and its chunk id → row
    vectors: np.ndarray  # (chunks, dim) float32, row i is chunk ids[i]
    present: np.ndarray  # bool per row: Chroma still held the chunk when it was read
    texts: list[str]
    firsts: dict[str, dict]  # first chunk's id → its metadata (the paper's record)

    @classmethod
    def read(
        cls, index: Index, ids: list[str], row_of: dict[str, int], batch: int = 1000
    ) -> ChunkTable:
        """Read the chunks `ids` from Chroma, in batches (once per keyword-index state, in
        the background)."""
        vectors: np.ndarray | None = None
        present = np.zeros(len(ids), dtype=bool)
        texts = [""] * len(ids)
        firsts: dict[str, dict] = {}
        for start in range(0, len(ids), batch):
            got = index.call(
                index.collection.get,
                ids=ids[start : start + batch],
                include=["embeddings", "documents", "metadatas"],
            )
            for cid, emb, doc, meta in zip(
                got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True
            ):
                row = row_of[cid]
                if vectors is None:
                    vectors = np.zeros((len(ids), len(emb)), dtype=np.float32)
                vectors[row], present[row], texts[row] = emb, True, doc
                if cid.endswith("#0"):
                    firsts[cid] = meta
        if vectors is None:
            vectors = np.zeros((len(ids), 0), dtype=np.float32)
        return cls(ids, row_of, vectors, present, texts, firsts)

    def row(self, chunk_id: str) -> int | None:
        """The chunk's row, or None when the table lacks it."""
        row = self.row_of.get(chunk_id)
        return row if row is not None and self.present[row] else None


def nearest(
    chunk_ids: list[str], vectors: np.ndarray, vector: list[float], n: int
) -> dict[str, float]:
    """chunk id → cosine for the `n` of `chunk_ids` (row i's vector is vectors[i]) nearest
    `vector`, exactly: one matrix-vector product."""
    cos = vectors @ np.asarray(vector, dtype=np.float32)
    top = np.argpartition(-cos, n - 1)[:n] if len(cos) > n else range(len(cos))
    return {chunk_ids[i]: float(cos[i]) for i in top}


def nearest_held(
    table: ChunkTable, vector: list[float], rows: np.ndarray, n: int
) -> dict[str, float]:
    """The `n` nearest of the keyword-index `rows` from the chunk table's vectors (no Chroma
    call; the table is at most QA_CHUNK_CACHE chunks)."""
    rows = rows[table.present[rows]]
    return nearest([table.ids[r] for r in rows], table.vectors[rows], vector, n)


def split_by_table(
    table: ChunkTable | None, chunk_ids: Iterable[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """(chunk id, row) for the chunks the table holds, and the ids to read from Chroma."""
    held: list[tuple[str, int]] = []
    missing: list[str] = []
    for cid in chunk_ids:
        row = table.row(cid) if table is not None else None
        if row is None:
            missing.append(cid)
        else:
            held.append((cid, row))
    return held, missing


# ---------------------------------------------------------------- retriever


@dataclass
class KeywordResult:
    """One query's BM25 view: the top chunks, and a lookup for any other chunk's score."""

    top: dict[str, float]
    scores: np.ndarray
    row_of: dict[str, int]
    index: KeywordIndex
    allowed: np.ndarray | None = None  # the rows the filters allow (None: no filters)
    table: ChunkTable | None = None  # that state's chunks in memory (small indexes)

    def allows(self, chunk_id: str) -> bool:
        row = self.row_of.get(chunk_id)
        return self.allowed is None or (row is not None and bool(self.allowed[row]))

    def score(self, chunk_id: str) -> float:
        row = self.row_of.get(chunk_id)
        return float(self.scores[row]) if row is not None and len(self.scores) else 0.0


class Retriever:
    """Answers `retrieve(question)` against one Index; safe to share across threads."""

    def __init__(self, index: Index):
        self.index = index
        self.keyword_index = KeywordIndex()
        self.lock = threading.Lock()
        self._building: tuple[int, int] | None = None  # the state built in the background
        self._asked: list[str] | None = None  # the keyword ids a question has used
        self._tabled: list[str] | None = None  # ... and those whose chunk table was started
        self.filter_masks = FilterMasks()

    def _current_keyword_index(self) -> KeywordIndex:
        """The keyword index to search now (under self.lock): the one saved for the committed
        state. When a writer committed a state without saving one (a streamed ingest's
        intermediate batches, a full disk), it is built in the background while questions
        keep using the previous one: only a process's very first question may build."""
        kw = self.keyword_index
        if kw.model is None:
            kw.refresh(self.index)
            return kw
        recent = time.monotonic() - kw.checked_at < STALE_CHECK_SECONDS
        if recent and self.index.writes == kw.writes:
            return kw  # other processes' writes are seen within STALE_CHECK_SECONDS; ours at once
        snapshot = self.index.snapshot()
        kw.checked_at, kw.writes = time.monotonic(), self.index.writes
        if snapshot == (kw.revision, kw.count):
            return kw
        fresh = KeywordIndex(checked_at=kw.checked_at, writes=kw.writes)
        if fresh.load_saved(self.index, *snapshot):
            self.keyword_index = fresh
            return fresh
        if self._building != snapshot:
            self._building = snapshot
            threading.Thread(
                target=self._build_in_background, args=(snapshot,), daemon=True
            ).start()
        return kw

    def _build_in_background(self, snapshot: tuple[int, int]) -> None:
        fresh = KeywordIndex()
        try:
            fresh.build_in_memory(self.index, *snapshot)
        except Exception as exc:  # the next check tries again; questions use the old one
            log.warning("could not build the keyword index: %s", exc)
            with self.lock:
                self._building = None
            return
        with self.lock:
            if self._building == snapshot:
                fresh.checked_at, fresh.writes = time.monotonic(), self.index.writes
                self.keyword_index, self._building = fresh, None

    def keyword(
        self, query_stems: list[str], n: int, filters: Filters | None = None
    ) -> KeywordResult:
        """The top `n` chunks by BM25 (a consistent snapshot even while Chroma changes),
        among the chunks `filters` allows."""
        with self.lock:
            kw = self._current_keyword_index()
            scores = kw.scores(query_stems)
            ids, row_of = kw.ids, kw.row_of
            allowed = self.filter_masks.get(self.index, kw, filters) if filters else None
            table = kw.chunk_table()
            if table is None:
                self._load_table(kw)
        top: dict[str, float] = {}
        if len(scores):
            ranked = scores if allowed is None else np.where(allowed, scores, 0.0)
            rows = np.argpartition(-ranked, min(n, len(ranked) - 1))[:n]
            top = {ids[r]: float(ranked[r]) for r in rows if ranked[r] > 0}
        return KeywordResult(top, scores, row_of, kw, allowed, table)

    def _load_table(self, kw: KeywordIndex) -> None:
        """Start reading the chunk table of `kw`'s state in the background (under self.lock;
        indexes of at most QA_CHUNK_CACHE chunks; once per state, failed or not), from its
        second question on: a one-shot `qa ask` would read it for nothing."""
        ids = kw.ids
        if not ids or len(ids) > self.index.settings.chunk_cache or self._tabled is ids:
            return
        if self._asked is not ids:
            self._asked = ids
            return
        self._tabled = ids
        threading.Thread(target=self._read_table, args=(kw, ids, kw.row_of), daemon=True).start()

    def _read_table(self, kw: KeywordIndex, ids: list[str], row_of: dict[str, int]) -> None:
        try:
            table = ChunkTable.read(self.index, ids, row_of)
        except Exception as exc:  # questions keep reading chunks from Chroma
            log.warning("could not hold the index's chunks in memory: %s", exc)
            return
        with self.lock:
            if kw.ids is ids:
                kw.table = table

    def dense_candidates(
        self, vector: list[float], n: int, filters: Filters | None = None
    ) -> dict[str, float]:
        """chunk id → cosine for the `n` nearest chunks `filters` allows (ids and distances
        only: cheap)."""
        got = self.index.call(  # chromadb 1.x returns fewer results when it has fewer chunks
            self.index.collection.query,
            query_embeddings=[vector],
            n_results=max(1, n),
            include=["distances"],
            where=filters.where() if filters else None,
        )
        return {
            cid: 1.0 - dist for cid, dist in zip(got["ids"][0], got["distances"][0], strict=True)
        }

    def _allowed_neighbours(
        self,
        vector: list[float],
        near: dict[str, float],
        asked: int,
        n: int,
        keyword: KeywordResult,
        filters: Filters,
    ) -> dict[str, float]:
        """The `n` nearest chunks `filters` allows: from the over-fetched unfiltered
        neighbours (`near`, `asked` for) when they hold enough; else among the allowed chunks
        only: by numpy when the reader holds the chunk table or at most DENSE_EXACT_MAX are
        allowed (their vectors read by id), by Chroma's `query(ids=…)` when at most
        DENSE_IDS_MAX are; else from one unfiltered query widened by the share the filter
        allowed (DENSE_WIDEST when none). Only a filter wider than DENSE_IDS_MAX yet too
        narrow for that (or whose ids Chroma refused) is asked of Chroma with `where`, which
        reads every matching chunk's metadata first: p95 4.4 s for a date filter at 666k
        chunks. Chunks the keyword index does not know (written after its state) are not
        allowed on any path but the `where`, as `keyword.allows` says."""

        def kept(cos: dict[str, float]) -> dict[str, float]:
            allowed = sorted((c for c in cos if keyword.allows(c)), key=lambda c: -cos[c])
            return {c: cos[c] for c in allowed[:n]}

        cos = kept(near)
        if len(cos) >= n or len(near) < asked:  # fewer came back: the collection is all here
            return cos
        rows = np.flatnonzero(keyword.allowed)
        if not len(rows):
            return {}
        if keyword.table is not None:
            return nearest_held(keyword.table, vector, rows, n)
        chunk_ids = [keyword.index.ids[r] for r in rows] if len(rows) <= DENSE_IDS_MAX else []
        if 0 < len(chunk_ids) <= DENSE_EXACT_MAX:
            return self.nearest_read(vector, chunk_ids, n)
        among = self.nearest_among(vector, chunk_ids, n) if chunk_ids else None
        if among is not None:
            return among
        share = len(cos) / len(near)
        wider = min(DENSE_WIDEST, math.ceil(2 * n / share)) if cos else DENSE_WIDEST
        if wider > len(near):
            near, asked = self.dense_candidates(vector, wider), wider
            cos = kept(near)
        if len(cos) < n and len(near) >= asked:
            cos = self.dense_candidates(vector, n, filters)
        return cos

    def nearest_read(self, vector: list[float], chunk_ids: list[str], n: int) -> dict[str, float]:
        """The `n` nearest of `chunk_ids`, exactly: their vectors read with one `get` (a chunk
        gone from Chroma since the keyword index's state is not returned, so not ranked)."""
        got = self.index.call(self.index.collection.get, ids=chunk_ids, include=["embeddings"])
        if not got["ids"]:
            return {}
        return nearest(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), vector, n)

    def nearest_among(
        self, vector: list[float], chunk_ids: list[str], n: int
    ) -> dict[str, float] | None:
        """chunk id → cosine for the `n` nearest of `chunk_ids` (Chroma searches those ids
        only); None when one of them is gone from Chroma (a paper re-written after the
        keyword index's state: Chroma refuses the whole query with "Error finding id")."""

        def query() -> dict | None:
            try:
                return self.index.collection.query(
                    query_embeddings=[vector],
                    ids=chunk_ids,
                    n_results=min(n, len(chunk_ids)),
                    include=["distances"],
                )
            except InternalError as exc:  # the widened query or the `where` answers instead
                log.debug("no dense query among the allowed chunks: %s", exc)
                return None

        got = self.index.call(query)  # other failures: one clear error, as every call
        if got is None:
            return None
        return {
            cid: 1.0 - dist for cid, dist in zip(got["ids"][0], got["distances"][0], strict=True)
        }

    def _dense(
        self, query: str, n: int, filters: Filters | None
    ) -> tuple[list[float], dict[str, float]]:
        """The question's vector and its nearest chunks: one worker task, no hand-back between
        the embedding and the Chroma query."""
        vector = self.index.embeddings.embed_query(query)
        return vector, self.dense_candidates(vector, n, filters)

    def vectors(
        self, chunk_ids: list[str], table: ChunkTable | None = None
    ) -> dict[str, np.ndarray]:
        """Stored (unit) vectors of chunks: from the chunk table (default: the current keyword
        index's), the rest fetched from Chroma (the keyword top's while the question is
        being embedded, so their cosines cost no round trip after it)."""
        table = table if table is not None else self.keyword_index.chunk_table()
        held, missing = split_by_table(table, chunk_ids)
        found = {cid: table.vectors[row] for cid, row in held}
        if missing:
            got = self.index.call(self.index.collection.get, ids=missing, include=["embeddings"])
            for cid, emb in zip(got["ids"], got["embeddings"], strict=True):
                found[cid] = np.asarray(emb, dtype=np.float32)
        return found

    def retrieve(
        self, question: str, k: int, mode: Mode, settings: Settings, filters: Filters | None = None
    ) -> list[Hit]:
        n = max(settings.candidates, k * 4)
        query = normalize_question(_ID_IN_TEXT.sub(" ", question))
        # The query embedding and dense search (onnxruntime, an HTTP call and Chroma's Rust
        # core all release the GIL) run in a worker while this thread does what does not need
        # the vector: the keyword search and fetching the keyword top's stored vectors
        # (benchmarks/retrieve_vs_naive.py).
        # With filters the dense side asks for more neighbours without a Chroma `where` and
        # keeps the allowed ones (measured at 175k chunks: a `where` on the date cost ~0.5 s
        # per query); see _allowed_neighbours.
        wide = n * DENSE_OVERFETCH if filters else n
        pending = _EMBED_POOL.submit(self._dense, query, wide, None) if mode != "keyword" else None
        query_stems = stems(query)
        keyword = self.keyword(query_stems, n, filters)  # also refreshes the index snapshot
        named = sorted({m.group(1) for m in _ID_IN_TEXT.finditer(question)})
        known = self._records(named, [], keyword.table)[0]
        pinned = {key for key, p in known.items() if not filters or filters.matches(p)}
        top_kw = keyword.top if mode != "dense" else {}
        stored = self.vectors(list(top_kw), keyword.table) if pending else {}
        vector, cos = pending.result() if pending else (None, {})
        if filters and vector is not None:
            cos = self._allowed_neighbours(vector, cos, wide, n, keyword, filters)

        chunk_ids = set(top_kw) | set(cos)
        if vector is not None:
            q = np.asarray(vector, dtype=np.float32)
            for cid in chunk_ids - cos.keys():
                if cid in stored:
                    cos[cid] = float(np.dot(stored[cid], q))
        kw = {cid: keyword.score(cid) for cid in chunk_ids} if mode != "dense" else {}
        fused = fuse(chunk_ids, kw, cos, mode, settings)
        return self._to_hits(set(query_stems), keyword, fused, kw, cos, pinned, k)

    def _to_hits(
        self,
        query_stems: set[str],
        keyword: KeywordResult,
        fused: dict[str, float],
        kw: dict[str, float],
        cos: dict[str, float],
        pinned: set[str],
        k: int,
    ) -> list[Hit]:
        """Group chunks into papers (best chunk wins), pin named papers, build Hits."""
        best: dict[str, tuple[float, str]] = {}
        for cid, score in fused.items():
            key = cid.rsplit("#", 1)[0]
            if key not in best or score > best[key][0]:
                best[key] = (score, cid)
        for key in pinned:
            score, cid = best.get(key, (0.0, f"{key}#0"))
            best[key] = (2.0 + score, cid)
        ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
        papers, texts = self._records(
            [key for key, _ in ranked], [c for _, (_, c) in ranked], keyword.table
        )
        top_kw = max(kw.values(), default=0.0) or 1.0
        hits = []
        for key, (score, cid) in ranked:
            if key not in papers:
                continue  # a pinned ID that is not in the index
            text = texts.get(cid, "")
            title = papers[key].title
            snippet = text[len(title) :].strip() if title and text.startswith(title) else text
            hits.append(
                Hit(
                    papers[key],
                    min(score, 1.0),
                    snippet,
                    dense=cos.get(cid, 0.0),
                    keyword=kw.get(cid, 0.0) / top_kw,
                    coverage=keyword.index.coverage(query_stems, text, cid),
                    pinned=key in pinned,
                )
            )
        return hits

    def _records(
        self, keys: list[str], chunk_ids: list[str], table: ChunkTable | None
    ) -> tuple[dict[str, Paper], dict[str, str]]:
        """Papers (from their first chunks) and the best chunks' texts: from the chunk table,
        the rest in one Chroma call."""
        if not keys:
            return {}, {}
        wanted = list(dict.fromkeys([*(f"{k}#0" for k in keys), *chunk_ids]))
        held, missing = split_by_table(table, wanted)
        rows = [(cid, table.firsts.get(cid), table.texts[row]) for cid, row in held]
        if missing:
            got = self.index.call(
                self.index.collection.get, ids=missing, include=["metadatas", "documents"]
            )
            rows += zip(got["ids"], got["metadatas"], got["documents"], strict=True)
        papers: dict[str, Paper] = {}
        texts: dict[str, str] = {}
        for cid, meta, doc in rows:
            texts[cid] = doc
            if cid.endswith("#0"):
                papers[meta["key"]] = paper_from_metadata(meta)
        return papers, texts


def fuse(
    chunk_ids: set[str],
    kw: dict[str, float],
    cos: dict[str, float],
    mode: Mode,
    settings: Settings,
) -> dict[str, float]:
    """Chunk id → fused score: a convex mix of per-query normalised scores, or RRF."""
    weight = {"keyword": 1.0, "dense": 0.0}.get(mode, settings.keyword_weight)
    if settings.fusion == "rrf" and mode == "hybrid":
        return rrf([kw, cos], [weight, 1 - weight], chunk_ids)
    top_kw = max(kw.values(), default=0.0) or 1.0
    lo, hi = (min(cos.values()), max(cos.values())) if cos else (0.0, 1.0)
    spread = (hi - lo) or 1.0
    return {
        cid: weight * kw.get(cid, 0.0) / top_kw + (1 - weight) * (cos.get(cid, lo) - lo) / spread
        for cid in chunk_ids
    }


def rrf(
    channels: list[dict[str, float]], weights: list[float], ids: set[str], c: int = 60
) -> dict[str, float]:
    """Weighted reciprocal-rank fusion (kept for comparison in `qa eval`)."""
    fused = dict.fromkeys(ids, 0.0)
    for scores, weight in zip(channels, weights, strict=True):
        ranked = sorted(ids, key=lambda i: -scores.get(i, float("-inf")))
        for rank, cid in enumerate(ranked):
            fused[cid] += weight / (c + rank + 1)
    top = max(fused.values(), default=0.0) or 1.0
    return {cid: v / top for cid, v in fused.items()}


_RETRIEVERS: dict[int, Retriever] = {}
_RETRIEVERS_LOCK = threading.Lock()


def get_retriever(settings: Settings | None = None) -> Retriever:
    """The shared Retriever for the settings' index (built from the seeds if empty)."""
    settings = settings or get_settings()
    index = open_index(settings)  # a cached handle: no Chroma call on the hot path
    with _RETRIEVERS_LOCK:
        retriever = _RETRIEVERS.get(id(index))
        if retriever is None or retriever.index is not index:
            ensure_index(settings)  # first use of this index: build it if it is empty
            retriever = _RETRIEVERS[id(index)] = Retriever(index)
        return retriever


def retrieve(
    question: str,
    k: int | None = None,
    *,
    mode: Mode = "hybrid",
    settings: Settings | None = None,
    since: str | date | None = None,
    until: str | date | None = None,
    categories: str | list[str] | None = None,
    authors: str | list[str] | None = None,
    filters: Filters | None = None,
) -> list[Hit]:
    """`qa.retrieve`: the k most relevant papers, best first, one Hit per paper; with filters
    (period of first version, categories, authors) only papers that satisfy them."""
    settings = settings or get_settings()
    filters = (filters or Filters()).merged(Filters.make(since, until, categories, authors))
    question = " ".join(question.split())
    if not question:
        return []
    retriever = get_retriever(settings)
    return retriever.retrieve(question, k or settings.k, mode, settings, filters or None)
