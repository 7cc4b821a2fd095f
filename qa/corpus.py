"""Seed files → clean, de-duplicated `Paper` records.

Each file's layout is recognised from its content (never its name), read by the matching reader,
joined to the metadata table by content (title or abstract start) and de-duplicated across
files. Whole-file problems (empty, binary, unknown layout) raise `CorpusError` naming the file;
record-level problems (a broken JSONL line, a truncated last record) become warnings on the
`CorpusReport`, so the good records of a file are never lost.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

# Old-style IDs (0704-1412) have four digits after the dot, new ones five: trying the old form
# first keeps "arXiv:1405.12343D scenes…" (an ID glued to the next abstract) from eating the "3".
ARXIV_ID = (
    r"(?:(?:0[7-9]|1[0-4])\d{2}\.\d{4}|\d{4}\.\d{5}|\d{4}\.\d{4}"
    r"|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})"
)
_ID_LINE = re.compile(rf"^(?i:arxiv):\s*({ARXIV_ID})(?:v\d+)?")
# A leading "Abstract" is a label when punctuation follows it ("Abstract:", "Abstract.",
# "Abstract —"), or a capital or digit ("Abstract Language Models (LMs) achieve …", as pasted
# from web pages), but never before a lower-case word ("Abstract reasoning is …") or when it
# starts a term ("Abstract Meaning Representation (AMR)", "Abstract Syntax Trees").
_LABEL = re.compile(r"^(?i:abstract)(?:\s*[:.\u2014\u2013]\s*|\s+--?\s*|\s*--?\s+)|^ABSTRACT\s+")
_LABEL_BEFORE_CAPITAL = re.compile(r"^Abstract\s+(?=[A-Z0-9])")
_ABSTRACT_TERM = re.compile(
    r"^Abstract(?:\s+(?:Meaning|Syntax|Interpretation|Reasoning|Argumentation|Algebra)\b"
    r"|(?:\s+[A-Z][\w-]*){1,4}\s+\(A[A-Za-z]*\))"
)
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_CHROME_LINES = re.compile(
    r"^(?:new|subscribe|byak and the research community"
    r"|get trending papers in your email inbox(?: once a day)?!?"
    rf"|{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?)$",
    re.IGNORECASE,
)
# "Subscribe" glued to the first title of a page ("SubscribeTokens-to-Token ViT: …"); only
# stripped right after page chrome, and not from words like "Subscribers".
_CHROME_PREFIX = re.compile(r"^Subscribe(?=[A-Z0-9\"'(\[\u201c])")
_PERIOD_BREAK = re.compile(r"[^\s.]\.\s+[A-Z]")
_URL = re.compile(r"https?://|www\.|\.(?:com|org|io|net|edu|ai|me|de|cn)/", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
CSV_COLUMNS = {"arxiv_id", "id", "title", "abstract", "comment", "summary", "authors", "url"}
TEXT_SUFFIXES = {".txt", ".md", ""}


class CorpusError(ValueError):
    """A file that cannot be read as a corpus; the message names the file (and line)."""


@dataclass
class Paper:
    """One paper: what retrieval indexes and citations point to."""

    key: str
    arxiv_id: str | None
    title: str
    abstract: str
    comment: str = ""
    sources: list[str] = field(default_factory=list)

    @property
    def url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv_id}" if self.arxiv_id else None

    @property
    def marker(self) -> str:
        """The citation marker the model must use for this paper."""
        return f"[arXiv:{self.arxiv_id}]" if self.arxiv_id else f"[ref:{self.key}]"

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "arxiv_id": self.arxiv_id,
            "title": self.title,
            "abstract": self.abstract,
            "comment": self.comment,
            "sources": list(self.sources),
            "url": self.url,
        }


@dataclass
class CorpusReport:
    papers: list[Paper]
    warnings: list[str] = field(default_factory=list)
    records: int = 0  # records read, before de-duplication
    merged: int = 0  # records that were another copy of a paper already read (sources merged)
    kept_both: list[str] = field(default_factory=list)  # same ID, other abstract: both kept

    @property
    def skipped(self) -> int:
        """Record-level problems that dropped a record (each has its own warning line)."""
        return sum("skipped" in w for w in self.warnings)


# ---------------------------------------------------------------- text helpers


@lru_cache(maxsize=8192)
def normalize(text: str) -> str:
    """Lower-case alphanumerics only: the form used to compare texts across layouts."""
    text = re.sub(r"\\[a-zA-Z]+", " ", text)  # LaTeX commands such as \sim
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def content_key(abstract: str) -> str:
    """Stable key for a paper with no arXiv ID."""
    return "h" + hashlib.sha1(normalize(abstract).encode()).hexdigest()[:12]


def clean_abstract(text: str) -> str:
    """Strip a leading 'Abstract:' label and collapse whitespace; keep everything else."""
    text = " ".join(text.split())
    return text[label_length(text) :].strip()


def label_length(text: str) -> int:
    """Length of a leading "Abstract" label (0 when the text has none)."""
    if match := _LABEL.match(text):
        return match.end()
    if (match := _LABEL_BEFORE_CAPITAL.match(text)) and not _ABSTRACT_TERM.match(text):
        return match.end()
    return 0


def split_lines(text: str) -> list[str]:
    """Split on line ends only (\\n, \\r\\n, \\r): not on U+2028, form feeds and the like,
    which `str.splitlines` would treat as line ends in the middle of an abstract."""
    return _LINE_BREAK.split(text)


STRONG = 5.0  # weight of a trait no title has (final full stop, a link, > 30 words)


def title_cost(line: str) -> float:
    """How unlike a title a line is: 0 for a title-like line, more for each abstract trait."""
    cost = STRONG if line.endswith(".") else 0.0  # titles do not end in a full stop
    if len(line) > 300 or len(line.split()) > 30:
        return cost + STRONG  # far too long for a title: no need to look further
    if _URL.search(line):
        cost += STRONG  # abstracts end with code links, titles do not carry them
    if _PERIOD_BREAK.search(line):
        cost += 0.4  # two sentences ("… method. We …"), but titles have "vs. B" too
    return cost


def is_title_like(line: str) -> bool:
    """Short lines with no full stop and no link read as titles ("Skill-it! A …" included)."""
    return bool(line.strip()) and title_cost(line.rstrip()) == 0


def is_comment_like(line: str) -> bool:
    """arXiv comment lines: 'Accepted by INTERSPEECH 2023', '20 pages, 12 figures'."""
    return len(line.split()) <= 30


def _nonblank(lines: Iterable[str]) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


# ---------------------------------------------------------------- readers


@dataclass
class Record:
    """What a reader yields before metadata join and de-duplication."""

    abstract: str
    title: str = ""
    arxiv_id: str | None = None
    comment: str = ""
    line: int = 0


Block = list[tuple[int, str]]  # (line number, text) pairs


def _glued_blocks(lines: list[str]) -> Iterator[tuple[Block, str | None, int]]:
    """Layout 1 cut at each `arXiv:ID`: (lines before it, the ID, its line); the tail gets
    no ID."""
    block: Block = []
    for n, line in _nonblank(lines):
        match = _ID_LINE.match(line)
        if not match:
            block.append((n, line))
            continue
        yield block, match.group(1), n
        rest = line[match.end() :].strip()
        block = [(n, rest)] if rest else []
    if block:
        yield block, None, block[-1][0]


def read_arxiv_glued(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 1: abstract, optional comment, `arXiv:ID` glued to the next abstract.

    The ID after an abstract is that abstract's; a single short line between an abstract and
    the next ID is its comment. Extra lines are abstracts whose ID is missing (warned).
    """
    for block, arxiv_id, id_line in _glued_blocks(lines):
        if not block:
            warn.append(f"line {id_line}: arXiv ID {arxiv_id} has no abstract before it")
            continue
        comment = ""
        if len(block) > 1 and is_comment_like(block[-1][1]):
            comment = block.pop()[1]
        for n, text in block[:-1]:
            warn.append(f"line {n}: abstract with no arXiv ID after it")
            yield Record(abstract=text, line=n)
        n, text = block[-1]
        if arxiv_id is None:
            warn.append(f"line {n}: last abstract has no arXiv ID after it (truncated file?)")
        yield Record(abstract=text, arxiv_id=arxiv_id, comment=comment, line=n)


