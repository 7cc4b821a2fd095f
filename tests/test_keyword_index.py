"""Issue 13: the writer updates the saved keyword index at the cost of what changed.

Each save starts from the latest saved copy of the same collection, reads back from Chroma
only the chunks of papers added or re-written since (by id, never a page through the whole
collection) and re-assembles BM25, idf and facets from the saved token arrays. Whatever the
path (an update, a streamed ingest's many calls, a kill between calls, a copy that cannot be
trusted), the saved index must be exactly what a full build of the same state gives: same
ids, same BM25 score per chunk, same idf, same filter masks — embedded and on `chroma run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import bm25s
import numpy as np
import pytest

pytest.register_assert_rewrite("chroma_server")

from chroma_server import reset_qa_caches  # noqa: E402
from processes import STREAMED_INGEST, kill_when  # noqa: E402
from test_index import chunks_of, seed_papers  # noqa: E402
from test_ingest_incremental import _committed_chunks, write_jsonl  # noqa: E402

import qa.index  # noqa: E402
import qa.keyword_index as keyword_index  # noqa: E402
from qa.filters import Filters  # noqa: E402
from qa.index import Index, build_index, open_index, remove_papers  # noqa: E402
from qa.keyword_index import KeywordIndex, Rows, bm25_matrix, stems  # noqa: E402
from qa.snapshot import ingest_stream  # noqa: E402

pytest_plugins = ["chroma_server"]

QUERIES = [
    "graph neural networks for molecules",
    "prompt tuning of large language models",
    "reinforcement learning policy gradient",
    "zorbulation quintaflex",  # words only the re-written papers have
    "image segmentation transformer",
]
FILTERS = [
    Filters.make(since="2023-01-01"),
    Filters.make(until="2021-12-31"),
    Filters.make(categories=["cs.CL"]),
    Filters.make(categories=["cs"], since="2022-06-01"),
]


def assert_same_as_full_build() -> KeywordIndex:
    """The keyword index the writer saved for the committed state equals a full build."""
    index = open_index()
    revision, count = index.snapshot()
    saved = KeywordIndex()
    assert saved.load_saved(index, revision, count), "the writer saved no keyword index"
    full = KeywordIndex()
    full.build_in_memory(index, revision, count)
    assert len(saved.ids) == len(full.ids) == count
    assert set(saved.ids) == set(full.ids)
    order = np.asarray([saved.row_of[cid] for cid in full.ids])
    assert saved.idf == full.idf
    for query in QUERIES:
        got, want = saved.scores(stems(query)), full.scores(stems(query))
        assert np.array_equal(got[order], want), query
        assert want.any() or "zorbulation" in query
    for flt in FILTERS:
        assert np.array_equal(saved.facets.mask(flt)[order], full.facets.mask(flt)), flt
    return saved


class Reads:
    """What the keyword index save reads from Chroma: pages (offset) and chunk ids. Unless
    `hands`, the writer keeps nothing of what it wrote (`Index.written`), so every changed
    chunk is read back: the path of a writer in another process than the one that wrote."""

    def __init__(self, monkeypatch, hands: bool = False):
        if not hands:
            monkeypatch.setattr(qa.index, "WRITTEN_KEPT", 0)
        self.paged = 0
        self.ids: list[str] = []
        self.full_builds = 0
        call = Index.call
        build = KeywordIndex.build_in_memory

        def spy_call(index, fn, *args, **kwargs):
            if getattr(fn, "__name__", "") == "get":
                self.paged += "offset" in kwargs
                self.ids += kwargs.get("ids") or []
            return call(index, fn, *args, **kwargs)

        def spy_build(kw, *args, **kwargs):
            self.full_builds += 1
            return build(kw, *args, **kwargs)

        monkeypatch.setattr(Index, "call", spy_call)
        monkeypatch.setattr(KeywordIndex, "build_in_memory", spy_build)

    def reset(self) -> None:
        self.paged, self.ids, self.full_builds = 0, [], 0


def ids_of(papers) -> list[str]:
    return sorted(c.id for p in papers for c in chunks_of(p))


def rewritten(paper, word: str):
    """The paper with another abstract (same key: its chunks are re-written in place)."""
    return dataclasses.replace(paper, abstract=f"We study {word}. " + paper.abstract[:300])


@pytest.mark.parametrize("block", [None, 7])
def test_the_matrix_from_the_flat_arrays_equals_bm25s_own_index(block, monkeypatch):
    if block:  # terms counted a few chunks at a time: still the same matrix
        monkeypatch.setattr(keyword_index, "MATRIX_BLOCK", block)
    papers = seed_papers()[:80]
    chunks = [c for p in papers for c in chunks_of(p)]
    rows = Rows.encode(
        [c.text for c in chunks], [c.metadata for c in chunks], [c.id for c in chunks], []
    )
    model, _ = bm25_matrix(rows)
    ref = bm25s.BM25()
    lists = [
        rows.tokens[a:b].tolist() for a, b in zip(rows.offsets[:-1], rows.offsets[1:], strict=True)
    ]
    vocab = {w: i for i, w in enumerate(rows.vocab)}
    ref.index(bm25s.tokenization.Tokenized(ids=lists, vocab=vocab), show_progress=False)
    for query in QUERIES[:3]:
        ids = [vocab[w] for w in stems(query) if w in vocab]
        assert np.array_equal(model.get_scores(ids), ref.get_scores(ids))
    for key in ("data", "indices", "indptr"):
        assert np.array_equal(model.scores[key], ref.scores[key])


def test_adds_rewrites_and_removals_update_the_saved_copy(index_mode, monkeypatch):
    papers = seed_papers()[:40]
    build_index(papers[:30], progress=False)
    assert_same_as_full_build()
    reads = Reads(monkeypatch)

    build_index(papers[30:], progress=False)  # +10 papers
    assert (reads.full_builds, reads.paged) == (0, 0)
    assert sorted(reads.ids) == ids_of(papers[30:])  # only the new chunks were read back
    assert_same_as_full_build()

    reads.reset()
    long = next(p for p in papers if len(chunks_of(p)) > 1)
    short = next(p for p in papers if len(chunks_of(p)) == 1)
    grown = dataclasses.replace(short, abstract=f"zorbulation {long.abstract} {long.abstract}")
    changed = [rewritten(long, "quintaflex"), grown]
    report = build_index(changed, progress=False)
    assert report.updated == 2
    assert (reads.full_builds, reads.paged) == (0, 0)
    assert sorted(reads.ids) == ids_of(changed)
    assert_same_as_full_build()

    reads.reset()
    gone, _, _ = remove_papers([papers[2].key, papers[5].key])
    assert len(gone) == 2
    assert (reads.full_builds, reads.paged, reads.ids) == (0, 0, [])
    saved = assert_same_as_full_build()
    assert not any(cid.startswith((papers[2].key + "#", papers[5].key + "#")) for cid in saved.ids)


def test_a_streamed_ingest_updates_once_from_the_copy_before_it(index_mode, tmp_path, monkeypatch):
    """Many `build_index` calls, one keyword-index save after the last: the delta since the
    saved copy spans every call (a paper re-written by an earlier unsaved write, then a
    streamed file in four batches)."""
    papers = seed_papers()[:45]
    build_index(papers[:15], progress=False)
    before = set(open_index().collection.get(include=[])["ids"])
    reads = Reads(monkeypatch)
    changed = rewritten(papers[0], "zorbulation")
    build_index([changed], progress=False, keyword_index=False)  # like a stream's first batch
    path = write_jsonl(tmp_path / "more.jsonl", papers[15:])
    report = ingest_stream(path, batch=8, progress=False)
    assert report.batches == 4 and report.ingest.added == 30
    assert (reads.full_builds, reads.paged) == (0, 0)
    added = set(open_index().collection.get(include=[])["ids"]) - before
    assert sorted(reads.ids) == sorted(added | set(ids_of([changed])))
    assert_same_as_full_build()


def test_the_writer_indexes_what_it_wrote_without_reading_it_back(index_mode, monkeypatch):
    """A writer keeps the chunks it upserted since its last save (`Index.written`): its first
    save on a new store and its updates read nothing back from Chroma, and equal a full build
    (also across a streamed ingest's calls and a re-written paper's shorter tail)."""
    papers = seed_papers()[:40]
    reads = Reads(monkeypatch, hands=True)
    build_index(papers[:25], progress=False)
    assert (reads.full_builds, reads.paged, reads.ids) == (0, 0, [])
    assert_same_as_full_build()
    reads.reset()
    long = next(p for p in papers[:25] if len(chunks_of(p)) > 1)
    shorter = dataclasses.replace(long, abstract="We study quintaflex.")
    build_index([shorter, *papers[25:32]], progress=False, keyword_index=False)
    build_index(papers[32:], progress=False)
    assert (reads.full_builds, reads.paged, reads.ids) == (0, 0, [])
    saved = assert_same_as_full_build()
    assert f"{long.key}#1" not in saved.ids
    assert open_index().written == {}  # dropped once saved


def test_what_the_writer_cannot_keep_in_hand_is_read_back(index_mode, monkeypatch):
    """Past WRITTEN_KEPT chunks a writer stops keeping them: the first save is then a full
    build, an update reads back only the chunks it lacks; both equal a full build."""
    papers = seed_papers()[:40]
    reads = Reads(monkeypatch, hands=True)
    kept = len(ids_of(papers[25:32]))
    monkeypatch.setattr(qa.index, "WRITTEN_KEPT", kept)
    build_index(papers[:25], progress=False)  # more than it keeps
    assert reads.full_builds == 1
    assert_same_as_full_build()
    reads.reset()
    build_index(papers[25:32], progress=False, keyword_index=False)  # kept
    build_index(papers[32:], progress=False)  # past the bound: read back
    assert (reads.full_builds, reads.paged) == (0, 0)
    assert sorted(reads.ids) == ids_of(papers[32:])
    assert_same_as_full_build()


@pytest.mark.parametrize(
    "what", ["rebuild", "chunk size", "reconciled", "unreadable copy", "no copy"]
)
def test_a_copy_that_cannot_be_trusted_means_a_full_build(what, monkeypatch):
    papers = seed_papers()[:20]
    build_index(papers[:15], progress=False)
    index = open_index()
    cache = keyword_index._cache_dir(index, *index.snapshot())
    if what == "chunk size":
        monkeypatch.setenv("QA_CHUNK_TOKENS", "128")
        reset_qa_caches()
    elif what == "reconciled":  # chunks deleted behind the record's back: read again
        victim = next(p for p in papers[:15] if len(chunks_of(p)) > 1)
        index.collection.delete(ids=[f"{victim.key}#1"])
    elif what == "unreadable copy":
        (cache / keyword_index.ROWS_FILE).write_bytes(b"cut short")
    elif what == "no copy":
        (cache / keyword_index.ROWS_FILE).unlink()
    reads = Reads(monkeypatch)
    build_index(papers[15:], progress=False, rebuild=what == "rebuild")
    assert reads.full_builds == 1
    assert_same_as_full_build()
    reads.reset()
    build_index([rewritten(papers[16], "zorbulation")], progress=False)
    assert reads.full_builds == 0 and reads.paged == 0  # the next save updates again
    assert_same_as_full_build()


def test_a_streamed_ingest_killed_between_calls_ends_with_a_correct_index(index_mode, tmp_path):
    papers = seed_papers()[300:340]
    build_index(papers[:6], progress=False)
    path = write_jsonl(tmp_path / "papers.jsonl", papers[6:])
    empty_cache = tmp_path / "no-vector-cache"
    empty_cache.mkdir()
    before = open_index().count()
    total = before + len(ids_of(papers[6:]))
    child = subprocess.Popen(
        [sys.executable, "-c", STREAMED_INGEST, str(empty_cache), str(path)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, _ = kill_when(child, lambda: before + 20 < _committed_chunks() < total, timeout=240)
    assert "done" not in out
    reset_qa_caches()
    ingest_stream(path, batch=12, progress=False)
    saved = assert_same_as_full_build()
    assert set(ids_of(papers[:6] + papers[6:])) <= set(saved.ids)  # every paper, once


def test_the_saved_rows_describe_the_saved_index(index_mode):
    """What an update starts from: per chunk, its tokens (the stems of its text) and paper."""
    build_index(seed_papers()[:8], progress=False)
    index = open_index()
    cache = keyword_index._cache_dir(index, *index.snapshot())
    rows = Rows.load(cache / keyword_index.ROWS_FILE)
    ids = json.loads((cache / "qa.json").read_text())["ids"]
    got = index.collection.get(ids=ids, include=["documents", "metadatas"])
    text = dict(zip(got["ids"], got["documents"], strict=True))
    meta = dict(zip(got["ids"], got["metadatas"], strict=True))
    for row, cid in enumerate(ids):
        tokens = rows.tokens[rows.offsets[row] : rows.offsets[row + 1]]
        assert [rows.vocab[t] for t in tokens] == stems(text[cid])
        assert rows.keys[rows.paper[row]] == meta[cid]["key"]
        assert rows.hashes[rows.paper[row]] == meta[cid]["paper_hash"]


def saved_files(index: Index) -> dict[str, object]:
    """The saved copy of the committed state, file by file (.npz files as their arrays: the
    zip members carry the time they were written)."""
    cache = keyword_index._cache_dir(index, *index.snapshot())
    files: dict[str, object] = {}
    for path in sorted(cache.iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as data:
                files[path.name] = {name: data[name] for name in data.files}
        else:
            files[path.name] = path.read_bytes()
    return files


def test_a_full_build_reads_a_page_at_a_time_and_equals_the_one_page_build(index_mode, monkeypatch):
    kinds = (["cs.CL"], ["cs.LG", "cs.CL"], ["math.ST"])
    papers = [
        dataclasses.replace(p, categories=kinds[i % 3], authors=[f"A. Writer{i % 4}", "B. Both"])
        for i, p in enumerate(seed_papers()[:40])
    ]  # keys many chunks share, so postings cross pages
    build_index(papers, progress=False)
    index = open_index()
    revision, count = index.snapshot()
    whole = KeywordIndex()
    whole.build(index, revision, count)  # no saved copy to update: a full build, one page
    whole_files = saved_files(index)
    pages: list[int] = []
    call = Index.call

    def spy_call(index, fn, *args, **kwargs):
        got = call(index, fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "get":
            pages.append(len(got["ids"]))
        return got

    monkeypatch.setattr(Index, "call", spy_call)
    monkeypatch.setattr(keyword_index, "PAGE", 7)
    paged = KeywordIndex()
    paged.build(index, revision, count)
    assert count > 40 and sum(pages) == count
    assert max(pages) == 7 and len(pages) == -(-count // 7)  # page by page, never more

    assert paged.ids == whole.ids and paged.idf == whole.idf
    for key in ("data", "indices", "indptr"):
        assert np.array_equal(paged.model.scores[key], whole.model.scores[key])
    for name in ("tokens", "offsets", "paper"):
        assert np.array_equal(getattr(paged.rows, name), getattr(whole.rows, name))
    assert (paged.rows.vocab, paged.rows.keys, paged.rows.hashes) == (
        whole.rows.vocab,
        whole.rows.keys,
        whole.rows.hashes,
    )
    assert np.array_equal(paged.facets.published, whole.facets.published)
    assert list(paged.facets.postings) == list(whole.facets.postings)
    assert any(len(rows) > 7 for rows in whole.facets.postings.values())  # across pages
    for name, rows in whole.facets.postings.items():
        assert np.array_equal(paged.facets.postings[name], rows), name
    files = saved_files(index)
    assert files.keys() == whole_files.keys() and "rows.npz" in files
    for name, content in whole_files.items():
        if isinstance(content, bytes):
            assert files[name] == content, name
        else:
            assert content.keys() == files[name].keys(), name
            for key, values in content.items():
                assert np.array_equal(files[name][key], values), (name, key)
