"""Issue 13: a write costs what changed, not the size of the record.

The corpus record keeps, per collection, what each paper's chunks are and up to which change
every paper is in line, so a batch examines only its own papers; the account is rebuilt from
Chroma only when it cannot be trusted (chunks deleted behind its back, a recreated collection,
an older record), and a killed ingest rewrites exactly the papers it had not finished —
embedded and against a real `chroma run` server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("chroma_server")

from chroma_server import reset_qa_caches  # noqa: E402
from processes import STREAMED_INGEST, kill_when  # noqa: E402
from test_index import (  # noqa: E402
    WORDS,
    _server_counter,
    _sqlite_count,
    expected_ids,
    numbered,
    seed_papers,
    stored_ids,
    unbroken,
)

import qa.ingest  # noqa: E402
from qa.config import get_settings  # noqa: E402
from qa.corpus import Paper  # noqa: E402
from qa.embeddings import token_length  # noqa: E402
from qa.index import Index, build_index, chunk_paper, open_index, remove_papers  # noqa: E402
from qa.snapshot import ingest_stream  # noqa: E402
from qa.store import CorpusStore, open_store  # noqa: E402

pytest_plugins = ["chroma_server"]

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, papers) -> Path:
    rows = [{"arxiv_id": p.arxiv_id, "title": p.title, "abstract": p.abstract} for p in papers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class Spy:
    """Counts what each write reads: papers handed out by the record, Chroma scans."""

    def __init__(self, monkeypatch):
        self.examined: list[list[str]] = [[]]  # per build_index call: keys examined
        self.scans = 0  # reconciliations (reading every chunk's metadata from Chroma)
        self.whole_record = 0
        changed_since = CorpusStore.changed_since
        chunk_metadata = Index.chunk_metadata
        build = qa.ingest.build_index
        papers = CorpusStore.papers

        def spy_changed(store, rev, *args, **kwargs):
            for page in changed_since(store, rev, *args, **kwargs):
                self.examined[-1] += [p.key for p in page]
                yield page

        def spy_scan(index, *args, **kwargs):
            self.scans += 1
            yield from chunk_metadata(index, *args, **kwargs)

        def spy_build(*args, **kwargs):
            self.examined.append([])
            return build(*args, **kwargs)

        def spy_papers(store):
            self.whole_record += 1
            return papers(store)

        monkeypatch.setattr(CorpusStore, "changed_since", spy_changed)
        monkeypatch.setattr(CorpusStore, "papers", spy_papers)
        monkeypatch.setattr(Index, "chunk_metadata", spy_scan)
        monkeypatch.setattr(qa.ingest, "build_index", spy_build)


def test_each_streamed_batch_examines_only_its_own_papers(index_mode, tmp_path, monkeypatch):
    papers = seed_papers()[:30]
    path = write_jsonl(tmp_path / "papers.jsonl", papers)
    spy = Spy(monkeypatch)
    report = ingest_stream(path, batch=10, progress=False, write=qa.ingest.build_index)
    assert report.batches == 3 and report.ingest.added == 30
    keys = [p.key for p in papers]
    assert spy.examined[1:] == [keys[0:10], keys[10:20], keys[20:30]]  # never an earlier batch's
    assert spy.scans == 1  # the new collection's account, read once (it is empty)
    assert spy.whole_record == 0
    assert stored_ids() == expected_ids(papers)
    assert report.ingest.unchanged == 0 and report.ingest.papers == 30

    # the same file again: nothing examined beyond each batch, nothing written
    again = ingest_stream(path, batch=10, progress=False, write=qa.ingest.build_index)
    assert again.ingest.chunks_written == 0 and again.ingest.added == 0
    assert again.ingest.unchanged == 30
    assert spy.examined[4:] == [[], [], []] and spy.scans == 1


def test_removal_deletes_chunks_without_examining_the_rest(index_mode, monkeypatch):
    papers = seed_papers()[:12]
    build_index(papers, progress=False)
    spy = Spy(monkeypatch)
    gone, missing, report = remove_papers([papers[0].arxiv_id, papers[1].key])
    assert set(gone) == {papers[0].key, papers[1].key} and not missing
    assert report.removed == 2
    assert stored_ids() == expected_ids(papers[2:])
    assert spy.scans == 0 and spy.whole_record == 0
    # a later write is cheap again: only the new paper is examined, nothing is removed
    new = seed_papers()[12]
    later = qa.ingest.build_index([new], progress=False)
    assert spy.examined[-1] == [new.key] and later.removed == 0
    assert (later.added, later.unchanged, later.papers) == (1, 10, 11)


def test_chunks_deleted_behind_the_records_back_are_found_and_rewritten(index_mode, monkeypatch):
    """The cheap check (the collection's count against the record's) fails: the account is
    read again from Chroma and exactly the damaged paper is rewritten."""
    papers = seed_papers()[:12]
    build_index(papers, progress=False)
    victim = next(p for p in papers if len(expected_ids([p])) > 1)
    open_index().collection.delete(ids=[f"{victim.key}#1"])
    spy = Spy(monkeypatch)
    report = qa.ingest.build_index([], progress=False)
    assert spy.scans == 1
    assert report.updated == 1 and report.chunks_written == len(expected_ids([victim]))
    assert stored_ids() == expected_ids(papers)
    again = qa.ingest.build_index([], progress=False)
    assert again.chunks_written == 0 and spy.scans == 1  # in line again: no second scan


def test_a_recreated_collection_is_refilled_from_the_record(index_mode, monkeypatch):
    papers = seed_papers()[:8]
    build_index(papers, progress=False)
    index = open_index()
    index.client.delete_collection(index.name)
    reset_qa_caches()
    report = build_index([], progress=False)
    assert report.added == 8 and stored_ids() == expected_ids(papers)


def test_a_record_from_before_the_account_is_reconciled_once(tmp_path, monkeypatch):
    """A record written by an older version (no `rev` column, no per-collection account):
    the first write reads the account from Chroma, rewrites nothing, and is cheap after."""
    papers = seed_papers()[:10]
    build_index(papers, progress=False)
    reset_qa_caches()
    with sqlite3.connect(open_store().path) as conn:
        conn.execute("DROP INDEX papers_by_rev")
        conn.execute("ALTER TABLE papers DROP COLUMN rev")
        conn.execute("DROP TABLE indexed")
        conn.execute("DELETE FROM meta WHERE name LIKE 'synced:%' OR name LIKE '%rev'")
    spy = Spy(monkeypatch)
    first = qa.ingest.build_index([], progress=False)
    assert first.chunks_written == 0 and first.unchanged == 10 and spy.scans == 1
    assert len(spy.examined[-1]) == 10
    new = seed_papers()[10]
    second = qa.ingest.build_index([new], progress=False)
    assert spy.examined[-1] == [new.key] and spy.scans == 1
    assert second.added == 1 and stored_ids() == expected_ids([*papers, new])


def test_a_new_chunk_size_rechunks_every_paper(monkeypatch):
    papers = seed_papers()[:6]
    build_index(papers, progress=False)
    monkeypatch.setenv("QA_CHUNK_TOKENS", "128")
    get_settings.cache_clear()
    reset_qa_caches()
    report = build_index([], progress=False)
    assert report.updated == 6
    assert stored_ids() == expected_ids(papers)  # expected_ids follows QA_CHUNK_TOKENS


def test_batch_token_counts_give_the_same_chunks(monkeypatch):
    """The ingest's memoised counts (whitespace pieces, one encode_batch per batch) are the
    tokenizer's own, on real abstracts and on awkward text, so chunks (and the shipped vector
    cache's keys) are exactly what `chunk_paper` makes with per-call counts."""
    odd = [
        Paper(key=f"odd{i}", arxiv_id=None, title=title, abstract=abstract)
        for i, (title, abstract) in enumerate(
            [
                ("", numbered("graph{i} neural network message passing", 160)),
                (" ".join(WORDS * 60), numbered("A mis-parsed title, paragraph {i}.", 60)),
                ("Unbroken", unbroken(5000)),
                ("图神经网络", numbered("图神经网络在分子性质预测中的应用{i}。", 150, sep="")),
                ("Mixed", numbered("Résumé {i} of naïve\u00a0Bayes —\t10⁻³ error;\n (α=0.5).", 50)),
            ]
        )
    ]
    papers = seed_papers()[:120] + odd
    for cap in (10**6, 50):  # pieces kept for later batches, or (memo full) only for this one
        monkeypatch.setattr(qa.ingest, "PIECES_KEPT", cap)
        monkeypatch.setattr(qa.ingest, "_PIECES", {})
        length = qa.ingest._batch_length(papers)
        assert bool(qa.ingest._PIECES) == (cap > 50)
        for paper in papers:
            assert length(paper.abstract) == token_length(paper.abstract), paper.key
            padded = f" {paper.abstract}\n"  # empty pieces at both ends of the split
            assert length(padded) == length(padded) == token_length(padded), paper.key
            for size in (256, 128):
                assert chunk_paper(paper, size, length) == chunk_paper(paper, size), paper.key


