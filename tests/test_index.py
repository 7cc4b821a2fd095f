"""qa.index: chunking, idempotent ingest, updates, duplicates, a changed embedding model, and the
faults of issue 6 (#8 duplicate file, #11 Chroma server down, #12 ingest killed mid-way,
#13 index deleted or corrupted, #14 embedding model changed) — embedded and against a real
`chroma run` server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

pytest.register_assert_rewrite("chroma_server")

from chroma_server import free_port, reset_qa_caches, use_server  # noqa: E402
from processes import kill_when  # noqa: E402

import qa  # noqa: E402
import qa.index as qindex  # noqa: E402
import qa.store  # noqa: E402
from qa.config import get_settings  # noqa: E402
from qa.corpus import Paper  # noqa: E402
from qa.embeddings import SPECIAL_TOKENS, get_embeddings, token_length  # noqa: E402
from qa.index import (  # noqa: E402
    IndexUnavailable,
    build_index,
    chunk_paper,
    ensure_index,
    forget_indexes,
    open_index,
)

pytest_plugins = ["chroma_server"]

ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def _seed_papers() -> tuple[Paper, ...]:
    return tuple(qa.load_corpus(ROOT / "seeds"))


def seed_papers() -> list[Paper]:
    """The bundled corpus, as fresh copies a test may change."""
    return [dataclasses.replace(p, sources=list(p.sources)) for p in _seed_papers()]


def small_corpus(n: int = 20) -> list[Paper]:
    """`n` seed papers, several of them longer than one chunk."""
    papers = seed_papers()
    multi = [p for p in papers[:40] if len(chunks_of(p)) > 1][: n // 4]
    rest = [p for p in papers if p not in multi][: n - len(multi)]
    return multi + rest


_CHUNKS: dict[tuple, list] = {}


def chunks_of(paper: Paper, size: int = 256) -> list:
    """chunk_paper, memoised (tokenizing every seed abstract takes seconds)."""
    key = (paper.key, paper.arxiv_id, paper.title, paper.abstract, paper.comment, size)
    if key not in _CHUNKS:
        _CHUNKS[key] = chunk_paper(paper, size)
    return _CHUNKS[key]


def expected_ids(papers: list[Paper]) -> set[str]:
    size = get_settings().chunk_tokens
    return {c.id for p in papers for c in chunks_of(p, size)}


def stored_ids(index=None) -> set[str]:
    index = index or open_index()
    return set(index.collection.get(include=[])["ids"])


def chunk_ids_of(key: str) -> list[str]:
    got = open_index().collection.get(where={"key": key}, include=[])
    return sorted(got["ids"], key=lambda cid: int(cid.rsplit("#", 1)[1]))


# ---------------------------------------------------------------- chunking


def _covered(abstract: str, pieces: list[str]) -> bool:
    """Every non-space character of the abstract lies inside some piece, pieces in order."""
    covered = [c.isspace() for c in abstract]
    start = 0
    for piece in pieces:
        at = abstract.find(piece, start)
        if at < 0:
            return False
        covered[at : at + len(piece)] = [True] * len(piece)
        start = at + 1
    return all(covered)


def check_chunks(paper: Paper, max_tokens: int) -> None:
    chunks = chunks_of(paper, max_tokens)
    assert chunks
    assert [c.id for c in chunks] == [f"{paper.key}#{i}" for i in range(len(chunks))]
    pieces = []
    for i, chunk in enumerate(chunks):
        # fits the window with room for [CLS]/[SEP], so the model embeds it whole
        assert token_length(chunk.text) <= max_tokens - SPECIAL_TOKENS, chunk.id
        if paper.title:
            head, _, piece = chunk.text.partition("\n")
            assert paper.title.startswith(head) and head, chunk.id  # title prepended
        else:
            piece = chunk.text
        assert piece.strip()
        pieces.append(piece)
        meta = chunk.metadata
        assert (meta["key"], meta["chunk"], meta["n_chunks"]) == (paper.key, i, len(chunks))
        assert meta["arxiv_id"] == (paper.arxiv_id or "")
        assert ("abstract" in meta) == (i == 0)  # the full record lives on the first chunk
    assert _covered(paper.abstract, pieces), paper.key  # the whole abstract is in the chunks
    assert chunks[0].metadata["abstract"] == paper.abstract


def test_seed_chunks_fit_cover_and_are_named():
    size = get_settings().chunk_tokens
    papers = seed_papers()
    for paper in papers:
        check_chunks(paper, size)
        assert chunks_of(paper, size)[0].text.startswith(paper.title + "\n")
    # the bundled abstracts do need splitting (63% are longer than the window)
    assert sum(len(chunks_of(p, size)) > 1 for p in papers) > 100


WORDS = ["graph", "neural", "network", "message", "passing", "molecules", "property"]


def numbered(template: str, n: int, sep: str = " ") -> str:
    """`n` numbered copies of a phrase: long, but not periodic (so coverage is checkable)."""
    return sep.join(template.format(i=i) for i in range(n))


def unbroken(n: int) -> str:
    """One "word" of `n` characters with no repeats to speak of."""
    out, block = "", b"seed"
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block.hex()
    return out[:n]


@pytest.mark.parametrize(
    "title,abstract",
    [
        ("Short", "One sentence only."),
        ("", numbered("graph{i} neural network message passing", 160)),  # no title, no stops
        ("A " + " ".join(WORDS * 4), numbered("Sentence {i} is about graphs.", 120)),
        (" ".join(WORDS * 60), numbered("A mis-parsed title, paragraph {i}.", 60)),
        ("Unbroken", unbroken(5000)),  # one enormous "word"
        ("图神经网络", numbered("图神经网络在分子性质预测中的应用{i}。", 150, sep="")),
        ("Mixed", numbered("Résumé {i} of naïve Bayes — 10⁻³ error; see Fig. 2 (α=0.5).", 50)),
    ],
    ids=["tiny", "no-title", "long-title", "freak-title", "unbroken", "cjk", "unicode"],
)
def test_edge_case_chunks_fit_and_cover(title, abstract):
    paper = Paper(key="edge", arxiv_id=None, title=title, abstract=abstract)
    for size in (256, 128):
        check_chunks(paper, size)


def test_chunking_is_deterministic():
    papers = seed_papers()[:30]
    first = [chunk_paper(p, 256) for p in papers]
    second = [chunk_paper(dataclasses.replace(p), 256) for p in papers]
    assert first == second


# ---------------------------------------------------------------- ingest (both modes)


def test_second_build_adds_nothing(index_mode):
    papers = small_corpus()
    first = build_index(papers, progress=False)
    ids = expected_ids(papers)
    assert (first.added, first.updated, first.chunks_written) == (len(papers), 0, len(ids))
    assert first.vectors_computed == 0  # seed texts come from the shipped cache
    index = open_index()
    assert index.count() == len(ids)
    assert stored_ids(index) == ids
    revision = index.revision()

    second = build_index(papers, progress=False)
    assert (second.added, second.updated, second.unchanged) == (0, 0, len(papers))
    assert second.chunks_written == 0 and second.vectors_computed == 0
    assert index.count() == len(ids)
    assert index.revision() == revision  # nothing changed, so the keyword index stays valid

    # a new process (fresh handles) sees the same thing
    reset_qa_caches()
    third = build_index(papers, progress=False)
    assert third.added == 0 and third.chunks_written == 0
    assert open_index().count() == len(ids)


def _cached_chunk_ids(papers: list[Paper]) -> set[str]:
    model_id = get_embeddings().model_id
    cache = qindex.CachedEmbeddings(get_embeddings(), model_id)
    return {
        c.id
        for p in papers
        for c in chunks_of(p)
        if qindex._text_hash(model_id, c.text) in cache._cache
    }


def test_full_seeds_build_is_served_from_the_vector_cache(seeded_factory):
    seeded = seeded_factory("embedded")
    report = seeded.report
    assert report.added == report.papers == len(seeded.papers) > 500
    stale = sorted(expected_ids(seeded.papers) - _cached_chunk_ids(seeded.papers))
    assert report.vectors_computed == 0, (
        f"seeds/vectors/ is out of date with the corpus for {stale[:10]}: regenerate it with "
        "qa.index.export_vector_cache(open_index()) after a full build"
    )
    assert report.vectors_from_cache == report.chunks_written == len(expected_ids(seeded.papers))
    assert report.seconds < 60


def test_changed_paper_is_updated_and_stale_chunks_removed(index_mode):
    papers = small_corpus()
    build_index(papers, progress=False)
    index = open_index()
    before = index.count()
    long = next(p for p in papers if len(chunks_of(p)) >= 2)
    n_old = len(chunks_of(long))
    short = next(p for p in papers if len(chunks_of(p)) == 1)
    revision = index.revision()

    shrunk = dataclasses.replace(long, abstract=long.abstract.split(". ")[0] + ".")
    grown = dataclasses.replace(short, abstract=" ".join([long.abstract] * 2))
    n_grown = len(chunks_of(grown))
    assert n_grown > 1
    report = build_index([shrunk, grown], progress=False)

    assert (report.added, report.updated) == (0, 2)
    assert chunk_ids_of(long.key) == [f"{long.key}#0"]  # stale #1.. removed
    assert chunk_ids_of(short.key) == [f"{short.key}#{i}" for i in range(n_grown)]
    assert index.count() == before - (n_old - 1) + (n_grown - 1)
    doc = index.collection.get(ids=[f"{long.key}#0"], include=["documents", "metadatas"])
    assert doc["documents"][0] == f"{long.title}\n{shrunk.abstract}"
    assert doc["metadatas"][0]["abstract"] == shrunk.abstract
    assert index.papers([long.key])[long.key].abstract == shrunk.abstract
    assert index.revision() > revision

    # and re-ingesting the original text restores it exactly
    build_index([long, short], progress=False)
    assert stored_ids(index) == expected_ids(papers)


def test_comment_change_is_an_update(index_mode):
    papers = small_corpus(5)
    build_index(papers, progress=False)
    changed = dataclasses.replace(papers[0], comment="Accepted at a new venue")
    report = build_index([changed], progress=False)
    assert report.updated == 1
    assert open_index().papers([changed.key])[changed.key].comment == "Accepted at a new venue"


def test_duplicate_file_duplicates_nothing(index_mode, tmp_path):
    """#8: ingesting a copy of an already-ingested file adds nothing and re-embeds nothing."""
    papers = small_corpus()
    original = tmp_path / "batch.jsonl"
    rows = [
        {"arxiv_id": p.arxiv_id, "title": p.title, "abstract": p.abstract, "comment": p.comment}
        for p in papers
    ]
    original.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    copy = tmp_path / "batch (copy).jsonl"
    copy.write_bytes(original.read_bytes())

    first = build_index(qa.load_corpus(original), progress=False)
    index = open_index()
    count, revision = index.count(), index.revision()
    assert first.added == len(papers)

    again = build_index(qa.load_corpus(copy), progress=False)
    assert (again.added, again.updated, again.chunks_written) == (0, 0, 0)
    assert again.vectors_computed == 0
    assert index.count() == count
    # the copy's name is recorded next to the original's
    stored = index.papers([papers[0].key])[papers[0].key]
    assert stored.sources == [original.name, copy.name]
    assert index.revision() > revision

    both = build_index(qa.load_corpus([original, copy]), progress=False)
    assert (both.added, both.updated, both.chunks_written) == (0, 0, 0)
    assert index.count() == count
    ids = index.collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == len(expected_ids(papers))


