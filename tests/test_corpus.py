"""The corpus: five seed layouts (and JSONL/CSV) → clean, de-duplicated, cited `Paper` records."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import qa
from qa.corpus import (
    CorpusError,
    Paper,
    clean_abstract,
    detect_layout,
    load_corpus,
    normalize,
    read_corpus,
    read_file,
    split_lines,
)

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
METADATA = SEEDS / "metadata.tsv"

CHROME_TITLE = re.compile(
    r"^(new|subscribe|get trending|byak|(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\w* \d)"
    r"|subscribe|get trending papers|byak and the research",
    re.IGNORECASE,
)


def seed(prefix: str) -> Path:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path


def metadata_rows() -> list[dict[str, str]]:
    with open(METADATA, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def starts_alike(abstract: str, start: str, chars: int = 40) -> bool:
    """An abstract and a metadata `abstract_start` begin with the same words."""
    return normalize(abstract)[:chars] == normalize(clean_abstract(start))[:chars]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus() -> list[Paper]:
    return load_corpus(SEEDS)


# ---------------------------------------------------------------- the five seed files


@pytest.mark.parametrize(
    ("prefix", "layout", "count"),
    [
        ("000", "arxiv-glued", 10),
        ("001", "abstract-prefixed", 10),
        ("002", "one-per-line", 11),
        ("003", "web-dump", 116),
        ("004", "web-dump", 379),
    ],
)
def test_seed_file_layout_and_count(prefix: str, layout: str, count: int) -> None:
    path = seed(prefix)
    assert detect_layout(split_lines(path.read_text(encoding="utf-8"))) == layout
    report = read_file(path)
    assert len(report.papers) == count
    assert report.warnings == []
    assert all(p.abstract and p.sources == [path.name] for p in report.papers)


def test_per_file_counts_agree_with_metadata_and_duplicates() -> None:
    """metadata.tsv lists each distinct paper once: 004's 379 = its 370 rows + 9 duplicates."""
    rows = Counter(row["file"] for row in metadata_rows())
    assert rows == {"000": 10, "001": 10, "002": 11, "003": 116, "004": 370}
    parsed = {prefix: len(read_file(seed(prefix)).papers) for prefix in rows}
    assert parsed == {"000": 10, "001": 10, "002": 11, "003": 116, "004": 370 + 9}
    assert sum(parsed.values()) - 9 == len(metadata_rows()) == 517


def test_layout1_each_id_belongs_to_the_abstract_before_it() -> None:
    path = seed("000")
    papers = read_file(path).papers
    ids_in_file = re.findall(r"arXiv:(\d{4}\.\d{5})", path.read_text(encoding="utf-8"))
    assert [p.arxiv_id for p in papers] == ids_in_file  # i-th abstract ↔ i-th ID
    assert papers[0].arxiv_id == "2306.15875"
    assert papers[0].abstract.startswith("Deep speech classification has achieved")
    kosmos = next(p for p in papers if p.abstract.startswith("We introduce Kosmos-2"))
    assert kosmos.arxiv_id == "2306.14824"
    assert papers[-1].arxiv_id == "2212.10923"  # the last ID stands alone on the last line
    assert papers[-1].abstract.startswith("Inductive reasoning is a core component")
    assert not any("arXiv:" in p.abstract for p in papers)
    by_id = {row["arxiv_id"]: row for row in metadata_rows()}
    for paper in papers:  # every ID/abstract pair agrees with the metadata table
        assert starts_alike(paper.abstract, by_id[paper.arxiv_id]["abstract_start"])


def test_layout1_comments_captured_on_the_right_paper() -> None:
    comments = {p.arxiv_id: p.comment for p in read_file(seed("000")).papers}
    assert comments == {
        "2306.15875": "Accepted by INTERSPEECH 2023",
        "2306.14824": "20 pages",
        "2306.09712": "In Proceedings of the 40th International Conference on Machine Learning "
        "(ICML 2023)",
        "2306.08543": "20 pages, 12 figures",
        "2306.07174": "",
        "2305.09137": "ACL2023 Main Conference",
        "2302.14771": "Accepted by CVPR2023",
        "2302.14045": "",
        "2301.03976": "",
        "2212.10923": "",
    }


