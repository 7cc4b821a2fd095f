"""`qa fetch QUERY`: papers from the arXiv API, recorded and indexed page by page, resumable.

The query is arXiv's own syntax (`cat:cs.CL AND submittedDate:[202401010000 TO 202412312359]`).
Results are asked for oldest first (submitted date, ascending), so a result's position never
moves when arXiv adds newer papers: the offset reached is saved after each page is indexed,
and the next run of the same query continues from there (after an interruption, or later to
pick up what arXiv added since). The `arxiv` package pages the requests and keeps the delay
arXiv asks of clients (`QA_ARXIV_DELAY`, 3 s); `QA_ARXIV_API_URL` points it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import arxiv

from qa.arxiv_ids import id_month
from qa.atom import result_row
from qa.config import Settings, get_settings
from qa.corpus import Paper, paper_from_record, record_from_row
from qa.ingest import IngestReport, build_index
from qa.resolve import ResolveError, api_errors, make_client
from qa.snapshot import merge_reports

log = logging.getLogger(__name__)

SOURCE = "arxiv-api"  # the `sources` name of fetched papers


class FetchError(RuntimeError):
    """The fetch could not go on; the message names the cause and the fix."""


@dataclass
class FetchReport:
    query: str
    start: int = 0  # offset this run started at (papers of earlier runs skipped)
    fetched: int = 0
    exhausted: bool = False  # arXiv has no more results for the query
    ingest: IngestReport = field(default_factory=IngestReport)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def offset(self) -> int:
        return self.start + self.fetched

    def summary(self) -> str:
        more = "no more results" if self.exhausted else "more available: run again to continue"
        return (
            f"fetched {self.fetched} papers (results {self.start + 1}–{self.offset}; {more}); "
            f"{self.ingest.summary()}"
        )


def state_path(settings: Settings, query: str) -> Path:
    """Where the offset reached for one query (and endpoint) is kept, beside the store."""
    digest = hashlib.sha1(f"{settings.arxiv_api_url}\n{query}".encode()).hexdigest()[:16]
    return Path(settings.persist_dir) / ".fetch" / f"{digest}.json"


def load_offset(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def save_offset(path: Path, query: str, offset: int) -> None:
    """Atomically: an interruption leaves the old offset or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"query": query, "offset": offset}))
    os.replace(tmp, path)


def paper_from_result(result: arxiv.Result, warn: list[str], n: int = 0) -> Paper | None:
    """An API result → Paper with every metadata field (the same path as a saved feed)."""
    record = record_from_row(result_row(result), n, warn)
    return paper_from_record(record, SOURCE) if record else None


def _pages(client: arxiv.Client, query: str, offset: int, limit: int) -> Iterator[list]:
    """Lists of at most one page of results; API failures become `ResolveError`s."""
    search = arxiv.Search(
        query=query,
        max_results=None,
        sort_by=arxiv.SortCriterion.SubmittedDate,
        sort_order=arxiv.SortOrder.Ascending,
    )
    results = client.results(search, offset=offset)
    page: list = []
    taken = 0
    while taken < limit:
        with api_errors(client):
            result = next(results, None)
        if result is None:
            break
        page.append(result)
        taken += 1
        if len(page) == client.page_size:
            yield page
            page = []
    if page:
        yield page


def fetch(
    query: str,
    max_results: int | None = None,
    *,
    settings: Settings | None = None,
    client: arxiv.Client | None = None,
    progress: bool = True,
    write: Callable[..., IngestReport] = build_index,
) -> FetchReport:
    """`qa.fetch`: up to `max_results` (default QA_FETCH_MAX) more papers for an arXiv query,
    each page indexed before the next is asked for; resumes where the last run stopped."""
    settings = settings or get_settings()
    query = " ".join(query.split())
    if not query:
        raise FetchError("empty query; e.g. qa fetch 'cat:cs.CL AND submittedDate:[2024 TO 2025]'")
    limit = min(max_results or settings.fetch_max, settings.fetch_max)
    client = client or make_client(
        settings.arxiv_api_url,
        delay_seconds=settings.arxiv_delay,
        page_size=settings.arxiv_page_size,
    )
    path = state_path(settings, query)
    report = FetchReport(query, start=load_offset(path))
    from tqdm import tqdm

    with tqdm(total=limit, unit="paper", desc="fetching", disable=not progress) as bar:
        try:
            for page in _pages(client, query, report.start, limit):
                papers = [p for r in page if (p := paper_from_result(r, report.warnings))]
                part = write(papers, settings=settings, progress=False)
                merge_reports(report.ingest, part)
                report.fetched += len(page)
                save_offset(path, query, report.offset)
                bar.update(len(page))
        except ResolveError as exc:
            report.error = f"{exc} (the {report.fetched} papers fetched so far are kept)"
            return report
    report.exhausted = report.fetched < limit
    return report


# ---------------------------------------------------------------- metadata for known IDs


@dataclass
class MetadataReport:
    filled: list[Paper] = field(default_factory=list)  # papers that gained a field
    not_found: list[str] = field(default_factory=list)  # IDs the API did not return
    error: str | None = None


def lacks_metadata(paper: Paper) -> bool:
    return bool(paper.arxiv_id) and not (paper.authors and paper.categories)


def fill_from(paper: Paper, found: Paper) -> bool:
    """Fill the paper's empty metadata fields from the API's record; True if any changed.
    The API's first-version date replaces a date that was only the ID's month."""
    changed = False
    for name in ("authors", "categories", "updated", "doi", "journal_ref", "comment"):
        if not getattr(paper, name) and getattr(found, name):
            setattr(paper, name, getattr(found, name))
            changed = True
    if found.published and paper.published in (None, id_month(paper.arxiv_id)):
        changed |= paper.published != found.published
        paper.published = found.published
    return changed


def fill_metadata(
    papers: list[Paper],
    *,
    settings: Settings | None = None,
    client: arxiv.Client | None = None,
) -> MetadataReport:
    """Authors, categories, dates, DOI and journal reference from the arXiv API for papers
    that have an arXiv ID but no metadata (a page of IDs per request); updated in place."""
    settings = settings or get_settings()
    client = client or make_client(
        settings.arxiv_api_url,
        delay_seconds=settings.arxiv_delay,
        page_size=settings.arxiv_page_size,
    )
    report = MetadataReport()
    todo = {p.arxiv_id: p for p in papers if lacks_metadata(p)}
    ids = list(todo)
    warnings: list[str] = []
    for start in range(0, len(ids), client.page_size):
        part = ids[start : start + client.page_size]
        search = arxiv.Search(id_list=part, max_results=len(part))
        try:
            with api_errors(client):
                results = list(client.results(search))
        except ResolveError as exc:
            report.error = str(exc)
            break
        seen = set()
        for result in results:
            found = paper_from_result(result, warnings)
            if found and found.arxiv_id in todo:
                seen.add(found.arxiv_id)
                if fill_from(todo[found.arxiv_id], found):
                    report.filled.append(todo[found.arxiv_id])
        report.not_found += [i for i in part if i not in seen]
    return report
