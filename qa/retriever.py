"""`qa.as_retriever()`: our hybrid search as a LangChain `BaseRetriever`.

A user drops it into their own chain (`retriever | format_docs | prompt | llm`); it runs the
same `qa.retrieve` the answer chain uses (BM25 + dense, fused, one result per paper), so the
papers are the ones `qa ask` would show. Each `Document` is one paper: the abstract as
`page_content`, the paper's record plus the score and the matching snippet as `metadata`.
"""

from __future__ import annotations

import inspect
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator

from qa.config import Settings
from qa.retrieval import Hit, retrieve

# Keyword arguments of `qa.retrieve` that are not search filters.
_NOT_FILTERS = frozenset({"question", "k", "settings"})


def filter_names() -> frozenset[str]:
    """The filters `qa.retrieve` accepts (read from its signature, so new ones just work)."""
    params = inspect.signature(retrieve).parameters
    return frozenset(params) - _NOT_FILTERS


def check_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown filter names at construction, naming the known ones."""
    unknown = sorted(set(filters) - filter_names())
    if unknown:
        known = ", ".join(sorted(filter_names())) or "none"
        raise TypeError(f"unknown search filter(s) {', '.join(unknown)}; known: {known}")
    return filters


def hit_to_document(hit: Hit) -> Document:
    """One paper as a Document: abstract as content, record + score + snippet as metadata."""
    record = hit.paper.to_dict()
    abstract = record.pop("abstract", hit.paper.abstract)
    metadata = {
        **record,
        "score": round(hit.score, 4),
        "snippet": hit.snippet,
        "marker": hit.paper.marker,
    }
    return Document(id=hit.paper.key, page_content=abstract, metadata=metadata)


class PaperRetriever(BaseRetriever):
    """Hybrid search over the indexed arXiv abstracts; one Document per paper, best first.

    `k` (default `QA_K`) can also be given per call: `retriever.invoke(q, k=3)`, as can any
    filter `qa.retrieve` takes.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int | None = Field(None, ge=1, le=50, description="Papers returned (default QA_K).")
    filters: dict[str, Any] = Field(default_factory=dict, description="qa.retrieve filters.")
    settings: Settings | None = Field(None, exclude=True, description="Default: QA_* env.")

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_filters(value)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **filters: Any,
    ) -> list[Document]:
        options = {**self.filters, **check_filters(filters)}
        hits = retrieve(query, k or self.k, settings=self.settings, **options)
        return [hit_to_document(hit) for hit in hits]


def as_retriever(
    k: int | None = None, *, settings: Settings | None = None, **filters: Any
) -> PaperRetriever:
    """`qa.as_retriever(k=5, **filters)`: a LangChain retriever over `qa.retrieve`."""
    return PaperRetriever(k=k, filters=filters, settings=settings)
