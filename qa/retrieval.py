"""Hybrid retrieval: BM25 (bm25s, stemmed) + dense (Chroma), fused, grouped into papers.

BM25 finds method names and rare terms, the dense channel finds paraphrases; each candidate
is scored in *both* channels (no zero for "not in the other top list"), then fused. The
keyword index is derived from the documents Chroma holds and rebuilt when Chroma's revision
stamp changes, so Chroma stays the one source of truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from qa.citations import ARXIV_ID as CITED_ID
from qa.config import Settings, get_settings
from qa.corpus import Paper
from qa.filters import ChunkFacets, FilterMasks, Filters
from qa.index import Index, ensure_index, open_index, paper_from_metadata
from qa.wording import american_spelling, normalize_question, split_scripts

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it forces DEBUG on itself

Mode = Literal["hybrid", "keyword", "dense"]
STALE_CHECK_SECONDS = 2.0
DENSE_OVERFETCH = 4  # filtered questions: neighbours asked for per candidate kept
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


# ---------------------------------------------------------------- keyword index


_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s' token pattern
_STOPWORDS = frozenset(STOPWORDS_EN)
_STEMMERS = threading.local()  # PyStemmer objects are not thread-safe


# In the saved keyword index's name, so a new tokeniser rebuilds it (t2: scripts split,
# British spellings folded).
TOKENIZER = "t2"
FACETS_FILE = "facets.npz"  # per-chunk dates and match keys (filters), beside the BM25 files


def stems(text: str) -> list[str]:
    """Lower-cased, stop-word-free, Snowball-stemmed words: the keyword index's tokens.

    Scripts are split first, so a Latin term glued to CJK text (`什么是POMP`) is its own word,
    and British spellings folded into American ones ("initialise" finds "initialize").
    Words are folded and stemmed once each (cached): a corpus repeats its vocabulary, and
    per-text regexes made stemming 3x slower (the keyword index build at 1M chunks).
    """
    text = text.lower()
    if not text.isascii():  # only CJK/Thai text has script edges
        text = split_scripts(text)
    return [s for s in map(_stem, _WORD.findall(text)) if s]


@lru_cache(maxsize=1 << 18)
def _stem(word: str) -> str:
    """A word's token ("" for a stop word); the spelling fold is per word, as on the text."""
    word = american_spelling(word)
    if word in _STOPWORDS:
        return ""
    stemmer = getattr(_STEMMERS, "stemmer", None)
    if stemmer is None:
        stemmer = _STEMMERS.stemmer = Stemmer.Stemmer("english")
    return stemmer.stemWord(word)