def test_same_paper_twice_in_one_call_is_written_once(index_mode):
    papers = small_corpus(4)
    twice = papers + [dataclasses.replace(p) for p in papers]
    report = build_index(twice, progress=False)
    assert open_index().count() == len(expected_ids(papers))
    assert report.chunks_written == len(expected_ids(papers))


def test_prune_removes_papers_no_longer_given(index_mode):
    papers = small_corpus(10)
    build_index(papers, progress=False)
    report = build_index(papers[:6], prune=True, progress=False)
    assert report.removed == 4
    assert stored_ids() == expected_ids(papers[:6])


# ---------------------------------------------------------------- #14 embedding model changed


class HashEmbeddings(Embeddings):
    """A tiny deterministic test double: another "model" with another dimension."""

    model_id = "test-hash:8"
    dimension = 8

    def _vec(self, text: str) -> list[float]:
        raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[:32], dtype=np.uint8)
        v = raw[: self.dimension].astype(np.float32) - 127.5
        return (v / np.linalg.norm(v)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


def _build_with_fake(monkeypatch, papers: list[Paper]) -> None:
    with monkeypatch.context() as m:
        m.setattr(qindex, "get_embeddings", lambda *a, **k: HashEmbeddings())
        report = build_index(papers, progress=False)
        assert report.vectors_computed == len(expected_ids(papers))
        assert open_index().built_with() == HashEmbeddings.model_id
    reset_qa_caches()  # a "new process" that uses the real model


def _assert_all_real(index, ids: set[str]) -> None:
    real = get_embeddings()
    assert index.built_with() == real.model_id
    got = index.collection.get(include=["embeddings", "documents"])
    assert set(got["ids"]) == ids
    vectors = np.asarray(got["embeddings"])
    assert vectors.shape == (len(ids), 384)  # no 8-dim vector left behind
    # spot-check: the stored vectors are the real model's
    probe = got["documents"][:3]
    np.testing.assert_allclose(vectors[:3], np.asarray(real.embed_documents(probe)), atol=1e-4)


def test_model_change_is_refused_until_rebuild_which_keeps_every_paper(index_mode, monkeypatch):
    """Issue 9: a plain ingest with another model records the papers but never mixes or
    drops vectors; `--rebuild` re-embeds the whole record (old and new papers)."""
    old, new = small_corpus(12)[:8], small_corpus(12)[8:]
    _build_with_fake(monkeypatch, old)

    with pytest.raises(IndexUnavailable, match=r"qa ingest --rebuild") as err:
        build_index(new, progress=False)
    assert HashEmbeddings.model_id in str(err.value)
    store = qa.store.open_store()
    assert {p.key for p in store.papers()} == {p.key for p in old + new}  # recorded first
    with monkeypatch.context() as m:  # the old index is untouched (8-dim, old papers only)
        m.setattr(qindex, "get_embeddings", lambda *a, **k: HashEmbeddings())
        reset_qa_caches()
        assert stored_ids() == expected_ids(old)
    reset_qa_caches()

    report = build_index([], rebuild=True, progress=False)
    assert report.rebuilt and "embedding model changed" in report.rebuilt
    assert HashEmbeddings.model_id in report.rebuilt
    index = open_index()
    # nothing mixed, and nothing lost: the old papers were re-embedded with the new model
    _assert_all_real(index, expected_ids(old + new))

    # a dense query now works with the real model
    hits = index.collection.query(
        query_embeddings=[get_embeddings().embed_query(old[0].title)], n_results=3
    )
    assert hits["ids"][0][0].startswith(old[0].key + "#")


def test_model_change_on_read_is_a_message_and_touches_nothing(index_mode, monkeypatch):
    """ensure_index/qa.retrieve (what ask and the UI call) never re-embed: they say how."""
    papers = small_corpus(6)
    _build_with_fake(monkeypatch, papers)
    for call in (lambda: ensure_index(progress=False), lambda: qa.retrieve(papers[2].title)):
        with pytest.raises(IndexUnavailable) as err:
            call()
        assert "qa ingest --rebuild" in str(err.value)
        assert HashEmbeddings.model_id in str(err.value)
    with monkeypatch.context() as m:
        m.setattr(qindex, "get_embeddings", lambda *a, **k: HashEmbeddings())
        reset_qa_caches()
        index = open_index()
        assert index.built_with() == HashEmbeddings.model_id
        assert stored_ids(index) == expected_ids(papers)
    reset_qa_caches()
    build_index([], rebuild=True, progress=False)
    _assert_all_real(open_index(), expected_ids(papers))
    hits = qa.retrieve(papers[2].title, k=3)
    assert hits and hits[0].paper.key == papers[2].key


# ---------------------------------------------------------------- #12 ingest killed mid-way

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import qa, qa.index, qa.ingest
    qa.index.VECTOR_CACHE_DIR = Path(sys.argv[1])  # empty: every vector is computed
    qa.ingest.WRITE_BATCH = 8                      # many small upserts to interrupt
    keys = set(json.loads(Path(sys.argv[2]).read_text()))
    papers = [p for p in qa.load_corpus() if p.key in keys]
    print("start", len(papers), flush=True)
    qa.build_index(papers, progress=False)
    print("done", flush=True)
    """
)


def _sqlite_count(db: Path) -> int:
    """Chunks committed to an embedded store, read without Chroma (0 while locked/absent)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            return conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    except sqlite3.Error:
        return 0


def _server_counter(url: str, collection: str):
    """A cheap poll of a server collection's count (0 until the collection exists)."""
    import chromadb

    host, port = url.rsplit("//", 1)[1].split(":")
    client = chromadb.HttpClient(host=host, port=int(port))

    def count() -> int:
        try:
            return client.get_collection(collection).count()
        except Exception:
            return 0

    return count


def test_killed_ingest_resumes_without_duplicates_or_gaps(index_mode, tmp_path):
    papers = seed_papers()[200:260]
    ids = expected_ids(papers)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([p.key for p in papers]))
    empty_cache = tmp_path / "no-vector-cache"
    empty_cache.mkdir()
    settings = get_settings()
    if index_mode == "embedded":
        count = lambda: _sqlite_count(settings.persist_dir / "chroma.sqlite3")  # noqa: E731
    else:
        count = _server_counter(settings.chroma_url, settings.collection)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(empty_cache), str(keys_file)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []

    def part_written() -> bool:
        seen.append(count())
        return 0 < seen[-1] < len(ids)

    out, _ = kill_when(child, part_written, timeout=120, poll=0.02)
    assert "done" not in out
    assert 0 < seen[-1] < len(ids)

    # re-run (in this process, as `qa ingest` would be): it completes what was missing
    # (with the shipped vector cache back on, so the re-run is quick)
    reset_qa_caches()
    report = build_index(papers, progress=False)
    assert report.unchanged >= 1  # papers committed before the kill are not redone
    assert report.added + report.updated + report.unchanged == len(papers)
    assert report.chunks_written <= len(ids) - seen[-1]

    index = open_index()
    assert index.count() == len(ids)
    got = index.collection.get(include=["documents", "metadatas"])
    assert len(got["ids"]) == len(set(got["ids"]))
    assert set(got["ids"]) == ids  # every paper's chunks 0..n-1, nothing else
    by_id = dict(zip(got["ids"], got["documents"], strict=True))
    for paper in papers:
        for chunk in chunks_of(paper, settings.chunk_tokens):
            assert by_id[chunk.id] == chunk.text
    # the vector index holds every chunk too (not only the metadata store)
    probe = get_embeddings().embed_query("a question")
    nearest = index.collection.query(query_embeddings=[probe], n_results=len(ids))
    assert set(nearest["ids"][0]) == ids
    # and a third run has nothing left to do
    assert build_index(papers, progress=False).chunks_written == 0


