"""`qa.similar`: the papers nearest to one paper, by the embedding of its own chunks.

The paper's chunk vectors (already in Chroma: nothing is embedded) are averaged into one query
vector; the dense channel then ranks every other paper's chunks, grouped into papers. Filters
work as in `qa.retrieve`.
"""

from __future__ import annotations

import re
from datetime import date

import numpy as np

from qa.arxiv_ids import ArxivIdError, normalize_id
from qa.config import Settings, get_settings, with_overrides
from qa.filters import Filters
from qa.retrieval import Hit, get_retriever


class UnknownPaper(LookupError):
    """The paper asked about is not in the index; the message says how to add it."""


def paper_key(text: str) -> str:
    """An arXiv ID in any form, or the `ref:h…` key of a paper without one → index key."""
    key = text.strip().removeprefix("ref:").strip()
    if re.fullmatch(r"h[0-9a-f]{12}", key):
        return key
    try:
        return normalize_id(text)
    except ArxivIdError as exc:
        raise UnknownPaper(str(exc)) from exc


def similar(
    arxiv_id: str,
    k: int | None = None,
    *,
    settings: Settings | None = None,
    since: str | date | None = None,
    until: str | date | None = None,
    categories: str | list[str] | None = None,
    authors: str | list[str] | None = None,
) -> list[Hit]:
    """`qa.similar`: the k papers most like this one (itself excluded), best first."""
    settings = with_overrides(settings or get_settings(), k=k)  # k checked like QA_K
    k = settings.k
    key = paper_key(arxiv_id)
    index = get_retriever(settings).index
    own = index.call(index.collection.get, where={"key": key}, include=["embeddings"])
    if not own["ids"]:
        raise UnknownPaper(
            f"{arxiv_id} is not in the index; add it with `qa fetch id:{key}` or `qa ingest`"
        )
    vector = np.mean(np.asarray(own["embeddings"], dtype=np.float32), axis=0)
    vector /= np.linalg.norm(vector) or 1.0
    where = Filters.make(since, until, categories, authors).where()
    others = {"key": {"$ne": key}}
    got = index.call(
        index.collection.query,
        query_embeddings=[vector.tolist()],
        n_results=max(settings.candidates, k * 4),
        where={"$and": [others, where]} if where else others,
        include=["distances", "documents", "metadatas"],
    )
    best: dict[str, tuple[float, str]] = {}
    for meta, dist, text in zip(
        got["metadatas"][0], got["distances"][0], got["documents"][0], strict=True
    ):
        score = 1.0 - dist
        if meta["key"] not in best or score > best[meta["key"]][0]:
            best[meta["key"]] = (score, text)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
    papers = index.papers([key for key, _ in ranked])
    hits = []
    for other, (score, text) in ranked:
        paper = papers[other]
        snippet = text[len(paper.title) :].strip() if text.startswith(paper.title) else text
        hits.append(Hit(paper, score, snippet, dense=score))
    return hits
