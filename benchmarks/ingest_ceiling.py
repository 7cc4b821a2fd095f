"""`qa.build_index` through an instant loopback embeddings server vs a bare upsert loop.

The ceiling of our own ingest pipeline (record the papers, chunk them with the real tokenizer,
send texts to an OpenAI-compatible server, upsert, save the keyword index) compared with the
floor: `collection.upsert` of the same chunks and the same vectors in batches of 256, nothing
else. Same papers (N synthetic ones, as benchmarks/scale.py makes them), same run, fresh
stores in a temp dir; the server is a subprocess (_instant_embeddings.py) answering at once.
Prints both rates and their ratio (issue 13's target: ≥ 0.8), with the one-time load of the
embeddings client (importing langchain_openai and openai: seconds, once per process) timed on
its own and the ratio with it counted too.

Both sides are timed from opening a fresh store (the bare loop's `PersistentClient` and
`create_collection` count, as `build_index` opening its store does) and measured in
`--rounds` rounds whose order flips (bare first, then ours first), each round's ratio printed
with the median: on this shared 2-core machine one bare/ours pair swung by ±0.2 with what
else ran in those seconds. CPU seconds (this process, all threads) are the steadier figure.

Usage: python benchmarks/ingest_ceiling.py [--papers 5000] [--concurrency 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import cpu_seconds, default_settings, free_port, line, peak_rss_mb, temp_dir
from _instant_embeddings import vector


def bare_upsert(papers: list, path: Path) -> tuple[int, float, float]:
    """Chunks of `papers` (chunked beforehand) upserted with the server's vectors, in batches
    of the size qa's ingest writes; returns (chunks, wall s, CPU s)."""
    import chromadb

    from qa.index import chunk_paper
    from qa.ingest import WRITE_BATCH

    chunks = [c for p in papers for c in chunk_paper(p, 256)]
    vectors = [vector(c.text) for c in chunks]
    t, cpu = time.perf_counter(), time.process_time()
    client = chromadb.PersistentClient(path=str(path))
    coll = client.create_collection("bare", configuration={"hnsw": {"space": "cosine"}})
    for i in range(0, len(chunks), WRITE_BATCH):
        part = chunks[i : i + WRITE_BATCH]
        coll.upsert(
            ids=[c.id for c in part],
            documents=[c.text for c in part],
            metadatas=[c.metadata for c in part],
            embeddings=vectors[i : i + WRITE_BATCH],
        )
    return len(chunks), time.perf_counter() - t, time.process_time() - cpu


def ingest(build_index, papers: list, settings, batches: int):
    """`build_index` over `papers` in `batches` calls (the keyword index saved by the last);
    prints each call's seconds when there are several. Returns the summed report."""
    from qa.snapshot import merge_reports

    total = None
    size = -(-len(papers) // batches)
    for i in range(0, len(papers), size):
        last = i + size >= len(papers)
        t = time.perf_counter()
        part = build_index(papers[i : i + size], settings=settings, progress=False,
                           keyword_index=last)  # fmt: skip
        if batches > 1:
            line(f"  call {i // size + 1} ({len(papers[i : i + size])} papers)",
                 f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        if total is None:
            total = part
        else:
            merge_reports(total, part)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--papers", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4, help="QA_EMBED_CONCURRENCY")
    parser.add_argument("--rounds", type=int, default=1, help="bare/ours pairs, order flipped")
    parser.add_argument(
        "--batches", type=int, default=1, help="ingest in this many build_index calls, as a "
        "streamed ingest does (each call's time is printed: flat if a call costs its own papers)"
    )  # fmt: skip
    args = parser.parse_args()
    default_settings(embed_concurrency=args.concurrency)

    from scale import synthetic_papers

    from qa.config import Settings
    from qa.corpus import load_corpus
    from qa.embeddings import get_embeddings
    from qa.ingest import build_index

    real = load_corpus()
    synth, _ = synthetic_papers(real, args.papers, 1234)
    papers = (real + synth)[: args.papers]
    port = free_port()
    here = Path(__file__).resolve().parent
    server = subprocess.Popen([sys.executable, str(here / "_instant_embeddings.py"), str(port)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
            except urllib.error.HTTPError:
                break  # it answers (501 to a GET)
            except OSError:
                time.sleep(0.1)
        with temp_dir("bench-ceiling-") as tmp:
            spec = f"openai-compatible:instant@{url}"
            t = time.perf_counter()
            get_embeddings(spec)  # once per process: imports langchain_openai and openai
            load_s = time.perf_counter() - t
            line("load the embeddings client (once)", f"{load_s:.1f} s")

            def bare(r: int) -> tuple[float, float]:
                n_chunks, wall, cpu = bare_upsert(papers, tmp / f"bare-{r}")
                line("  bare collection.upsert", f"{n_chunks} chunks in {wall:.1f} s "
                     f"= {n_chunks / wall:.0f} chunks/s, CPU {cpu:.1f} s")  # fmt: skip
                return wall, cpu

            def ours(r: int) -> tuple[float, float]:
                settings = Settings(persist_dir=tmp / f"qa-{r}", embeddings=spec)
                server_cpu = cpu_seconds(server.pid)
                t, cpu = time.perf_counter(), time.process_time()
                report = ingest(build_index, papers, settings, args.batches)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                server_cpu = cpu_seconds(server.pid) - server_cpu
                line("  qa.build_index via instant server", f"{report.chunks_written} chunks in "
                     f"{wall:.1f} s = {report.chunks_written / wall:.0f} chunks/s, "
                     f"{len(papers) / wall:.0f} papers/s, CPU {cpu:.1f} s "
                     f"(+ server {server_cpu:.1f} s)")  # fmt: skip
                return wall, cpu

            walls, cpus, loaded = [], [], []
            for r in range(args.rounds):
                print(f"round {r + 1} ({'bare first' if r % 2 == 0 else 'ours first'})")
                if r % 2 == 0:
                    (bare_s, bare_cpu), (qa_s, qa_cpu) = bare(r), ours(r)
                else:
                    (qa_s, qa_cpu), (bare_s, bare_cpu) = ours(r), bare(r)
                walls.append(bare_s / qa_s)
                cpus.append(bare_cpu / qa_cpu)
                loaded.append(bare_s / (qa_s + load_s))
                line("  ratio (qa / bare, throughput)",
                     f"{walls[-1]:.2f}x wall, {cpus[-1]:.2f}x CPU (server apart), "
                     f"{loaded[-1]:.2f}x wall with the client load")  # fmt: skip
            if args.rounds > 1:
                line("median ratio over the rounds", f"{statistics.median(walls):.2f}x wall, "
                     f"{statistics.median(cpus):.2f}x CPU ({args.rounds} rounds: "
                     f"{', '.join(f'{w:.2f}' for w in walls)})")  # fmt: skip
            line("peak RSS of this process", f"{peak_rss_mb():.0f} MB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
