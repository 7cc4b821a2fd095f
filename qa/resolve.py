"""arXiv IDs for papers that have none: search the arXiv API once per paper, cache every answer.

A paper with a title is searched by title (`ti:"…"`); a paper without one (or whose title search
finds nothing acceptable) by a distinctive run of words from its abstract (`abs:"…"`). A result is
accepted only when its title or abstract is nearly the same as the paper's, so a loose search hit
does not attach a wrong ID. Every answer — found or not — goes into a TSV cache that
`corpus.Metadata` reads directly (columns `arxiv_id`, `title`, `abstract_start`), so the next
`read_corpus` attaches the IDs without any network, and no paper is ever looked up twice.

The cache is rewritten atomically after each answer: an interruption keeps the answers so far and
never leaves a half-written file. When the API cannot be reached the run stops with one message and
nothing is changed for the papers not yet answered.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import SequenceMatcher
from pathlib import Path
from urllib.parse import urlsplit

import arxiv
import requests
from lxml import etree

from qa.arxiv_ids import try_normalize_id
from qa.config import Settings, get_settings
from qa.corpus import Metadata, Paper, date_from_id, normalize

log = logging.getLogger(__name__)

TITLE_THRESHOLD = 0.9  # difflib ratio of normalised titles needed to accept a result
ABSTRACT_THRESHOLD = 0.8  # difflib ratio of the abstracts' word sequences needed to accept
MAX_RESULTS = 5  # results read per search: a true match ranks near the top of a phrase search
PHRASE_WORDS = 10  # words in an abstract phrase search: rare enough to single a paper out
MIN_PHRASE_WORDS = 8  # shorter runs are used when no run of PHRASE_WORDS plain words exists
DELAY_SECONDS = 3.0  # arXiv's terms of use: no more than one request every three seconds
TIMEOUT = 30.0  # seconds per HTTP request; the arxiv package sets none and could hang forever
NUM_RETRIES = 3
START_CHARS = 80  # characters of the abstract kept in the cache's abstract_start column

CACHE_COLUMNS = ("key", "arxiv_id", "title", "abstract_start", "status", "checked")
FOUND, NOT_FOUND = "found", "not-found"

_ATOM_FEED = "{http://www.w3.org/2005/Atom}feed"
_MATH = re.compile(r"\$[^$]*\$|\\[a-zA-Z]+|\\.|[{}^_]")
_TOKEN_EDGES = "([{\"'“‘"
_TOKEN_TAILS = ".,;:!?)]}\"'”’"
_CLOSERS = ")]}\"'”’"
_CLEAN_TOKEN = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is"}
    | {"it", "its", "of", "on", "or", "our", "that", "the", "their", "this", "to", "we", "with"}
)


class ResolveError(RuntimeError):
    """The API could not answer; the message is for users.

    `fatal` errors (unreachable, overloaded, unreadable feed) stop the run; the others (an HTTP
    4xx for one query) only skip that paper, so one odd paper cannot block every later run.
    """

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


class MalformedFeedError(arxiv.ArxivError):
    """A 200 response that is not an Atom feed; the arxiv package would read it as 'no results'."""


@dataclass
class ResolveReport:
    """What `resolve_missing` did: new IDs (old key → ID), misses, cache hits, a stopping error.

    `failed` lists papers whose query the API refused (key, message); they are not cached.
    """

    resolved: list[tuple[str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    skipped_cached: int = 0
    error: str | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Match:
    """An accepted search result."""

    arxiv_id: str
    title: str
    title_score: float
    abstract_score: float


# ---------------------------------------------------------------- client


class _Session(requests.Session):
    """Adds the timeout the arxiv package lacks and refuses bodies that are not Atom feeds."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == requests.codes.ok:
            _check_feed(response.content, url)
        return response


