"""Filters (period, categories, authors) on both retrieval channels, from flags and from the
question; `qa.similar`; BibTeX of cited papers — on a real index of the bundled seeds plus
papers with categories and authors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pytest
from pybtex.database import parse_string

import qa
from qa.cli import main
from qa.config import Settings, get_settings
from qa.corpus import Paper, load_corpus
from qa.filters import FilterError, Filters, from_question
from qa.ingest import build_index
from qa.similarity import UnknownPaper

pytest_plugins = ["chroma_server"]

TOPICS = {  # category → (authors, sentences the abstracts are made of)
    "cs.CV": (
        ["Alice Zhang", "Bruno Costa"],
        "We segment medical images with a convolutional encoder-decoder. "
        "Our image segmentation network improves boundary accuracy on CT scans.",
    ),
    "cs.CL": (
        ["Carla Rossi", "Alice Zhang"],
        "We fine-tune language models for machine translation of low-resource languages. "
        "Our translation model improves BLEU with back-translated data.",
    ),
    "hep-th": (
        ["Dmitri Volkov"],
        "We study string theory compactifications with flux. "
        "The moduli space of these vacua is computed with holography.",
    ),
}


def extra_papers() -> list[Paper]:
    """24 papers: eight per topic, one each year 2018–2025, with metadata."""
    papers = []
    for t, (cat, (authors, text)) in enumerate(TOPICS.items()):
        for i, year in enumerate(range(2018, 2026)):
            key = f"{year % 100:02d}{i + 1:02d}.{90000 + t * 10 + i:05d}"
            papers.append(
                Paper(
                    key=key,
                    arxiv_id=key,
                    title=f"{cat} study {year}: {text.split('.')[0][3:40]}",
                    abstract=f"{text} Variant {i} of the method, year {year}.",
                    authors=list(authors),
                    categories=[cat, "cs.LG"] if cat.startswith("cs") else [cat],
                    published=date(year, i + 1, 15),
                )
            )
    return papers


@dataclass
class Built:
    env: dict[str, str]
    papers: list[Paper]

    def activate(self, monkeypatch) -> Settings:
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("filters")
    env = {"QA_PERSIST_DIR": str(root / "vectorstore"), "QA_COLLECTION": "filters"}
    settings = Settings(persist_dir=env["QA_PERSIST_DIR"], collection="filters")
    papers = load_corpus(settings.seeds_dir) + extra_papers()
    build_index(papers, settings=settings, progress=False)
    return Built(env, papers)


@pytest.fixture
def index_env(built, monkeypatch) -> Built:
    built.activate(monkeypatch)
    return built


QUESTIONS = [
    "machine unlearning in large language models",
    "What is POMP?",
    "image segmentation of CT scans",
    "string theory flux compactifications",
    "backdoor attacks on speech classification",
]
FILTERS = [
    {"since": "2024-01-01"},
    {"since": "2023-01-01", "until": "2023-06-30"},
    {"until": "2021-12-31"},
    {"categories": ["cs.CV"]},
    {"categories": "hep-th,cs.CL"},
    {"categories": ["cs"]},  # an archive: every cs.* category
    {"authors": ["zhang"]},  # a surname, any case
    {"authors": "Dmitri Volkov", "since": "2022"},
]


@pytest.mark.parametrize("mode", ["hybrid", "keyword", "dense"])
@pytest.mark.parametrize("given", FILTERS, ids=lambda f: json.dumps(f))
def test_every_hit_satisfies_the_filter_and_k_are_returned(index_env, mode, given):
    flt = Filters.make(**given)
    matching = [p for p in index_env.papers if flt.matches(p)]
    assert matching, "the filter must select some papers for this test to mean anything"
    k = 5
    for question in QUESTIONS:
        hits = qa.retrieve(question, k=k, mode=mode, **given)
        assert all(flt.matches(h.paper) for h in hits), (question, [h.paper.key for h in hits])
        if mode != "keyword":  # the dense side always ranks every matching chunk
            assert len(hits) == min(k, len(matching)), question


def test_keyword_side_finds_the_best_matching_paper_inside_the_filter(index_env):
    """The best BM25 paper overall is outside the filter: the keyword channel must still rank
    the best one inside it, not come back empty."""
    question = "image segmentation CT scans boundary accuracy"
    best = qa.retrieve(question, k=1, mode="keyword")[0].paper
    until = best.published.replace(day=1)
    hits = qa.retrieve(question, k=3, mode="keyword", until=until)
    assert hits and best.key not in {h.paper.key for h in hits}
    assert all(h.paper.published <= until for h in hits)
    assert any("segment" in h.paper.abstract for h in hits)


def test_paper_named_by_id_outside_the_filter_is_not_pinned(index_env):
    hits = qa.retrieve("What is arXiv:2304.04704 about?", k=5, since="2025-01-01")
    assert hits and all(h.paper.published >= date(2025, 1, 1) for h in hits)
    assert "2304.04704" not in {h.paper.arxiv_id for h in hits}
    pinned = qa.retrieve("What is arXiv:2304.04704 about?", k=5, since="2023-01-01")
    assert pinned[0].paper.arxiv_id == "2304.04704"


def test_filter_matching_nothing_returns_nothing(index_env):
    assert qa.retrieve("language models", k=5, categories=["astro-ph"]) == []
    answer = qa.ask("What do language models do?", categories=["astro-ph"])
    assert answer.abstained and answer.sources == []
    assert "No indexed paper matches this filter." in answer.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"since": "2024-02-01", "until": "2024-01-01"}, "after until"),
        ({"since": "last year"}, "not a date"),
        ({"categories": ["CS CL!"]}, "not an arXiv category"),
        ({"authors": [f"a{i}" for i in range(30)]}, "at most"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(FilterError, match=message):
        Filters.make(**kwargs)


@pytest.mark.parametrize(
    "question, expected",
    [
        ("unlearning papers since 2023", Filters(since=date(2023, 1, 1))),
        ("what did papers in 2024 propose?", Filters(date(2024, 1, 1), date(2024, 12, 31))),
        ("segmentation after 2022", Filters(since=date(2023, 1, 1))),
        ("work before 2020", Filters(until=date(2019, 12, 31))),
        ("from 2021 to 2022", Filters(date(2021, 1, 1), date(2022, 12, 31))),
        ("cs.CV papers on segmentation", Filters(categories=("cs.CV",))),
        ("translation work in cs.CL", Filters(categories=("cs.CL",))),
        ("What is POMP?", Filters()),
        ("How does GPT-4 compare with 2,000 annotators?", Filters()),
        ("results on CIFAR-10 in 10 epochs", Filters()),
        ("models trained in 2000 steps", Filters()),
        ("a context of 2048 tokens", Filters()),
        ("papers from 2023 on retrieval", Filters(since=date(2023, 1, 1))),
    ],
)
def test_filters_named_in_the_question(question, expected):
    assert from_question(question) == expected


def test_question_naming_a_period_is_answered_from_that_period_and_says_so(index_env):
    answer = qa.ask("Which machine unlearning methods for language models appeared in 2024?")
    assert answer.filters == Filters(date(2024, 1, 1), date(2024, 12, 31))
    assert "2024-01-01 to 2024-12-31 (named in the question)" in answer.text.splitlines()[0]
    assert answer.sources and all(h.paper.published.year == 2024 for h in answer.sources)
    assert answer.to_dict()["filters"]["since"] == "2024-01-01"


def test_question_naming_a_category(index_env):
    answer = qa.ask("What do the cs.CV papers do for image segmentation?")
    assert answer.filters.categories == ("cs.CV",)
    assert answer.sources and all("cs.CV" in h.paper.categories for h in answer.sources)


def test_explicit_filter_wins_over_the_question(index_env):
    answer = qa.ask("unlearning work in 2023", since="2024-01-01", until="2024-12-31")
    assert answer.filters.since == date(2024, 1, 1)
    assert "named in the question" not in answer.text
    assert all(h.paper.published.year == 2024 for h in answer.sources)


def test_stream_takes_filters_too(index_env):
    *_, final = qa.stream("string theory flux", categories=["hep-th"], authors=["Volkov"])
    assert final.sources and all(h.paper.authors == ["Dmitri Volkov"] for h in final.sources)


def test_cli_ask_filters_json_and_bibtex(index_env, capsys):
    code = main(["ask", "image segmentation of CT scans", "--categories", "cs.CV", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["filters"]["categories"] == ["cs.CV"]
    sources = [s["paper"] for s in out["sources"]]
    assert sources and all("cs.CV" in p["categories"] for p in sources)
    assert {"authors", "categories", "published", "updated", "doi", "journal_ref"} <= set(
        sources[0]
    )

    assert main(["ask", "What is POMP?", "--json", "--bibtex"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "eprint = {2304.04704}" in out["bibtex"]

    assert main(["ask", "image segmentation of CT scans", "--since", "2024", "--bibtex"]) == 0
    out = capsys.readouterr().out
    bib = parse_string(out[out.index("@misc") :], "bibtex")
    assert bib.entries
    for entry in bib.entries.values():
        assert int(entry.fields["year"]) >= 2024
        assert entry.fields["archivePrefix"] == "arXiv"


def test_cli_bad_filter_is_one_line(index_env, capsys):
    assert main(["ask", "anything", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a date" in err and "\n" not in err


# ---------------------------------------------------------------- similar


def test_similar_papers_exclude_the_paper_and_share_its_topic(index_env):
    target = next(p for p in index_env.papers if p.categories[:1] == ["hep-th"])
    hits = qa.similar(f"https://arxiv.org/abs/{target.arxiv_id}v2", k=5)
    assert len(hits) == 5
    assert target.key not in {h.paper.key for h in hits}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.paper.categories[:1] == ["hep-th"] for h in hits)


def test_similar_respects_filters(index_env):
    hits = qa.similar("2304.04704", k=4, since="2024-06-01")
    assert len(hits) == 4 and all(h.paper.published >= date(2024, 6, 1) for h in hits)


@pytest.mark.parametrize("given, message", [("2304.99999", "qa fetch"), ("2399.00001", "month")])
def test_similar_unknown_or_impossible_id(index_env, given, message):
    with pytest.raises(UnknownPaper, match=message):
        qa.similar(given)


def test_cli_similar(index_env, capsys):
    assert main(["similar", "arXiv:2304.04704", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "2304.04704" not in "".join(lines)
    assert main(["similar", "2304.99999"]) == 2
    assert "not in the index" in capsys.readouterr().err


# ---------------------------------------------------------------- BibTeX of an answer


def test_answer_bibtex_holds_exactly_the_cited_papers(index_env):
    answer = qa.ask("What is POMP?")
    assert answer.citations
    bib = parse_string(answer.bibtex(), "bibtex")
    assert [e.fields["eprint"] for e in bib.entries.values()] == [
        p.arxiv_id for p in answer.citations
    ]


@pytest.mark.server
def test_filters_against_a_chroma_server(chroma_server, monkeypatch):
    """The same `where` clauses (list `$contains`, integer dates) on `chroma run`."""
    from chroma_server import use_server

    use_server(monkeypatch, chroma_server)
    build_index(extra_papers(), progress=False)
    for given in ({"categories": ["cs.CV"]}, {"authors": ["volkov"], "since": "2021"}):
        flt = Filters.make(**given)
        for mode in ("hybrid", "keyword", "dense"):
            hits = qa.retrieve("language models for translation", k=4, mode=mode, **given)
            assert all(flt.matches(h.paper) for h in hits), (given, mode)
            if mode != "keyword":  # no word of the question is in the cs.CV abstracts
                assert len(hits) == 4, (given, mode)


@pytest.mark.parametrize("given", FILTERS, ids=lambda f: json.dumps(f))
def test_dense_side_without_where_gives_what_the_where_query_gives(index_env, given, monkeypatch):
    """Filtered questions take more neighbours without a Chroma `where` and keep the allowed
    ones (a `where` on 175k chunks cost ~0.5 s); the hits must be those of asking Chroma with
    the `where` (forced here by an over-fetch of 0, which always falls back)."""
    import qa.retrieval as retrieval

    wide = [[h.paper.key for h in qa.retrieve(q, k=5, **given)] for q in QUESTIONS]
    monkeypatch.setattr(retrieval, "DENSE_OVERFETCH", 0)
    where_only(monkeypatch)
    narrow = [[h.paper.key for h in qa.retrieve(q, k=5, **given)] for q in QUESTIONS]
    assert wide == narrow


def where_only(monkeypatch) -> None:
    """Dense neighbours the filter allows come from Chroma's `where` once the over-fetched
    ones fall short: no widened query, no search among the allowed ids, no chunk table."""
    import qa.retrieval as retrieval

    monkeypatch.setattr(retrieval, "DENSE_WIDEST", 0)
    monkeypatch.setattr(retrieval, "DENSE_IDS_MAX", 0)
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 0)
    no_table(monkeypatch)


def no_table(monkeypatch) -> None:
    """The reader holds no chunk table (as for an index over QA_CHUNK_CACHE chunks)."""
    from qa.keyword_index import KeywordIndex

    monkeypatch.setattr(KeywordIndex, "chunk_table", lambda self: None)


def count_wheres(monkeypatch) -> list[bool]:
    """Per dense query from now on: whether it was a `where` query."""
    import qa.retrieval as retrieval

    wheres = []
    dense = retrieval.Retriever.dense_candidates

    def spy(self, vector, n, filters=None):
        wheres.append(filters is not None)
        return dense(self, vector, n, filters)

    monkeypatch.setattr(retrieval.Retriever, "dense_candidates", spy)
    return wheres


def dense_hits(given: dict) -> list[list[tuple[str, float]]]:
    return [
        [(h.paper.key, round(h.dense, 4)) for h in qa.retrieve(q, k=5, mode="dense", **given)]
        for q in QUESTIONS
    ]


@pytest.mark.parametrize("given", FILTERS, ids=lambda f: json.dumps(f))
def test_a_narrow_filter_searches_its_allowed_chunks_without_a_where(index_env, given, monkeypatch):
    """When the over-fetched neighbours hold too few allowed chunks and the filter allows at
    most DENSE_IDS_MAX, Chroma searches those chunks' ids (a `where` reads every matching
    chunk's metadata first: ~1 s per question at 1M chunks): no `where`, the same hits."""
    import qa.retrieval as retrieval

    monkeypatch.setattr(retrieval, "DENSE_OVERFETCH", 1)  # the first neighbours rarely do
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 0)  # not read and ranked here
    monkeypatch.setattr(retrieval, "DENSE_WIDEST", 0)  # no widening: ids, else a `where`
    no_table(monkeypatch)
    wheres = count_wheres(monkeypatch)
    among = dense_hits(given)
    assert wheres and not any(wheres)
    where_only(monkeypatch)
    assert dense_hits(given) == among
    assert any(wheres)


