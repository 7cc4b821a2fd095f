"""Seed files → clean, de-duplicated `Paper` records.

Each file's layout is recognised from its content (never its name), read by the matching reader,
joined to the metadata table by content (title or abstract start) and de-duplicated across
files. Whole-file problems (empty, binary, unknown layout) raise `CorpusError` naming the file;
record-level problems (a broken JSONL line, a truncated last record) become warnings on the
`CorpusReport`, so the good records of a file are never lost.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ARXIV_ID = r"(?:\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})"
_ID_LINE = re.compile(rf"^arXiv:\s*({ARXIV_ID})(?:v\d+)?")
_ABSTRACT_PREFIX = re.compile(r"^abstract(?:\s*[:.\-—]\s*|\s+(?=[A-Z]))", re.IGNORECASE)
_CHROME_LINES = re.compile(
    r"^(new|subscribe|byak and the research community|get trending papers in your email inbox"
    r"(?: once a day)?!?|(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}"
    r"(?:, \d{4})?)$",
    re.IGNORECASE,
)
_CHROME_PREFIX = re.compile(r"^Subscribe(?=\S)")
_SENTENCE_BREAK = re.compile(r"[a-z0-9)\]][.!?]\s+[A-Z]")
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


# ---------------------------------------------------------------- text helpers


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
    return _ABSTRACT_PREFIX.sub("", text, count=1).strip()


def is_title_like(line: str) -> bool:
    """Short lines that do not end in a full stop read as titles ("Skill-it! A …" included)."""
    return 0 < len(line.split()) <= 30 and len(line) <= 300 and not line.rstrip().endswith(".")


def is_comment_like(line: str) -> bool:
    """arXiv comment lines: 'Accepted by INTERSPEECH 2023', '20 pages, 12 figures'."""
    return len(line.split()) <= 25 and not _SENTENCE_BREAK.search(line)


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


def read_arxiv_glued(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 1: abstract, optional comment, `arXiv:ID` glued to the next abstract."""
    pending: Record | None = None
    for n, line in _nonblank(lines):
        match = _ID_LINE.match(line)
        if match:
            if pending is None:
                warn.append(f"line {n}: arXiv ID {match.group(1)} has no abstract before it")
            else:
                pending.arxiv_id = match.group(1)
                yield pending
            pending = None
            line = line[match.end() :].strip()
            if not line:
                continue
            pending = Record(abstract=line, line=n)
        elif pending is not None and not pending.comment and is_comment_like(line):
            pending.comment = line
        else:
            if pending is not None:
                yield pending
            pending = Record(abstract=line, line=n)
    if pending is not None:
        warn.append(f"line {pending.line}: last abstract has no arXiv ID after it")
        yield pending


