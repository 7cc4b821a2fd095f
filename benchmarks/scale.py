"""Print ingest throughput, index size and `qa.retrieve` latency on a synthetic corpus of N papers.

The corpus is the 517 bundled papers plus N - 517 synthetic ones (ids 99xx.xxxxx), each made
deterministically (--seed) by recombining real seed sentences: most from one "base" paper, in
order, the rest from random others; titles likewise (one title's head + another's tail).

Embedding N abstracts on 2 cores would take hours (benchmarks/ingest.py prints the
embedding-bound rate), so the store is fed vectors directly: each synthetic chunk gets a real
chunk vector of its base paper from the shipped cache (seeds/vectors/*.npz) plus Gaussian noise
(--noise per dimension), re-normalised; real papers keep their real vectors. Chunks are written
with collection.upsert(embeddings=...) in batches, with metadata shaped by qa.index.chunk_paper
(split by an approximate chars/4.2 token length: the real tokenizer's cost is printed from a
sample), so qa.retrieve works on the result unchanged.

Printed: chunking rate, ingest throughput into Chroma (chunks/s), index size on disk, the
keyword index's build time (and its parts), the first (cold) retrieve, and warm p50/p95 over
the golden questions, for embedded mode or (--server) a real `chroma run` subprocess.

Usage: python benchmarks/scale.py --papers 10000 [--server] [--rounds 2] [--batch 2000]
       [--grow 0.01] [--since 2023-06-01]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from _common import (
    GOLDEN,
    chroma_server,
    cpu_seconds,
    cpu_summary,
    default_settings,
    du_bytes,
    latency_summary,
    line,
    mb,
    peak_rss_mb,
    questions,
    self_rss_mb,
    server_pid,
    server_rss_mb,
    temp_dir,
)
from _stages import measure_retrieve

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
CHARS_PER_TOKEN = 4.2


def approx_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


# ---------------------------------------------------------------- synthetic corpus


def synthetic_papers(real: list, n: int, seed: int) -> tuple[list, list[int]]:
    """n - len(real) recombined papers (and the base paper index of each)."""
    from qa.corpus import Paper

    rng = np.random.default_rng(seed)
    sents = [SENTENCE.split(p.abstract.strip()) for p in real]
    titles = [p.title.split() for p in real]
    out, bases = [], []
    for i in range(max(0, n - len(real))):
        b = int(rng.integers(len(real)))
        own = sents[b]
        keep = sorted(rng.choice(len(own), size=max(1, round(len(own) * 0.6)), replace=False))
        body = [own[j] for j in keep]
        for _ in range(int(rng.integers(1, 4))):
            other = sents[int(rng.integers(len(real)))]
            body.insert(int(rng.integers(len(body) + 1)), other[int(rng.integers(len(other)))])
        head = titles[b][: max(1, len(titles[b]) // 2)]
        tail_src = titles[int(rng.integers(len(real)))]
        tail = tail_src[len(tail_src) // 2 :]
        arxiv_id = f"99{i // 100000:02d}.{i % 100000:05d}"
        out.append(
            Paper(
                key=arxiv_id,
                arxiv_id=arxiv_id,
                title=" ".join(head + tail),
                abstract=" ".join(body),
                sources=["synthetic"],
                published=real[b].published,  # so date filters select synthetic papers too
                categories=list(real[b].categories),
            )
        )
        bases.append(b)
    return out, bases


def real_vectors(real: list, model_id: str) -> list[np.ndarray]:
    """Per real paper, its chunks' vectors from the shipped cache (matrix rows)."""
    from qa.index import _text_hash, chunk_paper, vector_cache_path

    data = np.load(vector_cache_path(model_id))
    cache = dict(zip(data["hashes"].tolist(), data["vectors"], strict=True))
    pool = data["vectors"]
    rng = np.random.default_rng(0)
    out = []
    for p in real:
        rows = []
        for c in chunk_paper(p, 256):
            v = cache.get(_text_hash(model_id, c.text))
            rows.append(v if v is not None else pool[int(rng.integers(len(pool)))])
        out.append(np.vstack(rows))
    return out


