"""Filters on paper metadata: publication period, categories, authors.

One `Filters` value is applied everywhere a paper can come from: when a file is read (`qa ingest
--category/--since/--until`), and on both retrieval channels (its Chroma `where` selects the
dense side's chunks and the chunks the keyword side may rank), so every hit satisfies it.
A question that names a period or a category ("since 2023", "in 2024", "cs.CV papers") gets
that filter too (`from_question`), and the answer says which filter it used.

Semantics: `since`/`until` bound the first-version date (inclusive; a paper with no known date
never matches a date filter); `categories` matches any of a paper's categories, by exact name
(`cs.CL`) or archive (`cs`); `authors` matches any author by full name or surname, ignoring case.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from qa.paper_meta import author_keys, category_keys, date_int

MAX_VALUES = 20  # categories or authors in one filter (an input bound)
_YEAR = r"(19[9]\d|20\d\d)"
_CATEGORY_WORD = re.compile(
    r"\b((?:cs|math|stat|eess|econ|q-bio|q-fin|physics|astro-ph|cond-mat|hep-(?:th|ph|ex|lat)"
    r"|gr-qc|nucl-(?:th|ex)|quant-ph|nlin|math-ph)(?:\.[A-Za-z]{2}(?:-[a-z]{2,4})?)?)"
    r"(?=\s+(?:papers?|preprints?|articles?|works?|only)\b|\s+category\b|\)?$)|"
    r"\b(?:in|from|within)\s+(?:the\s+)?((?:cs|math|stat|eess|econ|q-bio|q-fin|physics|astro-ph"
    r"|cond-mat|quant-ph)\.[A-Za-z]{2})\b",
    re.IGNORECASE,
)
# A year is a period unless it counts something: "in 2000 steps", "of 2048 tokens" (a plural
# noun after it that is not "papers", "works", …).
_END = (
    r"(?!\s+(?!(?:papers|works|preprints|articles|studies|publications|was|has|is|does)\b)"
    r"[A-Za-z-]{2,}s\b)"
)
_PERIODS = [  # (pattern, how the match becomes (since, until))
    (rf"\b(?:from|between)\s+{_YEAR}\s+(?:to|and|until|through|-|–)\s+{_YEAR}\b{_END}", "range"),
    (rf"\b(?:since|from|after)\s+(?:the\s+)?(?:start\s+of\s+)?{_YEAR}\b{_END}", "since"),
    (rf"\b(?:before|until|up\s+to|prior\s+to)\s+{_YEAR}\b{_END}", "until"),
    (rf"\b(?:in|during|of|published\s+in)\s+{_YEAR}\b{_END}", "year"),
]


class FilterError(ValueError):
    """A filter value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Filters:
    since: date | None = None
    until: date | None = None
    categories: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()

    @classmethod
    def make(
        cls,
        since: str | date | None = None,
        until: str | date | None = None,
        categories: str | list[str] | tuple[str, ...] | None = None,
        authors: str | list[str] | tuple[str, ...] | None = None,
    ) -> Filters:
        """Filters from user input (ISO dates or years, names as lists or comma-separated)."""
        start, end = _day(since, "since", first=True), _day(until, "until", first=False)
        if start and end and start > end:
            raise FilterError(f"since ({start}) is after until ({end}): no paper can match")
        cats = _values(categories, "categories")
        for cat in cats:
            if not re.fullmatch(r"[a-z\-]+(?:\.[A-Za-z\-]+)?", cat):
                raise FilterError(f"{cat!r} is not an arXiv category (like cs.CL or hep-th)")
        return cls(start, end, cats, _values(authors, "authors"))

    def __bool__(self) -> bool:
        return bool(self.since or self.until or self.categories or self.authors)

    def merged(self, other: Filters) -> Filters:
        """Our fields, with `other`'s filling those we leave open."""
        return Filters(
            self.since or other.since,
            self.until or other.until,
            self.categories or other.categories,
            self.authors or other.authors,
        )

    def where(self) -> dict[str, Any] | None:
        """The Chroma `where` clause selecting the chunks of matching papers."""
        clauses: list[dict[str, Any]] = []
        if self.since:
            clauses.append({"published": {"$gte": date_int(self.since)}})
        if self.until:
            clauses.append({"published": {"$lte": date_int(self.until)}})
        clauses += _any_of("category_keys", [c.lower() for c in self.categories])
        clauses += _any_of("author_keys", [_author_key(a) for a in self.authors])
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def matches(self, paper) -> bool:
        """The same test on a Paper (read-time filtering; the retrieval guard)."""
        if self.since or self.until:
            if paper.published is None:
                return False
            if self.since and paper.published < self.since:
                return False
            if self.until and paper.published > self.until:
                return False
        if self.categories:
            keys = {k for c in paper.categories for k in category_keys(c)}
            if not keys & {c.lower() for c in self.categories}:
                return False
        if self.authors:
            keys = {k for a in paper.authors for k in author_keys(a)}
            if not keys & {_author_key(a) for a in self.authors}:
                return False
        return True

    def describe(self) -> str:
        """'published 2024-01-01 to 2024-12-31; categories cs.CL' (empty for no filter)."""
        parts = []
        if self.since and self.until:
            parts.append(f"published {self.since} to {self.until}")
        elif self.since:
            parts.append(f"published since {self.since}")
        elif self.until:
            parts.append(f"published until {self.until}")
        if self.categories:
            parts.append("categories " + ", ".join(self.categories))
        if self.authors:
            parts.append("authors " + ", ".join(self.authors))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "categories": list(self.categories),
            "authors": list(self.authors),
        }


