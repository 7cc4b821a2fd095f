"""`qa.resolve` against a real loopback HTTP server that speaks the arXiv API's Atom format."""

from __future__ import annotations

import copy
import csv
import json
import re
import socket

import pytest
from fake_arxiv import Entry, contains, feed

from qa import resolve
from qa.corpus import Paper, content_key, read_corpus
from qa.resolve import make_client, resolve_missing

BACKDOOR_TITLE = "Fake the Real: Backdoor Attack on Deep Speech Classification via Voice Conversion"
BACKDOOR_ABSTRACT = (
    "Deep speech classification has achieved tremendous success and greatly promoted the "
    "emergence of many real-world applications. However, backdoor attacks present a new "
    "security threat to it, particularly with untrustworthy third-party platforms, as "
    "pre-defined triggers set by the attacker can activate the backdoor. Most of the triggers "
    "in existing speech backdoor attacks are sample-agnostic, and even if the triggers are "
    "designed to be unnoticeable, they can still be audible. This work explores a backdoor "
    "attack that utilizes sample-specific triggers based on voice conversion."
)
KOSMOS_ABSTRACT = (
    "We introduce Kosmos-2, a Multimodal Large Language Model (MLLM), enabling new capabilities "
    "of perceiving object descriptions (e.g., bounding boxes) and grounding text to the visual "
    "world. Specifically, we represent refer expressions as links in Markdown, where object "
    "descriptions are sequences of location tokens. Together with multimodal corpora, we "
    "construct large-scale data of grounded image-text pairs (called GrIT) to train the model."
)
KOSMOS_TITLE = "Kosmos-2: Grounding Multimodal Large Language Models to the World"


@pytest.fixture
def settings(isolated_settings):
    return isolated_settings


def client_for(url: str, **kwargs):
    return make_client(url, delay_seconds=0, **kwargs)


def paper(abstract: str, title: str = "") -> Paper:
    return Paper(key=content_key(abstract), arxiv_id=None, title=title, abstract=abstract)


def cache_rows(settings) -> list[dict[str, str]]:
    with open(settings.resolve_cache_path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/query?{{}}"


# ---------------------------------------------------------------- matching against the server


def test_title_match_attaches_id_without_version(serve, settings):
    fake, url = serve([Entry("2306.15875v2", BACKDOOR_TITLE, BACKDOOR_ABSTRACT)])
    p = paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE)
    old_key = p.key

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    assert report.error is None
    assert report.resolved == [(old_key, "2306.15875")]
    assert (p.arxiv_id, p.key, p.title) == ("2306.15875", "2306.15875", BACKDOOR_TITLE)
    assert fake.queries == [
        'ti:"Fake the Real Backdoor Attack on Deep Speech Classification via Voice Conversion"'
    ]
    assert fake.requests[0]["path"] == "/api/query"
    assert fake.requests[0]["max_results"] == str(resolve.MAX_RESULTS)
    [row] = cache_rows(settings)
    assert row["key"] == old_key
    assert (row["arxiv_id"], row["status"], row["title"]) == ("2306.15875", "found", BACKDOOR_TITLE)
    assert row["abstract_start"] == BACKDOOR_ABSTRACT[:80]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", row["checked"])


def test_dissimilar_title_is_rejected_and_cached_as_not_found(serve, settings):
    other = Entry(
        "2401.00001v1",
        "Fake the Real World: Voice Conversion for Speech Synthesis",
        "We study voice conversion for expressive speech synthesis in the wild.",
    )
    fake, url = serve([other], loose=True)
    p = paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE)
    before = copy.deepcopy(p)

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    assert report.error is None
    assert report.resolved == [] and report.not_found == [before.key]
    assert p == before
    assert [q.split(":")[0] for q in fake.queries] == ["ti", "abs"]  # title, then abstract
    [row] = cache_rows(settings)
    assert (row["key"], row["arxiv_id"], row["status"]) == (before.key, "", "not-found")
    assert row["title"] == BACKDOOR_TITLE


def test_paper_without_title_is_searched_by_an_abstract_phrase(serve, settings):
    fake, url = serve(
        [
            Entry("2306.14824v3", KOSMOS_TITLE, KOSMOS_ABSTRACT),
            Entry("2306.15875v1", BACKDOOR_TITLE, BACKDOOR_ABSTRACT),
        ]
    )
    p = paper(KOSMOS_ABSTRACT)

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    assert report.error is None
    [query] = fake.queries
    phrase = re.fullmatch(r'abs:"([^"]+)"', query).group(1)
    assert resolve.MIN_PHRASE_WORDS <= len(phrase.split()) <= 12
    assert contains(KOSMOS_ABSTRACT, phrase)
    assert (p.arxiv_id, p.key, p.title) == ("2306.14824", "2306.14824", KOSMOS_TITLE)