def test_layout2_labels_stripped_and_header_skipped() -> None:
    papers = read_file(seed("001")).papers
    assert papers[0].abstract.startswith("This work proposes POMP")
    assert not any(p.abstract.lower().startswith("abstract") for p in papers)
    assert not any(p.abstract == "Jack" for p in papers)
    assert all(p.arxiv_id is None and p.title == "" for p in papers)  # the file has neither


def test_layout3_one_abstract_per_line_kept_faithfully() -> None:
    papers = read_file(seed("002")).papers
    assert papers[0].abstract.startswith("Pre-trained language models can be fine-tuned")
    assert r"($\sim0.01$% of model parameters)" in papers[0].abstract  # LaTeX debris kept
    starts = [row["abstract_start"] for row in metadata_rows() if row["file"] == "002"]
    assert all(any(starts_alike(p.abstract, s) for s in starts) for p in papers)


@pytest.mark.parametrize(
    ("prefix", "first_title"),
    [
        ("003", "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive "
         "Training Sample Selection"),
        ("004", "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"),
    ],
)  # fmt: skip
def test_web_dumps_titles_free_of_chrome(prefix: str, first_title: str) -> None:
    papers = read_file(seed(prefix)).papers
    assert papers[0].title == first_title  # 004's is glued to "Subscribe" in the file
    assert all(p.title for p in papers)
    assert not [p.title for p in papers if CHROME_TITLE.search(p.title)]
    assert not [p.abstract for p in papers if CHROME_TITLE.match(p.abstract)]


@pytest.mark.parametrize("prefix", ["003", "004"])
def test_web_dumps_pair_each_title_with_its_own_abstract(prefix: str) -> None:
    by_title = {normalize(row["title"]): row for row in metadata_rows()}
    for paper in read_file(seed(prefix)).papers:
        row = by_title[normalize(paper.title)]
        assert starts_alike(paper.abstract, row["abstract_start"]), paper.title


def test_web_dump_abstract_label_glued_from_the_page_is_stripped() -> None:
    """003 has "Abstract Language Models (LMs) achieve …"; arXiv's abstract starts at "Language"."""
    papers = read_file(seed("003")).papers
    paper = next(p for p in papers if p.title.startswith("Improving Language Models with Advan"))
    assert paper.abstract.startswith("Language Models (LMs) achieve substantial")


# ---------------------------------------------------------------- the bundled corpus


def test_bundled_corpus_counts(corpus: list[Paper]) -> None:
    assert len(corpus) == 517
    assert sum(p.arxiv_id is not None for p in corpus) == 516
    assert all(p.title.strip() for p in corpus)
    assert all(p.abstract.strip() for p in corpus)
    assert not [p.title for p in corpus if CHROME_TITLE.search(p.title)]


def test_bundled_corpus_agrees_with_metadata(corpus: list[Paper]) -> None:
    expected = {(row["title"], row["arxiv_id"] or None) for row in metadata_rows()}
    assert {(p.title, p.arxiv_id) for p in corpus} == expected
    by_id = {row["arxiv_id"]: row for row in metadata_rows() if row["arxiv_id"]}
    for paper in corpus:
        if paper.arxiv_id:
            assert starts_alike(paper.abstract, by_id[paper.arxiv_id]["abstract_start"])
            assert paper.key == paper.arxiv_id
            assert paper.url == f"https://arxiv.org/abs/{paper.arxiv_id}"
        else:
            assert paper.key.startswith("h") and paper.url is None


def test_bundled_corpus_merges_the_nine_duplicates(corpus: list[Paper]) -> None:
    merged = {p.arxiv_id: sorted(s[:3] for s in p.sources) for p in corpus if len(p.sources) > 1}
    assert len(merged) == 9
    assert Counter(tuple(s) for s in merged.values()) == {("003", "004"): 8, ("002", "004"): 1}
    assert merged["2302.06600"] == ["002", "004"]  # Task-Specific Skill Localization …
    assert all(len(p.sources) == 1 for p in corpus if p.arxiv_id not in merged)


