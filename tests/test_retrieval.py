"""qa.retrieve on the bundled seeds (indexed once per session, embedded and on a real Chroma
server): known papers first, each mode, Hit invariants, pinned arXiv IDs, and a keyword index
that follows what Chroma holds."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from functools import lru_cache

import pytest

pytest.register_assert_rewrite("chroma_server")

from chroma_server import reset_qa_caches  # noqa: E402

import qa  # noqa: E402
from qa.config import get_settings  # noqa: E402
from qa.corpus import Paper  # noqa: E402
from qa.index import build_index, open_index  # noqa: E402

pytest_plugins = ["chroma_server"]

MODES = ["hybrid", "keyword", "dense"]

# Questions in our own words (not the titles'), each about one bundled paper.
KNOWN = [
    ("Can converting someone's voice be used to plant hidden triggers in audio classifiers?",
     "2306.15875"),
    ("What is POMP?", "2304.04704"),
    ("Which method reduces the clean-accuracy loss of adversarial training by distilling "
     "from several teachers?", "2306.16170"),
    ("How can an agent grow a library of skills on its own with guidance from a language "
     "model?", "2310.10021"),
    ("speeding up active learning by not retraining from scratch each round", "2305.06408"),
]  # fmt: skip


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def seeded(request, seeded_factory, monkeypatch):
    """The full seeds index of this mode, selected through the environment."""
    index = seeded_factory(request.param)
    index.activate(monkeypatch)
    return index


@lru_cache(maxsize=1)
def _corpus() -> tuple[Paper, ...]:
    return tuple(qa.load_corpus())


def corpus() -> list[Paper]:
    """The bundled papers, as copies a test may change."""
    return [dataclasses.replace(p, sources=list(p.sources)) for p in _corpus()]


def _norm(text: str) -> str:
    return " ".join(text.split())


def check_hits(hits, k: int) -> None:
    """One Hit per paper, best first, each with a real snippet from its paper."""
    assert len(hits) <= k
    keys = [h.paper.key for h in hits]
    assert len(keys) == len(set(keys)), keys
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), scores
    for hit in hits:
        assert 0.0 <= hit.score <= 1.0
        assert hit.snippet.strip(), hit.paper.key
        assert hit.paper.abstract and hit.paper.title
        # the snippet is a slice of the paper's abstract (chunk minus the prepended title)
        assert _norm(hit.snippet) in _norm(hit.paper.abstract), (hit.paper.key, hit.snippet)


# ---------------------------------------------------------------- known papers


@pytest.mark.parametrize("question,key", KNOWN, ids=[k for _, k in KNOWN])
def test_known_paper_comes_first(seeded, question, key):
    hits = qa.retrieve(question, k=5)
    check_hits(hits, 5)
    assert hits[0].paper.key == key, [h.paper.key for h in hits]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_works(seeded, mode):
    # a paraphrase (no rare words shared): every channel finds it
    hits = qa.retrieve(KNOWN[0][0], k=5, mode=mode)
    check_hits(hits, 5)
    assert hits[0].paper.key == KNOWN[0][1]
    # a method name: keyword and hybrid rank it first; dense (which misses names) at least
    # returns well-formed hits
    hits = qa.retrieve("What is POMP?", k=5, mode=mode)
    check_hits(hits, 5)
    if mode != "dense":
        assert hits[0].paper.key == "2304.04704"
    assert len(hits) == 5


def test_modes_differ_and_hybrid_scores_blend(seeded):
    question = KNOWN[2][0]
    by_mode = {mode: qa.retrieve(question, k=5, mode=mode) for mode in MODES}
    assert all(hits[0].paper.key == KNOWN[2][1] for hits in by_mode.values())
    top = by_mode["hybrid"][0]
    assert top.dense > 0.3 and top.keyword > 0.5  # both channels scored the fused winner


def test_hit_paper_is_the_full_record(seeded):
    papers = {p.key: p for p in seeded.papers}
    for hit in qa.retrieve("backdoor attacks on neural networks", k=8):
        stored, original = hit.paper, papers[hit.paper.key]
        assert (stored.arxiv_id, stored.title, stored.abstract, stored.comment) == (
            original.arxiv_id,
            original.title,
            original.abstract,
            original.comment,
        )
        assert stored.url == f"https://arxiv.org/abs/{original.arxiv_id}"


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_k_papers_returned(seeded, k):
    hits = qa.retrieve("reinforcement learning with language models", k=k)
    check_hits(hits, k)
    assert len(hits) == k


def test_snippet_is_the_best_matching_chunk(seeded):
    # a multi-chunk paper, asked about a detail from its second chunk
    index = open_index()
    got = index.collection.get(where={"chunk": 1}, include=["documents", "metadatas"], limit=200)
    doc, meta = next(
        (d, m)
        for d, m in zip(got["documents"], got["metadatas"], strict=True)
        if m["n_chunks"] == 2
    )
    tail = _norm(doc.split("\n", 1)[1])
    question = " ".join(tail.split()[-25:])  # the chunk's own last words
    hits = qa.retrieve(question, k=3, mode="keyword")
    assert hits[0].paper.key == meta["key"]
    assert question in _norm(hits[0].snippet)


# ---------------------------------------------------------------- pinned IDs, odd questions


def test_arxiv_marker_pins_the_paper(seeded):
    # the ID names a speech paper; the words point elsewhere (vision prompts)
    hits = qa.retrieve("How does arXiv:2306.15875 relate to prompt pre-training for vision?", k=5)
    check_hits(hits, 5)
    assert hits[0].paper.key == "2306.15875" and hits[0].pinned
    assert any(h.paper.key == "2304.04704" for h in hits[1:])  # the words still count
    assert not any(h.pinned for h in hits[1:])


def test_two_markers_pin_both(seeded):
    hits = qa.retrieve("Compare arXiv:2306.15875 with arXiv:2304.04704", k=5)
    assert {h.paper.key for h in hits[:2]} == {"2306.15875", "2304.04704"}
    assert all(h.pinned for h in hits[:2])


@pytest.mark.parametrize(
    "question",
    [
        "What does 2306.15875 propose?",
        "Summarise https://arxiv.org/abs/2306.15875",
        "tell me about arxiv 2306.15875",
    ],
    ids=["bare", "url", "arxiv-space"],
)
def test_other_id_spellings_pin_the_paper(seeded, question):
    hits = qa.retrieve(question, k=3)
    assert hits[0].paper.key == "2306.15875" and hits[0].pinned


def test_unknown_pinned_id_does_not_cost_a_slot(seeded):
    hits = qa.retrieve("arXiv:9999.99999 backdoor attacks", k=3)
    assert all(h.paper.key != "9999.99999" for h in hits)
    assert len(hits) == 3


def test_unknown_pinned_id_is_ignored(seeded):
    hits = qa.retrieve("arXiv:9999.99999 speech backdoor via voice conversion", k=3)
    check_hits(hits, 3)
    assert hits and hits[0].paper.key == "2306.15875" and not hits[0].pinned


@pytest.mark.parametrize("question", ["", "   ", "\n\t \u00a0"], ids=["empty", "spaces", "ws"])
@pytest.mark.parametrize("mode", MODES)
def test_empty_question_returns_nothing(seeded, question, mode):
    assert qa.retrieve(question, k=5, mode=mode) == []


@pytest.mark.parametrize(
    "question",
    ["\x00 speech backdoor \x07 voice conversion", "音声 speech backdoor 変換", "the of and"],
    ids=["control-chars", "mixed-script", "stopwords-only"],
)
@pytest.mark.parametrize("mode", MODES)
def test_odd_questions_do_not_break(seeded, question, mode):
    hits = qa.retrieve(question, k=4, mode=mode)
    check_hits(hits, 4)
    if "backdoor" in question:
        assert hits[0].paper.key == "2306.15875"


def test_concurrent_retrieves_agree(seeded):
    questions = [q for q, _ in KNOWN]
    expected = {q: [h.paper.key for h in qa.retrieve(q, k=5)] for q in questions}
    errors: list[BaseException] = []
    results: list[tuple[str, list[str]]] = []

    def work() -> None:
        try:
            for q in questions:
                results.append((q, [h.paper.key for h in qa.retrieve(q, k=5)]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 4 * len(questions)
    for q, keys in results:
        assert keys == expected[q]


# ---------------------------------------------------------------- the keyword index follows Chroma


def _paper(word: str) -> Paper:
    return Paper(
        key=f"local-{word}",
        arxiv_id=None,
        title=f"On {word} in sparse estimators",
        abstract=f"We introduce {word}, a regulariser for sparse estimators, and study how "
        f"{word} behaves on noisy tabular data.",
        sources=["notes.jsonl"],
    )


@pytest.fixture
def small_index(index_mode):
    """A small index of the test's own (embedded, or a collection on the shared server)."""
    papers = [dataclasses.replace(p) for p in corpus()[:12]]
    build_index(papers, progress=False)
    return papers