@dataclass
class KeywordIndex:
    """BM25 over the chunks Chroma holds, rebuilt when Chroma's revision changes."""

    revision: int = -1
    count: int = -1
    ids: list[str] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    model: bm25s.BM25 | None = None
    idf: dict[str, float] = field(default_factory=dict)
    max_idf: float = 1.0  # the weight of a question word no chunk has
    checked_at: float = 0.0
    writes: int = -1  # the Index's in-process write count at the last check
    table: ChunkTable | None = None  # its chunks' vectors and texts, for small indexes
    facets: ChunkFacets | None = None  # its chunks' dates and match keys, for filter masks

    def chunk_table(self) -> ChunkTable | None:
        """The in-memory chunk table of this state (None: not loaded, or made for the
        state this object held before an in-place rebuild)."""
        table = self.table
        return table if table is not None and table.ids is self.ids else None

    def rebuild(self, index: Index) -> None:
        """Readers: load the saved index for the committed state, or build it in memory (a
        reader never writes: only a writer's `build` saves one)."""
        revision, count = index.snapshot()  # the last committed write, not one in progress
        if not self.load_saved(index, revision, count):
            self.build_in_memory(index, revision, count)

    def load_saved(self, index: Index, revision: int, count: int) -> bool:
        """Load the index a writer saved for this state (False when there is none)."""
        return self._load(_cache_dir(index, revision, count), revision, count)

    def build(self, index: Index, revision: int, count: int) -> None:
        """Writers only: build the index for state (revision, count) and save it beside the
        store (dropping older copies). A writer calls this before committing that state, so
        readers load it instead of building it."""
        self.build_in_memory(index, revision, count)
        self._save(_cache_dir(index, revision, count))

    def build_in_memory(self, index: Index, revision: int, count: int) -> None:
        """Read every chunk back from Chroma and index it, writing nothing (what a reader does
        for a state no writer saved an index for)."""
        ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict | None] = []
        for offset in range(0, count, 5000):
            got = index.call(
                index.collection.get,
                include=["documents", "metadatas"],
                limit=5000,
                offset=offset,
            )
            ids += got["ids"]
            texts += got["documents"]
            metadatas += got["metadatas"]
        self.facets = ChunkFacets.from_metadatas(metadatas)
        del metadatas
        vocab: dict[str, int] = {}
        tokens = [[vocab.setdefault(w, len(vocab)) for w in stems(t)] for t in texts]
        model = bm25s.BM25()
        if texts:
            model.index(bm25s.tokenization.Tokenized(ids=tokens, vocab=vocab), show_progress=False)
        self.idf = self._idf(tokens, vocab)
        self.max_idf = max(self.idf.values(), default=1.0)
        self.ids, self.row_of, self.vocab, self.model = (
            ids,
            {c: i for i, c in enumerate(ids)},
            vocab,
            model,
        )
        self.revision, self.count = revision, count
        self.checked_at = time.monotonic()
        log.debug("keyword index rebuilt: %d chunks (revision %d)", count, revision)

    def _save(self, cache: Path) -> None:
        """Keep the index on disk so the next start skips the rebuild (a minute at 100k)."""
        if not self.ids:
            return
        tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save(str(tmp))
            (tmp / "qa.json").write_text(json.dumps({"ids": self.ids, "idf": self.idf}))
            if self.facets is not None:
                self.facets.save(tmp / FACETS_FILE)
            shutil.rmtree(cache, ignore_errors=True)  # an unreadable copy of the same state
            os.replace(tmp, cache)
            _drop_superseded(cache)
        except OSError as exc:  # a read-only or full disk only costs the next start time
            log.warning("could not save the keyword index to %s: %s", cache, exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, cache: Path, revision: int, count: int) -> bool:
        if not (cache / "qa.json").is_file():
            return False
        try:
            extra = json.loads((cache / "qa.json").read_text())
            model = bm25s.BM25.load(str(cache))
            facets_file = cache / FACETS_FILE
            facets = ChunkFacets.load(facets_file) if facets_file.is_file() else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable keyword index %s: %s", cache, exc)
            return False
        if len(extra["ids"]) != count:
            return False
        self.ids, self.idf, self.model, self.facets = extra["ids"], extra["idf"], model, facets
        self.max_idf = max(self.idf.values(), default=1.0)
        self.vocab = model.vocab_dict
        self.row_of = {c: i for i, c in enumerate(self.ids)}
        self.revision, self.count = revision, count
        self.checked_at = time.monotonic()
        return True

    @staticmethod
    def _idf(tokens: list[list[int]], vocab: dict[str, int]) -> dict[str, float]:
        """Stem → BM25 idf, for weighting how much of a question a chunk covers."""
        df = Counter(t for doc in tokens for t in set(doc))
        n = len(tokens)
        word = {i: w for w, i in vocab.items()}
        return {word[i]: math.log(1 + (n - c + 0.5) / (c + 0.5)) for i, c in df.items()}

    def coverage(self, query_stems: set[str], text: str, chunk_id: str | None = None) -> float:
        """IDF-weighted share of the query's words present in `text`; unknown words weigh most.

        A question whose rare words appear nowhere in the corpus ("protein folding") gets a
        low coverage even when its common words ("graph", "network") match.
        """
        if not query_stems:
            return 0.0
        weight = {w: self.idf.get(w, self.max_idf) for w in query_stems}
        row = self.row_of.get(chunk_id) if chunk_id else None
        if row is None or self.model is None:
            found = query_stems & set(stems(text))
        else:  # the chunk's words are in the BM25 matrix already: no re-stemming on the hot path
            found = {w for w in query_stems if self._has(w, row)}
        return sum(weight[w] for w in found) / sum(weight.values())

    def _has(self, stem: str, row: int) -> bool:
        """Whether chunk `row` contains `stem`: a look-up in the BM25 matrix's column for it
        (bm25s keeps it column-compressed with sorted row indices)."""
        token = self.vocab.get(stem)
        if token is None:
            return False
        matrix = self.model.scores
        rows = matrix["indices"][matrix["indptr"][token] : matrix["indptr"][token + 1]]
        at = int(np.searchsorted(rows, row))
        return at < len(rows) and int(rows[at]) == row

    def refresh(self, index: Index) -> None:
        """Rebuild if Chroma changed since the last build (checked at most every 2 s)."""
        recent = time.monotonic() - self.checked_at < STALE_CHECK_SECONDS
        if self.model is not None and recent and index.writes == self.writes:
            return  # other processes' writes are seen within STALE_CHECK_SECONDS; ours at once
        if self.model is None or index.snapshot() != (self.revision, self.count):
            self.rebuild(index)
        self.checked_at = time.monotonic()
        self.writes = index.writes

    def scores(self, query_stems: list[str]) -> np.ndarray:
        """BM25 score of every chunk for the query (zeros when no query word is known)."""
        ids = [self.vocab[w] for w in query_stems if w in self.vocab]
        if self.model is None or not self.ids or not ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.model.get_scores(ids), dtype=np.float32)


def _drop_superseded(cache: Path) -> None:
    """Delete saved keyword indexes older than the one before `cache`: a writer saves the
    next state's before committing it, and readers may still load the current one."""
    prefix, _, rest = cache.name.rpartition("-r")
    revision = int(rest.split("-n", 1)[0])
    for old in cache.parent.glob(f"{prefix}-r*"):
        if ".tmp-" in old.name:  # a save in progress
            continue
        try:
            theirs = int(old.name.rpartition("-r")[2].split("-n", 1)[0])
        except ValueError:
            continue
        if theirs < revision - 1:
            shutil.rmtree(old, ignore_errors=True)


def _cache_dir(index: Index, revision: int, count: int) -> Path:
    """Where the keyword index for this collection state lives (hidden: not Chroma's)."""
    where = index.settings.chroma_url or "embedded"
    key = f"{where}|{index.settings.collection}|{TOKENIZER}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    return index.settings.persist_dir / ".keyword-index" / f"{tag}-r{revision}-n{count}"


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
        # per query); a filter too narrow to leave n of them is asked of Chroma with `where`.
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
            allowed = sorted((c for c in cos if keyword.allows(c)), key=lambda c: -cos[c])
            cos = {c: cos[c] for c in allowed[:n]}
            if len(cos) < n:
                cos = self.dense_candidates(vector, n, filters)

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
