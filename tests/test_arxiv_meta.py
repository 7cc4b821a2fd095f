"""arXiv IDs in every form, paper metadata from every reader (the metadata snapshot, Atom
feeds, JSONL/CSV), streamed in constant memory, kept through Chroma, and BibTeX from it."""

from __future__ import annotations

import json
import random
import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from fake_arxiv import Entry, feed
from pybtex.database import parse_string

import qa
from qa.arxiv_ids import ArxivIdError, id_month, parse_arxiv_id
from qa.bibliography import bibtex
from qa.config import Settings
from qa.corpus import (
    Paper,
    deduplicate,
    iter_corpus,
    load_corpus,
    normalize,
    read_corpus,
    read_file,
)
from qa.filters import Filters
from qa.index import open_index
from qa.ingest import build_index

# ---------------------------------------------------------------- IDs


@pytest.mark.parametrize(
    "text, arxiv_id, version",
    [
        ("2306.15875", "2306.15875", None),
        ("2306.15875v2", "2306.15875", 2),
        ("arXiv:2306.15875v12", "2306.15875", 12),
        ("ARXIV: 2306.15875", "2306.15875", None),
        ("https://arxiv.org/abs/2306.15875v3", "2306.15875", 3),
        ("http://export.arxiv.org/abs/2306.15875", "2306.15875", None),
        ("https://arxiv.org/pdf/2306.15875v1.pdf", "2306.15875", 1),
        ("0704.0001", "0704.0001", None),
        ("1412.9999", "1412.9999", None),
        ("1501.00001", "1501.00001", None),
        ("hep-th/9901001", "hep-th/9901001", None),
        ("arXiv:hep-th/9901001v1", "hep-th/9901001", 1),
        ("math.GT/0309136", "math.GT/0309136", None),
        ("https://arxiv.org/abs/quant-ph/0201082v1", "quant-ph/0201082", 1),
    ],
)
def test_every_common_form_is_read(text, arxiv_id, version):
    assert parse_arxiv_id(text) == qa.parse_arxiv_id(text)
    parsed = parse_arxiv_id(text)
    assert (parsed.id, parsed.version) == (arxiv_id, version)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("2399.00001", "month 99"),
        ("2300.00001", "month 00"),
        ("0612.1234", "April 2007"),
        ("1412.12345", "four digits before 2015"),
        ("2306.1234", "five digits from 2015"),
        ("hep-th/9913001", "month 13"),
        ("hep-th/0801001", "March 2007"),
        ("2306.15875v0", "v1"),
        ("not an id", "not an arXiv ID"),
        ("", "not an arXiv ID"),
    ],
)
def test_impossible_ids_are_refused_with_the_reason(text, reason):
    with pytest.raises(ArxivIdError, match=reason):
        parse_arxiv_id(text)


def test_id_month():
    assert id_month("2306.15875") == date(2023, 6, 1)
    assert id_month("hep-th/9901001") == date(1999, 1, 1)
    assert id_month("math.GT/0309136") == date(2003, 9, 1)
    assert id_month("2399.00001") is None and id_month(None) is None


# ---------------------------------------------------------------- the metadata snapshot