def _keys(question: str, mode: str = "keyword") -> list[str]:
    return [h.paper.key for h in qa.retrieve(question, k=3, mode=mode)]


def test_new_paper_is_retrievable_after_the_staleness_window(small_index):
    from qa.retrieval import STALE_CHECK_SECONDS

    assert _keys("zorbulation") == []  # warm: the keyword index exists
    build_index([_paper("zorbulation")], progress=False)
    time.sleep(STALE_CHECK_SECONDS + 0.2)
    assert _keys("zorbulation") == ["local-zorbulation"]
    assert _keys("zorbulation regulariser", mode="hybrid")[0] == "local-zorbulation"


def test_new_paper_is_retrievable_at_once_in_the_same_process(small_index):
    _keys("quintaflex")  # warm
    build_index([_paper("quintaflex")], progress=False)
    assert _keys("quintaflex") == ["local-quintaflex"]


def test_changed_and_removed_papers_follow(small_index):
    from qa.retrieval import STALE_CHECK_SECONDS

    papers = small_index
    target = papers[3]
    assert _keys("glimmerwort") == []
    changed = dataclasses.replace(target, abstract="Glimmerwort. " + target.abstract)
    build_index([changed], progress=False)
    kept = [changed if p.key == target.key else p for p in papers[:6]]
    build_index(kept, prune=True, progress=False)  # papers[6:] leave the index
    time.sleep(STALE_CHECK_SECONDS + 0.2)
    assert _keys("glimmerwort") == [target.key]
    gone = papers[8]
    for mode in MODES:
        assert gone.key not in _keys(gone.title, mode=mode)