@pytest.mark.parametrize("given", FILTERS, ids=lambda f: json.dumps(f))
def test_the_held_chunk_table_gives_the_nearest_allowed_chunks_of_chroma(
    index_env, given, monkeypatch
):
    """A reader holding the chunk table ranks the allowed chunks by numpy (no Chroma call),
    as it does with their vectors read by id (a filter allowing at most DENSE_EXACT_MAX); the
    hits and cosines are those of Chroma's search among the same ids."""
    import qa.retrieval as retrieval
    from qa.index import open_index
    from qa.retrieval import ChunkTable

    monkeypatch.setattr(retrieval, "DENSE_OVERFETCH", 1)
    qa.retrieve("warm up", k=1)
    kw = retrieval.get_retriever().keyword_index
    monkeypatch.setattr(kw, "table", ChunkTable.read(open_index(), kw.ids, kw.row_of))
    wheres = count_wheres(monkeypatch)
    among = retrieval.Retriever.nearest_among
    monkeypatch.setattr(retrieval.Retriever, "nearest_among", None)  # not called: from memory
    held = dense_hits(given)
    assert len(wheres) == len(QUESTIONS)  # the over-fetch only
    no_table(monkeypatch)
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 10**6)
    assert dense_hits(given) == held
    monkeypatch.setattr(retrieval.Retriever, "nearest_among", among)
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 0)
    assert dense_hits(given) == held
    assert not any(wheres)


