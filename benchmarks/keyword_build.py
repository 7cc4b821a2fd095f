"""Print the time and peak RSS of a full keyword-index build (what a writer does for a store's
first commit, or when it cannot trust the saved copy) on an existing store, for this tree and
another (e.g. main's, before a change), each build in its own process, alternating.

Each build reads every chunk back from Chroma and indexes it (`KeywordIndex.build_in_memory`,
keeping the token arrays as a writer does; nothing is saved). A digest of the result (ids,
BM25 matrix, idf, facets, token arrays) is printed for each, so the trees' outputs can be
compared.

Usage: python benchmarks/keyword_build.py --dir STORE [--before TREE] [--rounds 2] [--page N]
  STORE: a store folder, e.g. the one `benchmarks/scale.py --papers 50000 --grow 0 --keep`
  prints (its `store` sub-folder); TREE: a checkout of the code to compare with, e.g.
  `git worktree add /tmp/before main` or `git archive main | tar -x -C /tmp/before`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, default_settings, line, peak_rss_mb, self_rss_mb


def digest(kw) -> str:
    """A hash of everything a full build makes (equal digests: the same saved index)."""
    h = hashlib.sha1()
    h.update(json.dumps([kw.ids, kw.idf]).encode())
    for key in ("data", "indices", "indptr"):
        h.update(kw.model.scores[key].tobytes())
    rows = kw.rows
    for part in (rows.tokens, rows.offsets, rows.paper, kw.facets.published):
        h.update(part.tobytes())
    h.update(json.dumps([rows.vocab, rows.keys, rows.hashes, list(kw.facets.postings)]).encode())
    for part in kw.facets.postings.values():
        h.update(part.tobytes())
    return h.hexdigest()[:12]


def build(store: Path, page: int | None) -> dict:
    """One full build in this process (the tree first on sys.path is the one measured)."""
    import qa.keyword_index as keyword_index
    from qa.config import Settings
    from qa.index import open_index

    if page:
        keyword_index.PAGE = page
    index = open_index(Settings(persist_dir=store))
    revision, count = index.snapshot()
    reads = [0.0]
    call = index.call

    def timed(fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(fn, *args, **kwargs)
        finally:
            reads[0] += time.perf_counter() - start

    index.call = timed
    rss_before = self_rss_mb()
    start = time.perf_counter()
    kw = keyword_index.KeywordIndex()
    kw.build_in_memory(index, revision, count, keep_rows=True)
    seconds, peak = time.perf_counter() - start, peak_rss_mb()  # before the digest's copies
    return {
        "chunks": count,
        "seconds": seconds,
        "read": reads[0],
        "rss_before": rss_before,
        "peak": peak,
        "digest": digest(kw),
    }


def run(tree: Path, store: Path, page: int | None) -> dict:
    """A build in a fresh process importing `qa` from `tree`."""
    cmd = [sys.executable, __file__, "--child", str(tree), "--dir", str(store)]
    cmd += ["--page", str(page)] if page else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the store (QA_PERSIST_DIR)")
    parser.add_argument("--before", type=Path, help="a tree to compare with (e.g. main's)")
    parser.add_argument("--rounds", type=int, default=2, help="builds per tree, alternating")
    parser.add_argument("--page", type=int, help="chunks per Chroma get (this tree's PAGE)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    default_settings()
    if args.child:
        sys.path.insert(0, str(args.child))
        print(json.dumps(build(args.dir, args.page)), flush=True)
        return
    trees = [("after", ROOT)] + ([("before", args.before)] if args.before else [])
    for round_ in range(args.rounds):
        for name, tree in trees if round_ % 2 == 0 else trees[::-1]:
            got = run(tree, args.dir, args.page if name == "after" else None)
            line(
                f"full build, {name} ({got['chunks']} chunks)",
                f"{got['seconds']:.1f} s (read back {got['read']:.1f}), "
                f"peak RSS {got['peak']:.0f} MB (opened {got['rss_before']:.0f}), "
                f"digest {got['digest']}",
            )


if __name__ == "__main__":
    main()