def test_rebuild_with_the_same_chunk_count_is_noticed(small_index):
    """After a rebuild the collection may hold as many chunks under the same revision
    number as before: the keyword index must still notice it is a different collection."""
    from qa.retrieval import STALE_CHECK_SECONDS

    papers = small_index
    out = papers[0]
    swap = None
    n_out = _chunk_count(out)
    for donor in corpus()[20:200]:
        candidate = dataclasses.replace(
            donor, key="local-swap", arxiv_id=None, abstract="Brambleton. " + donor.abstract
        )
        if _chunk_count(candidate) == n_out:
            swap = candidate
            break
    assert swap is not None
    keep = [p for p in papers if p.key != out.key]
    before = open_index().count()
    assert _keys("brambleton") == []
    build_index([*keep, swap], rebuild=True, prune=True, progress=False)
    assert open_index().count() == before
    time.sleep(STALE_CHECK_SECONDS + 0.2)
    assert _keys("brambleton") == ["local-swap"]


def _chunk_count(paper: Paper) -> int:
    from qa.index import chunk_paper

    return len(chunk_paper(paper, get_settings().chunk_tokens))


def test_keyword_index_survives_a_new_process_view(small_index):
    """Another process (here: fresh handles) sees the same results."""
    first = _keys(small_index[0].title, mode="hybrid")
    reset_qa_caches()
    assert _keys(small_index[0].title, mode="hybrid") == first
    assert first[0] == small_index[0].key


def test_keyword_index_is_saved_and_reloaded_without_retokenising(seeded, monkeypatch):
    """The next process loads BM25 from disk instead of rebuilding it (a minute at 100k)."""
    import qa.keyword_index as keyword_index
    from qa.index import open_index

    qa.retrieve("What is POMP?", k=3)  # builds (or loads) and saves the keyword index
    index = open_index()
    fresh = keyword_index.KeywordIndex()
    monkeypatch.setattr(keyword_index, "stems", _no_stemming)
    fresh.refresh(index)  # must come from the saved copy: stemming would raise
    monkeypatch.undo()
    assert fresh.count == index.count() and len(fresh.ids) == fresh.count
    scores = fresh.scores(keyword_index.stems("POMP prompt pre-training"))
    assert fresh.ids[int(scores.argmax())].startswith("2304.04704#")