def test_changed_title_falls_back_to_the_abstract(serve, settings):
    """arXiv indexes the latest title; a paper renamed since v1 is still found by its abstract."""
    revised = KOSMOS_ABSTRACT.replace("We introduce", "This paper introduces")
    fake, url = serve([Entry("2306.14824v3", KOSMOS_TITLE, revised)])
    p = paper(KOSMOS_ABSTRACT, "Kosmos-2: Grounding Language Models in Pixels")

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    assert [q.split(":")[0] for q in fake.queries] == ["ti", "abs"]
    assert report.resolved == [(content_key(KOSMOS_ABSTRACT), "2306.14824")]
    assert p.title == "Kosmos-2: Grounding Language Models in Pixels"  # never overwritten


def test_second_run_uses_the_cache_and_makes_no_requests(serve, settings):
    fake, url = serve([Entry("2306.15875v1", BACKDOOR_TITLE, BACKDOOR_ABSTRACT)])
    papers = [paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE), paper(KOSMOS_ABSTRACT)]
    first = resolve_missing(papers, settings=settings, client=client_for(url), progress=False)
    assert len(first.resolved) == 1 and len(first.not_found) == 1
    made = len(fake.requests)

    again = [paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE), paper(KOSMOS_ABSTRACT)]
    second = resolve_missing(again, settings=settings, client=client_for(url), progress=False)

    assert len(fake.requests) == made
    assert (second.skipped_cached, second.resolved, second.not_found) == (2, [], [])
    assert again[0].arxiv_id == "2306.15875"  # the cached answer is applied
    assert again[1].arxiv_id is None


def test_papers_with_ids_are_not_looked_up(serve, settings):
    fake, url = serve([])
    p = Paper(key="2306.15875", arxiv_id="2306.15875", title="", abstract=BACKDOOR_ABSTRACT)
    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)
    assert fake.requests == [] and report == resolve.ResolveReport()
    assert not settings.resolve_cache_path.exists()


# ---------------------------------------------------------------- failures change nothing


def test_server_down_gives_one_clear_error_and_changes_nothing(settings):
    url = closed_port_url()
    p = paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE)
    before = copy.deepcopy(p)

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    base = url.split("?")[0]
    assert report.error.startswith(f"arXiv API unreachable at {base}: ")
    assert "Connection refused" in report.error
    assert "\n" not in report.error and "HTTPConnectionPool" not in report.error
    assert p == before
    assert not settings.resolve_cache_path.exists()
    assert report.resolved == [] and report.not_found == []


def test_server_down_leaves_an_existing_cache_byte_for_byte(serve, settings):
    _, url = serve([Entry("2306.15875v1", BACKDOOR_TITLE, BACKDOOR_ABSTRACT)])
    resolve_missing(
        [paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE)],
        settings=settings,
        client=client_for(url),
        progress=False,
    )
    saved = settings.resolve_cache_path.read_bytes()
    p = paper(KOSMOS_ABSTRACT)

    report = resolve_missing(
        [p], settings=settings, client=client_for(closed_port_url()), progress=False
    )

    assert report.error and report.error.startswith("arXiv API unreachable")
    assert settings.resolve_cache_path.read_bytes() == saved
    assert p.arxiv_id is None
    assert list(settings.resolve_cache_path.parent.iterdir()) == [settings.resolve_cache_path]


def test_outage_midway_keeps_earlier_answers_and_leaves_the_rest(serve, settings):
    fake, url = serve([Entry("2306.15875v1", BACKDOOR_TITLE, BACKDOOR_ABSTRACT)])
    fake.fail_from = 1
    papers = [paper(BACKDOOR_ABSTRACT, BACKDOOR_TITLE), paper(KOSMOS_ABSTRACT)]
    second = copy.deepcopy(papers[1])
    client = make_client(url, delay_seconds=0, num_retries=0)

    report = resolve_missing(papers, settings=settings, client=client, progress=False)

    assert report.error.endswith("HTTP 503")
    assert report.resolved == [(content_key(BACKDOOR_ABSTRACT), "2306.15875")]
    assert papers[0].arxiv_id == "2306.15875" and papers[1] == second
    assert [row["arxiv_id"] for row in cache_rows(settings)] == ["2306.15875"]


def test_interrupted_cache_write_keeps_the_old_file(settings, monkeypatch):
    path = settings.resolve_cache_path
    row = resolve.cache_row("hkey", paper(KOSMOS_ABSTRACT), None)
    resolve.save_cache(path, {"hkey": row})
    saved = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(resolve.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve.save_cache(path, {"hkey": row, "other": {**row, "key": "other"}})
    assert path.read_bytes() == saved
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert resolve.load_cache(path) == {"hkey": row}


def test_unknown_host_is_reported_as_unreachable(settings):
    url = "http://arxiv-qa-test.invalid/api/query?{}"
    client = make_client(url, delay_seconds=0, num_retries=0, timeout=5)
    report = resolve_missing([paper(KOSMOS_ABSTRACT)], settings=settings, client=client)
    assert report.error.startswith("arXiv API unreachable at http://arxiv-qa-test.invalid/")
    assert not settings.resolve_cache_path.exists()


def test_timeout_is_reported_as_unreachable(serve, settings):
    fake, url = serve([])
    fake.delay = 1.0
    client = make_client(url, delay_seconds=0, num_retries=0, timeout=0.2)
    report = resolve_missing([paper(KOSMOS_ABSTRACT)], settings=settings, client=client)
    assert report.error.startswith("arXiv API unreachable at ")
    assert "timed out" in report.error
    assert not settings.resolve_cache_path.exists()


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Service temporarily unavailable</body></html>",
        feed([Entry("2306.14824v1", KOSMOS_TITLE, KOSMOS_ABSTRACT)])[:-300],  # cut off
        b"",
        feed([Entry("2306.14824v1", KOSMOS_TITLE, KOSMOS_ABSTRACT)]).replace(
            b"2023-06-28T06:31:47Z", b"yesterday"
        ),
    ],
    ids=["html", "truncated", "empty", "bad-date"],
)
def test_malformed_feed_does_not_crash_or_cache(serve, settings, body):
    fake, url = serve([])
    fake.body = body
    p = paper(KOSMOS_ABSTRACT)
    before = copy.deepcopy(p)

    report = resolve_missing([p], settings=settings, client=client_for(url), progress=False)

    assert report.error and "unreadable answer" in report.error
    assert p == before
    assert not settings.resolve_cache_path.exists()  # garbage is not a "not found"