def read_abstract_prefixed(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 2: a header line, then one `Abstract:`-prefixed line per paper."""
    for n, line in _nonblank(lines):
        if _ABSTRACT_PREFIX.match(line):
            yield Record(abstract=line, line=n)
        elif n > 1 or len(line.split()) > 5:
            warn.append(f"line {n}: not an 'Abstract:' line, skipped: {line[:60]!r}")


def read_one_per_line(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layout 3: one abstract per line and nothing else."""
    for n, line in _nonblank(lines):
        yield Record(abstract=line, line=n)


def read_web_dump(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """Layouts 4/5: page chrome, then title/abstract pairs (blank-line separated or not)."""
    body = []
    for n, line in _nonblank(lines):
        if _CHROME_LINES.match(line):
            continue
        line = _CHROME_PREFIX.sub("", line)
        body.append((n, line))
    i = 0
    while i < len(body):
        n, line = body[i]
        nxt = body[i + 1][1] if i + 1 < len(body) else None
        if is_title_like(line) and nxt is not None and not is_title_like(nxt):
            yield Record(abstract=nxt, title=line, line=n)
            i += 2
        elif is_title_like(line):
            where = "at end of file" if nxt is None else "followed by another title"
            warn.append(f"line {n}: title with no abstract ({where}), skipped: {line[:60]!r}")
            i += 1
        else:
            yield Record(abstract=line, line=n)
            i += 1


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
        record = _record_from_row(row, n, warn)
        if record:
            yield record


def read_csv(lines: list[str], warn: list[str]) -> Iterator[Record]:
    """CSV with a header naming `abstract` (required), `title`, `arxiv_id`, `comment`."""
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
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


def detect_layout(lines: list[str]) -> str | None:
    """Name the layout of a text by looking at its lines; None when none fits."""
    body = [line for _, line in _nonblank(lines)]
    if not body:
        return None
    if body[0].startswith("{"):
        return "jsonl"
    header = {h.strip().lower() for h in next(csv.reader([body[0]]), [])}
    if "abstract" in header and len(header) > 1:
        return "csv"
    if any(_ID_LINE.match(line) for line in body):
        return "arxiv-glued"
    prefixed = sum(bool(_ABSTRACT_PREFIX.match(line)) for line in body)
    if prefixed and prefixed >= (len(body) - 1) / 2:
        return "abstract-prefixed"
    chrome = any(_CHROME_LINES.match(line) or _CHROME_PREFIX.match(line) for line in body)
    titles = sum(is_title_like(line) for line in body)
    if chrome or (titles and titles * 2 >= len(body) - 1 and titles < len(body)):
        return "web-dump"
    if all(len(line.split()) >= 8 and not is_title_like(line) for line in body):
        return "one-per-line"
    return None


def read_text(path: Path) -> tuple[str, list[str]]:
    """Decode a file: UTF-8 (BOM allowed), else cp1252/latin-1 with a warning; binary refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
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
            note = f"line {line}: not valid UTF-8; decoded the file as {encoding}"
            return text, [note]
    raise CorpusError(f"{path}: cannot decode text")  # pragma: no cover - latin-1 never fails


def read_file(path: str | Path) -> CorpusReport:
    """Read one file in any supported layout into (not yet de-duplicated) papers."""
    path = Path(path)
    text, warnings = read_text(path)
    lines = text.splitlines()
    layout = detect_layout(lines)
    if layout is None:
        raise CorpusError(
            f"{path}: unknown layout (expected arXiv-glued abstracts, 'Abstract:' lines, one "
            "abstract per line, a title/abstract page dump, JSONL or CSV with an abstract column)"
        )
    raw_warnings: list[str] = []
    papers = []
    for record in READERS[layout](lines, raw_warnings):
        abstract = clean_abstract(record.abstract)
        if not abstract:
            raw_warnings.append(f"line {record.line}: empty abstract, skipped")
            continue
        papers.append(
            Paper(
                key=record.arxiv_id or content_key(abstract),
                arxiv_id=record.arxiv_id,
                title=record.title,
                abstract=abstract,
                comment=record.comment,
                sources=[path.name],
            )
        )
    warnings += raw_warnings
    if not papers:
        raise CorpusError(f"{path}: no abstracts found ({layout} layout)")
    log.debug("%s: %s layout, %d papers", path, layout, len(papers))
    return CorpusReport(papers, [f"{path.name}: {w}" for w in warnings])


# ---------------------------------------------------------------- metadata join


@dataclass
class Metadata:
    """arXiv IDs and titles looked up by content: normalised title or abstract start."""

    by_title: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    by_start: dict[str, tuple[str | None, str]] = field(default_factory=dict)

    PREFIX = 60  # normalised characters of an abstract's start used to find it
    ambiguous: set[str] = field(default_factory=set)

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
        entry = ((arxiv_id or "").strip() or None, " ".join((title or "").split()))
        if entry[1]:
            self.by_title.setdefault(normalize(entry[1]), entry)
        start = normalize(abstract_start or "")[: self.PREFIX]
        if len(start) < 30:
            return
        if start in self.by_start and self.by_start[start] != entry:
            self.ambiguous.add(start)  # two papers open with the same words: never guess
        self.by_start.setdefault(start, entry)

    def lookup(self, paper: Paper) -> tuple[str | None, str] | None:
        if paper.title and (hit := self.by_title.get(normalize(paper.title))):
            return hit
        start = normalize(paper.abstract)[: self.PREFIX]
        return None if start in self.ambiguous else self.by_start.get(start)

    def apply(self, paper: Paper) -> None:
        """Fill a missing ID or title from the table; a stated ID is never overwritten."""
        hit = self.lookup(paper)
        if not hit:
            return
        arxiv_id, title = hit
        if arxiv_id and not paper.arxiv_id:
            paper.arxiv_id = arxiv_id
            paper.key = arxiv_id
        if title and not paper.title:
            paper.title = title


# ---------------------------------------------------------------- de-duplication


def _identity(paper: Paper) -> list[str]:
    ids = [f"abs:{normalize(paper.abstract)}"]
    if paper.arxiv_id:
        ids.append(f"id:{paper.arxiv_id}")
    if paper.title:
        ids.append(f"title:{normalize(paper.title)}")
    return ids


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


def deduplicate(papers: Iterable[Paper]) -> list[Paper]:
    """One paper per arXiv ID, normalised title or abstract start; first occurrence's order."""
    unique: list[Paper] = []
    seen: dict[str, Paper] = {}
    for paper in papers:
        twin = next((seen[i] for i in _identity(paper) if i in seen), None)
        if twin is None:
            unique.append(paper)
            twin = paper
        else:
            merge(twin, paper)
        for i in _identity(twin):
            seen.setdefault(i, twin)
    return unique


# ---------------------------------------------------------------- public entry points


def corpus_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (sorted, hidden and metadata tables skipped)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and not f.name.startswith(".")
                and f.suffix.lower() in TEXT_SUFFIXES | {".jsonl", ".csv"}
            )
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
    return CorpusReport(deduplicate(papers), warnings)


def load_corpus(paths: str | Path | Iterable[str | Path] | None = None) -> list[Paper]:
    """`qa.load_corpus`: papers from files/folders (default: the bundled seeds)."""
    from qa.config import get_settings

    return read_corpus(paths if paths is not None else get_settings().seeds_dir).papers
