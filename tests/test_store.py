"""Issue 9: the corpus record (qa/store.py) and identity without silent loss (qa/corpus.py):
Paper <-> dict round trip, which version wins, every merged/skipped/kept-both record counted,
an index from before the record adopted, resource faults named."""

from __future__ import annotations

import dataclasses
import errno
import json
import sqlite3
from pathlib import Path

import pytest

import qa
from qa.cli import main
from qa.config import get_settings
from qa.corpus import Paper, read_corpus
from qa.index import build_index, forget_indexes, open_index
from qa.store import (
    BUNDLED,
    USER,
    CorpusStore,
    IndexUnavailable,
    fault_reason,
    open_store,
    paper_from_dict,
    paper_to_dict,
)

ROOT = Path(__file__).resolve().parent.parent
A = "We study alpha widgets in depth and find that they wobble under load."
B = "Beta gadgets are shown to hum at night when the load is high enough."
C = "Gamma gizmos glow when heated past their limits in a vacuum chamber."


def paper(key: str, abstract: str, arxiv_id: str | None = None, source: str = "f.jsonl", **kw):
    return Paper(key=key, arxiv_id=arxiv_id, title=kw.pop("title", "T"), abstract=abstract,
                 sources=[source], **kw)  # fmt: skip


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the record


def test_paper_round_trips_with_every_field(tmp_path):
    p = paper("2401.00001", A, "2401.00001", comment="ICML", title="Widgets")
    data = paper_to_dict(p)
    assert set(data) == {f.name for f in dataclasses.fields(Paper)}  # new fields included
    assert paper_from_dict(data) == p
    assert paper_from_dict({**data, "field_of_a_later_version": 1}) == p
    store = CorpusStore(tmp_path / "corpus.sqlite3")
    store.add([p])
    assert store.papers() == [p] and store.get(["2401.00001"]) == {"2401.00001": p}
    assert store.origins() == {"2401.00001": USER}


def test_paper_to_dict_copies_lists(tmp_path):
    p = paper("2401.00001", A, "2401.00001", authors=["Ada"], categories=["cs.CL"])
    data = paper_to_dict(p)
    assert data == dataclasses.asdict(p)
    data["authors"].append("Bob")
    data["sources"].clear()
    assert p.authors == ["Ada"] and p.sources == ["f.jsonl"]


def test_a_writer_holds_one_connection_and_commits_each_transaction(tmp_path, monkeypatch):
    """`held_open` (a write under the writer lock): one connection for the whole run, no
    set-up or WAL checkpoint per transaction, yet every transaction is committed when it
    returns (another connection, or the next process after a kill -9, sees it); a failed one
    is rolled back and the next works; another thread uses a connection of its own."""
    import threading

    store = CorpusStore(tmp_path / "corpus.sqlite3")
    connect = sqlite3.connect
    opened: list[str] = []
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(str(a[0])) or
                        connect(*a, **k))  # fmt: skip
    with store.held_open():
        store.add([paper("a", A)])
        with store.held_open():  # re-entrant
            store.add([paper("b", B)])
        outside = connect(store.path)
        assert outside.execute("SELECT count(*) FROM papers").fetchone()[0] == 2
        with pytest.raises(RuntimeError), store._write() as conn:
            conn.execute("DELETE FROM papers")
            raise RuntimeError("killed half-way")
        assert store.count() == 2 and [p.key for p in store.papers()] == ["a", "b"]
        assert len(opened) == 1  # every write and read above went through one connection
        thread = threading.Thread(target=lambda: store.add([paper("c", C)]))
        thread.start()
        thread.join()
        assert len(opened) == 2 and store.count() == 3
        assert outside.execute("SELECT count(*) FROM papers").fetchone()[0] == 3
        outside.close()
    store.add([paper("d", "Delta doodads.")])  # after it: a connection per transaction again
    assert len(opened) == 3 and store.count() == 4