def snapshot_row(i: int, **overrides) -> dict:
    """A record in the arXiv metadata snapshot's exact shape (Kaggle `arxiv` dataset)."""
    row = {
        "id": f"2401.{i:05d}",
        "submitter": "Alice Zhang",
        "authors": "Alice Zhang, Bruno Costa and Carla Rossi",
        "title": f"A study\n  number {i}",
        "comments": "12 pages, 3 figures",
        "journal-ref": "Phys. Rev. D 99, 123 (2024)",
        "doi": f"10.1103/PhysRevD.99.{i}",
        "report-no": None,
        "categories": "cs.CL cs.AI",
        "license": "http://creativecommons.org/licenses/by/4.0/",
        "abstract": f"  We study problem {i} with a new method.\n  It works well.\n",
        "versions": [
            {"version": "v1", "created": "Mon, 15 Jan 2024 10:00:00 GMT"},
            {"version": "v2", "created": "Tue, 20 Feb 2024 10:00:00 GMT"},
        ],
        "update_date": "2024-02-20",
        "authors_parsed": [
            ["Zhang", "Alice", ""],
            ["Costa", "Bruno", ""],
            ["Rossi", "Carla", "Jr"],
        ],
    }
    row.update(overrides)
    return row


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def test_snapshot_record_becomes_a_paper_with_every_field(tmp_path):
    path = write_jsonl(
        tmp_path / "arxiv-metadata-oai-snapshot.json",
        [snapshot_row(1), snapshot_row(2, id="hep-th/9901001", categories="hep-th")],
    )
    first, old = read_corpus(path, metadata=[]).papers
    assert (first.key, first.arxiv_id, first.marker) == (
        "2401.00001",
        "2401.00001",
        "[arXiv:2401.00001]",
    )
    assert first.title == "A study number 1"
    assert first.abstract == "We study problem 1 with a new method. It works well."
    assert first.authors == ["Alice Zhang", "Bruno Costa", "Carla Rossi Jr"]
    assert first.categories == ["cs.CL", "cs.AI"]
    assert (first.published, first.updated) == (date(2024, 1, 15), date(2024, 2, 20))
    assert first.doi == "10.1103/PhysRevD.99.1"
    assert first.journal_ref == "Phys. Rev. D 99, 123 (2024)"
    assert first.comment == "12 pages, 3 figures"
    assert old.arxiv_id == "hep-th/9901001" and old.categories == ["hep-th"]
    d = first.to_dict()
    assert d["published"] == "2024-01-15" and d["authors"][0] == "Alice Zhang"


def test_snapshot_authors_string_without_authors_parsed(tmp_path):
    row = snapshot_row(3, authors_parsed=None, versions=[])
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    [paper] = read_corpus(path, metadata=[]).papers
    assert paper.authors == ["Alice Zhang", "Bruno Costa", "Carla Rossi"]
    assert paper.published == date(2024, 1, 1)  # no versions: the ID's month


def test_impossible_id_is_refused_with_its_line(tmp_path):
    rows = [
        snapshot_row(1),
        snapshot_row(2, id="2399.00002"),
        {"arxiv_id": "junk", "abstract": "x y"},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    report = read_corpus(path, metadata=[])
    assert any(w.startswith("s.jsonl: line 2:") and "month 99" in w for w in report.warnings)
    assert any(w.startswith("s.jsonl: line 3:") for w in report.warnings)
    assert [p.arxiv_id for p in report.papers] == ["2401.00001", None, None]


def test_users_own_row_numbers_in_id_are_not_warned_about(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"id": 7, "title": "T", "abstract": "Some text."}])
    report = read_corpus(path, metadata=[])
    assert report.warnings == [] and report.papers[0].arxiv_id is None


def test_seeds_get_their_month_from_the_id():
    papers = {p.arxiv_id: p for p in load_corpus()}
    assert papers["2306.15875"].published == date(2023, 6, 1)
    assert all(p.published == id_month(p.arxiv_id) for p in papers.values() if p.arxiv_id)


def test_read_time_filter(tmp_path):
    rows = [
        snapshot_row(1),
        snapshot_row(2, categories="cs.CV"),
        snapshot_row(3, versions=[{"version": "v1", "created": "Sat, 30 Dec 2023 10:00:00 GMT"}]),
        snapshot_row(4, categories="hep-th cs.CL"),
    ]
    path = write_jsonl(tmp_path / "s.json", rows)
    keep = Filters.make(since="2024-01-01", categories=["cs.CL"]).matches
    assert [p.key for p in read_corpus(path, metadata=[], keep=keep).papers] == [
        "2401.00001",
        "2401.00004",
    ]


def test_merging_duplicates_keeps_metadata_of_either():
    bare = Paper(key="2401.00001", arxiv_id="2401.00001", title="T", abstract="Same text.")
    rich = Paper(
        key="2401.00001", arxiv_id="2401.00001", title="T", abstract="Same text.",
        authors=["A B"], categories=["cs.CL"], doi="10.1/x",
    )  # fmt: skip
    [merged] = deduplicate([bare, rich])
    assert (merged.authors, merged.categories, merged.doi) == (["A B"], ["cs.CL"], "10.1/x")


