"""Streaming ingest for files of any size (the arXiv metadata snapshot: 2.9M papers, ~4 GB).

`qa ingest` of ordinary files reads, de-duplicates and indexes them in one go. A snapshot cannot
be held in memory, so here papers are read one line at a time (`corpus.iter_corpus`), filtered
as they are read (`--category/--since/--until`), and indexed in batches of `BATCH` papers:
memory stays bounded by one batch whatever the file's size. Each batch is an idempotent upsert
that examines only its own papers (the record says what earlier batches indexed), so a stream of
N papers costs O(N), and an interrupted run simply resumes (papers already indexed are skipped).
A progress bar over the bytes read shows the rate and the time left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from qa.config import Settings, get_settings
from qa.corpus import Paper, corpus_files, deduplicate, iter_corpus
from qa.filters import Filters
from qa.ingest import IngestReport, build_index

BATCH = 2000  # papers per upsert round: ~3 MB of abstracts, a few seconds of fast embedding


@dataclass
class StreamReport:
    """What a streamed ingest did: papers kept after filtering, and the summed ingest."""

    kept: int = 0
    batches: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.kept} papers kept in {self.batches} batches; {self.ingest.summary()}"


def batched(papers: Iterable[Paper], size: int) -> Iterator[list[Paper]]:
    it = iter(papers)
    while batch := list(islice(it, size)):
        yield batch


def merge_reports(total: IngestReport, part: IngestReport) -> None:
    """Add one batch's ingest report to a running total (the record's size is the latest;
    the papers themselves are not kept, so a stream of any length stays small). Unchanged:
    the rest of the record, as in one `build_index` (each batch counts the record's rest)."""
    for name in ("added", "updated", "removed", "chunks_written"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.unchanged = max(0, part.papers - total.added - total.updated)
    total.vectors_from_cache += part.vectors_from_cache
    total.vectors_computed += part.vectors_computed
    total.seconds += part.seconds
    total.papers = part.papers
    total.rebuilt = total.rebuilt or part.rebuilt
    total.warnings += part.warnings
    total.recorded.replaced += part.recorded.replaced
    total.recorded.kept_both += part.recorded.kept_both


def _bytes_bar(paths: list[Path], enabled: bool):
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in paths)
    return tqdm(
        total=total, unit="B", unit_scale=True, desc="reading", disable=not enabled, smoothing=0.1
    )


def ingest_stream(
    paths: str | Path | Iterable[str | Path],
    *,
    filters: Filters | None = None,
    settings: Settings | None = None,
    batch: int = BATCH,
    progress: bool = True,
    write: Callable[..., IngestReport] = build_index,
) -> StreamReport:
    """Read, filter and index `paths` batch by batch in bounded memory."""
    settings = settings or get_settings()
    files = corpus_files(paths)
    report = StreamReport()
    keep = filters.matches if filters else None
    with _bytes_bar(files, progress) as bar:
        papers = iter_corpus(files, report.warnings, keep=keep, on_read=bar.update)
        batches = batched(papers, batch)
        chunk = next(batches, None)
        while chunk is not None:
            following = next(batches, None)  # one batch ahead: the last one saves the
            unique = deduplicate(chunk)  # keyword index (rebuilding it per batch is O(n²))
            report.kept += len(unique)
            report.batches += 1
            part = write(unique, settings=settings, progress=False, keyword_index=following is None)
            merge_reports(report.ingest, part)
            bar.set_postfix(papers=report.kept, refresh=False)
            chunk = following
    return report
