"""arxiv-qa: question answering over arXiv abstracts with validated arXiv-ID citations.

The public API (see README): `load_corpus`, `build_index`, `retrieve`, `ask`, `stream`,
`similar`, `bibtex`, `fetch`, `as_retriever`, `check_support`.
Imports are lazy so `import qa` stays fast and `qa --help` does not load Chroma or ONNX.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Paper": "qa.corpus",
    "CorpusError": "qa.corpus",
    "load_corpus": "qa.corpus",
    "build_index": "qa.ingest",
    "Hit": "qa.retrieval",
    "retrieve": "qa.retrieval",
    "Answer": "qa.chain",
    "ask": "qa.chain",
    "stream": "qa.chain",
    "similar": "qa.similarity",
    "bibtex": "qa.bibliography",
    "Filters": "qa.filters",
    "fetch": "qa.arxiv_api",
    "parse_arxiv_id": "qa.arxiv_ids",
    "as_retriever": "qa.retriever",
    "check_support": "qa.support",
    "Settings": "qa.config",
    "get_settings": "qa.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qa' has no attribute {name!r}")