def test_http_error_stops_the_run(serve, settings):
    fake, url = serve([])
    fake.status = 503
    client = make_client(url, delay_seconds=0, num_retries=1)
    report = resolve_missing([paper(KOSMOS_ABSTRACT)], settings=settings, client=client)
    assert report.error.endswith(": HTTP 503")
    assert len(fake.requests) == 2  # the arxiv client retried once
    assert not settings.resolve_cache_path.exists()


def test_a_refused_query_skips_only_that_paper(serve, settings):
    fake, url = serve([])
    fake.status = 400
    client = make_client(url, delay_seconds=0, num_retries=0)
    papers = [paper(KOSMOS_ABSTRACT), paper(BACKDOOR_ABSTRACT)]
    report = resolve_missing(papers, settings=settings, client=client, progress=False)
    assert report.error is None
    assert [key for key, _ in report.failed] == [p.key for p in papers]
    assert not settings.resolve_cache_path.exists()


def test_foreign_file_at_cache_path_is_refused_not_overwritten(serve, settings):
    fake, url = serve([])
    path = settings.resolve_cache_path
    path.parent.mkdir(parents=True)
    path.write_text("file\ttitle\narxiv\tsomething\n")
    report = resolve_missing([paper(KOSMOS_ABSTRACT)], settings=settings, client=client_for(url))
    assert "not a resolve cache" in report.error
    assert path.read_text() == "file\ttitle\narxiv\tsomething\n"
    assert fake.requests == []


# ---------------------------------------------------------------- end to end with the corpus


def test_resolved_ids_reach_read_corpus(serve, settings, tmp_path, capsys):
    corpus = tmp_path / "papers.jsonl"
    rows = [{"title": BACKDOOR_TITLE, "abstract": BACKDOOR_ABSTRACT}, {"abstract": KOSMOS_ABSTRACT}]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    papers = read_corpus(corpus, metadata=[]).papers
    assert [p.arxiv_id for p in papers] == [None, None]
    _, url = serve(
        [
            Entry("2306.15875v2", BACKDOOR_TITLE, BACKDOOR_ABSTRACT),
            Entry("2306.14824v1", KOSMOS_TITLE, KOSMOS_ABSTRACT),
        ]
    )

    report = resolve_missing(papers, settings=settings, client=client_for(url))  # with progress
    assert report.error is None and len(report.resolved) == 2
    assert "Resolving arXiv IDs" in capsys.readouterr().err

    fresh = read_corpus(corpus, metadata=[settings.resolve_cache_path]).papers
    assert [(p.arxiv_id, p.key) for p in fresh] == [
        ("2306.15875", "2306.15875"),
        ("2306.14824", "2306.14824"),
    ]
    assert fresh[1].title == KOSMOS_TITLE  # a missing title is filled from arXiv


# ---------------------------------------------------------------- pure helpers


def test_title_query_drops_punctuation_and_splits_at_maths():
    assert resolve.title_query('Skill-it "Now"') == 'ti:"Skill it Now"'
    assert resolve.title_query(r"Learning $\alpha$ Fast Models") == (
        'ti:"Learning" AND ti:"Fast Models"'
    )
    assert resolve.title_query("$x$") is None


def test_abstract_phrase_is_a_contiguous_run_within_one_sentence():
    phrase = resolve.abstract_phrase(BACKDOOR_ABSTRACT)
    assert len(phrase.split()) >= resolve.MIN_PHRASE_WORDS
    sentences = re.split(r"(?<=[.!?])\s+", BACKDOOR_ABSTRACT)
    assert any(contains(s, phrase) for s in sentences)
    assert resolve.abstract_phrase("Too short to search. Really.") is None


def test_abstract_start_is_long_enough_for_metadata():
    text = "$a$ $b$ " * 20 + "real words follow here and continue for a good while longer"
    start = resolve.abstract_start(text)
    assert len(resolve.normalize(start)) >= resolve.Metadata.PREFIX
    assert resolve.abstract_start(BACKDOOR_ABSTRACT) == BACKDOOR_ABSTRACT[:80]