def test_duplicate_across_002_and_004_differs_in_latex_only() -> None:
    def skill(prefix: str) -> Paper:
        papers = read_corpus(seed(prefix)).papers
        return next(p for p in papers if p.arxiv_id == "2302.06600")

    a, b = skill("002"), skill("004")
    assert a.abstract != b.abstract
    assert normalize(a.abstract)[:200] == normalize(b.abstract)[:200]


def test_deduplication_does_not_need_the_metadata_table() -> None:
    papers = read_corpus(SEEDS, metadata=[]).papers
    assert len(papers) == 517
    assert sum(len(p.sources) > 1 for p in papers) == 9


def test_bundled_corpus_is_deterministic_with_unique_keys(corpus: list[Paper]) -> None:
    again = load_corpus(SEEDS)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in corpus]
    keys = [p.key for p in corpus]
    assert len(set(keys)) == len(keys)
    assert [p.key for p in qa.load_corpus()] == keys  # the default is the bundled seeds


def test_load_corpus_accepts_folder_file_or_list(tmp_path: Path, corpus: list[Paper]) -> None:
    assert len(load_corpus(seed("000"))) == 10
    assert len(load_corpus(str(seed("001")))) == 10
    both = load_corpus([seed("003"), seed("004")])
    assert len(both) == 116 + 379 - 8
    assert len(load_corpus([SEEDS])) == 517
    assert len(load_corpus([seed("000"), seed("000")])) == 10  # the same file twice