def test_a_widened_query_replaces_most_where_queries_with_the_same_hits(index_env, monkeypatch):
    """A filter too wide for a search among its ids, whose over-fetched neighbours hold too
    few allowed chunks: one unfiltered query widened by the share they allowed comes first (a
    `where` reads every matching chunk's metadata: seconds at ~1M chunks); hits equal those of
    the `where` path."""
    import qa.retrieval as retrieval

    monkeypatch.setattr(retrieval, "DENSE_OVERFETCH", 1)  # the first neighbours rarely do
    monkeypatch.setattr(retrieval, "DENSE_IDS_MAX", 0)
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 0)
    no_table(monkeypatch)
    wheres = count_wheres(monkeypatch)

    def hits() -> list[list[str]]:
        return [
            [h.paper.key for h in qa.retrieve(q, k=5, mode="dense", **given)]
            for given in FILTERS
            for q in QUESTIONS
        ]

    widened = hits()
    widened_wheres, calls = sum(wheres), len(wheres)
    where_only(monkeypatch)  # no widening: the `where` path
    wheres.clear()
    assert hits() == widened
    assert widened_wheres < sum(wheres) / 2, (widened_wheres, sum(wheres), calls)


@pytest.mark.parametrize(
    "given",
    [*FILTERS, {"categories": ["cs.cl", "cs.CV"]}, {"authors": ["nobody-here"]}],
    ids=lambda f: json.dumps(f),
)
def test_filter_masks_from_the_saved_facets_equal_chromas_where(index_env, given, monkeypatch):
    """A filter's mask comes from the per-chunk dates and keys the writer saved with the
    keyword index (no `get(where=…)` over every chunk: ~1 min at 666k chunks), and selects
    exactly the chunks Chroma's `where` selects."""
    import qa.retrieval as retrieval
    from qa.filters import FilterMasks
    from qa.index import open_index

    qa.retrieve("warm up", k=1)  # the reader's keyword index, loaded from the writer's save
    kw = retrieval.get_retriever().keyword_index
    assert kw.facets is not None and len(kw.facets.published) == len(kw.ids)
    index = open_index()
    flt = Filters.make(**given)
    want = set(index.collection.get(where=flt.where(), include=[])["ids"])

    asked = []
    real_get = index.collection.get
    monkeypatch.setattr(
        type(index.collection),
        "get",
        lambda self, *args, **kwargs: asked.append(kwargs) or real_get(*args, **kwargs),
    )
    mask = FilterMasks().get(index, kw, flt)
    assert not asked
    assert {cid for cid, ok in zip(kw.ids, mask, strict=True) if ok} == want