def _check_feed(content: bytes, url: str) -> None:
    """A truncated or foreign page (proxy, captive portal) must not be cached as 'not found'."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(content, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise MalformedFeedError(url, 0, f"not a well-formed Atom feed ({exc})") from exc
    if root is None or root.tag != _ATOM_FEED:
        tag = "nothing" if root is None else f"<{etree.QName(root).localname}>"
        raise MalformedFeedError(url, 0, f"expected an Atom <feed>, got {tag}")


def make_client(
    url_format: str | None = None,
    *,
    delay_seconds: float = DELAY_SECONDS,
    num_retries: int = NUM_RETRIES,
    timeout: float = TIMEOUT,
    page_size: int = MAX_RESULTS,
) -> arxiv.Client:
    """An arxiv Client for `url_format` (default: settings.arxiv_api_url), polite and bounded.

    The request's `max_results` is the client's `page_size` (not `Search.max_results`), so the
    page size is what keeps each answer small.
    """
    client = arxiv.Client(page_size=page_size, delay_seconds=delay_seconds, num_retries=num_retries)
    client.query_url_format = url_format or get_settings().arxiv_api_url
    client._session = _Session(timeout)  # the package offers no public hook for a timeout
    return client


def api_base(client: arxiv.Client) -> str:
    """The endpoint without the query template, for messages."""
    parts = urlsplit(client.query_url_format)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _reason(exc: BaseException) -> str:
    """The useful end of a requests/urllib3 error chain: 'Connection refused', 'timed out', …"""
    inner: object = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", None) or inner
    text = str(inner)
    return re.sub(r"^\w+\(host=[^)]*\):\s*", "", text) or type(exc).__name__


def search(client: arxiv.Client, query: str) -> list[arxiv.Result]:
    """Run one query; every failure becomes a `ResolveError` with a one-line message."""
    log.debug("arXiv query: %s", query)
    with api_errors(client):
        return list(client.results(arxiv.Search(query=query, max_results=MAX_RESULTS)))


@contextmanager
def api_errors(client: arxiv.Client) -> Iterator[None]:
    """Every failure of an arXiv API call inside becomes a one-line `ResolveError`."""
    base = api_base(client)
    try:
        yield
    except requests.exceptions.RequestException as exc:
        raise ResolveError(f"arXiv API unreachable at {base}: {_reason(exc)}") from exc
    except arxiv.HTTPError as exc:
        fatal = exc.status == 429 or not 400 <= exc.status < 500
        raise ResolveError(f"arXiv API error at {base}: HTTP {exc.status}", fatal=fatal) from exc
    except (arxiv.ArxivError, ValueError) as exc:  # ValueError: a bad date inside an entry
        message = getattr(exc, "message", None) or str(exc)
        raise ResolveError(f"arXiv API at {base} sent an unreadable answer: {message}") from exc


# ---------------------------------------------------------------- queries


def result_id(result: arxiv.Result) -> str | None:
    """The version-less ID of a result, or None for anything that is not an arXiv ID."""
    return try_normalize_id(result.entry_id)


def _segments(text: str) -> list[list[str]]:
    """Runs of plain words within a sentence, broken at maths, LaTeX and odd tokens.

    Such tokens (and sentence ends) may be indexed differently by the API, and a phrase search
    spanning one could then miss the very paper it was taken from.
    """
    runs: list[list[str]] = [[]]
    for raw in _MATH.sub(" \x00 ", text).split():
        token = raw.lstrip(_TOKEN_EDGES).rstrip(_TOKEN_TAILS)
        clean = _CLEAN_TOKEN.fullmatch(token)
        if clean:
            runs[-1].append(token.replace("-", " "))
        if not clean or raw.rstrip(_CLOSERS).endswith((".", "!", "?")):
            runs.append([])
    return [run for run in runs if run]


def title_query(title: str) -> str | None:
    """`ti:"…"` for the title's plain-word runs (maths would break a single phrase)."""
    phrases = [" ".join(run) for run in _segments(title)]
    return " AND ".join(f'ti:"{p}"' for p in phrases) or None


def _distinctiveness(words: list[str]) -> int:
    """Long, non-stop words are rare words: a cheap stand-in for corpus statistics."""
    return sum(min(len(w), 12) for w in words if w.lower() not in _STOPWORDS)


def abstract_phrase(abstract: str) -> str | None:
    """The most distinctive run of PHRASE_WORDS plain words (or the longest ≥ MIN_PHRASE_WORDS)."""
    best: list[str] = []
    for run in _segments(abstract):
        size = min(PHRASE_WORDS, len(run))
        if size < MIN_PHRASE_WORDS:
            continue
        for i in range(len(run) - size + 1):
            window = run[i : i + size]
            if (len(window), _distinctiveness(window)) > (len(best), _distinctiveness(best)):
                best = window
    return " ".join(best) or None


def queries_for(paper: Paper) -> list[str]:
    """Title search first (cheap, precise), then the abstract phrase (titles change on arXiv)."""
    queries = []
    if paper.title and (query := title_query(paper.title)):
        queries.append(query)
    if phrase := abstract_phrase(paper.abstract):
        queries.append(f'abs:"{phrase}"')
    return queries


# ---------------------------------------------------------------- matching


def title_similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, normalize(a), normalize(b), autojunk=False).ratio()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", re.sub(r"\\[a-zA-Z]+", " ", text.lower()))


def abstract_similarity(a: str, b: str) -> float:
    """Word-level ratio: robust to punctuation/LaTeX differences, sensitive to other content."""
    return SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


def best_match(paper: Paper, results: Iterable[arxiv.Result]) -> Match | None:
    """The most similar acceptable result; when several titles pass, the closer abstract wins."""
    accepted = []
    for result in results:
        arxiv_id = result_id(result)
        if arxiv_id is None:
            continue
        t = title_similarity(paper.title, result.title) if paper.title else 0.0
        a = abstract_similarity(paper.abstract, result.summary)
        if t >= TITLE_THRESHOLD or a >= ABSTRACT_THRESHOLD:
            accepted.append(Match(arxiv_id, " ".join(result.title.split()), t, a))
    return max(accepted, key=lambda m: m.title_score + m.abstract_score, default=None)