def test_load_corpus_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match=re.escape(str(missing))):
        load_corpus(missing)
    with pytest.raises(CorpusError, match=r"nope\.txt"):
        load_corpus([seed("000"), missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(CorpusError, match=f"{re.escape(str(empty))}: no corpus files"):
        load_corpus(empty)


def test_resolved_id_in_a_later_table_fills_the_paper_without_one(tmp_path: Path) -> None:
    """A `qa resolve` cache row with an ID beats the vendored row without one."""
    (row,) = [r for r in metadata_rows() if not r["arxiv_id"]]
    cache = tmp_path / "resolved.tsv"
    cache.write_text(
        "key\tarxiv_id\ttitle\tabstract_start\n"
        f"hx\t2401.00001\t{row['title']}\t{row['abstract_start']}\n",
        encoding="utf-8",
    )
    papers = read_corpus(SEEDS, metadata=[METADATA, cache]).papers
    assert sum(p.arxiv_id is not None for p in papers) == 517
    assert next(p for p in papers if p.title == row["title"]).arxiv_id == "2401.00001"


# ---------------------------------------------------------------- tiny hand-made files

ABS_A = "We study small things. They matter a lot."
ABS_B = "Large models forget. We fix it with $\\sim0.01$% of the parameters."
ABS_C = "Code is at https://github.com/x/y"  # short, no final period
LAYOUTS = {
    "arxiv-glued": f"{ABS_A}\nAccepted by INTERSPEECH 2023\narXiv:2306.15875{ABS_B}\n"
    f"arXiv:2306.14824{ABS_C}\n20 pages\narXiv:1405.1234",
    "abstract-prefixed": f"Jack\nAbstract:{ABS_A}\nAbstract: {ABS_B}\nAbstract:{ABS_C}",
    "one-per-line": f"{ABS_A}\n{ABS_B}\n{ABS_C}",
    "web-dump": f"new\n\nSubscribe\n\nMar 11\n\nSmall Things: A Study\n\n{ABS_A}\n\n"
    f"Forgetting? Fixed!\n\n{ABS_B}\n\nCode Release Notes\n\n{ABS_C}\n",
    "web-dump-glued": f"Get trending papers in your email inbox!\nSubscribeSmall Things: A Study\n"
    f"{ABS_A}\nForgetting? Fixed!\n{ABS_B}\nCode Release Notes\n{ABS_C}",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("newline", ["", "\n"])
def test_hand_made_file_in_each_layout(tmp_path: Path, layout: str, newline: str) -> None:
    path = write(tmp_path, "mine.txt", LAYOUTS[layout].rstrip("\n") + newline)
    report = read_file(path)
    assert report.warnings == []
    assert [p.abstract for p in report.papers] == [ABS_A, ABS_B, ABS_C]
    if layout == "arxiv-glued":
        assert [p.arxiv_id for p in report.papers] == ["2306.15875", "2306.14824", "1405.1234"]
        assert [p.comment for p in report.papers] == [
            "Accepted by INTERSPEECH 2023",
            "",
            "20 pages",
        ]
    if layout.startswith("web-dump"):
        titles = ["Small Things: A Study", "Forgetting? Fixed!", "Code Release Notes"]
        assert [p.title for p in report.papers] == titles


def test_old_style_id_glued_to_an_abstract_starting_with_a_digit(tmp_path: Path) -> None:
    path = write(
        tmp_path, "old.txt", f"{ABS_A}\narXiv:1405.12343D scenes are hard.\narXiv:hep-th/9901001"
    )
    papers = read_file(path).papers
    assert [p.arxiv_id for p in papers] == ["1405.1234", "hep-th/9901001"]
    assert papers[1].abstract == "3D scenes are hard."


def test_layout1_stray_id_is_warned_with_its_line(tmp_path: Path) -> None:
    text = f"{ABS_A}\narXiv:2306.15875\narxiv:2306.14824{ABS_B}\narXiv:2306.09712"
    report = read_file(write(tmp_path, "stray.txt", text))
    assert [(p.abstract, p.arxiv_id) for p in report.papers] == [
        (ABS_A, "2306.15875"),
        (ABS_B, "2306.09712"),
    ]
    assert report.warnings == ["stray.txt: line 3: arXiv ID 2306.14824 has no abstract before it"]


def test_web_dump_without_chrome_or_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.txt", f"Small Things\n{ABS_A}\nBig Things\n{ABS_B}\n")
    papers = read_file(path).papers
    assert [(p.title, p.abstract) for p in papers] == [
        ("Small Things", ABS_A),
        ("Big Things", ABS_B),
    ]


def test_titles_that_look_like_chrome_are_kept(tmp_path: Path) -> None:
    text = f"new\nSubscribers Leave Early\n{ABS_A}\nJanus 2\n{ABS_B}\n"
    papers = read_file(write(tmp_path, "chrome.txt", text)).papers
    assert [p.title for p in papers] == ["Subscribers Leave Early", "Janus 2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Abstract: We do it.", "We do it."),
        ("Abstract:We do it.", "We do it."),
        ("Abstract We do it.", "We do it."),
        ("Abstract. In this paper we do it.", "In this paper we do it."),
        ("ABSTRACT Deep nets do it.", "Deep nets do it."),
        ("Abstract — We do it.", "We do it."),
        ("Abstract Language Models (LMs) achieve a lot.", "Language Models (LMs) achieve a lot."),
        ("Abstract Large language models are big.", "Large language models are big."),
        ("Abstract 3D scenes are hard.", "3D scenes are hard."),
        ("  We   do\tit.  ", "We do it."),
    ],
)
def test_clean_abstract_strips_the_label(text: str, expected: str) -> None:
    assert clean_abstract(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Abstract reasoning is hard for models.",
        "Abstract Meaning Representation (AMR) is a graph.",
        "Abstract Meaning Representation is a graph.",
        "Abstract Visual Reasoning (AVR) is hard.",
        "Abstract Syntax Trees help.",
        "Abstract-based methods work.",
        "Abstracts are short.",
    ],
)
def test_clean_abstract_keeps_the_word_when_it_is_text(text: str) -> None:
    assert clean_abstract(text) == text


def test_abstract_labels_in_a_file(tmp_path: Path) -> None:
    text = "Abstract: We do it well.\nAbstract reasoning is hard for models.\nAbstract We win."
    papers = read_file(write(tmp_path, "labels.txt", text)).papers
    assert [p.abstract for p in papers] == [
        "We do it well.",
        "Abstract reasoning is hard for models.",
        "We win.",
    ]