def test_generation_is_read_again_only_when_the_record_files_change(tmp_path, monkeypatch):
    """Readers ask for the generation once a question: while the record's files are unchanged
    (and older than a coarse file clock's tick) no connection is opened, and a commit by
    another process (or this one) is seen at the next call."""
    import os
    import subprocess
    import sys

    store = CorpusStore(tmp_path / "corpus.sqlite3")
    store.add([paper("a", A)])
    start = store.set_meta({"x": "1"})
    connect = sqlite3.connect
    opened: list[str] = []
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(str(a[0])) or
                        connect(*a, **k))  # fmt: skip
    assert store.generation() == start and len(opened) == 1  # just written: read again
    assert store.generation() == start and len(opened) == 2
    files = [f for f in (store.path, Path(f"{store.path}-wal")) if f.exists()]
    for f in files:  # as if the last commit were a minute ago
        os.utime(f, (f.stat().st_atime - 60, f.stat().st_mtime - 60))
    assert store.generation() == start and len(opened) == 3
    assert store.generation() == start and store.generation() == start and len(opened) == 3
    bump = "import sys; from qa.store import CorpusStore; CorpusStore(sys.argv[1]).set_meta({})"
    subprocess.run([sys.executable, "-c", bump, str(store.path)], check=True, cwd=ROOT)
    assert store.generation() == start + 1  # another process's commit, seen at once
    store.set_meta({"y": "2"})
    assert store.generation() == start + 2


def test_reading_an_absent_record_creates_nothing(tmp_path):
    store = CorpusStore(tmp_path / "nothing" / "corpus.sqlite3")
    assert store.papers() == [] and store.count() == 0 and store.generation() == 0
    assert not (tmp_path / "nothing").exists()


def test_same_abstract_merges_sources_and_fills_fields(tmp_path):
    store = CorpusStore(tmp_path / "c.sqlite3")
    store.add([paper("2401.00001", A, "2401.00001", source="a.jsonl", title="")])
    report = store.add([paper("2401.00001", A, "2401.00001", source="b.jsonl", title="Widgets")])
    assert report.updated == ["2401.00001"]
    held = store.get(["2401.00001"])["2401.00001"]
    assert held.sources == ["a.jsonl", "b.jsonl"] and held.title == "Widgets"
    again = store.add([paper("2401.00001", A, "2401.00001", source="b.jsonl", title="")])
    assert again.unchanged == ["2401.00001"]  # an empty field never erases a known one


def test_an_edited_file_replaces_its_own_papers(tmp_path):
    store = CorpusStore(tmp_path / "c.sqlite3")
    store.add([paper("2401.00001", A, "2401.00001", source="mine.jsonl")])
    report = store.add([paper("2401.00001", B, "2401.00001", source="mine.jsonl")])
    assert report.replaced == ["2401.00001"] and not report.kept_both
    assert store.get(["2401.00001"])["2401.00001"].abstract == B
    assert store.count() == 1


def test_a_user_file_never_replaces_a_bundled_paper(tmp_path):
    store = CorpusStore(tmp_path / "c.sqlite3")
    store.add([paper("2304.04704", A, "2304.04704", source="001.txt")], BUNDLED)
    report = store.add([paper("2304.04704", B, "2304.04704", source="001.txt")], USER)
    assert not report.replaced
    assert len(report.kept_both) == 1 and "2304.04704" in report.kept_both[0]
    held = {p.key: p for p in store.papers()}
    assert held["2304.04704"].abstract == A  # the bundled paper, untouched
    (variant,) = [p for k, p in held.items() if k != "2304.04704"]
    assert variant.abstract == B and variant.arxiv_id is None  # yours, kept, cited as ref:
    assert "2304.04704" in variant.comment
    # another user file with yet another abstract: also kept, nothing replaced
    third = store.add([paper("2304.04704", C, "2304.04704", source="other.jsonl")], USER)
    assert len(third.kept_both) == 1 and store.count() == 3
    # and the same file again adds nothing
    assert store.add([paper("2304.04704", B, "2304.04704", source="001.txt")]).added == []