def find_match(client: arxiv.Client, paper: Paper) -> Match | None:
    """Search until a result is accepted; raises `ResolveError` when the API cannot answer."""
    for query in queries_for(paper):
        match = best_match(paper, search(client, query))
        if match:
            return match
    return None


# ---------------------------------------------------------------- cache


def abstract_start(abstract: str) -> str:
    """First START_CHARS characters, extended until `Metadata` has enough to match them by."""
    text = " ".join(abstract.split())
    end = min(START_CHARS, len(text))
    while end < len(text) and len(normalize(text[:end])) < Metadata.PREFIX:
        end += 10
    return text[:end]


def load_cache(path: Path) -> dict[str, dict[str, str]]:
    """Rows by paper key; a file that is not a resolve cache is refused rather than overwritten."""
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if reader.fieldnames and "key" not in reader.fieldnames:
                raise ResolveError(f"{path}: not a resolve cache (no 'key' column); left as is")
            return {row["key"]: row for row in reader if row.get("key")}
    except (OSError, UnicodeDecodeError) as exc:
        raise ResolveError(f"{path}: cannot read the resolve cache ({exc})") from exc


def save_cache(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write via a temporary file and `os.replace`, so readers see the old or the new file only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(
                handle, CACHE_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows({c: row.get(c) or "" for c in CACHE_COLUMNS} for row in rows.values())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_row(key: str, paper: Paper, match: Match | None) -> dict[str, str]:
    """Found rows carry arXiv's title (it fills missing titles); misses keep the paper's own."""
    return {
        "key": key,
        "arxiv_id": match.arxiv_id if match else "",
        "title": match.title if match else " ".join(paper.title.split()),
        "abstract_start": abstract_start(paper.abstract),
        "status": FOUND if match else NOT_FOUND,
        "checked": datetime.now(UTC).date().isoformat(),
    }


def apply_id(paper: Paper, arxiv_id: str, title: str) -> None:
    """Same rule as `Metadata.apply`: the ID becomes the key; a title is only ever filled in."""
    paper.arxiv_id = arxiv_id
    paper.key = arxiv_id
    paper.title = paper.title or title
    date_from_id(paper)


# ---------------------------------------------------------------- entry point


def _progress(papers: list[Paper], enabled: bool) -> Iterator[Paper]:
    """A progress bar on stderr when it helps (several papers, each ≥ 3 s apart)."""
    if not enabled or len(papers) < 2:
        yield from papers
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(papers, description="Resolving arXiv IDs", console=Console(stderr=True))


def _apply_cached(paper: Paper, row: dict[str, str]) -> None:
    if row.get("status") == FOUND and row.get("arxiv_id"):
        apply_id(paper, row["arxiv_id"], row.get("title") or "")


def resolve_missing(
    papers: list[Paper],
    *,
    settings: Settings | None = None,
    client: arxiv.Client | None = None,
    progress: bool = True,
) -> ResolveReport:
    """Find arXiv IDs for the papers without one, updating them in place and caching each answer.

    Papers already in the cache are not looked up (a cached ID is applied). The first failure to
    reach the API stops the run: `report.error` says why, and the papers not yet answered and
    their cache rows stay as they were. Pass a client from `make_client` (`delay_seconds=0` in
    tests); a plain `arxiv.Client` works but has no timeout and reads a garbled feed as "no hits".
    """
    settings = settings or get_settings()
    client = client or make_client(settings.arxiv_api_url)
    path = settings.resolve_cache_path
    report = ResolveReport()
    try:
        cache = load_cache(path)
    except ResolveError as exc:
        report.error = str(exc)
        return report
    todo = []
    for paper in papers:
        if paper.arxiv_id:
            continue
        if paper.key in cache:
            report.skipped_cached += 1
            _apply_cached(paper, cache[paper.key])
        else:
            todo.append(paper)
    for paper in _progress(todo, progress):
        if paper.key in cache:  # the same paper twice in the list
            report.skipped_cached += 1
            _apply_cached(paper, cache[paper.key])
            continue
        try:
            match = find_match(client, paper)
        except ResolveError as exc:
            if not exc.fatal:
                report.failed.append((paper.key, str(exc)))
                continue
            report.error = str(exc)
            break
        key = paper.key
        cache[key] = cache_row(key, paper, match)
        try:
            save_cache(path, cache)
        except OSError as exc:
            report.error = f"cannot write the resolve cache {path}: {exc}"
            break
        if match:
            apply_id(paper, match.arxiv_id, match.title)
            report.resolved.append((key, match.arxiv_id))
        else:
            report.not_found.append(key)
        log.info("%s: %s", key, match.arxiv_id if match else NOT_FOUND)
    return report
