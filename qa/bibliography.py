"""BibTeX for papers: `@misc` entries in the form arXiv's own "Export BibTeX citation" gives.

`eprint`, `archivePrefix = {arXiv}` and `primaryClass` let biblatex and natbib styles print
the arXiv reference; the year comes from the first version (or the ID's month). Values are
braced and LaTeX's special characters escaped, so every entry parses whatever a title holds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from qa.corpus import Paper

_SPECIAL = re.compile(r"([&%$#_{}])|(\\)|(~)|(\^)")


def escape(text: str) -> str:
    """A value safe inside BibTeX braces: LaTeX specials escaped, braces always balanced."""

    def one(match: re.Match) -> str:
        if match.group(1):
            return "\\" + match.group(1)
        if match.group(2):
            return r"\textbackslash{}"
        return r"\textasciitilde{}" if match.group(3) else r"\textasciicircum{}"

    return _SPECIAL.sub(one, " ".join(text.split()))


def cite_key(paper: Paper, taken: set[str]) -> str:
    """`surnameYYYYword` like arXiv and Google Scholar make (ASCII), unique in one export."""
    surname = paper.authors[0].split()[-1] if paper.authors else "anon"
    year = str(paper.published.year) if paper.published else ""
    words = [w for w in re.findall(r"[A-Za-z]+", paper.title) if len(w) > 3]
    base = _ascii(surname).lower() + year + (_ascii(words[0]).lower() if words else "")
    base = base or paper.key
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}{chr(ord('a') + n - 2) if n <= 27 else n}"
    taken.add(key)
    return key


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]", "", plain)


def entry(paper: Paper, key: str) -> str:
    """One `@misc` entry."""
    fields = [("title", "{" + escape(paper.title or "(untitled)") + "}")]
    if paper.authors:
        fields.append(("author", " and ".join(escape(a) for a in paper.authors)))
    if paper.published:
        fields.append(("year", str(paper.published.year)))
    if paper.arxiv_id:
        fields += [("eprint", paper.arxiv_id), ("archivePrefix", "arXiv")]
        if paper.categories:
            fields.append(("primaryClass", paper.categories[0]))
        fields.append(("url", paper.url or ""))
    for name, value in (("doi", paper.doi), ("journal", paper.journal_ref)):
        if value:
            fields.append((name, escape(value)))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@misc{{{key},\n{body}\n}}\n"


def bibtex(papers: Iterable[Paper]) -> str:
    """`qa.bibtex`: BibTeX entries for papers (one per paper, in order)."""
    taken: set[str] = set()
    seen: set[str] = set()
    out = []
    for paper in papers:
        if paper.key in seen:
            continue
        seen.add(paper.key)
        out.append(entry(paper, cite_key(paper, taken)))
    return "\n".join(out)