def test_upserts_are_filled_to_the_write_batch_at_the_chunks_per_paper_seen(monkeypatch):
    """Papers are batched before they are chunked; after the first batches, the number of
    papers per upsert follows the chunks per paper seen so far, so each upsert holds about
    WRITE_BATCH chunks (Chroma's upsert costs per call), whole papers, every paper once."""
    import chromadb

    monkeypatch.setattr(qa.ingest, "WRITE_BATCH", 12)
    sizes: list[int] = []
    upsert = chromadb.api.models.Collection.Collection.upsert

    def spy(self, *args, **kwargs):
        sizes.append(len(kwargs["ids"]))
        return upsert(self, *args, **kwargs)

    monkeypatch.setattr(chromadb.api.models.Collection.Collection, "upsert", spy)
    papers = [  # one chunk each
        Paper(key=f"short{i}", arxiv_id=None, title=f"Note {i}", abstract=f"Short note {i}.")
        for i in range(60)
    ]
    report = build_index(papers, progress=False)
    # the first batch is made before any paper is chunked (2 chunks a paper assumed)
    assert sizes == [6, 12, 12, 12, 12, 6]
    assert report.added == 60 and stored_ids() == expected_ids(papers)


# ---------------------------------------------------------------- a kill mid-stream


def test_a_streamed_ingest_killed_mid_way_rewrites_exactly_the_unfinished_papers(
    index_mode, tmp_path
):
    papers = seed_papers()[300:336]
    ids = expected_ids(papers)
    path = write_jsonl(tmp_path / "papers.jsonl", papers)
    empty_cache = tmp_path / "no-vector-cache"
    empty_cache.mkdir()
    first_batch = len(expected_ids(papers[:12]))
    child = subprocess.Popen(
        [sys.executable, "-c", STREAMED_INGEST, str(empty_cache), str(path)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # killed past the first batch, before the end
    out, _ = kill_when(child, lambda: first_batch < _committed_chunks() < len(ids), timeout=240)
    assert "done" not in out

    reset_qa_caches()
    held = set(open_index().collection.get(include=[])["ids"])
    assert 0 < len(held) < len(ids)
    report = ingest_stream(path, batch=12, progress=False)
    # every paper whose chunks were all written is kept; only the rest is written now
    assert report.ingest.chunks_written == len(ids - held)
    assert report.ingest.added + report.ingest.updated + report.ingest.unchanged == len(papers)
    index = open_index()
    assert index.count() == len(ids) and stored_ids(index) == ids
    assert ingest_stream(path, batch=12, progress=False).ingest.chunks_written == 0


def _committed_chunks() -> int:
    """Chunks the child has written so far, read without disturbing it."""
    settings = get_settings()
    if settings.chroma_url:
        return _server_counter(settings.chroma_url, settings.collection)()
    return _sqlite_count(settings.persist_dir / "chroma.sqlite3")