def test_very_short_abstracts(tmp_path: Path) -> None:
    assert [
        p.abstract for p in read_file(write(tmp_path, "a.txt", "We win.\nIt works.\n")).papers
    ] == [
        "We win.",
        "It works.",
    ]
    web = "Subscribe\nA Tiny Paper\nWe win.\nAnother Tiny One\nIt works\n"
    papers = read_file(write(tmp_path, "b.txt", web)).papers
    assert [(p.title, p.abstract) for p in papers] == [
        ("A Tiny Paper", "We win."),
        ("Another Tiny One", "It works"),  # no full stop: still the abstract after its title
    ]


def test_unicode_line_separator_inside_an_abstract_does_not_split_it(tmp_path: Path) -> None:
    text = f"Title One\nWe study\u2028separators. They matter.\nTitle Two\n{ABS_A}\n"
    papers = read_file(write(tmp_path, "u.txt", text)).papers
    assert [p.title for p in papers] == ["Title One", "Title Two"]
    assert papers[0].abstract == "We study separators. They matter."


# ---------------------------------------------------------------- JSONL and CSV


def test_jsonl_and_csv_columns(tmp_path: Path) -> None:
    rows = [
        {"arxiv_id": "2306.15875v2", "title": "Fake the Real", "abstract": ABS_A, "comment": "x"},
        {"arxiv_id": "", "title": "No ID Yet", "abstract": ABS_B},
        {"arxiv_id": "arXiv:2306.14824", "abstract": ABS_C},
    ]
    jsonl = write(tmp_path, "mine.jsonl", "\n".join(json.dumps(r) for r in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["Arxiv_ID", "Title", "Abstract"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k.title().replace("Id", "ID"): v for k, v in r.items()} for r in rows)
    csv_path = write(tmp_path, "mine.csv", buffer.getvalue())
    for path in (jsonl, csv_path):
        papers = read_file(path).papers
        assert [p.arxiv_id for p in papers] == ["2306.15875", None, "2306.14824"]
        assert [p.title for p in papers] == ["Fake the Real", "No ID Yet", ""]
        assert [p.abstract for p in papers] == [ABS_A, ABS_B, ABS_C]
    assert read_file(jsonl).papers[0].comment == "x"


def test_csv_detection_needs_a_real_header(tmp_path: Path) -> None:
    single = write(tmp_path, "one.csv", f'abstract\n"{ABS_A}"\n"{ABS_B}"\n')
    assert [p.abstract for p in read_file(single).papers] == [ABS_A, ABS_B]
    # a title with a comma on the first line of a page dump is not a CSV header
    dump = write(tmp_path, "dump.txt", "And, Abstract\nWe ``skills,'' win.\nNext Title\nWe lose.\n")
    assert [p.title for p in read_file(dump).papers] == ["And, Abstract", "Next Title"]


def test_jsonl_broken_line_keeps_the_good_ones(tmp_path: Path) -> None:
    good = json.dumps({"abstract": ABS_A, "title": "T"})
    path = write(tmp_path, "b.jsonl", f'{good}\n{{"abstract": "cut off\n\n[1, 2]\n{good}\n')
    report = read_file(path)
    assert [p.abstract for p in report.papers] == [ABS_A, ABS_A]
    assert any(w.startswith("b.jsonl: line 2: invalid JSON") for w in report.warnings)
    assert any("line 4" in w for w in report.warnings)  # a JSON value that is not an object


def test_csv_bad_id_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", f'arxiv_id,abstract\nnot-an-id,"{ABS_A}"\n')
    report = read_file(path)
    assert report.papers[0].arxiv_id is None
    assert any("line 2" in w and "not-an-id" in w for w in report.warnings)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n\n\t \r\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary"),
        (b"cat\ndog\nbird\nfish\n", "unknown layout"),
        (b"Jack\nJill\n", "unknown layout"),
        (b"arxiv_id,title\n2306.15875,Fake the Real\n", "abstract"),
        (b'{"title": "no abstract here"}\n', "no abstracts"),
        (b"Get trending papers in your email inbox!\nSubscribe\n", "unknown layout"),
    ],
)
def test_unusable_file_raises_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "bad.txt", content)
    with pytest.raises(CorpusError, match=message) as caught:
        read_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(CorpusError, match=re.escape(str(path))):
        load_corpus(tmp_path)


