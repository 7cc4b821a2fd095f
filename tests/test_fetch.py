"""`qa fetch` against a loopback server speaking the arXiv API's Atom format, with paging."""

from __future__ import annotations

import socket
from datetime import date

import pytest
from fake_arxiv import Entry

import qa
from qa.arxiv_api import fetch, state_path
from qa.cli import main
from qa.config import Settings, get_settings
from qa.index import open_index

TOPICS = ["translation", "parsing", "summarisation", "tagging", "retrieval", "dialogue", "speech"]


def entries() -> list[Entry]:
    """Seven cs.CL papers (oldest first, as `sortOrder=ascending` returns them) and one other."""
    found = [
        Entry(
            f"2401.{i + 1:05d}v{1 + i % 2}",
            f"Neural {topic} with tiny models",
            f"We study {topic} for low-resource languages and report gains on {topic} benchmarks.",
            authors=[f"Author {i}", "Shared Person"],
            categories=["cs.CL", "cs.LG"],
            published=f"2024-01-{i + 10:02d}T00:00:00Z",
            updated=f"2024-03-{i + 10:02d}T00:00:00Z",
            journal_ref=f"Proc. Workshop {i}",
            doi=f"10.1/ws.{i}",
        )
        for i, topic in enumerate(TOPICS)
    ]
    return [
        *found,
        Entry("2402.00001v1", "Galaxies", "We count galaxies.", categories=["astro-ph"]),
    ]


@pytest.fixture
def api(serve, tmp_path, monkeypatch):
    """The fake API, and settings whose QA_ARXIV_API_URL is its plain endpoint."""
    fake, url = serve(entries())
    endpoint = url.removesuffix("?{}")
    monkeypatch.setenv("QA_ARXIV_API_URL", endpoint)
    monkeypatch.setenv("QA_ARXIV_DELAY", "0")
    monkeypatch.setenv("QA_ARXIV_PAGE_SIZE", "3")
    get_settings.cache_clear()
    return fake, get_settings()


def test_plain_endpoint_gets_the_query_slot():
    assert Settings(arxiv_api_url="http://127.0.0.1:8080/api/query").arxiv_api_url == (
        "http://127.0.0.1:8080/api/query?{}"
    )
    with pytest.raises(ValueError, match="not an http"):
        Settings(arxiv_api_url="ftp://example.org/api")


def test_fetch_pages_records_indexes_and_resumes(api):
    fake, settings = api
    first = fetch("cat:cs.CL", 5, settings=settings, progress=False)

    assert (first.error, first.start, first.fetched, first.exhausted) == (None, 0, 5, False)
    assert [(r["start"], r["max_results"]) for r in fake.requests] == [("0", "3"), ("3", "3")]
    assert {r["path"] for r in fake.requests} == {"/api/query"}
    assert {(r["sortBy"], r["sortOrder"]) for r in fake.requests} == {
        ("submittedDate", "ascending")
    }
    assert first.ingest.added == 5

    held = open_index(settings).papers([f"2401.{i:05d}" for i in range(1, 8)])
    assert sorted(held) == [f"2401.{i:05d}" for i in range(1, 6)]
    paper = held["2401.00002"]
    assert paper.title == "Neural parsing with tiny models"
    assert paper.authors == ["Author 1", "Shared Person"]
    assert paper.categories == ["cs.CL", "cs.LG"]
    assert (paper.published, paper.updated) == (date(2024, 1, 11), date(2024, 3, 11))
    assert (paper.doi, paper.journal_ref) == ("10.1/ws.1", "Proc. Workshop 1")
    assert paper.sources == ["arxiv-api"]

    fake.requests.clear()
    second = fetch("cat:cs.CL", 5, settings=settings, progress=False)
    assert (second.start, second.fetched, second.exhausted) == (5, 2, True)
    assert fake.requests[0]["start"] == "5"
    assert len(open_index(settings).papers([f"2401.{i:05d}" for i in range(1, 8)])) == 7

    third = fetch("cat:cs.CL", 5, settings=settings, progress=False)
    assert (third.start, third.fetched, third.exhausted) == (7, 0, True)


def test_fetch_interrupted_by_the_api_keeps_pages_and_resumes(api):
    fake, settings = api
    fake.fail_from = 1  # the second page (and its retries) answer 503
    broken = fetch("cat:cs.CL", 7, settings=settings, progress=False)
    assert broken.fetched == 3
    assert "HTTP 503" in broken.error and "3 papers fetched so far are kept" in broken.error
    assert "\n" not in broken.error
    assert state_path(settings, "cat:cs.CL").is_file()

    fake.fail_from = None
    fake.requests.clear()
    resumed = fetch("cat:cs.CL", 7, settings=settings, progress=False)
    assert (resumed.start, resumed.fetched) == (3, 4)
    assert fake.requests[0]["start"] == "3"
    hits = qa.retrieve("neural dialogue for low-resource languages", k=7, categories=["cs.CL"])
    assert {h.paper.arxiv_id for h in hits} == {f"2401.{i:05d}" for i in range(1, 8)}


def test_fetch_unreachable_api_is_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("QA_ARXIV_API_URL", f"http://127.0.0.1:{port}/api/query")
    monkeypatch.setenv("QA_ARXIV_DELAY", "0")
    get_settings.cache_clear()
    assert main(["fetch", "cat:cs.CL", "--max", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"arXiv API unreachable at http://127.0.0.1:{port}/api/query" in err
    assert "run the same command again" in err and len(err.splitlines()) == 1


def test_cli_fetch_then_similar(api, capsys):
    assert main(["fetch", "cat:cs.CL", "--max", "4"]) == 0
    out = capsys.readouterr().out
    assert "fetched 4 papers" in out and "more available" in out
    assert main(["similar", "arXiv:2401.00001", "--categories", "cs.CL", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("2401.0000" in line for line in lines)


def test_empty_query_is_refused(api):
    with pytest.raises(qa.arxiv_api.FetchError, match="empty query"):
        fetch("   ", settings=api[1], progress=False)


def test_resolve_fills_metadata_of_papers_with_ids(api, tmp_path, capsys):
    """`qa resolve FILE`: papers with an arXiv ID but no authors/categories get them from the
    API (one id_list request per page), recorded and indexed; the ID-month date is replaced by
    the first version's date; an ID arXiv does not know is named."""
    fake, settings = api
    mine = tmp_path / "mine.jsonl"
    rows = [
        '{"arxiv_id": "2401.00003", "title": "T3", "abstract": "Summaries of text."}',
        '{"arxiv_id": "arXiv:2401.00004v1", "title": "T4", "abstract": "Tags on words."}',
        '{"arxiv_id": "2401.99999", "title": "T9", "abstract": "Nobody knows this one."}',
    ]
    mine.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["resolve", str(mine)]) == 0
    captured = capsys.readouterr()
    assert "metadata filled for 2 papers" in captured.out
    assert "not on arXiv: 2401.99999" in captured.err
    assert [r.get("id_list") for r in fake.requests] == ["2401.00003,2401.00004,2401.99999"]
    held = open_index(settings).papers(["2401.00003", "2401.99999"])
    assert held["2401.00003"].authors == ["Author 2", "Shared Person"]
    assert held["2401.00003"].published == date(2024, 1, 12)  # not the ID's 2024-01-01
    assert "2401.99999" not in held  # resolve records what it filled; `qa ingest` the rest