def perturbed(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    v = base + rng.normal(0.0, noise, size=base.shape).astype(np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- measuring


def chunk_all(real: list, synth: list) -> tuple[list, float]:
    from qa.index import chunk_paper

    t = time.perf_counter()
    chunked = [chunk_paper(p, 256, length=approx_tokens) for p in real + synth]
    return chunked, time.perf_counter() - t


def tokenizer_chunk_rate(papers: list, sample: int = 300) -> float:
    """Papers/s of chunk_paper with the real WordPiece length function (what qa ingest does)."""
    from qa.embeddings import token_length
    from qa.index import chunk_paper

    token_length("warm up")
    part = papers[:sample]
    t = time.perf_counter()
    for p in part:
        chunk_paper(p, 256)
    return len(part) / (time.perf_counter() - t)


def write(index, chunked, vectors_for, batch: int, pid: int | None) -> tuple[int, float, float]:
    """Upsert every chunk with its vector; returns (chunks, seconds, CPU seconds).

    CPU counts this process (embedded Chroma included) plus the server process `pid`, if any:
    on a loaded machine it is the figure that says what an idle one would do.
    """
    coll = index.collection
    ids, docs, metas, embs = [], [], [], []
    written, start = 0, time.perf_counter()
    cpu0 = cpu_seconds() + (cpu_seconds(pid) if pid else 0.0)

    def flush() -> None:
        nonlocal written
        if ids:
            vectors = np.vstack(embs)
            index.call(coll.upsert, ids=ids, documents=docs, metadatas=metas, embeddings=vectors)
            written += len(ids)
            for buf in (ids, docs, metas, embs):
                buf.clear()

    report_every = max(batch, 20000)
    next_report = report_every
    for p_idx, chunks in enumerate(chunked):
        vecs = vectors_for(p_idx, len(chunks))
        for c, v in zip(chunks, vecs, strict=True):
            ids.append(c.id)
            docs.append(c.text)
            metas.append(c.metadata)
            embs.append(v)
        if len(ids) >= batch:
            flush()
            if written >= next_report:
                el = time.perf_counter() - start
                line(f"  ... {written} chunks", f"{el:.0f} s, {written / el:.0f} chunks/s")
                next_report += report_every
    flush()
    index.bump_revision()
    cpu = cpu_seconds() + (cpu_seconds(pid) if pid else 0.0) - cpu0
    return written, time.perf_counter() - start, cpu


def keyword_build_parts(index) -> dict[str, float]:
    """The keyword index build, step by step as KeywordIndex.rebuild does it."""
    import bm25s

    from qa.retrieval import stems

    out = {}
    t = time.perf_counter()
    count = index.count()
    texts = []
    for offset in range(0, count, 5000):
        got = index.call(index.collection.get, include=["documents"], limit=5000, offset=offset)
        texts += got["documents"]
    out["read from Chroma"] = time.perf_counter() - t
    t = time.perf_counter()
    vocab: dict[str, int] = {}
    tokens = [[vocab.setdefault(w, len(vocab)) for w in stems(x)] for x in texts]
    out["tokenize+stem"] = time.perf_counter() - t
    t = time.perf_counter()
    bm25s.BM25().index(bm25s.tokenization.Tokenized(ids=tokens, vocab=vocab), show_progress=False)
    out["bm25s.index"] = time.perf_counter() - t
    out["vocab"] = len(vocab)
    return out


def golden_recall(settings, k: int = 5) -> str:
    """Sanity check: single-gold golden questions whose paper is in the top k at this scale."""
    from qa.retrieval import retrieve

    rows = [json.loads(r) for r in GOLDEN.open() if r.strip()]
    rows = [r for r in rows if len(r.get("gold") or []) == 1 and not r.get("history")]
    found = 0
    for r in rows:
        hits = retrieve(r["question"], k=k, settings=settings)
        found += r["gold"][0] in {h.paper.arxiv_id for h in hits}
    return f"{found}/{len(rows)} single-paper questions have their paper in the top {k}"


def filtered_latency(tag: str, settings, since: str) -> None:
    """Warm `qa.retrieve` with a date filter (the arXiv-corpora issue's filters)."""
    import qa.retrieval
    from qa.retrieval import retrieve

    qs = questions()
    retrieve(qs[0], settings=settings, since=since)  # the filter's mask, built once
    default = qa.retrieval.DENSE_OVERFETCH
    for overfetch, how in ((default, "no where"), (0, "Chroma where")):
        qa.retrieval.DENSE_OVERFETCH = overfetch
        times = []
        for q in qs:
            t = time.perf_counter()
            retrieve(q, settings=settings, since=since)
            times.append(time.perf_counter() - t)
        line(f"{tag}: retrieve warm, since {since}, {how}", latency_summary(times))
    qa.retrieval.DENSE_OVERFETCH = default


def grow(tag: str, args, index, real: list, vectors_for, offset: int) -> None:
    """Add `--grow` (a share) more papers, then time the keyword index update a writer does
    before committing them (KeywordIndex.build: a full rebuild, read back from Chroma)."""
    from qa.retrieval import KeywordIndex

    extra, bases = synthetic_papers(real, len(real) + int(args.papers * args.grow), args.seed + 7)
    for p in extra:  # ids after the main run's
        p.key = p.arxiv_id = "98" + p.key[2:]
    chunked, _ = chunk_all([], extra)
    rng = np.random.default_rng(args.seed + 8)
    vecs = lambda i, n: perturbed(vectors_for(bases[i], n), rng, args.noise)  # noqa: E731
    written, write_s, _ = write(index, chunked, vecs, args.batch, None)
    added = f"{len(extra)} papers, {written} chunks, {write_s:.1f} s"
    line(f"{tag}: +{args.grow:.0%} papers", added)
    revision, count = index.revision(), index.count()
    t = time.perf_counter()
    KeywordIndex().build(index, revision, count)
    line(f"{tag}: keyword index update (build+save)", f"{time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    KeywordIndex().load_saved(index, revision, count)
    line(f"{tag}: keyword index load (a reader)", f"{time.perf_counter() - t:.1f} s")


def run(args, settings, where: Path, server_url: str | None = None) -> None:
    from qa.corpus import load_corpus
    from qa.index import open_index

    mode = "server" if server_url else "embedded"
    tag = f"{mode} {args.papers}"
    real = load_corpus()
    t = time.perf_counter()
    synth, bases = synthetic_papers(real, args.papers, args.seed)
    line(f"{tag}: synthetic corpus", f"{len(synth)} papers in {time.perf_counter() - t:.1f} s")
    chunked, chunk_s = chunk_all(real, synth)
    n_chunks = sum(map(len, chunked))
    line(
        f"{tag}: chunking (approx. length)",
        f"{n_chunks} chunks, {len(chunked) / chunk_s:.0f} papers/s ({chunk_s:.1f} s)",
    )
    line(
        f"{tag}: chunking (real tokenizer, sample)",
        f"{tokenizer_chunk_rate(synth or real):.0f} papers/s",
    )

    index = open_index(settings)
    index.create()  # written directly, like an index from before the corpus record
    vecs = real_vectors(real, index.model_id)
    rng = np.random.default_rng(args.seed + 1)

    def vectors_for(p_idx: int, n: int) -> np.ndarray:
        if p_idx < len(real):
            rows = vecs[p_idx]
            return rows if len(rows) == n else rows[np.minimum(np.arange(n), len(rows) - 1)]
        base = vecs[bases[p_idx - len(real)]]
        picked = base[np.minimum(np.arange(n), len(base) - 1)]
        return perturbed(picked, rng, args.noise)

    pid = server_pid(server_url) if server_url else None
    written, write_s, cpu_s = write(index, chunked, vectors_for, args.batch, pid)
    line(
        f"{tag}: ingest into Chroma (vectors given)",
        f"{written} chunks in {write_s:.1f} s = {written / write_s:.0f} chunks/s, "
        f"{len(chunked) / write_s:.0f} papers/s",
    )
    line(
        f"{tag}: ingest CPU (client+server)",
        f"{cpu_s:.1f} s = {written / cpu_s:.0f} chunks per CPU-second",
    )
    time.sleep(1)
    line(f"{tag}: index size on disk", f"{mb(du_bytes(where))} ({where.name})")

    parts = keyword_build_parts(index)
    vocab = parts.pop("vocab")
    line(
        f"{tag}: keyword index build (parts)",
        ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + f"; vocab {vocab}",
    )
    m = measure_retrieve(settings, questions(), rounds=args.rounds)
    line(f"{tag}: first retrieve (cold: model+BM25)", f"{m['first']:.1f} s")
    line(f"{tag}: first retrieve stages", m["first_stages"].summary())
    line(f"{tag}: keyword index build (in 1st call)", f"{m['kw_build']:.1f} s")
    line(f"{tag}: retrieve warm", latency_summary(m["latencies"]))
    line(f"{tag}: client CPU per retrieve", cpu_summary(m["cpu"]))
    line(f"{tag}: stages", m["stages"].summary())
    line(f"{tag}: golden sanity check", golden_recall(settings))
    filtered_latency(tag, settings, args.since)
    if args.grow:
        grow(tag, args, index, real, vectors_for, len(chunked))
    rss = f"client {self_rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)"
    if server_url:
        srv = server_rss_mb(server_url)
        rss += f", server {srv:.0f} MB" if srv else ", server ?"
    line(f"{tag}: resident memory", rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--papers", type=int, default=10000)
    parser.add_argument("--server", action="store_true", help="a real `chroma run` server")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions")
    parser.add_argument("--batch", type=int, default=2000, help="chunks per upsert")
    parser.add_argument("--noise", type=float, default=0.02, help="Gaussian sigma per dim")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--keep", action="store_true", help="keep the temp store")
    parser.add_argument("--grow", type=float, default=0.01, help="share of papers added after")
    parser.add_argument("--since", default="2023-06-01", help="date filter for a warm pass")
    args = parser.parse_args()

    default_settings()
    from qa.config import Settings

    print(f"scale run: {args.papers} papers, {'server' if args.server else 'embedded'}", flush=True)
    with temp_dir(f"bench-scale-{args.papers}-", keep=args.keep) as tmp:
        if args.server:
            with chroma_server(tmp / "server") as url:
                settings = Settings(chroma_url=url, persist_dir=tmp / "unused")
                run(args, settings, tmp / "server", url)
        else:
            run(args, Settings(persist_dir=tmp / "store"), tmp / "store")


if __name__ == "__main__":
    main()