def _any_of(field: str, keys: list[str]) -> list[dict[str, Any]]:
    if not keys:
        return []
    ors = [{field: {"$contains": k}} for k in dict.fromkeys(keys)]
    return [ors[0] if len(ors) == 1 else {"$or": ors}]


def _author_key(name: str) -> str:
    keys = author_keys(name)
    return keys[0] if keys else ""


def _day(value: str | date | None, name: str, *, first: bool) -> date | None:
    """An ISO date, `YYYY-MM` or `YYYY` (the period's first or last day) → date."""
    if value is None or isinstance(value, date):
        return value
    text = str(value).strip()
    if not text:
        return None
    try:
        if re.fullmatch(r"\d{4}", text):
            return date(int(text), 1, 1) if first else date(int(text), 12, 31)
        if re.fullmatch(r"\d{4}-\d{2}", text):
            year, month = map(int, text.split("-"))
            return date(year, month, 1 if first else calendar.monthrange(year, month)[1])
        return date.fromisoformat(text)
    except ValueError as exc:
        hint = "use YYYY-MM-DD, YYYY-MM or YYYY"
        raise FilterError(f"{name}={text!r} is not a date ({hint})") from exc


def _values(value: str | list[str] | tuple[str, ...] | None, name: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    clean = tuple(dict.fromkeys(" ".join(str(v).split()) for v in items if str(v).strip()))
    if len(clean) > MAX_VALUES:
        raise FilterError(f"at most {MAX_VALUES} {name} per filter (got {len(clean)})")
    return clean


def from_question(question: str) -> Filters:
    """The period and categories a question names ("since 2023", "cs.CV papers"), if any."""
    since = until = None
    for pattern, kind in _PERIODS:
        match = re.search(pattern, question, re.IGNORECASE)
        if not match:
            continue
        years = [int(y) for y in match.groups()]
        if kind == "range":
            since, until = date(min(years), 1, 1), date(max(years), 12, 31)
        elif kind == "since":
            word = match.group(0).split()[0].lower()
            since = date(years[0] + (word == "after"), 1, 1)
        elif kind == "until":
            until = date(years[0] - 1, 12, 31)
        else:
            since, until = date(years[0], 1, 1), date(years[0], 12, 31)
        break
    cats = []
    for match in _CATEGORY_WORD.finditer(question):
        name = match.group(1) or match.group(2)
        head, _, sub = name.partition(".")
        sub = sub.upper() if len(sub) == 2 else sub
        cats.append(f"{head.lower()}.{sub}" if sub else head.lower())
    return Filters(since, until, tuple(dict.fromkeys(cats)))


KEY_FIELDS = ("category_keys", "author_keys")  # list fields a filter matches with $contains
_NO_ROWS = np.zeros(0, dtype=np.int32)


class ChunkFacets:
    """The filterable metadata of every keyword-index row: first-version date and the
    category/author match keys, saved by the writer with the keyword index. Masks then cost
    a few numpy operations instead of a Chroma `get(where=…)` over every chunk (57.7 s for a
    date filter's first use at 666k chunks, paid inside a user's question: benchmarks/README.md).
    """

    def __init__(self, published: np.ndarray, postings: dict[str, np.ndarray]):
        self.published = published  # int32 per row, YYYYMMDD; 0: no known date
        self.postings = postings  # "field\x00key" → rows holding that key

    @classmethod
    def from_metadatas(cls, metadatas: list[dict | None]) -> ChunkFacets:
        published = np.zeros(len(metadatas), dtype=np.int32)
        rows: dict[str, list[int]] = {}
        for row, meta in enumerate(metadatas):
            meta = meta or {}
            published[row] = meta.get("published") or 0
            for name in KEY_FIELDS:
                for key in meta.get(name) or ():
                    rows.setdefault(f"{name}\x00{key}", []).append(row)
        return cls(published, {k: np.asarray(v, dtype=np.int32) for k, v in rows.items()})

    def mask(self, filters: Filters) -> np.ndarray:
        """The rows `filters.where()` selects: the same clauses, evaluated here."""
        ok = np.ones(len(self.published), dtype=bool)
        if filters.since or filters.until:
            ok &= self.published > 0
        if filters.since:
            ok &= self.published >= date_int(filters.since)
        if filters.until:
            ok &= self.published <= date_int(filters.until)
        wanted = (
            ("category_keys", [c.lower() for c in filters.categories]),
            ("author_keys", [_author_key(a) for a in filters.authors]),
        )
        for name, keys in wanted:
            if keys:
                hit = np.zeros(len(ok), dtype=bool)
                for key in dict.fromkeys(keys):
                    hit[self.postings.get(f"{name}\x00{key}", _NO_ROWS)] = True
                ok &= hit
        return ok

    def select(self, keep: np.ndarray) -> ChunkFacets:
        """The rows `keep` (bool per row) allows, renumbered in order (a keyword-index update
        dropping the chunks of removed or re-written papers): numpy over all postings at once,
        keys no row holds any more dropped."""
        names = list(self.postings)
        lists = [self.postings[n] for n in names]
        counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        rows = np.concatenate(lists) if lists else _NO_ROWS
        owner = np.repeat(np.arange(len(names)), counts)
        kept = keep[rows]
        renumbered = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.int32)[rows[kept]]
        counts = np.bincount(owner[kept], minlength=len(names))
        parts = np.split(renumbered, np.cumsum(counts)[:-1]) if names else []
        postings = {n: part for n, part, c in zip(names, parts, counts.tolist(), strict=True) if c}
        return ChunkFacets(self.published[keep], postings)

    def extended(self, new: ChunkFacets) -> ChunkFacets:
        """These rows, then `new`'s."""
        postings = dict(self.postings)
        shift = len(self.published)
        for name, rows in new.postings.items():
            rows = (rows + shift).astype(np.int32)
            held = postings.get(name)
            postings[name] = rows if held is None else np.concatenate([held, rows])
        return ChunkFacets(np.concatenate([self.published, new.published]), postings)

    def save(self, path: Path) -> None:
        names = list(self.postings)
        lists = [self.postings[n] for n in names]
        np.savez(
            path,
            published=self.published,
            names=np.asarray(names, dtype=str),
            offsets=np.cumsum([0, *map(len, lists)]),
            rows=np.concatenate(lists) if lists else np.zeros(0, dtype=np.int32),
        )

    @classmethod
    def load(cls, path: Path) -> ChunkFacets:
        with np.load(path) as data:
            offsets, rows = data["offsets"], data["rows"]
            postings = {
                str(name): rows[offsets[i] : offsets[i + 1]] for i, name in enumerate(data["names"])
            }
            return cls(data["published"], postings)


class FilterMasks:
    """Which keyword-index rows each filter allows, cached per index state and filter: from
    the facets saved with the keyword index, or (an index saved before them) asked of Chroma
    with the same `where` as the dense side."""

    SIZE = 32

    def __init__(self) -> None:
        self._cache: dict[tuple, np.ndarray] = {}

    def get(self, index, keyword_index, filters: Filters) -> np.ndarray:
        key = (keyword_index.revision, keyword_index.count, id(keyword_index.ids), filters)
        mask = self._cache.get(key)
        if mask is None:
            facets = keyword_index.facets
            if facets is not None and len(facets.published) == len(keyword_index.ids):
                mask = facets.mask(filters)
            else:
                got = index.call(index.collection.get, where=filters.where(), include=[])
                row_of = keyword_index.row_of
                mask = np.zeros(len(keyword_index.ids), dtype=bool)
                mask[[row_of[c] for c in got["ids"] if c in row_of]] = True
            if len(self._cache) >= self.SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = mask
        return mask