# ---------------------------------------------------------------- streaming


def _peak_reading(path: Path, keep) -> tuple[int, int]:
    """(papers kept, peak bytes allocated) while streaming a file through the reader."""
    normalize.cache_clear()
    tracemalloc.start()
    try:
        kept = sum(1 for _ in iter_corpus(path, [], metadata=[], keep=keep))
        return kept, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_snapshot_is_read_in_constant_memory(tmp_path):
    """Three times the records, same peak: memory does not grow with the file (tracemalloc
    counts every Python allocation), and it stays far below the file's size."""
    rng = random.Random(0)
    words = [f"w{rng.randrange(5000)}" for _ in range(2000)]

    def rows(n: int):
        for i in range(1, n + 1):
            yield snapshot_row(
                i,
                abstract=" ".join(rng.choices(words, k=60)),
                categories=rng.choice(["cs.CL", "cs.CV"]),
            )

    keep = Filters.make(categories=["cs.CL"]).matches
    small = write_jsonl(tmp_path / "small.json", rows(3000))
    large = write_jsonl(tmp_path / "large.json", rows(9000))
    kept_small, peak_small = _peak_reading(small, keep)
    kept_large, peak_large = _peak_reading(large, keep)
    assert 1200 < kept_small < 1800 and 3900 < kept_large < 5100
    assert peak_large < peak_small * 1.25, (peak_small, peak_large)
    assert peak_large < large.stat().st_size / 2


def test_streamed_reader_reports_bad_lines_and_non_utf8(tmp_path):
    path = tmp_path / "s.jsonl"
    good = json.dumps(snapshot_row(1)).encode()
    latin = json.dumps(snapshot_row(2, title="Caf\u00e9"), ensure_ascii=False).encode("cp1252")
    path.write_bytes(good + b"\n{not json\n" + latin + b"\n")
    notes: list[str] = []
    papers = list(iter_corpus(path, notes, metadata=[]))
    assert [p.title for p in papers] == ["A study number 1", "Café"]
    assert any("line 2: invalid JSON" in n for n in notes)
    assert any("line 3: not valid UTF-8" in n for n in notes)


# ---------------------------------------------------------------- Atom


def atom_entries() -> list[Entry]:
    return [
        Entry(
            "2401.00001v2",
            "Grounded Language Models",
            "We ground language models in images.",
            authors=["Alice Zhang", "Bruno Costa"],
            categories=["cs.CL", "cs.CV"],
            published="2024-01-15T10:00:00Z",
            updated="2024-02-20T10:00:00Z",
            journal_ref="ACL 2024",
            doi="10.18653/v1/x",
        ),
        Entry("hep-th/9901001v1", "Strings", "We study strings.", categories=["hep-th"],
              published="1999-01-05T00:00:00Z"),
    ]  # fmt: skip


