"""Hybrid retrieval: BM25 (bm25s, stemmed) + dense (Chroma), fused, grouped into papers.

BM25 finds method names and rare terms, the dense channel finds paraphrases; each candidate
is scored in *both* channels (no zero for "not in the other top list"), then fused. The
keyword index is derived from the documents Chroma holds and rebuilt when Chroma's revision
stamp changes, so Chroma stays the one source of truth.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import bm25s
import numpy as np
import Stemmer

from qa.citations import ARXIV_ID as CITED_ID
from qa.config import Settings, get_settings
from qa.corpus import Paper
from qa.index import Index, ensure_index

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it forces DEBUG on itself

Mode = Literal["hybrid", "keyword", "dense"]
STALE_CHECK_SECONDS = 2.0
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


@dataclass
class KeywordIndex:
    """BM25 over the chunks Chroma holds, rebuilt when Chroma's revision changes."""

    revision: int = -1
    count: int = -1
    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    model: bm25s.BM25 | None = None
    tokenizer: bm25s.tokenization.Tokenizer | None = None
    idf: dict[str, float] = field(default_factory=dict)
    checked_at: float = 0.0
    writes: int = -1  # the Index's in-process write count at the last check

    @staticmethod
    def make_tokenizer() -> bm25s.tokenization.Tokenizer:
        return bm25s.tokenization.Tokenizer(
            stemmer=Stemmer.Stemmer("english").stemWord, stopwords="en"
        )

    def rebuild(self, index: Index) -> None:
        revision, count = index.revision(), index.count()
        ids, keys, texts = [], [], []
        for offset in range(0, count, 5000):
            got = index.call(
                index.collection.get,
                include=["documents", "metadatas"],
                limit=5000,
                offset=offset,
            )
            ids += got["ids"]
            texts += got["documents"]
            keys += [m["key"] for m in got["metadatas"]]
        tokenizer = self.make_tokenizer()
        model = bm25s.BM25()
        idf: dict[str, float] = {}
        if texts:
            tokens = tokenizer.tokenize(texts, show_progress=False, return_as="ids")
            model.index(tokens, show_progress=False)
            idf = self._idf(tokens, tokenizer)
        self.ids, self.keys, self.texts, self.idf = ids, keys, texts, idf
        self.model, self.tokenizer = model, tokenizer
        self.revision, self.count = revision, count
        self.checked_at = time.monotonic()
        log.debug("keyword index rebuilt: %d chunks (revision %d)", count, revision)

    @staticmethod
    def _idf(tokens: list[list[int]], tokenizer: bm25s.tokenization.Tokenizer) -> dict[str, float]:
        """Stem → BM25 idf, for weighting how much of a question a chunk covers."""
        df = Counter(t for doc in tokens for t in set(doc))
        n = len(tokens)
        stems = {i: w for w, i in tokenizer.get_vocab_dict().items()}
        return {stems[i]: math.log(1 + (n - c + 0.5) / (c + 0.5)) for i, c in df.items()}

    def stems(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(
            [text], update_vocab=False, show_progress=False, return_as="string"
        )[0]

    def coverage(self, query: str, text: str) -> float:
        """IDF-weighted share of the query's words present in `text`; unknown words weigh most.

        A question whose rare words appear nowhere in the corpus ("protein folding") gets a
        low coverage even when its common words ("graph", "network") match.
        """
        if self.tokenizer is None:
            return 0.0
        words = set(self.stems(query))
        if not words:
            return 0.0
        unseen = max(self.idf.values(), default=1.0)
        weight = {w: self.idf.get(w, unseen) for w in words}
        found = words & set(self.stems(text))
        return sum(weight[w] for w in found) / sum(weight.values())

    def refresh(self, index: Index) -> None:
        """Rebuild if Chroma changed since the last build (checked at most every 2 s)."""
        recent = time.monotonic() - self.checked_at < STALE_CHECK_SECONDS
        if self.model is not None and recent and index.writes == self.writes:
            return  # other processes' writes are seen within STALE_CHECK_SECONDS; ours at once
        if self.model is None or (index.revision(), index.count()) != (self.revision, self.count):
            self.rebuild(index)
        self.checked_at = time.monotonic()
        self.writes = index.writes

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for the query (zeros when no query word is known)."""
        if self.model is None or not self.texts:
            return np.zeros(0, dtype=np.float32)
        vocab = self.tokenizer.get_vocab_dict()
        words = self.stems(query)
        ids = [vocab[w] for w in words if w in vocab]
        if not ids:
            return np.zeros(len(self.texts), dtype=np.float32)
        return np.asarray(self.model.get_scores(ids), dtype=np.float32)


# ---------------------------------------------------------------- retriever


class Retriever:
    """Answers `retrieve(question)` against one Index; safe to share across threads."""

    def __init__(self, index: Index, settings: Settings):
        self.index = index
        self.settings = settings
        self.keyword_index = KeywordIndex()
        self.lock = threading.Lock()

    def keyword_scores(self, question: str, n: int) -> tuple[list[str], dict[str, float]]:
        """The top `n` chunk ids by BM25, and every chunk's score (to score dense finds too)."""
        with self.lock:
            self.keyword_index.refresh(self.index)
            ids = self.keyword_index.ids
            scores = self.keyword_index.scores(question)
        if not len(scores):
            return [], {}
        top = [ids[i] for i in np.argsort(-scores)[:n] if scores[i] > 0]
        return top, dict(zip(ids, scores.tolist(), strict=True))

    def dense_candidates(self, vector: list[float], n: int) -> dict[str, tuple[float, str, str]]:
        """chunk id → (cosine, paper key, text) for the `n` nearest chunks."""
        got = self.index.call(
            self.index.collection.query,
            query_embeddings=[vector],
            n_results=max(1, min(n, self.index.count())),
            include=["distances", "metadatas", "documents"],
        )
        return {
            cid: (1.0 - dist, meta["key"], doc)
            for cid, dist, meta, doc in zip(
                got["ids"][0],
                got["distances"][0],
                got["metadatas"][0],
                got["documents"][0],
                strict=True,
            )
        }

    def cosines(self, vector: list[float], chunk_ids: list[str]) -> dict[str, float]:
        """Exact cosine for chunks found only by keyword (vectors are unit-normalised)."""
        if not chunk_ids:
            return {}
        got = self.index.call(self.index.collection.get, ids=chunk_ids, include=["embeddings"])
        q = np.asarray(vector, dtype=np.float32)
        return {
            cid: float(np.dot(np.asarray(emb, dtype=np.float32), q))
            for cid, emb in zip(got["ids"], got["embeddings"], strict=True)
        }

    def retrieve(self, question: str, k: int, mode: Mode = "hybrid") -> list[Hit]:
        n = max(self.settings.candidates, k * 4)
        named = {m.group(1) for m in _ID_IN_TEXT.finditer(question)}
        pinned = set(self.index.papers(sorted(named))) if named else set()  # known papers only
        query = _ID_IN_TEXT.sub(" ", question)
        top_kw, kw_all = self.keyword_scores(query, n) if mode != "dense" else ([], {})
        vector = self.index.embeddings.embed_query(query) if mode != "keyword" else None
        dense = self.dense_candidates(vector, n) if vector is not None else {}

        chunk_ids = set(top_kw) | set(dense)
        cos = {cid: v[0] for cid, v in dense.items()}
        if vector is not None:
            cos.update(self.cosines(vector, [c for c in chunk_ids if c not in cos]))
        kw = {cid: kw_all.get(cid, 0.0) for cid in chunk_ids}
        fused = self.fuse(chunk_ids, kw, cos, mode)
        return self._to_hits(query, fused, kw, cos, pinned, k)

    def fuse(
        self, chunk_ids: set[str], kw: dict[str, float], cos: dict[str, float], mode: Mode
    ) -> dict[str, float]:
        """Chunk id → fused score: a convex mix of per-query normalised scores, or RRF."""
        weight = {"keyword": 1.0, "dense": 0.0}.get(mode, self.settings.keyword_weight)
        if self.settings.fusion == "rrf" and mode == "hybrid":
            return rrf([kw, cos], [weight, 1 - weight], chunk_ids)
        top_kw = max(kw.values(), default=0.0) or 1.0
        lo, hi = (min(cos.values()), max(cos.values())) if cos else (0.0, 1.0)
        spread = (hi - lo) or 1.0
        return {
            cid: weight * kw.get(cid, 0.0) / top_kw
            + (1 - weight) * (cos.get(cid, lo) - lo) / spread
            for cid in chunk_ids
        }

    def _to_hits(
        self,
        query: str,
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
        papers = self.index.papers([key for key, _ in ranked])
        texts = self._chunk_texts([cid for _, (_, cid) in ranked])
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
                    coverage=self.keyword_index.coverage(query, text),
                    pinned=key in pinned,
                )
            )
        return hits

    def _chunk_texts(self, chunk_ids: list[str]) -> dict[str, str]:
        if not chunk_ids:
            return {}
        got = self.index.call(self.index.collection.get, ids=chunk_ids, include=["documents"])
        return dict(zip(got["ids"], got["documents"], strict=True))


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
    index = ensure_index(settings)
    with _RETRIEVERS_LOCK:
        retriever = _RETRIEVERS.get(id(index))
        if retriever is None or retriever.index is not index:
            retriever = _RETRIEVERS[id(index)] = Retriever(index, settings)
        return retriever


def retrieve(
    question: str,
    k: int | None = None,
    *,
    mode: Mode = "hybrid",
    settings: Settings | None = None,
) -> list[Hit]:
    """`qa.retrieve`: the k most relevant papers, best first, one Hit per paper."""
    settings = settings or get_settings()
    question = " ".join(question.split())
    if not question:
        return []
    return get_retriever(settings).retrieve(question, k or settings.k, mode)


def relevance(hit: Hit) -> float:
    """How well a hit answers: its dense similarity and how much of the question it covers."""
    return 0.5 * hit.dense + 0.5 * hit.coverage


def is_relevant(hits: list[Hit], settings: Settings | None = None) -> bool:
    """Does the best hit clear the abstention threshold (calibrated by `qa eval`)?"""
    settings = settings or get_settings()
    return bool(hits) and (
        hits[0].pinned or max(relevance(h) for h in hits) >= settings.abstain_threshold
    )