def test_remove_and_find(tmp_path):
    store = CorpusStore(tmp_path / "c.sqlite3")
    store.add([paper("2401.00001", A, "2401.00001"), paper("h123", B)])
    assert store.find(["2401.00001", "h123", "2401.09999"]) == {
        "2401.00001": ["2401.00001"],
        "h123": ["h123"],
        "2401.09999": [],
    }
    assert store.remove(["h123", "nope"]) == ["h123"]
    assert [p.key for p in store.papers()] == ["2401.00001"]


# ---------------------------------------------------------------- identity in files


def test_papers_without_an_id_are_never_merged_on_a_title_alone(tmp_path):
    rows = [{"title": "Introduction", "abstract": text} for text in (A, B, C)]
    report = read_corpus(jsonl(tmp_path / "intro.jsonl", rows), metadata=[])
    assert sorted(p.abstract for p in report.papers) == sorted([A, B, C])
    assert report.merged == 0


def test_same_id_twice_in_a_file_is_reported_and_both_kept(tmp_path):
    rows = [
        {"arxiv_id": "2501.00011", "title": "Robots", "abstract": A},
        {"arxiv_id": "2501.00011", "title": "Robots v2", "abstract": B},
        {"arxiv_id": "2501.00012", "title": "Copy", "abstract": C},
        {"arxiv_id": "2501.00012", "title": "Copy", "abstract": C},
        "{broken",
    ]
    path = tmp_path / "dups.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8"
    )
    report = read_corpus(path, metadata=[])
    assert report.records == 4 and report.merged == 1 and report.skipped == 1
    assert len(report.kept_both) == 1 and report.kept_both[0].startswith("2501.00011:")
    by_abstract = {p.abstract: p for p in report.papers}
    assert by_abstract[A].arxiv_id == "2501.00011"  # the first keeps the ID
    assert by_abstract[B].arxiv_id is None and by_abstract[B].key.startswith("h")
    assert len(report.papers) == 3


def test_seed_corpus_counts_are_unchanged():
    report = read_corpus(ROOT / "seeds")
    assert len(report.papers) == 517 and report.merged == 9 and not report.kept_both


def test_ingest_summary_counts_every_record(tmp_path, capsys):
    bundled_id = "2304.04704"
    rows = [
        {"title": "Introduction", "abstract": A},
        {"title": "Introduction", "abstract": B},
        {"arxiv_id": "2501.00011", "title": "R", "abstract": C},
        {"arxiv_id": "2501.00011", "title": "R", "abstract": C},
        {"arxiv_id": bundled_id, "title": "Not POMP", "abstract": "A different abstract here."},
    ]
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    pomp = next(p for p in qa.load_corpus(ROOT / "seeds") if p.arxiv_id == bundled_id)
    jsonl(
        seeds / "s.jsonl",
        [{"arxiv_id": bundled_id, "title": pomp.title, "abstract": pomp.abstract}],
    )
    get_settings.cache_clear()
    assert main(["ingest", str(seeds)]) == 0
    origins = open_store().origins()
    assert origins == {bundled_id: USER}  # QA_SEEDS_DIR is the real seeds here, not tmp
    capsys.readouterr()
    assert main(["ingest", str(jsonl(tmp_path / "mine.jsonl", rows))]) == 0
    out, err = capsys.readouterr()
    assert "5 records: 1 merged as duplicates" in out
    assert "0 skipped" in out
    assert f"{bundled_id}: mine.jsonl has another abstract" in err
    assert "1 kept beside another version of their ID" in out
    assert open_index().papers([bundled_id])[bundled_id].abstract == pomp.abstract