def test_saved_atom_feed_is_read_with_every_field(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_bytes(feed(atom_entries(), "cat:cs.CL"))
    first, old = read_file(path).papers
    assert (first.arxiv_id, first.title) == ("2401.00001", "Grounded Language Models")
    assert first.authors == ["Alice Zhang", "Bruno Costa"]
    assert first.categories == ["cs.CL", "cs.CV"]
    assert (first.published, first.updated) == (date(2024, 1, 15), date(2024, 2, 20))
    assert (first.doi, first.journal_ref) == ("10.18653/v1/x", "ACL 2024")
    assert first.comment == "Accepted by INTERSPEECH 2023"
    assert (old.arxiv_id, old.published) == ("hep-th/9901001", date(1999, 1, 5))


def test_broken_atom_file_is_one_error(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_text('<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><entry>')
    with pytest.raises(qa.CorpusError, match=r"feed\.xml"):
        read_file(path)


# ---------------------------------------------------------------- Chroma round trip


def test_metadata_round_trip_through_chroma(tmp_path):
    settings = Settings(persist_dir=tmp_path / "store", collection="meta")
    path = write_jsonl(tmp_path / "s.json", [snapshot_row(1), snapshot_row(2, doi=None)])
    papers = read_corpus(path, metadata=[]).papers
    build_index(papers, settings=settings, progress=False)
    stored = open_index(settings).papers([p.key for p in papers])
    for paper in papers:
        assert stored[paper.key].to_dict() == paper.to_dict()


def test_metadata_change_is_an_update(tmp_path):
    settings = Settings(persist_dir=tmp_path / "store", collection="meta")
    paper = Paper(key="2401.00001", arxiv_id="2401.00001", title="T", abstract="Text here.")
    build_index([paper], settings=settings, progress=False)
    paper.categories = ["cs.CL"]
    report = build_index([paper], settings=settings, progress=False)
    assert report.updated == 1
    assert open_index(settings).papers(["2401.00001"])["2401.00001"].categories == ["cs.CL"]


# ---------------------------------------------------------------- BibTeX


def test_bibtex_is_valid_for_awkward_titles_and_names():
    papers = [
        Paper(
            key="2401.00001", arxiv_id="2401.00001",
            title="50% of {Braces} & $x^2$ costs #1 under_score \\emph ~ tilde",
            abstract="a", authors=["José Núñez", "O'Brien, Jr."], categories=["cs.CL", "cs.AI"],
            published=date(2024, 1, 15), doi="10.1/x_y",
        ),
        Paper(key="2401.00002", arxiv_id="2401.00002", title="Same first author",
              abstract="b", authors=["José Núñez"], published=date(2024, 2, 1)),
        Paper(key="hc0ffee0c0ffee", arxiv_id=None, title="No ID", abstract="c"),
        Paper(key="hep-th/9901001", arxiv_id="hep-th/9901001", title="Strings",
              abstract="d", categories=["hep-th"], published=date(1999, 1, 1)),
    ]  # fmt: skip
    text = qa.bibtex(papers)
    bib = parse_string(text, "bibtex")
    assert len(bib.entries) == 4 and len(set(bib.entries)) == 4
    entry = bib.entries[next(iter(bib.entries))]
    assert entry.type == "misc"
    assert entry.fields["eprint"] == "2401.00001"
    assert entry.fields["archivePrefix"] == "arXiv"
    assert entry.fields["primaryClass"] == "cs.CL"
    assert entry.fields["year"] == "2024"
    assert str(entry.persons["author"][0]) == "Núñez, José"
    assert text.count("{") == text.count("}")
    old = bib.entries[list(bib.entries)[3]]
    assert (old.fields["eprint"], old.fields["primaryClass"]) == ("hep-th/9901001", "hep-th")
    assert "eprint" not in bib.entries[list(bib.entries)[2]].fields
    assert bibtex([papers[0], papers[0]]).count("@misc") == 1


def test_cli_ingest_of_a_snapshot_filters_while_reading(tmp_path, capsys):
    rows = [
        snapshot_row(1),
        snapshot_row(2, categories="cs.CV"),
        snapshot_row(3, versions=[{"version": "v1", "created": "Sat, 30 Dec 2023 10:00:00 GMT"}]),
        snapshot_row(4, categories="hep-th cs.CL"),
        snapshot_row(5, id="2499.00005"),  # impossible month: reported, kept without an ID
    ]
    path = write_jsonl(tmp_path / "arxiv-metadata-oai-snapshot.json", rows)
    from qa.cli import main
    from qa.config import get_settings

    code = main(["ingest", str(path), "--category", "cs.CL", "--since", "2024-01-01"])
    captured = capsys.readouterr()
    assert code == 0
    assert "keeping papers matching: published since 2024-01-01; categories cs.CL" in captured.err
    assert "line 5: '2499.00005' is not an arXiv ID: month 99 does not exist" in captured.err
    assert "3 papers kept" in captured.out  # row 5 too, cited as ref:…
    held = open_index(get_settings()).papers([f"2401.{i:05d}" for i in range(1, 6)])
    assert sorted(held) == ["2401.00001", "2401.00004"]
    assert held["2401.00004"].categories == ["hep-th", "cs.CL"]
