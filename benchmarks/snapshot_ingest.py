"""Ingest of a generated arXiv metadata snapshot (100k records by default): memory and speed.

The file has the real snapshot's fields and about its sizes (the 2.9M-record dump is ~4 GB,
~1.4 KB a record): 1–12 authors with `authors_parsed`, 1–3 categories, 120–260-word
abstracts, comments, a journal-ref and DOI on some, 1–3 versions.

Stages, each in a fresh process so its peak RSS (ru_maxrss) is its own:

  read     stream + parse + filter every record (`corpus.iter_corpus`), no index: the cost of
           reading a snapshot, with and without a filter (`--category cs.CL --since 2024`).
  ingest   `qa ingest FILE --category … --since …` path (`snapshot.ingest_stream`: read, filter,
           record in the corpus, index in batches) with a FAST FAKE EMBEDDING (a deterministic
           hashed bag of words, 384-d, numpy): embedding 100k papers with MiniLM takes hours on
           2 CPU cores (~20 docs/s), so this measures everything else. Real embedding speed:
           benchmarks/embeddings_speed.py.

Progress with ETA: `ingest` shows a tqdm bar over the bytes read (rate, time left) on a
terminal; here its final state is printed.

Usage: python benchmarks/snapshot_ingest.py [--records 100000] [--ingest-records 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import line, temp_dir

CATEGORIES = ["cs.CL", "cs.CV", "cs.LG", "cs.AI", "stat.ML", "math.OC", "hep-th", "quant-ph"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def seed_words() -> list[str]:
    """Words of the bundled abstracts, as often as they occur there: text that tokenises and
    chunks like real abstracts do."""
    from qa.corpus import load_corpus

    return [w for p in load_corpus() for w in p.abstract.split()]


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write `n` snapshot records (JSON lines, the Kaggle dump's shape)."""
    rng = random.Random(seed)
    vocab = seed_words()
    first = [f"Name{i}" for i in range(500)]
    last = [f"Surname{i}" for i in range(3000)]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            year = rng.randint(2015, 2025)
            month = rng.randint(1, 12)
            ident = f"{year % 100:02d}{month:02d}.{i % 100000:05d}"
            people = [(rng.choice(last), rng.choice(first), "") for _ in range(rng.randint(1, 8))]
            cats = rng.sample(CATEGORIES, rng.randint(1, 3))
            versions = [
                {"version": f"v{v + 1}", "created": f"Mon, {rng.randint(1, 28)} "
                 f"{MONTHS[month - 1]} {year} {rng.randint(0, 23):02d}:00:00 GMT"}
                for v in range(rng.randint(1, 3))
            ]  # fmt: skip
            row = {
                "id": ident,
                "submitter": f"{people[0][1]} {people[0][0]}",
                "authors": ", ".join(f"{f} {s}" for s, f, _ in people),
                "title": " ".join(rng.choices(vocab, k=rng.randint(6, 14))).capitalize(),
                "comments": f"{rng.randint(4, 40)} pages, {rng.randint(1, 12)} figures",
                "journal-ref": f"J. Sci. {rng.randint(1, 99)} ({year})"
                if rng.random() < 0.3
                else None,
                "doi": f"10.{rng.randint(1000, 9999)}/{i}" if rng.random() < 0.4 else None,
                "report-no": None,
                "categories": " ".join(cats),
                "license": None,
                "abstract": "  " + " ".join(rng.choices(vocab, k=rng.randint(90, 180))) + ".\n",
                "versions": versions,
                "update_date": f"{year}-{month:02d}-{rng.randint(1, 28):02d}",
                "authors_parsed": [list(p) for p in people],
            }
            handle.write(json.dumps(row) + "\n")


class HashEmbeddings:
    """A fast deterministic stand-in embedding: hashed bag of words, unit length, 384-d."""

    model_id = "bench-hash-384"

    def _one(self, text: str):
        import numpy as np

        vec = np.zeros(384, dtype=np.float32)
        for word in text.lower().split():
            vec[int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest()) % 384] += 1
        return (vec / (np.linalg.norm(vec) or 1.0)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(stage: str, path: str, filtered: bool) -> None:
    from qa.filters import Filters

    flt = Filters.make(since="2024-01-01", categories=["cs.CL"]) if filtered else None
    base = peak_rss_mb()
    t = time.perf_counter()
    out: dict = {}
    if stage == "read":
        from qa.corpus import iter_corpus

        warnings: list[str] = []
        seen = [0]

        def count(paper) -> bool:
            seen[0] += 1
            return flt.matches(paper) if flt else True

        out["kept"] = sum(1 for _ in iter_corpus(path, warnings, metadata=[], keep=count))
        out["read"] = seen[0]
    else:
        import qa.index
        from qa.snapshot import ingest_stream

        qa.index.get_embeddings = lambda spec=None: HashEmbeddings()
        report = ingest_stream(path, filters=flt, progress=True)
        out.update(kept=report.kept, batches=report.batches, chunks=report.ingest.chunks_written)
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = base
    print(json.dumps(out))


def run(stage: str, path: Path, filtered: bool, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, str(path)] + (
        ["--filtered"] if filtered else []
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    tail = [ln for ln in done.stderr.replace("\r", "\n").splitlines() if "reading" in ln]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["progress"] = tail[-1].strip() if tail else ""
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--ingest-records", type=int, default=100_000)
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--filtered", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.filtered)
        return
    with temp_dir("qa-snapshot-") as tmp:
        path = tmp / "arxiv-metadata-oai-snapshot.json"
        t = time.perf_counter()
        generate(path, args.records)
        size = path.stat().st_size
        line(
            f"generated {args.records:,} records",
            f"{size / 1e6:.0f} MB, {size / args.records:.0f} B/record, "
            f"{time.perf_counter() - t:.0f} s",
        )
        env = dict(os.environ, QA_PERSIST_DIR=str(tmp / "store"))
        for filtered in (False, True):
            r = run("read", path, filtered, env)
            what = "read+parse+filter (cs.CL since 2024)" if filtered else "read+parse (no filter)"
            line(
                what,
                f"{r['read'] / r['seconds']:,.0f} records/s, kept {r['kept']:,}, "
                f"{r['seconds']:.0f} s",
            )
            line(
                "  peak RSS",
                f"{r['peak_rss_mb']:.0f} MB (after imports {r['rss_before_mb']:.0f} MB)",
            )
        ingest_path = path
        if args.ingest_records < args.records:
            ingest_path = tmp / "part.json"
            with (
                open(path, encoding="utf-8") as src,
                open(ingest_path, "w", encoding="utf-8") as dst,
            ):
                for _, row in zip(range(args.ingest_records), src, strict=False):
                    dst.write(row)
        for filtered in (True, False):
            env = dict(os.environ, QA_PERSIST_DIR=str(tmp / f"store-{filtered}"))
            r = run("ingest", ingest_path, filtered, env)
            what = "ingest, fake embedding, " + ("cs.CL since 2024" if filtered else "everything")
            line(
                what,
                f"{r['kept'] / r['seconds']:,.0f} papers/s, {r['kept']:,} papers, "
                f"{r['chunks']:,} chunks, {r['seconds']:.0f} s",
            )
            line("  peak RSS", f"{r['peak_rss_mb']:.0f} MB; last progress: {r['progress'][:60]}")


if __name__ == "__main__":
    main()