def test_bundled_files_are_recorded_as_bundled(tmp_path, monkeypatch, capsys):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    jsonl(seeds / "s.jsonl", [{"arxiv_id": "2401.00001", "title": "W", "abstract": A}])
    monkeypatch.setenv("QA_SEEDS_DIR", str(seeds))
    get_settings.cache_clear()
    assert main(["ingest"]) == 0
    assert open_store().origins() == {"2401.00001": BUNDLED}
    mine = jsonl(tmp_path / "m.jsonl", [{"arxiv_id": "2401.00001", "title": "W", "abstract": B}])
    assert main(["ingest", str(mine)]) == 0
    assert "kept both" in capsys.readouterr().err
    assert main(["papers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["origin"] for r in rows} == {BUNDLED, USER} and len(rows) == 2


# ---------------------------------------------------------------- an index from before the record


def test_an_index_without_a_record_is_adopted_by_the_next_write(tmp_path):
    old = [paper("2401.00001", A, "2401.00001"), paper("2401.00002", B, "2401.00002")]
    build_index(old, progress=False)
    forget_indexes()
    path = open_store().path
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # as if built by an older version
    report = build_index([paper("2401.00003", C, "2401.00003")], progress=False)
    assert report.papers == 3 and report.removed == 0
    assert {p.key for p in open_store().papers()} == {"2401.00001", "2401.00002", "2401.00003"}
    assert set(open_index().papers(["2401.00001", "2401.00003"])) == {"2401.00001", "2401.00003"}


# ---------------------------------------------------------------- resource faults


def test_fault_reasons_are_named():
    assert fault_reason(OSError(errno.ENOSPC, "No space left on device")) == "the disk is full"
    assert fault_reason(sqlite3.OperationalError("database or disk is full")) == "the disk is full"
    assert fault_reason(OSError(errno.EROFS, "Read-only file system")) == "it is read-only"
    assert fault_reason(OSError(errno.EACCES, "Permission denied")) == "permission denied"
    wrapped = RuntimeError("Error in compaction")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert fault_reason(wrapped) == "the disk is full"
    assert fault_reason(ValueError("something else")) is None


def test_an_io_error_on_a_full_file_system_is_named_a_full_disk(tmp_path, monkeypatch):
    """SQLite says "disk I/O error" for some writes that hit the end of the disk."""
    import shutil

    import qa.store

    io_error = sqlite3.OperationalError("disk I/O error")
    usage = shutil.disk_usage(tmp_path)
    assert fault_reason(io_error, tmp_path / "store" / "corpus.sqlite3") is None  # room left
    monkeypatch.setattr(qa.store.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    assert fault_reason(io_error, tmp_path / "store" / "corpus.sqlite3") == "the disk is full"
    assert fault_reason(io_error) is None  # no place to look: not guessed
    assert fault_reason(sqlite3.OperationalError("no such table: x"), tmp_path) is None


def test_a_full_disk_while_recording_is_named_and_loses_nothing(tmp_path, monkeypatch):
    """Simulated ENOSPC inside the record's transaction: one message, nothing half-written;
    the next run (space freed) records everything."""
    store = CorpusStore(tmp_path / "c.sqlite3")
    store.add([paper("2401.00001", A, "2401.00001")])
    real_put = CorpusStore._put
    calls = {"n": 0}

    def full_after_one(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(CorpusStore, "_put", full_after_one)
    with pytest.raises(IndexUnavailable) as err:
        store.add([paper("2401.00002", B, "2401.00002"), paper("2401.00003", C, "2401.00003")])
    assert "the disk is full" in str(err.value) and "QA_CORPUS_PATH" in str(err.value)
    assert [p.key for p in store.papers()] == ["2401.00001"]  # the transaction rolled back
    monkeypatch.undo()
    store.add([paper("2401.00002", B, "2401.00002"), paper("2401.00003", C, "2401.00003")])
    assert store.count() == 3


def test_a_damaged_record_is_named_and_the_index_refills_a_new_one(tmp_path):
    papers = [paper("2401.00001", A, "2401.00001"), paper("2401.00002", B, "2401.00002")]
    build_index(papers, progress=False)
    forget_indexes()
    path = open_store().path
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(IndexUnavailable) as err:
        open_index()
    assert str(path) in str(err.value) and "QA_CORPUS_PATH" in str(err.value)
    assert "move the file aside" in str(err.value)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            Path(f"{path}{suffix}").rename(tmp_path / f"aside{suffix}")
    build_index([], progress=False)
    assert {p.key for p in open_store().papers()} == {"2401.00001", "2401.00002"}