@pytest.mark.parametrize("damaged", ["qa.json", "facets.npz"])
@pytest.mark.parametrize("garbled", ["not json", "cut short"])
def test_unreadable_saved_keyword_index_is_built_in_memory_and_left_alone(seeded, damaged, garbled):
    """A reader never writes: it builds the index in memory and leaves the file to writers."""
    import qa.keyword_index as keyword_index
    from qa.index import open_index

    qa.retrieve("What is POMP?", k=3)
    index = open_index()
    cache = keyword_index._cache_dir(index, index.revision(), index.count())
    saved = (cache / damaged).read_bytes()
    try:
        bad = b"{not json, not a zip" if garbled == "not json" else saved[: len(saved) // 2]
        (cache / damaged).write_bytes(bad)
        fresh = keyword_index.KeywordIndex()
        fresh.refresh(index)
        assert len(fresh.ids) == index.count()
        assert fresh.facets is not None and len(fresh.facets.published) == index.count()
        assert (cache / damaged).read_bytes() == bad
    finally:
        (cache / damaged).write_bytes(saved)  # the session's index, for the next tests


def _no_stemming(text: str) -> list[str]:
    raise AssertionError("the keyword index was rebuilt instead of loaded")


@pytest.mark.parametrize("loaded", [False, True], ids=["built", "loaded"])
def test_coverage_from_the_bm25_matrix_equals_restemming_the_text(seeded, loaded):
    """The hot path reads which question words a chunk has from the BM25 matrix; it must
    agree with stemming the chunk's text, for every chunk, in a built and a reloaded index."""
    import qa.keyword_index as keyword_index

    qa.retrieve("What is POMP?", k=3)  # the saved copy exists
    index = open_index()
    kw = keyword_index.KeywordIndex()
    if loaded:
        kw.refresh(index)
    else:
        kw._load = lambda *a: False  # type: ignore[method-assign]  # build from the documents
        kw.rebuild(index)
    got = index.collection.get(include=["documents"])
    question = set(keyword_index.stems("prompt pre-training of language models for graph data"))
    question.add("zzzunseenword")
    pairs = list(zip(got["ids"], got["documents"], strict=True))
    for cid, text in pairs:
        assert kw.coverage(question, text, cid) == pytest.approx(kw.coverage(question, text))
    assert any(kw.coverage(question, text, cid) > 0.3 for cid, text in pairs)


# ---------------------------------------------------------------- #13 keyword index kept by ingest


def test_reader_loads_the_keyword_index_another_process_saved_and_never_builds(
    small_index, tmp_path, monkeypatch
):
    """A writer in another process (`qa ingest`) saves the keyword index before committing;
    a running reader (several UI replicas on one `chroma run` alike) picks it up without a
    restart and never builds one itself."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import qa.keyword_index as keyword_index

    assert _keys("zorbulation") == []  # warm: this reader has a keyword index
    monkeypatch.setattr(keyword_index.KeywordIndex, "build_in_memory", _no_build)
    new = tmp_path / "new.jsonl"
    paper = _paper("zorbulation")
    new.write_text(json.dumps({"title": paper.title, "abstract": paper.abstract}) + "\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ingest", str(new)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    time.sleep(keyword_index.STALE_CHECK_SECONDS + 0.2)
    hits = qa.retrieve("zorbulation", k=3, mode="keyword")
    assert [h.paper.title for h in hits] == [paper.title]


def test_state_committed_without_a_keyword_index_is_built_in_the_background(
    small_index, monkeypatch
):
    """A committed state with no saved keyword index (a streamed ingest's batches): questions
    keep being answered from the previous one while it is built beside them, then switch."""
    import qa.keyword_index as keyword_index

    assert _keys("quintaflex") == []
    release = threading.Event()
    started = threading.Event()
    build = keyword_index.KeywordIndex.build_in_memory

    def slow_build(self, index, revision, count):
        started.set()
        assert release.wait(timeout=60)
        return build(self, index, revision, count)

    monkeypatch.setattr(keyword_index.KeywordIndex, "build_in_memory", slow_build)
    build_index([_paper("quintaflex")], progress=False, keyword_index=False)
    assert _keys("quintaflex") == []  # answered at once, from the previous keyword index
    assert started.wait(timeout=30)  # while the new one is being built
    release.set()
    deadline = time.monotonic() + 60
    while _keys("quintaflex") != ["local-quintaflex"]:
        assert time.monotonic() < deadline, "the background build was never swapped in"
        time.sleep(0.1)


def _no_build(self, index, revision, count):
    raise AssertionError("a reader built the keyword index instead of loading it")


def test_stems_per_word_equal_the_whole_text_pipeline():
    """`stems` folds and stems each word once (cached); the result must be what the
    documented pipeline on the whole text gives: split scripts, lower-case, fold British
    spellings, drop stop words, Snowball-stem."""
    import Stemmer

    from qa.keyword_index import _STOPWORDS, _WORD, stems
    from qa.wording import american_spelling, split_scripts

    stemmer = Stemmer.Stemmer("english")

    def reference(text: str) -> list[str]:
        words = _WORD.findall(american_spelling(split_scripts(text).lower()))
        return stemmer.stemWords([w for w in words if w not in _STOPWORDS])

    texts = [f"{p.title}\n{p.abstract}" for p in _corpus()]
    texts += ["什么是POMP? Initialise the colour; analysed", "ΣΑΣ Straße İstanbul THE Models"]
    for text in texts:
        assert stems(text) == reference(text)


def _folder_state(folder) -> dict[str, float]:
    """Every file under `folder` with its modification time (empty when there is none)."""
    if not folder.exists():
        return {}
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in folder.rglob("*")}


def test_a_reader_never_creates_changes_or_deletes_saved_keyword_indexes(small_index):
    """Readers only load: a state a writer committed without saving a keyword index is built
    in memory, and nothing in `<persist_dir>/.keyword-index/` is created, rewritten or
    dropped by a reader (a new process, a running one, with or without the folder)."""
    import shutil

    folder = get_settings().persist_dir / ".keyword-index"
    before = _folder_state(folder)
    assert before  # the writer saved one
    reset_qa_caches()  # a new process's view: loads the saved index
    assert _keys("quintaflex") == []
    build_index([_paper("quintaflex")], progress=False, keyword_index=False)
    after_write = _folder_state(folder)
    assert after_write == before  # (this writer left it to a later batch)
    _wait_for_keys("quintaflex", ["local-quintaflex"])  # built in memory, in the background
    reset_qa_caches()
    assert _keys("quintaflex") == ["local-quintaflex"]  # a new process builds it again
    assert _folder_state(folder) == before
    shutil.rmtree(folder)
    reset_qa_caches()
    assert _keys("quintaflex") == ["local-quintaflex"]
    assert not folder.exists()


def _wait_for_keys(question: str, expected: list[str]) -> None:
    deadline = time.monotonic() + 60
    while _keys(question) != expected:
        assert time.monotonic() < deadline, "the background build was never swapped in"
        time.sleep(0.1)


# ---------------------------------------------------------------- #13 chunks held in memory


def _wait_for_table(retriever) -> None:
    deadline = time.monotonic() + 60
    while retriever.keyword_index.chunk_table() is None:
        assert time.monotonic() < deadline, "the chunk table was never loaded"
        time.sleep(0.05)


def test_hits_from_the_in_memory_chunks_equal_hits_read_from_chroma(seeded, monkeypatch):
    """A small index's chunks (vectors, texts, papers) are held in memory so a question makes
    no Chroma `get`; the hits are exactly those of reading the chunks from Chroma, which is
    what an index larger than QA_CHUNK_CACHE still does."""
    import qa.retrieval as retrieval
    from qa.filters import Filters

    settings = get_settings()
    index = open_index(settings)
    questions = [q for q, _ in KNOWN] + ["What is POMP? 2306.15875", "graph neural networks"]
    cases = [
        (q, mode, filters)
        for q in questions
        for mode in MODES
        for filters in [None, Filters.make("2023-06-01", None, None, None)]
    ]

    def answers(retriever) -> list[list[dict]]:
        return [
            [h.to_dict() | {"pinned": h.pinned} for h in retriever.retrieve(q, 6, m, settings, f)]
            for q, m, f in cases
        ]

    held = retrieval.Retriever(index)
    held.retrieve("warm up", 5, "hybrid", settings)
    assert held._tabled is None  # one question (a one-shot `qa ask`) reads no chunks
    for filters in {f for _, _, f in cases}:  # (a filter's first use reads its mask)
        held.retrieve("warm up", 5, "hybrid", settings, filters)
    _wait_for_table(held)
    gets: list[str] = []
    real_call = index.call

    def spy(fn, *args, **kwargs):
        gets.append(getattr(fn, "__name__", ""))
        return real_call(fn, *args, **kwargs)

    monkeypatch.setattr(index, "call", spy)
    from_memory = answers(held)
    assert "get" not in gets  # neither the keyword top's vectors nor the hits' records
    monkeypatch.setattr(index.settings, "chunk_cache", index.count() - 1)  # one chunk too many
    read = retrieval.Retriever(index)
    from_chroma = answers(read)
    assert read.keyword_index.chunk_table() is None
    assert "get" in gets
    assert from_memory == from_chroma
    assert any(hits for hits in from_memory)