def test_cp1252_is_decoded_with_a_stated_fallback(tmp_path: Path, caplog) -> None:
    text = "We study caf\u00e9 \u201cquotes\u201d in text. They matter.\nSecond line is fine too."
    path = write(tmp_path, "win.txt", text.encode("cp1252"))
    report = read_file(path)
    assert (
        report.papers[0].abstract == "We study caf\u00e9 \u201cquotes\u201d in text. They matter."
    )
    (warning,) = report.warnings
    assert "win.txt" in warning and "UTF-8" in warning and "cp1252" in warning
    with caplog.at_level(logging.WARNING, logger="qa.corpus"):
        load_corpus(path)
    assert "cp1252" in caplog.text


def test_utf16_with_bom_is_decoded(tmp_path: Path) -> None:
    path = write(tmp_path, "u16.txt", ("\ufeff" + ABS_A + "\n" + ABS_B).encode("utf-16-le"))
    assert [p.abstract for p in read_file(path).papers] == [ABS_A, ABS_B]


def test_truncated_web_dump_keeps_good_records_and_names_the_line(tmp_path: Path) -> None:
    text = f"Subscribe\nFirst Title\n{ABS_A}\nSecond Title\n{ABS_B}\nThird Title Cut Off"
    report = read_file(write(tmp_path, "cut.txt", text))
    assert [p.title for p in report.papers] == ["First Title", "Second Title"]
    (warning,) = report.warnings
    assert warning.startswith("cut.txt: line 6:") and "Third Title Cut Off" in warning


def test_truncated_layout1_keeps_the_last_abstract_without_id(tmp_path: Path) -> None:
    text = f"{ABS_A}\narXiv:2306.15875{ABS_B}\n"
    report = read_file(write(tmp_path, "cut1.txt", text))
    assert [(p.abstract, p.arxiv_id) for p in report.papers] == [
        (ABS_A, "2306.15875"),
        (ABS_B, None),
    ]
    (warning,) = report.warnings
    assert warning.startswith("cut1.txt: line 2:")


def test_a_bad_file_in_a_folder_stops_the_load_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "a_good.txt", ABS_A)
    write(tmp_path, "b_bad.txt", b"\x00\x01")
    with pytest.raises(CorpusError, match=r"b_bad\.txt"):
        load_corpus(tmp_path)


def test_folder_skips_hidden_and_table_files(tmp_path: Path) -> None:
    write(tmp_path, "one.txt", ABS_A)
    write(tmp_path, ".hidden.txt", b"\x00")
    write(tmp_path, "metadata.tsv", "file\ttitle\n")
    assert [p.abstract for p in load_corpus(tmp_path)] == [ABS_A]


def test_dedup_merges_same_paper_but_not_different_ids(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json.dumps({"abstract": ABS_A, "title": "Same Title"}))
    write(tmp_path, "b.txt", f"Same Title\n{ABS_A}\nOther\n{ABS_B}")
    rows = [
        {"arxiv_id": "2401.00001", "title": "Introduction", "abstract": ABS_B},
        {"arxiv_id": "2401.00002", "title": "Introduction", "abstract": ABS_C},
    ]
    write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in rows))
    papers = read_corpus(tmp_path, metadata=[]).papers
    assert [(p.title, sorted(p.sources)) for p in papers] == [
        ("Same Title", ["a.jsonl", "b.txt"]),
        ("Other", ["b.txt", "c.jsonl"]),  # same abstract as 2401.00001: merged, ID kept
        ("Introduction", ["c.jsonl"]),  # same title, different ID: another paper
    ]
    assert [p.arxiv_id for p in papers] == [None, "2401.00001", "2401.00002"]


# ---------------------------------------------------------------- property-based