# ---------------------------------------------------------------- #13 index deleted / corrupted


def _damage(path: Path, how: str) -> None:
    db = path / "chroma.sqlite3"
    if how == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    elif how == "truncated":
        with open(db, "r+b") as f:
            f.truncate(8192)
    elif how == "db-deleted":
        db.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize("how", ["garbage", "truncated", "db-deleted"])
@pytest.mark.parametrize("while_open", [False, True], ids=["fresh-process", "while-open"])
def test_damaged_index_says_rebuild_and_rebuild_restores_it(how, while_open):
    papers = small_corpus(10)
    build_index(papers, progress=False)
    settings = get_settings()
    if not while_open:
        forget_indexes()
    _damage(settings.persist_dir, how)

    if not (while_open and how == "db-deleted"):
        # (a process that still holds a deleted database keeps reading it; that is fine)
        with pytest.raises(IndexUnavailable) as err:
            open_index().count()
        message = str(err.value)
        assert "qa ingest --rebuild" in message
        assert str(settings.persist_dir) in message
        with pytest.raises(IndexUnavailable):
            build_index(papers, progress=False)  # no silent overwrite without --rebuild
        with pytest.raises(IndexUnavailable):
            qa.retrieve("speech backdoor")

    report = build_index(papers, rebuild=True, progress=False)
    assert report.rebuilt
    assert report.added == len(papers)
    assert open_index().count() == len(expected_ids(papers))
    assert stored_ids() == expected_ids(papers)
    assert qa.retrieve(papers[0].title, k=1)[0].paper.key == papers[0].key
    # and a fresh process opens it normally
    forget_indexes()
    assert open_index().count() == len(expected_ids(papers))


