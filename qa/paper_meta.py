"""Paper metadata (authors, categories, dates, DOI, journal reference) in and out of every form.

Readers hand rows of any source (a user's JSONL/CSV, the arXiv metadata snapshot, Atom
entries) to `row_metadata`; the index stores the result as Chroma metadata with `to_chroma`
and reads it back with `from_chroma`. Chroma (1.5) accepts non-empty lists of scalars as
metadata values and filters them with `$contains`, so lists are stored as lists, plus a
`*_keys` list of lower-cased match keys (archives such as `cs`, author surnames) for filters;
dates are `YYYYMMDD` integers so `$gte`/`$lte` compare them.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

FIELDS = ("authors", "categories", "published", "updated", "doi", "journal_ref")
_AND = re.compile(r",\s*(?:and\s+)?|\s+and\s+|;\s*")
_CATEGORY = re.compile(r"[a-z\-]+(?:\.[A-Za-z\-]+)?")


def parse_date(value: Any) -> date | None:
    """`2024-01-31`, `2024-01-31T10:00:00Z`, `Mon, 2 Apr 2007 19:18:42 GMT`, a date → date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text).date()
    except (TypeError, ValueError, IndexError):
        return None


def split_authors(value: Any) -> list[str]:
    """A list of names, or one string "A. One, B. Two and C. Three" → names."""
    if isinstance(value, list):
        names = [_name(v) for v in value]
    else:
        names = _AND.split(" ".join(str(value or "").split()))
    return [n for n in (" ".join(str(x).split()) for x in names) if n]


def _name(value: Any) -> str:
    """An author entry: a name, `{"name": …}`, or `[last, first, suffix]` (authors_parsed)."""
    if isinstance(value, dict):
        return str(value.get("name", ""))
    if isinstance(value, list | tuple):
        last, first, suffix = [*value, "", "", ""][:3]
        return " ".join(str(p) for p in (first, last, suffix) if p)
    return str(value)


def split_categories(value: Any, primary: str | None = None) -> list[str]:
    """ "cs.CL cs.AI" or a list → categories, primary first, duplicates dropped."""
    items = value if isinstance(value, list) else str(value or "").replace(",", " ").split()
    cats = [str(c).strip() for c in ([primary] if primary else []) + list(items)]
    return list(dict.fromkeys(c for c in cats if c and _CATEGORY.fullmatch(c)))


def _one_line(value: Any) -> str:
    return " ".join(str(value or "").split())


def row_metadata(row: dict) -> dict[str, Any]:
    """Paper metadata fields from a row (keys lower-cased; snapshot or our own names)."""
    parsed = row.get("authors_parsed")
    authors = split_authors(parsed if isinstance(parsed, list) else row.get("authors"))
    versions = row.get("versions")
    first = versions[0] if isinstance(versions, list) and versions else None
    published = parse_date(first.get("created") if isinstance(first, dict) else None)
    updated = parse_date(row.get("update_date") or row.get("updated"))
    return {
        "authors": authors,
        "categories": split_categories(row.get("categories"), row.get("primary_category")),
        "published": published or parse_date(row.get("published") or row.get("date")),
        "updated": updated,
        "doi": str(row.get("doi") or "").strip(),
        "journal_ref": _one_line(row.get("journal-ref") or row.get("journal_ref")),
    }


# ---------------------------------------------------------------- Chroma encoding


def date_int(value: date) -> int:
    return value.year * 10000 + value.month * 100 + value.day


def int_date(value: Any) -> date | None:
    try:
        n = int(value)
        return date(n // 10000, n // 100 % 100, n % 100) if n else None
    except (TypeError, ValueError):
        return None


def author_keys(name: str) -> list[str]:
    """Match keys of an author: the full name and the surname, lower-cased."""
    full = " ".join(name.lower().replace(".", ". ").split())
    return list(dict.fromkeys([full, full.split()[-1]])) if full else []


def category_keys(category: str) -> list[str]:
    """Match keys of a category: itself and its archive (`cs.CL` → `cs.cl`, `cs`)."""
    low = category.lower()
    return list(dict.fromkeys([low, low.split(".")[0]]))


def to_chroma(paper) -> dict[str, Any]:
    """Chroma metadata for a paper's chunks (empty fields left out: Chroma refuses [])."""
    meta: dict[str, Any] = {}
    if paper.authors:
        meta["authors"] = list(paper.authors)
        meta["author_keys"] = list(dict.fromkeys(k for a in paper.authors for k in author_keys(a)))
    if paper.categories:
        meta["categories"] = list(paper.categories)
        meta["category_keys"] = list(
            dict.fromkeys(k for c in paper.categories for k in category_keys(c))
        )
    for name in ("published", "updated"):
        if value := getattr(paper, name):
            meta[name] = date_int(value)
    for name in ("doi", "journal_ref"):
        if value := getattr(paper, name):
            meta[name] = value
    return meta


def from_chroma(meta: dict) -> dict[str, Any]:
    """Paper keyword arguments for the metadata fields stored by `to_chroma`."""
    return {
        "authors": list(meta.get("authors") or []),
        "categories": list(meta.get("categories") or []),
        "published": int_date(meta.get("published")),
        "updated": int_date(meta.get("updated")),
        "doi": str(meta.get("doi") or ""),
        "journal_ref": str(meta.get("journal_ref") or ""),
    }


def digest_parts(paper) -> list[str]:
    """The metadata's share of a paper's content hash (nothing when it has none, so papers
    indexed before metadata existed keep their hash)."""
    meta = to_chroma(paper)
    return [repr(sorted(meta.items()))] if meta else []
