"""The arXiv API's Atom format → corpus rows, for saved feeds (`qa ingest feed.xml`) and the
`arxiv` package's results (`qa fetch`).

Fields (arXiv API user manual, "Details of Atom Results"): `<id>` (the abstract URL with its
version), `<published>` (first version), `<updated>`, `<title>`, `<summary>`,
`<author><name>`, `<arxiv:comment>`, `<arxiv:journal_ref>`, `<arxiv:doi>`,
`<arxiv:primary_category>` and `<category term>`. A file is read entry by entry with lxml's
`iterparse`, each entry cleared once read, so a feed of any size takes constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:
    import arxiv

    from qa.corpus import Record

ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV = "{http://arxiv.org/schemas/atom}"


def _text(entry: etree._Element, tag: str) -> str:
    node = entry.find(tag)
    return " ".join((node.text or "").split()) if node is not None else ""


def entry_row(entry: etree._Element) -> dict:
    """One `<entry>` → a row in the corpus's column names."""
    primary = entry.find(f"{ARXIV}primary_category")
    return {
        "arxiv_id": _text(entry, f"{ATOM}id"),
        "title": _text(entry, f"{ATOM}title"),
        "abstract": _text(entry, f"{ATOM}summary"),
        "authors": [_text(a, f"{ATOM}name") for a in entry.iter(f"{ATOM}author")],
        "primary_category": primary.get("term") if primary is not None else None,
        "categories": [c.get("term", "") for c in entry.iter(f"{ATOM}category")],
        "published": _text(entry, f"{ATOM}published"),
        "updated": _text(entry, f"{ATOM}updated"),
        "comment": _text(entry, f"{ARXIV}comment"),
        "journal_ref": _text(entry, f"{ARXIV}journal_ref"),
        "doi": _text(entry, f"{ARXIV}doi"),
    }


def result_row(result: arxiv.Result) -> dict:
    """An `arxiv.Result` (what `arxiv.Client.results` yields) → the same row."""
    return {
        "arxiv_id": result.entry_id,
        "title": result.title,
        "abstract": result.summary,
        "authors": [a.name for a in result.authors],
        "primary_category": result.primary_category,
        "categories": list(result.categories),
        "published": result.published,
        "updated": result.updated,
        "comment": result.comment or "",
        "journal_ref": result.journal_ref or "",
        "doi": result.doi or "",
    }


def read_atom(path: Path, warn: list[str]) -> Iterator[Record]:
    """Records of a saved Atom feed, one `<entry>` at a time."""
    from qa.corpus import CorpusError, record_from_row

    n = 0
    try:
        for _, entry in etree.iterparse(
            str(path), tag=f"{ATOM}entry", resolve_entities=False, no_network=True, huge_tree=True
        ):
            n += 1
            record = record_from_row(entry_row(entry), entry.sourceline or n, warn)
            entry.clear(keep_tail=False)
            while entry.getprevious() is not None:  # drop what iterparse keeps of read entries
                del entry.getparent()[0]
            if record:
                yield record
    except etree.XMLSyntaxError as exc:
        if n == 0:
            raise CorpusError(f"not a well-formed Atom feed ({exc})") from exc
        warn.append(f"feed ends badly after {n} entries, rest skipped ({exc})")