LOWER_WORDS = (
    "we model models language learning data training transformer attention abstract new "
    "subscribe trending graph networks retrieval vision agents reasoning via for of the and "
    "a to with on in is are by scalable efficient robust sparse diffusion naïve benchmark "
    "results show improve tasks method approach our this evaluation"
)
ACRONYMS = ["LLMs", "GPT-4", "ImageNet", "3D", "BERT", "ViT", "Kosmos-2", "Subscribers"]
WORDS = LOWER_WORDS.split() + ACRONYMS
DEBRIS = [
    r"($\sim0.01$% of parameters)",
    "384times384",
    r"$20.57\%$",
    "(+3.1% compared to CoOp)",
    "``skills,''",
    "(e.g., ImageNet)",
    r"$\mathcal{O}(n)$",
]
URLS = ["https://github.com/x/y", "https://aka.ms/kosmos-2", "//github.com/KaiyangZhou/CoOp"]
COMMENTS = [
    "Accepted by INTERSPEECH 2023",
    "20 pages, 12 figures",
    "ACL2023 Main Conference",
    "In Proceedings of the 40th International Conference on Machine Learning (ICML 2023)",
    "arXiv admin note: text overlap with arXiv:2101.00001",
    "Accepted at ICML 2023. Code: https://github.com/a/b",
]
word = st.sampled_from(WORDS)
TITLE_EXTRAS = ["vs.", "v2", "GPT-3.5", "(RL)", "2", "Mar", "11"]


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


@st.composite
def titles(draw: st.DrawFn) -> str:
    """2-20 words, no final full stop; may hold ':', '?', '!', ',' and inner "vs." / "v2"."""
    words = draw(st.lists(st.one_of(word, st.sampled_from(TITLE_EXTRAS)), min_size=2, max_size=20))
    for i in draw(st.lists(st.integers(0, len(words) - 1), max_size=2, unique=True)):
        words[i] += draw(st.sampled_from([":", "?", "!", ","]))
    title = capital(" ".join(words)).rstrip(".")
    assume(not re.fullmatch(r"Mar \d{1,2}", title))  # that is a date line: page chrome
    return title


@st.composite
def sentences(draw: st.DrawFn) -> str:
    words = draw(st.lists(word, min_size=2, max_size=25))
    if draw(st.booleans()):
        words.insert(draw(st.integers(1, len(words))), draw(st.sampled_from(DEBRIS)))
    return capital(" ".join(words)) + "."


@st.composite
def abstracts(draw: st.DrawFn) -> str:
    text = " ".join(draw(st.lists(sentences(), min_size=1, max_size=8)))
    if draw(st.booleans()):
        text += f" Code is available at {draw(st.sampled_from(URLS))}"  # no final period
    return text


def unlabelled(text: str) -> bool:
    """By the corpus rules "Abstract" before a capital or digit is a label, so a generated
    abstract may start with "Abstract" only before a lower-case word ("Abstract reasoning …")."""
    return not re.match(r"Abstract\s+[^a-z]", text)


month = st.integers(1, 12)
arxiv_ids = st.one_of(  # new-style (2015-) five digits; old-style (2007-2014) four
    st.builds("{:02d}{:02d}.{:05d}".format, st.integers(15, 26), month, st.integers(0, 99999)),
    st.builds("{:02d}{:02d}.{:04d}".format, st.integers(8, 14), month, st.integers(0, 9999)),
)
comments = st.one_of(
    st.sampled_from(COMMENTS),
    st.lists(word, min_size=1, max_size=12).map(lambda ws: capital(" ".join(ws))),
)


@dataclass
class Rec:
    title: str
    abstract: str
    arxiv_id: str
    comment: str


record = st.builds(
    Rec, titles(), abstracts().filter(unlabelled), arxiv_ids, st.one_of(st.just(""), comments)
)
records = st.lists(record, min_size=1, max_size=8)
# Truncation needs a second record: one lone title, or one abstract whose only ID is gone,
# leaves nothing that shows the layout.
two_or_more = st.lists(record, min_size=2, max_size=8)


def render_glued(recs: list[Rec]) -> str:
    lines, previous = [], ""
    for rec in recs:
        lines.append(f"arXiv:{previous}{rec.abstract}" if previous else rec.abstract)
        lines += [rec.comment] if rec.comment else []
        previous = rec.arxiv_id
    return "\n".join([*lines, f"arXiv:{previous}"])