def test_rebuild_keeps_the_resolve_cache(tmp_path):
    build_index(small_corpus(3), progress=False)
    settings = get_settings()
    cache = settings.resolve_cache_path
    cache.write_text("key\tarxiv_id\n")
    forget_indexes()
    _damage(settings.persist_dir, "garbage")
    build_index(small_corpus(3), rebuild=True, progress=False)
    assert cache.read_text() == "key\tarxiv_id\n"


def test_deleted_index_folder_is_rebuilt_from_the_seeds_on_first_use(monkeypatch, tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    papers = small_corpus(3)
    rows = [{"arxiv_id": p.arxiv_id, "title": p.title, "abstract": p.abstract} for p in papers]
    (seeds / "few.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("QA_SEEDS_DIR", str(seeds))
    get_settings.cache_clear()
    assert not get_settings().persist_dir.exists()
    hits = qa.retrieve(papers[1].title, k=1)
    assert hits[0].paper.key == papers[1].key


# ---------------------------------------------------------------- #11 Chroma server down


def test_server_down_at_start_names_the_url(monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    use_server(monkeypatch, url)
    for call in (open_index, lambda: build_index(small_corpus(2), progress=False)):
        with pytest.raises(IndexUnavailable) as err:
            call()
        assert url in str(err.value)
        assert f"chroma run --path <dir> --host 127.0.0.1 --port {port}" in str(err.value)
    with pytest.raises(IndexUnavailable) as err:
        qa.retrieve("speech backdoor")
    assert url in str(err.value)


def test_bad_server_url_is_explained(monkeypatch):
    use_server(monkeypatch, "localhost:8000")
    with pytest.raises(IndexUnavailable, match="not a URL"):
        open_index()


@pytest.mark.server
def test_server_going_down_mid_session(fresh_chroma_server, monkeypatch):
    server = fresh_chroma_server
    use_server(monkeypatch, server.url)
    papers = small_corpus(6)
    build_index(papers, progress=False)
    assert qa.retrieve(papers[0].title, k=2)[0].paper.key == papers[0].key
    assert qa.retrieve(papers[2].title, k=2)[0].paper.key == papers[2].key
    _wait_for_chunks_in_memory()  # read from the second question on

    server.stop()
    for mode in ("hybrid", "dense"):
        with pytest.raises(IndexUnavailable) as err:
            qa.retrieve(papers[1].title, k=2, mode=mode)
        assert server.url in str(err.value)
        assert "chroma run" in str(err.value)
    # a small index's chunks are held in memory (QA_CHUNK_CACHE): keyword search needs no
    # Chroma call, so it still answers
    assert qa.retrieve(papers[1].title, k=2, mode="keyword")[0].paper.key == papers[1].key
    with pytest.raises(IndexUnavailable):
        build_index(papers, progress=False)

    # the server comes back (same port, same data): the same process recovers by itself
    server.start(port=server.port)
    assert qa.retrieve(papers[1].title, k=2)[0].paper.key == papers[1].key


def _record_state() -> tuple[int, dict, dict]:
    """What a write would change in the corpus record: generation, indexes, accounts."""
    store = qa.store.open_store()
    return store.generation(), store.actives(), store.sync_states()


@pytest.mark.server
def test_server_reached_by_another_url_is_the_same_index(fresh_chroma_server, monkeypatch):
    """The record names a `chroma run` server as first written; the same server restarted on
    another port, or reached as `localhost`, is recognised by its collections' ids: a reader
    there answers from the index and loads the saved keyword index, and writes nothing."""
    from qa.keyword_index import KeywordIndex

    server = fresh_chroma_server
    use_server(monkeypatch, server.url)
    collection = get_settings().collection
    papers = small_corpus(6)
    build_index(papers, progress=False)
    written = _record_state()
    target = open_index().target
    assert target == f"{server.url}|{collection}"

    server.stop()
    server.start(port=free_port())
    for url in (server.url, f"http://localhost:{server.port}"):
        use_server(monkeypatch, url, collection)
        assert qa.retrieve(papers[3].title, k=2)[0].paper.key == papers[3].key
        index = ensure_index(progress=False)
        assert index.target == target and index.count() == written[1][target].chunks
        assert KeywordIndex().load_saved(index, *index.snapshot())
        assert _record_state() == written  # a read: nothing built, reconciled or re-keyed

    build_index([*papers, *seed_papers()[300:302]], progress=False)  # a writer there too
    assert open_index().target == target
    generation, actives, _ = _record_state()
    assert generation > written[0] and list(actives) == [target]


@pytest.mark.server
def test_another_server_with_the_same_collection_name_is_another_index(
    fresh_chroma_server, tmp_path, monkeypatch
):
    """A second, empty server is not mistaken for the first (its collections' ids differ):
    its first build is its own, and the first server's index is left as it was."""
    from chroma_server import running_server

    use_server(monkeypatch, fresh_chroma_server.url)
    collection = get_settings().collection
    papers = small_corpus(6)
    build_index(papers, progress=False)
    first = open_index().target
    with running_server(tmp_path / "second") as second:
        use_server(monkeypatch, second.url, collection)
        ensure_index(progress=False)  # no index on this server: the one build a read may do
        actives = qa.store.open_store().actives()
        assert set(actives) == {first, f"{second.url}|{collection}"}
        assert actives[first].chunks == actives[f"{second.url}|{collection}"].chunks
        assert qa.retrieve(papers[2].title, k=2)[0].paper.key == papers[2].key
    use_server(monkeypatch, fresh_chroma_server.url, collection)
    assert open_index().target == first
    assert qa.retrieve(papers[4].title, k=2)[0].paper.key == papers[4].key


def test_a_collection_the_record_has_no_account_of_is_refused_by_a_read(
    index_mode, tmp_path, monkeypatch
):
    """A reader whose record does not know the collection (another record, or a server
    reached in a way the record cannot recognise) gets one line naming the fix, and writes
    nothing; `qa ingest` (a writer) takes the collection over without re-embedding it."""
    papers = small_corpus(6)
    build_index(papers, progress=False)
    chunks = open_index().count()
    monkeypatch.setenv("QA_CORPUS_PATH", str(tmp_path / "other.sqlite3"))
    reset_qa_caches()
    qa.store.open_store().add(papers)
    written = _record_state()
    with pytest.raises(IndexUnavailable) as err:
        ensure_index(progress=False)
    message = str(err.value)
    assert "\n" not in message and "QA_CORPUS_PATH" in message and "`qa ingest`" in message
    assert f"{chunks:,} chunks" in message
    assert _record_state() == written and open_index().count() == chunks

    report = build_index([], progress=False)  # the record as it is
    assert report.chunks_written == 0 and open_index().count() == chunks
    assert ensure_index(progress=False).count() == chunks
    assert qa.retrieve(papers[1].title, k=2)[0].paper.key == papers[1].key


def _wait_for_chunks_in_memory() -> None:
    from qa.retrieval import get_retriever

    retriever = get_retriever()
    deadline = time.monotonic() + 60
    while retriever.keyword_index.chunk_table() is None:
        assert time.monotonic() < deadline, "the index's chunks were never held in memory"
        time.sleep(0.05)


@pytest.mark.server
def test_hung_server_times_out_instead_of_hanging(fresh_chroma_server, monkeypatch):
    """A server that stops answering (SIGSTOP) mid-session: a clear error within the timeout,
    and the same process recovers once the server answers again."""
    monkeypatch.setenv("QA_CHROMA_TIMEOUT", "2")
    server = fresh_chroma_server
    use_server(monkeypatch, server.url)
    papers = small_corpus(4)
    build_index(papers, progress=False)
    assert qa.retrieve(papers[0].title, k=1)[0].paper.key == papers[0].key

    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(IndexUnavailable) as err:
            qa.retrieve(papers[1].title, k=1)
        assert time.monotonic() - started < 20
        assert server.url in str(err.value) and "QA_CHROMA_TIMEOUT=2 s" in str(err.value)
        reset_qa_caches()  # a new process: the first contact must not hang either
        with pytest.raises(IndexUnavailable, match="raise QA_CHROMA_TIMEOUT"):
            open_index()
    finally:
        server.resume()
    assert qa.retrieve(papers[1].title, k=1)[0].paper.key == papers[1].key


class Crash(BaseException):
    """Stands in for a kill at an exact point (BaseException: nothing may swallow it)."""


def test_crash_between_write_and_cleanup_is_repaired(monkeypatch):
    papers = small_corpus(6)
    build_index(papers, progress=False)
    long = next(p for p in papers if len(chunks_of(p)) >= 2)
    shrunk = dataclasses.replace(long, abstract=long.abstract.split(". ")[0] + ".")

    real_call = qindex.Index.call

    def crash_on_delete(self, fn, *args, **kwargs):
        if getattr(fn, "__name__", "") == "delete":
            raise Crash
        return real_call(self, fn, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(qindex.Index, "call", crash_on_delete)
        with pytest.raises(Crash):
            build_index([shrunk], progress=False)
    # new chunk #0 written, the old tail still there: the paper reads as unfinished
    assert len(chunk_ids_of(long.key)) == len(chunks_of(long))
    report = build_index([shrunk], progress=False)
    assert report.updated == 1
    assert chunk_ids_of(long.key) == [f"{long.key}#0"]


def test_crash_during_source_merge_is_repaired(monkeypatch, tmp_path):
    papers = small_corpus(4)
    build_index(papers, progress=False)
    copies = [dataclasses.replace(p, sources=["copy.txt"]) for p in papers]
    real_call = qindex.Index.call
    calls = {"update": 0}

    def crash_after_first_update(self, fn, *args, **kwargs):
        if getattr(fn, "__name__", "") == "update":
            calls["update"] += 1
            ids = kwargs["ids"]
            kwargs["ids"], kwargs["metadatas"] = ids[:1], kwargs["metadatas"][:1]
            real_call(self, fn, *args, **kwargs)  # only the very first chunk gets relabelled
            raise Crash
        return real_call(self, fn, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(qindex.Index, "call", crash_after_first_update)
        with pytest.raises(Crash):
            build_index(copies, progress=False)
    build_index(copies, progress=False)
    got = open_index().collection.get(include=["metadatas"])
    originals = {p.key: p.sources[0] for p in papers}
    for meta in got["metadatas"]:
        assert meta["sources"] == f"{originals[meta['key']]},copy.txt", meta["key"]
    assert open_index().count() == len(expected_ids(papers))


def test_fresh_clone_store_folder_with_only_gitkeep_builds(tmp_path, monkeypatch):
    """The repo ships vectorstore/.gitkeep: that folder is "no index yet", not a damaged one."""
    from qa.config import get_settings
    from qa.index import ensure_index, forget_indexes

    store = tmp_path / "fresh" / "vectorstore"
    store.mkdir(parents=True)
    (store / ".gitkeep").touch()
    monkeypatch.setenv("QA_PERSIST_DIR", str(store))
    get_settings.cache_clear()
    forget_indexes()
    index = ensure_index(get_settings(), progress=False)
    assert index.count() > 800
    assert (store / ".gitkeep").exists()


def test_next_batch_is_embedded_while_the_previous_one_is_written(monkeypatch):
    """Ingest overlaps the embedder with Chroma writes: the first upsert waits until the
    second batch's embedding has started (it never would in a one-step-at-a-time loop)."""
    import threading

    import chromadb

    import qa.ingest

    monkeypatch.setattr(qa.ingest, "WRITE_BATCH", 4)  # two papers per batch
    embedding_started = threading.Event()
    calls = []
    inner = qindex.CachedEmbeddings.embed_documents

    def embed(self, texts):
        calls.append(len(texts))
        if len(calls) >= 2:
            embedding_started.set()
        return inner(self, texts)

    overlapped = []
    upsert = chromadb.api.models.Collection.Collection.upsert

    def write(self, *args, **kwargs):
        if not overlapped:
            overlapped.append(embedding_started.wait(timeout=30))
        return upsert(self, *args, **kwargs)

    monkeypatch.setattr(qindex.CachedEmbeddings, "embed_documents", embed)
    monkeypatch.setattr(chromadb.api.models.Collection.Collection, "upsert", write)
    papers = small_corpus()[:6]
    report = build_index(papers, progress=False)
    assert overlapped == [True]
    assert len(calls) == 3 and report.added == 6
    assert stored_ids(open_index()) == expected_ids(papers)
