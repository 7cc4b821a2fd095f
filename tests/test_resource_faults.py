"""Issue 9: resource faults on a real (tmpfs) file system: a full disk during ingest and a
read-only store are named as such, nothing recorded is lost, and once space is freed (or the
store is writable again) re-running completes. Needs root for `mount`; skipped otherwise."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_durability import keys_found, made_up, run_qa, small_seeds, write_jsonl  # noqa: F401

from qa.config import get_settings
from qa.store import open_store

pytest_plugins = ["chroma_server"]


@pytest.fixture
def tmpfs(tmp_path, monkeypatch, small_seeds) -> Iterator[Path]:  # noqa: F811
    """A 32 MB tmpfs holding the store (QA_PERSIST_DIR), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.setenv("QA_PERSIST_DIR", str(mnt / "store"))
    get_settings.cache_clear()
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def fill(mnt: Path, leave_kb: int) -> Path:
    """Take all but `leave_kb` of the file system's free space."""
    out = subprocess.run(
        ["df", "-k", "--output=avail", str(mnt)], capture_output=True, text=True, check=True
    )
    avail = int(out.stdout.split()[-1])
    filler = mnt / "filler"
    subprocess.run(["fallocate", "-l", str((avail - leave_kb) * 1024), str(filler)], check=True)
    return filler


def last_line(stderr: str) -> str:
    """The error line (after any progress bar), with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1].split("\r")[-1]
    assert line.startswith("error: "), stderr
    return line


@pytest.mark.parametrize("leave_kb", [150, 0], ids=["index-write-fails", "record-write-fails"])
def test_full_disk_is_named_and_rerun_completes(tmpfs, tmp_path, leave_kb):
    assert run_qa("ingest").returncode == 0
    rows = [made_up(f"word{i}x", i) for i in range(40)]
    many = write_jsonl(tmp_path / "many.jsonl", rows)
    filler = fill(tmpfs, leave_kb)

    full = run_qa("ingest", str(many))
    assert full.returncode == 2
    assert "the disk is full" in last_line(full.stderr)
    assert "free some space and run the same command again" in full.stderr
    held = {p.key for p in open_store().papers()}
    assert len(held) in (12, 52)  # the record took all of them or none, never a part
    asked = run_qa("ask", "What is word3x?")  # a read answers, or names the full disk
    if asked.returncode:  # (embedded Chroma writes a little even to open a store)
        assert "the disk is full" in last_line(asked.stderr)

    filler.unlink()
    again = run_qa("ingest", str(many))
    assert again.returncode == 0, again.stderr
    assert len(open_store().papers()) == 52
    for i in (0, 17, 39):
        assert keys_found(f"word{i}x regulariser")[0] == f"2599.{i:05d}"


@pytest.mark.parametrize("index_mode", ["embedded", "server"], indirect=True)
def test_read_only_store_is_named_and_nothing_is_touched(index_mode, tmpfs, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation")])
    assert run_qa("ingest").returncode == 0
    assert run_qa("ingest", str(mine)).returncode == 0
    remount(tmpfs, "ro")
    try:
        papers = run_qa("papers")  # the record reads fine
        assert papers.returncode == 0 and "13 papers" in papers.stdout, papers.stderr
        asked = run_qa("ask", "What is zorbulation?")
        if index_mode == "server":  # only the record is local: reads never write
            assert asked.returncode == 0 and "[arXiv:2599.00000]" in asked.stdout, asked.stderr
        else:  # Chroma's embedded store cannot open read-only: say so, and how to fix it
            assert asked.returncode == 2
            assert len(asked.stderr.strip().splitlines()) == 1
            line = last_line(asked.stderr)
            assert "read-only" in line and "QA_PERSIST_DIR" in line
        ingest = run_qa("ingest", str(write_jsonl(tmp_path / "more.jsonl", [made_up("qux", 1)])))
        assert ingest.returncode == 2
        assert "read-only" in last_line(ingest.stderr)
    finally:
        remount(tmpfs, "rw")
    assert run_qa("ask", "What is zorbulation?").returncode == 0
    assert keys_found("zorbulation regulariser")[0] == "2599.00000"
    assert len(open_store().papers()) == 13
