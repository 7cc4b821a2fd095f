"""Print what reading the corpus record's generation costs a reader (once a question):
`CorpusStore.generation()` against a connection opened per call (`counter("generation")`, what
`generation()` did before issue 13s), alternating, on a record whose last commit is a minute
old (a fresh commit is read again for SETTLED seconds).

Usage: python benchmarks/generation_latency.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import timeit
from pathlib import Path

from _common import line, temp_dir

from qa.corpus import Paper
from qa.store import CorpusStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with temp_dir("bench-generation-") as tmp:
        store = CorpusStore(tmp / "corpus.sqlite3")
        store.add([Paper(key="a", arxiv_id=None, title="T", abstract="x y", sources=["f"])])
        store.set_meta({"x": "1"})
        for path in (store.path, Path(f"{store.path}-wal")):
            if path.exists():  # as if the last commit were a minute ago
                os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))
        sides = {
            "connection per call": lambda: store.counter("generation"),
            "generation()": store.generation,
        }
        for _ in range(args.rounds):
            for name, fn in sides.items():
                best = min(timeit.repeat(fn, number=args.calls, repeat=3)) / args.calls
                line(f"record generation: {name}", f"{best * 1e6:.1f} µs a call")


if __name__ == "__main__":
    main()