def read_abstract_prefixed(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 2: a header line, then one `Abstract:`-prefixed line per paper."""
    for n, line in _nonblank(lines):
        if label_length(line):
            yield Record(abstract=line, line=n)
        elif not is_title_like(line):
            warn.append(f"line {n}: no 'Abstract:' label; read as an abstract")
            yield Record(abstract=line, line=n)
        elif n > 1:
            warn.append(f"line {n}: not an abstract, skipped: {line[:60]!r}")


def read_one_per_line(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 3: one abstract per line and nothing else."""
    for n, line in _nonblank(lines):
        yield Record(abstract=line, line=n)


def strip_chrome(lines: list[str]) -> tuple[list[tuple[int, str]], bool]:
    """Drop page chrome lines and a "Subscribe" glued to the line after them.

    Returns the remaining (line number, text) pairs and whether any chrome was found.
    """
    body: list[tuple[int, str]] = []
    found = after_chrome = False
    for n, line in _nonblank(lines):
        if _CHROME_LINES.match(line):
            found = after_chrome = True
            continue
        if (after_chrome or not body) and _CHROME_PREFIX.match(line):
            line, found = _CHROME_PREFIX.sub("", line, count=1), True
        after_chrome = False
        body.append((n, line))
    return body, found


ORPHAN_ABSTRACT = 2.0  # cost of an abstract with no title before it
ORPHAN_TITLE = 2.4  # cost of a title with no abstract after it


def pair_titles(texts: list[str]) -> list[tuple[int | None, int | None]]:
    """Split a web dump into (title index, abstract index) records, None for a missing half.

    Dynamic programming over "title + abstract", "abstract alone" and "title alone" records,
    scored by how title-like each line is: a dump alternates titles and abstracts, so a short
    abstract with no full stop still pairs with the title before it, and a lone title (a
    truncated last record) costs less than shifting every later pair by one.
    """
    t_cost = [title_cost(text) for text in texts]
    a_cost = [1.0 if cost < STRONG else 0.0 for cost in t_cost]  # no strong trait: maybe a title
    size = len(texts)
    best = [0.0] + [float("inf")] * size
    back: list[tuple[int, tuple[int | None, int | None]]] = [(0, (None, None))] * (size + 1)
    for i in range(size):
        options = []
        if i + 1 < size:
            options.append((i + 2, t_cost[i] + a_cost[i + 1], (i, i + 1)))
        options.append((i + 1, a_cost[i] + ORPHAN_ABSTRACT, (None, i)))
        options.append((i + 1, t_cost[i] + ORPHAN_TITLE, (i, None)))
        for j, cost, record in options:
            if best[i] + cost < best[j]:
                best[j], back[j] = best[i] + cost, (i, record)
    records = []
    j = size
    while j > 0:
        j, record = back[j]
        records.append(record)
    return records[::-1]


def read_web_dump(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layouts 4/5: page chrome, then title/abstract pairs (blank-line separated or not)."""
    body, _ = strip_chrome(lines)
    for title_at, abstract_at in pair_titles([text for _, text in body]):
        if abstract_at is None:
            n, title = body[title_at]
            warn.append(f"line {n}: title with no abstract after it, skipped: {title[:60]!r}")
            continue
        n, abstract = body[abstract_at]
        title = body[title_at][1] if title_at is not None else ""
        yield Record(abstract=abstract, title=" ".join(title.split()), line=n)


def read_jsonl(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """JSON Lines with `abstract` (required), `title`, `arxiv_id`, `comment`."""
    for n, line in _nonblank(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            warn.append(f"line {n}: invalid JSON, skipped ({exc})")
            continue
        record = _record_from_row({str(k).strip().lower(): v for k, v in row.items()}, n, warn)
        if record:
            yield record


def read_csv(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """CSV with a header naming `abstract` (required), `title`, `arxiv_id`, `comment`."""
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
    if "abstract" not in reader.fieldnames:
        raise CorpusError(f"line 1: CSV header has no 'abstract' column ({reader.fieldnames})")
    for row in reader:
        record = _record_from_row(row, reader.line_num, warn)
        if record:
            yield record


def _record_from_row(row: dict, n: int, warn: list[str]) -> Record | None:
    abstract = str(row.get("abstract") or "").strip()
    if not abstract:
        warn.append(f"line {n}: no abstract, skipped")
        return None
    raw_id = str(row.get("arxiv_id") or "").strip().removeprefix("arXiv:").strip()
    arxiv_id = None
    if raw_id:
        match = re.fullmatch(rf"({ARXIV_ID})(?:v\d+)?", raw_id)
        if match:
            arxiv_id = match.group(1)
        else:
            warn.append(f"line {n}: {raw_id!r} is not an arXiv ID, ignored")
    return Record(
        abstract=abstract,
        title=" ".join(str(row.get("title") or "").split()),
        arxiv_id=arxiv_id,
        comment=str(row.get("comment") or "").strip(),
        line=n,
    )


READERS = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "arxiv-glued": read_arxiv_glued,
    "abstract-prefixed": read_abstract_prefixed,
    "web-dump": read_web_dump,
    "one-per-line": read_one_per_line,
}


def _is_csv(body: list[str]) -> bool:
    """A header naming two known columns (or just `abstract`), rows of the same width."""
    rows = csv.reader(io.StringIO("\n".join(body[:50])))
    names = [name.strip().lower() for name in next(rows, [])]
    if not all(re.fullmatch(r"[a-z_][a-z0-9_\-]{0,40}", name) for name in names):
        return False
    if len(CSV_COLUMNS.intersection(names)) < 2 and names != ["abstract"]:
        return False
    widths = [len(row) for row, _ in zip(rows, range(5), strict=False) if row]
    return all(width == len(names) for width in widths)


def _is_labelled_abstract(line: str) -> bool:
    """An "Abstract:" line whose text reads as an abstract (a title "Abstract: …" does not)."""
    cut = label_length(line)
    return bool(cut) and not is_title_like(line[cut:])


def detect_layout(lines: list[str]) -> str | None:
    """Name the layout of a text by looking at its lines; None when none fits."""
    body = [line for _, line in _nonblank(lines)]
    if not body:
        return None
    if sum(line.startswith("{") for line in body) * 2 >= len(body):
        return "jsonl"
    if _is_csv(body):
        return "csv"
    if any(_ID_LINE.match(line) for line in body):
        return "arxiv-glued"
    prefixed = sum(_is_labelled_abstract(line) for line in body)
    if prefixed and prefixed >= (len(body) - 1) / 2:
        return "abstract-prefixed"
    body, chrome = strip_chrome(lines)
    texts = [text for _, text in body]
    if all(is_title_like(text) for text in texts):
        return None  # nothing but chrome, or only short lines (words, names): no abstracts
    pairs = pair_titles(texts)
    paired = sum(2 for title, abstract in pairs if title is not None and abstract is not None)
    if chrome or paired * 10 >= len(texts) * 6:
        return "web-dump"  # most lines pair up as title + abstract
    return "one-per-line"


def read_text(path: Path) -> tuple[str, list[str]]:
    """Decode a file: UTF-8 (BOM allowed), UTF-16 with a BOM, else cp1252/latin-1 with a
    warning that names the fallback; empty and binary files are refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        data = data.decode("utf-16").encode("utf-8")
    if not data.strip():
        raise CorpusError(f"{path}: file is empty")
    if b"\x00" in data[:8192]:
        raise CorpusError(f"{path}: looks like a binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        for encoding in ("cp1252", "latin-1"):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            note = f"line {line}: not valid UTF-8; decoded the whole file as {encoding} instead"
            return text, [note]
    raise CorpusError(f"{path}: cannot decode text")  # pragma: no cover - latin-1 never fails


def _to_paper(record: Record, source: str) -> Paper | None:
    abstract = clean_abstract(record.abstract)
    if not abstract:
        return None
    return Paper(
        key=record.arxiv_id or content_key(abstract),
        arxiv_id=record.arxiv_id,
        title=record.title,
        abstract=abstract,
        comment=record.comment,
        sources=[source],
    )


def read_file(path: str | Path) -> CorpusReport:
    """Read one file in any supported layout into (not yet de-duplicated) papers."""
    path = Path(path)
    text, warnings = read_text(path)
    lines = split_lines(text)
    layout = detect_layout(lines)
    if layout is None:
        raise CorpusError(
            f"{path}: unknown layout (expected arXiv-glued abstracts, 'Abstract:' lines, one "
            "abstract per line, a title/abstract page dump, JSONL or CSV with an abstract column)"
        )
    papers = []
    try:
        for record in READERS[layout](lines, warnings):
            paper = _to_paper(record, path.name)
            if paper is None:
                warnings.append(f"line {record.line}: empty abstract, skipped")
            else:
                papers.append(paper)
    except CorpusError as exc:
        raise CorpusError(f"{path}: {exc}") from exc
    if not papers:
        raise CorpusError(f"{path}: no abstracts found ({layout} layout)")
    log.debug("%s: %s layout, %d papers", path, layout, len(papers))
    return CorpusReport(papers, [f"{path.name}: {w}" for w in warnings])


# ---------------------------------------------------------------- metadata join

Entry = tuple[str | None, str]  # (arXiv ID or None, title)


@dataclass
class Metadata:
    """arXiv IDs and titles looked up by content: arXiv ID, normalised title or abstract start.

    A row with an ID beats a row without one for the same title/start (so a later `qa resolve`
    answer fills what the vendored table left open); two rows with different IDs for the same
    title or start make that key ambiguous, and an ambiguous key is never used to guess.
    """

    by_id: dict[str, Entry] = field(default_factory=dict)
    by_title: dict[str, Entry] = field(default_factory=dict)
    by_start: dict[str, Entry] = field(default_factory=dict)

    PREFIX = 60  # normalised characters of an abstract's start used to find it
    ambiguous: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Metadata:
        meta = cls()
        for path in paths:
            if not Path(path).is_file():
                continue
            with open(path, encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    meta.add(row.get("arxiv_id"), row.get("title"), row.get("abstract_start"))
        return meta

    def add(self, arxiv_id: str | None, title: str | None, abstract_start: str | None) -> None:
        entry: Entry = ((arxiv_id or "").strip() or None, " ".join((title or "").split()))
        if entry[0]:
            self.by_id.setdefault(entry[0], entry)
        if entry[1]:
            self._put("title", self.by_title, normalize(entry[1]), entry)
        start = normalize(clean_abstract(abstract_start or ""))[: self.PREFIX]
        if len(start) >= 30:
            self._put("start", self.by_start, start, entry)

    def _put(self, name: str, table: dict[str, Entry], key: str, entry: Entry) -> None:
        old = table.get(key)
        if old is None or (old[0] is None and entry[0]):
            table[key] = (entry[0], entry[1] or (old[1] if old else ""))
        elif entry[0] and old[0] != entry[0]:
            self.ambiguous.add((name, key))  # two papers share it: never guess

    def _get(self, name: str, table: dict[str, Entry], key: str) -> Entry | None:
        return None if (name, key) in self.ambiguous else table.get(key)

    def lookup(self, paper: Paper) -> Entry | None:
        if paper.arxiv_id and (hit := self.by_id.get(paper.arxiv_id)):
            return hit
        if paper.title and (hit := self._get("title", self.by_title, normalize(paper.title))):
            return hit
        return self._get("start", self.by_start, normalize(paper.abstract)[: self.PREFIX])

    def apply(self, paper: Paper) -> None:
        """Fill a missing ID or title from the table; a stated ID is never overwritten, and a
        row naming a different ID than the paper's own is another paper, so it is ignored."""
        hit = self.lookup(paper)
        if not hit:
            return
        arxiv_id, title = hit
        if paper.arxiv_id and arxiv_id and arxiv_id != paper.arxiv_id:
            return
        if arxiv_id and not paper.arxiv_id:
            paper.arxiv_id = arxiv_id
            paper.key = arxiv_id
        if title and not paper.title:
            paper.title = title


# ---------------------------------------------------------------- de-duplication


def _identity(paper: Paper) -> list[str]:
    """Keys under which two records are one paper: the abstract, never a title alone (three
    different papers may all be titled "Introduction"). It counts twice: with LaTeX commands
    dropped (`normalize`) and with only their backslash dropped, so "$\\sim0.01$%" in one
    file meets "sim0.01%" in another (the 002/004 twin)."""
    plain = re.sub(r"[^a-z0-9]+", "", paper.abstract.lower())
    return [f"abs:{normalize(paper.abstract)}", f"plain:{plain}"]


def _latex_debris(text: str) -> int:
    return text.count("$") + text.count("\\")


def merge(into: Paper, other: Paper) -> None:
    """Merge a duplicate: union of sources, the known ID/title/comment, the cleaner abstract."""
    into.sources += [s for s in other.sources if s not in into.sources]
    if not into.arxiv_id and other.arxiv_id:
        into.arxiv_id, into.key = other.arxiv_id, other.arxiv_id
    into.title = into.title or other.title
    into.comment = into.comment or other.comment
    if _latex_debris(other.abstract) < _latex_debris(into.abstract):
        into.abstract = other.abstract


def _same_paper(a: Paper, b: Paper) -> bool:
    """Papers that share an abstract or title are one, unless they carry different IDs."""
    return not (a.arxiv_id and b.arxiv_id and a.arxiv_id != b.arxiv_id)


def as_variant(paper: Paper) -> Paper:
    """Another version of an arXiv ID already held, kept beside it under its content key.

    It does not claim the ID (two abstracts must not share one `[arXiv:ID]` citation, and
    which one arXiv has is not known here); its comment says which ID the file gave.
    """
    note = f"arXiv ID {paper.arxiv_id} given, but another abstract is held under it"
    comment = f"{paper.comment}; {note}" if paper.comment else note
    return dataclasses.replace(
        paper, key=content_key(paper.abstract), arxiv_id=None, comment=comment
    )


def deduplicate(papers: Iterable[Paper], report: CorpusReport | None = None) -> list[Paper]:
    """One paper per abstract (first occurrence's order). A record with the ID of an
    earlier one but another abstract is kept too, as a variant (see `as_variant`); `report`
    counts the merged records and names every kept-both ID."""
    report = report if report is not None else CorpusReport([])
    unique: list[Paper] = []
    seen: dict[str, Paper] = {}
    by_id: dict[str, Paper] = {}
    for paper in papers:
        twin = _twin(paper, seen)
        held = by_id.get(paper.arxiv_id) if paper.arxiv_id else None
        if twin is None and held is not None:
            variant = as_variant(paper)
            report.kept_both.append(
                f"{paper.arxiv_id}: {', '.join(paper.sources)} gives another abstract than "
                f"{', '.join(held.sources)}; kept both (the later as ref:{variant.key})"
            )
            paper, twin = variant, _twin(variant, seen)
        if twin is None:
            unique.append(paper)
            twin = paper
        else:
            merge(twin, paper)
            report.merged += 1
        for i in _identity(twin):
            seen.setdefault(i, twin)
        if twin.arxiv_id:
            by_id.setdefault(twin.arxiv_id, twin)
    return unique


def _twin(paper: Paper, seen: dict[str, Paper]) -> Paper | None:
    twins = (seen[i] for i in _identity(paper) if i in seen)
    return next((t for t in twins if _same_paper(t, paper)), None)


# ---------------------------------------------------------------- public entry points


def corpus_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (sorted, hidden and metadata tables skipped)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and not f.name.startswith(".")
                and f.suffix.lower() in TEXT_SUFFIXES | {".jsonl", ".csv"}
            )
            if not found:
                raise CorpusError(f"{p}: no corpus files (.txt, .md, .jsonl, .csv) in this folder")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise CorpusError(f"{p}: no such file or folder")
    return files


def read_corpus(
    paths: str | Path | Iterable[str | Path], metadata: Iterable[Path] | None = None
) -> CorpusReport:
    """Read, join metadata and de-duplicate; raises `CorpusError` on an unusable file."""
    from qa.config import get_settings

    if metadata is None:
        settings = get_settings()
        metadata = [settings.metadata_path, settings.resolve_cache_path]
    meta = Metadata.load(metadata)
    papers: list[Paper] = []
    warnings: list[str] = []
    for path in corpus_files(paths):
        report = read_file(path)
        for paper in report.papers:
            meta.apply(paper)
        papers += report.papers
        warnings += report.warnings
    for warning in warnings:
        log.warning(warning)
    report = CorpusReport([], warnings, records=len(papers))
    report.papers = deduplicate(papers, report)
    return report


def load_corpus(paths: str | Path | Iterable[str | Path] | None = None) -> list[Paper]:
    """`qa.load_corpus`: papers from files/folders (default: the bundled seeds)."""
    from qa.config import get_settings

    return read_corpus(paths if paths is not None else get_settings().seeds_dir).papers