def render_csv(recs: list[Rec]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arxiv_id", "title", "abstract", "comment"])
    writer.writerows([r.arxiv_id, r.title, r.abstract, r.comment] for r in recs)
    return buffer.getvalue()


CHROME_003 = ["new", "Get trending papers in your email inbox!", "Subscribe",
              "byAK and the research community", "Mar 11"]  # fmt: skip
CHROME_004 = ["Get trending papers in your email inbox once a day!",
              "Get trending papers in your email inbox!"]  # fmt: skip


def pairs(recs: list[Rec]) -> list[str]:
    return [line for r in recs for line in (r.title, r.abstract)]


RENDER = {
    "arxiv-glued": render_glued,
    "abstract-prefixed": lambda recs: "\n".join(
        ["Jack", *(f"Abstract:{r.abstract}" for r in recs)]
    ),
    "one-per-line": lambda recs: "\n".join(r.abstract for r in recs),
    "web-dump-003": lambda recs: "\n\n".join(CHROME_003 + pairs(recs)),
    "web-dump-004": lambda recs: "\n".join(
        [*CHROME_004, "Subscribe" + recs[0].title, *pairs(recs)[1:]]
    ),
    "web-dump-plain": lambda recs: "\n".join(pairs(recs)),
    "jsonl": lambda recs: "\n".join(json.dumps(r.__dict__, ensure_ascii=False) for r in recs),
    "csv": render_csv,
}
CARRIES = {  # which fields each layout carries besides the abstract
    "arxiv-glued": {"arxiv_id", "comment"},
    "web-dump-003": {"title"},
    "web-dump-004": {"title"},
    "web-dump-plain": {"title"},
    "jsonl": {"arxiv_id", "title", "comment"},
    "csv": {"arxiv_id", "title", "comment"},
}


def check_round_trip(layout: str, recs: list[Rec], text: str, folder: Path) -> None:
    report = read_file(write(folder, f"{layout}.txt", text))
    papers = report.papers
    assert report.warnings == [], layout
    assert [p.abstract for p in papers] == [r.abstract for r in recs], layout  # none lost/invented
    for name in ("arxiv_id", "title", "comment"):
        empty = None if name == "arxiv_id" else ""
        carried = name in CARRIES.get(layout, ())
        expected = [getattr(r, name) if carried else empty for r in recs]
        assert [getattr(p, name) for p in papers] == expected, (layout, name)


line_ends = st.sampled_from(["\n", "\r\n"])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(recs=records, newline=line_ends, trailing_newline=st.booleans())
def test_random_records_round_trip_in_every_layout(
    recs: list[Rec], newline: str, trailing_newline: bool
) -> None:
    """Each generated record set is rendered in all eight layouts and parsed back."""
    with tempfile.TemporaryDirectory() as folder:
        for layout, render in RENDER.items():
            text = render(recs) + ("\n" if trailing_newline else "")
            check_round_trip(layout, recs, text.replace("\n", newline), Path(folder))


@FAST
@given(recs=two_or_more, cut=st.sampled_from(["web-dump-003", "web-dump-004", "web-dump-plain"]))
def test_web_dump_ending_on_a_title_keeps_every_abstract(recs: list[Rec], cut: str) -> None:
    lines = split_lines(RENDER[cut](recs).rstrip("\n"))
    lines = lines[:-2] if lines[-2:-1] == [""] else lines[:-1]  # drop the last abstract
    with tempfile.TemporaryDirectory() as folder:
        report = read_file(write(Path(folder), "cut.txt", "\n".join(lines)))
    assert [(p.title, p.abstract) for p in report.papers] == [
        (r.title, r.abstract) for r in recs[:-1]
    ]
    (warning,) = report.warnings
    assert f"line {len(lines)}:" in warning and "title with no abstract" in warning


@FAST
@given(recs=two_or_more)
def test_layout1_without_its_last_id_keeps_every_abstract(recs: list[Rec]) -> None:
    text = render_glued(recs).rsplit("\n", 1)[0]  # drop the standalone last ID
    with tempfile.TemporaryDirectory() as folder:
        report = read_file(write(Path(folder), "cut.txt", text))
    assert [p.abstract for p in report.papers] == [r.abstract for r in recs]
    assert [p.arxiv_id for p in report.papers] == [r.arxiv_id for r in recs[:-1]] + [None]
    (warning,) = report.warnings
    assert "last abstract has no arXiv ID" in warning