def test_a_keyword_index_saved_without_facets_still_filters_through_chroma(index_env):
    """An index saved before the facets existed: masks are asked of Chroma (same result)."""
    import qa.retrieval as retrieval
    from qa.filters import FilterMasks
    from qa.index import open_index

    qa.retrieve("warm up", k=1)
    kw = retrieval.get_retriever().keyword_index
    flt = Filters.make(since="2023-01-01", categories=["cs"])
    with_facets = FilterMasks().get(open_index(), kw, flt)
    facets, kw.facets = kw.facets, None
    try:
        without = FilterMasks().get(open_index(), kw, flt)
    finally:
        kw.facets = facets
    assert with_facets.any() and (with_facets == without).all()


def test_a_narrow_filter_when_an_allowed_chunk_is_gone_from_chroma(index_mode, monkeypatch):
    """Searching among the allowed ids on `chroma run` and embedded; a chunk the reader's
    keyword index still lists but Chroma no longer holds (deleted behind its back, as when a
    paper is re-written before the reader sees the new state) makes Chroma refuse a search
    among ids: the question is answered by the `where` instead, without that paper. Reading
    the allowed vectors by id (DENSE_EXACT_MAX) passes over it: no `where`, the same hits."""
    import qa.retrieval as retrieval
    from qa.index import open_index

    monkeypatch.setenv("QA_CANDIDATES", "5")  # 12 neighbours for k=3, of the 24 chunks
    get_settings.cache_clear()
    build_index(extra_papers(), progress=False)
    monkeypatch.setattr(retrieval, "DENSE_OVERFETCH", 1)
    monkeypatch.setattr(retrieval, "DENSE_WIDEST", 0)
    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 0)
    no_table(monkeypatch)
    wheres = count_wheres(monkeypatch)
    given = {"categories": ["hep-th"], "since": "2020"}  # 6 papers: fewer than 12 neighbours
    question = "string theory flux compactifications"
    among = qa.retrieve(question, k=3, mode="dense", **given)
    assert len(among) == 3 and not any(wheres)

    gone = among[0].paper.key
    open_index().collection.delete(ids=[f"{gone}#0"])
    wheres.clear()
    after = qa.retrieve(question, k=3, mode="dense", **given)
    assert any(wheres)
    assert len(after) == 3 and gone not in {h.paper.key for h in after}
    assert all(Filters.make(**given).matches(h.paper) for h in after)

    monkeypatch.setattr(retrieval, "DENSE_EXACT_MAX", 10**6)
    wheres.clear()
    read = qa.retrieve(question, k=3, mode="dense", **given)
    assert not any(wheres)
    assert [h.paper.key for h in read] == [h.paper.key for h in after]
