"""Print ingest throughput, disk, memory, keyword index and `qa.retrieve` latency on a synthetic
corpus of N papers (up to millions of chunks).

The corpus is the 517 bundled papers plus N - 517 synthetic ones (ids 99xx.xxxxx), each made
deterministically (--seed) by recombining real seed sentences: most from one "base" paper, in
order, the rest from random others; titles likewise (one title's head + another's tail). The
seeds carry no categories, so each synthetic paper gets one or two from a fixed skewed list
(its own random stream: the texts stay those of earlier runs), for the category filter.

Embedding N abstracts on 2 cores would take hours (benchmarks/ingest.py prints the
embedding-bound rate), so the store is fed vectors directly: each synthetic chunk gets a real
chunk vector of its base paper from the shipped cache (seeds/vectors/*.npz) plus Gaussian noise
(--noise per dimension), re-normalised; real papers keep their real vectors. Papers are made,
chunked and written in a stream (memory does not grow with N on our side) with
collection.upsert(embeddings=...) in batches, with metadata shaped by qa.index.chunk_paper
(split by an approximate chars/4.2 token length: the real tokenizer's cost is printed from a
sample), so qa.retrieve works on the result unchanged.

Each batch is also recorded in the corpus record with its account of the collection, as the
writer's `_write_batch` does (qa.store: the papers, then what each paper's chunks are), and
every phase commits with the writer's own `qa.ingest._commit`, which saves the keyword index.

Each phase is its own process, so each peak RSS is that phase's:
  ingest  stream every chunk into Chroma, then commit: the keyword index is built and saved
          as a writer does before committing (a full build: there is no saved copy yet)
  reader  a fresh process: cold first `qa.retrieve` (model, HNSW and the saved keyword index
          loaded), warm p50/p95 unfiltered, with a date filter, a category filter and a
          narrow date window (--narrow: a share of the chunks), each filtered pass along
          the dense path as it is and the paths before it (FILTER_PATHS)
  grow    add --grow (a share) more papers and commit: the writer's keyword index update
          (the saved copy plus the chunks of the papers changed since, read back by id), then,
          on the same state, a full build for comparison
Between phases the driver prints disk use (du) and, with --server, the `chroma run` RSS.

Usage: python benchmarks/scale.py --papers 10000 [--server] [--rounds 2] [--batch 2000]
       [--grow 0.01] [--since 2023-06-01] [--category cs.CL] [--narrow 0.005] [--keep]
       [--chunk-cache N]
An ingest stopped part-way (--keep): --resume FOLDER goes on where it stopped; or --phase keyword
--dir STORE, then --phase reader / grow on what is there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
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
    proc_rss_mb,
    questions,
    self_rss_mb,
    server_pid,
    temp_dir,
)
from _stages import measure_retrieve

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
CHARS_PER_TOKEN = 4.2
CHUNK_TOKENS = 256  # QA_CHUNK_TOKENS' default: the window chunks are cut for


def approx_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


# ---------------------------------------------------------------- synthetic corpus

# (category, share) for synthetic papers: a skewed mix like a cs/stat slice of arXiv
CATEGORIES = (("cs.LG", 0.30), ("cs.CL", 0.25), ("cs.CV", 0.20), ("cs.AI", 0.15), ("stat.ML", 0.10))


def synthetic_stream(real: list, n: int, seed: int, prefix: str = "99") -> Iterator[tuple]:
    """(paper, base paper index) for n - len(real) recombined papers, made one at a time."""
    from qa.corpus import Paper

    rng = np.random.default_rng(seed)
    cat_rng = np.random.default_rng(seed + 99)
    names = [c for c, _ in CATEGORIES]
    shares = [s for _, s in CATEGORIES]
    sents = [SENTENCE.split(p.abstract.strip()) for p in real]
    titles = [p.title.split() for p in real]
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
        cats = list(
            dict.fromkeys(cat_rng.choice(names, size=int(cat_rng.integers(1, 3)), p=shares))
        )
        arxiv_id = f"{prefix}{i // 100000:02d}.{i % 100000:05d}"
        paper = Paper(
            key=arxiv_id,
            arxiv_id=arxiv_id,
            title=" ".join(head + tail),
            abstract=" ".join(body),
            sources=["synthetic"],
            published=real[b].published,  # so date filters select synthetic papers too
            categories=list(real[b].categories) or [str(c) for c in cats],
        )
        yield paper, b


def synthetic_papers(real: list, n: int, seed: int) -> tuple[list, list[int]]:
    """n - len(real) recombined papers (and the base paper index of each), as lists."""
    pairs = list(synthetic_stream(real, n, seed))
    return [p for p, _ in pairs], [b for _, b in pairs]


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
        for c in chunk_paper(p, CHUNK_TOKENS):
            v = cache.get(_text_hash(model_id, c.text))
            rows.append(v if v is not None else pool[int(rng.integers(len(pool)))])
        out.append(np.vstack(rows))
    return out


def perturbed(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    v = base + rng.normal(0.0, noise, size=base.shape).astype(np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def rows_for(base: np.ndarray, n: int) -> np.ndarray:
    """n vectors from a paper's chunk vectors (the last one repeated when it has fewer)."""
    return base if len(base) == n else base[np.minimum(np.arange(n), len(base) - 1)]


# ---------------------------------------------------------------- measuring


def tokenizer_chunk_rate(papers: list) -> float:
    """Papers/s of chunk_paper with the real WordPiece length function (what qa ingest does)."""
    from qa.embeddings import token_length
    from qa.index import chunk_paper

    token_length("warm up")
    t = time.perf_counter()
    for p in papers:
        chunk_paper(p, CHUNK_TOKENS)
    return len(papers) / (time.perf_counter() - t)


def record_of(index):
    """The corpus record and this collection's account in it (started if there is none)."""
    from qa.store import SyncState, open_store

    store = open_store(index.settings)
    coll = index.coll()
    if store.sync_state(coll) is None:
        store.reset_indexed(coll, SyncState(str(index.collection.id), -1, 0, CHUNK_TOKENS))
    return store, coll


def write(
    index, papers: Iterable[tuple], batch: int, tag: str, pid: int | None = None, skip: int = 0
) -> dict:
    """Chunk each (paper, vectors for its chunks) and upsert in batches of `batch` chunks,
    recording each batch's papers and account as the writer does; the papers of the first
    `skip` chunks are passed over (already in a resumed store: batches hold whole papers in
    stream order, so a stopped run's store holds a prefix of them).

    Returns chunks, papers, wall seconds, chunking seconds and CPU seconds. CPU counts this
    process (embedded Chroma included) plus the server process `pid`, if any: on a loaded
    machine it is the figure that says what an idle one would do.
    """
    from qa.index import chunk_paper
    from qa.store import USER

    coll = index.collection
    store, account = record_of(index)
    ids, docs, metas, embs, held, marks = [], [], [], [], [], []
    out = {"chunks": 0, "papers": 0, "chunk_s": 0.0}
    start = time.perf_counter()
    cpu0 = cpu_seconds() + (cpu_seconds(pid) if pid else 0.0)

    def flush() -> None:
        if ids:
            store.add(held, USER)  # the writer records papers before indexing them
            index.call(
                coll.upsert, ids=ids, documents=docs, metadatas=metas, embeddings=np.vstack(embs)
            )
            store.mark_indexed(account, marks)
            out["chunks"] += len(ids)
            for buf in (ids, docs, metas, embs, held, marks):
                buf.clear()

    next_report = report_every = max(batch, 50000)
    for paper, vectors_of in papers:
        t = time.perf_counter()
        chunks = chunk_paper(paper, CHUNK_TOKENS, length=approx_tokens)
        out["chunk_s"] += time.perf_counter() - t
        if skip >= len(chunks):
            skip -= len(chunks)
            continue
        out["papers"] += 1
        first = chunks[0].metadata
        held.append(paper)
        marks.append((paper.key, first["paper_hash"], len(chunks), first["sources"]))
        for c, v in zip(chunks, vectors_of(len(chunks)), strict=True):
            ids.append(c.id)
            docs.append(c.text)
            metas.append(c.metadata)
            embs.append(v)
        if len(ids) >= batch:
            flush()
            if out["chunks"] >= next_report:
                el = time.perf_counter() - start
                rate = f"{el:.0f} s, {out['chunks'] / el:.0f} chunks/s, RSS {self_rss_mb():.0f} MB"
                line(f"{tag}:  ... {out['chunks']} chunks", rate)
                next_report += report_every
    flush()
    store.set_synced(account, store.counter("rev"), CHUNK_TOKENS)  # a complete fill
    out["cpu_s"] = cpu_seconds() + (cpu_seconds(pid) if pid else 0.0) - cpu0
    out["wall_s"] = time.perf_counter() - start
    return out


def commit(tag: str, index, chunks: int, what: str) -> float:
    """Commit the written state as the writer does (qa.ingest._commit: the keyword index is
    saved first, updated from the last saved copy when it can be), timed, with its parts."""
    import qa.keyword_index
    from qa.ingest import IngestReport, _commit
    from qa.keyword_index import KeywordIndex

    parts: dict[str, float] = {"read back": 0.0, "stem": 0.0}
    full = []
    stems, build = qa.keyword_index.stems, KeywordIndex.build_in_memory

    def timed(name, fn):
        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] += time.perf_counter() - t

        return inner

    store, _ = record_of(index)
    index.call = timed("read back", index.call)  # the save's Chroma calls: the reads
    qa.keyword_index.stems = timed("stem", stems)
    KeywordIndex.build_in_memory = lambda *a, **k: full.append(1) or build(*a, **k)
    try:
        t = time.perf_counter()
        _commit(index, store, IngestReport(chunks_written=chunks))
        total = time.perf_counter() - t
    finally:
        del index.call
        qa.keyword_index.stems, KeywordIndex.build_in_memory = stems, build
    revision, count = index.snapshot()
    rest = total - parts["read back"] - parts["stem"]
    line(
        f"{tag}: {what} ({'full build' if full else 'update'})",
        f"{total:.1f} s (read back {parts['read back']:.1f}, stem {parts['stem']:.1f}, "
        f"bm25+idf+facets+save+commit {rest:.1f}); {count} chunks",
    )
    t = time.perf_counter()
    KeywordIndex().load_saved(index, revision, count)
    line(f"{tag}: keyword index load (what a reader does)", f"{time.perf_counter() - t:.1f} s")
    return total


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


# (name, qa.retrieval limits set) of a filtered pass: the dense path as it is, with Chroma's
# search among the allowed ids instead of reading a few allowed chunks' vectors, then the paths
# before them (no ranking among the allowed chunks), the last asking a `where` at once; each
# but the first also without the held chunk table
FILTER_PATHS = (
    ("", {}),
    (" (Chroma among ids)", {"DENSE_EXACT_MAX": 0}),
    (" (widened, then where: before)", {"DENSE_EXACT_MAX": 0, "DENSE_IDS_MAX": 0}),
    (" (where at once)", {"DENSE_EXACT_MAX": 0, "DENSE_IDS_MAX": 0, "DENSE_WIDEST": 0}),
)


def filtered_latency(tag: str, settings, label: str, rounds: int, budget: float, **filters) -> None:
    """`qa.retrieve` with a filter (the arXiv-corpora issue's): first use, then warm along
    each of FILTER_PATHS, with how many dense queries among allowed ids and `where` queries
    each made, and whether its hits agree with the `where` path's. The paths before the
    current one stop after `budget` seconds each (a `where` costs seconds per question at
    1M chunks), the agreement then counted over the questions they answered."""
    import qa.retrieval as retrieval
    from qa.retrieval import retrieve
    from qa.store import IndexUnavailable

    qs = questions()
    t = time.perf_counter()
    hits = retrieve(qs[0], settings=settings, **filters)  # the filter's mask, built once
    line(
        f"{tag}: retrieve, {label}, first use", f"{time.perf_counter() - t:.2f} s, {len(hits)} hits"
    )
    counts = {"where": 0, "ids": 0}
    dense, among = retrieval.Retriever.dense_candidates, retrieval.Retriever.nearest_among

    def counted(self, vector, n, flt=None):
        counts["where"] += flt is not None
        return dense(self, vector, n, flt)

    def counted_among(self, vector, chunk_ids, n):
        counts["ids"] += 1
        return among(self, vector, chunk_ids, n)

    def before(self, vector, near, asked, n, keyword, flt):  # no chunk table to rank
        return allowed(self, vector, near, asked, n, replace(keyword, table=None), flt)

    allowed = retrieval.Retriever._allowed_neighbours
    retrieval.Retriever.dense_candidates = counted
    retrieval.Retriever.nearest_among = counted_among
    limits = {name: getattr(retrieval, name) for name in FILTER_PATHS[-1][1]}
    results = {}
    try:
        for name, changed in FILTER_PATHS:
            for limit, value in (limits | changed).items():
                setattr(retrieval, limit, value)
            retrieval.Retriever._allowed_neighbours = before if changed else allowed
            counts.update(where=0, ids=0)
            times, short, got = [], 0, []
            until = time.perf_counter() + budget if changed else math.inf
            for q in [q for _ in range(rounds) for q in qs]:
                if time.perf_counter() > until:
                    break
                t = time.perf_counter()
                try:
                    hits = retrieve(q, settings=settings, **filters)
                except IndexUnavailable as exc:  # a `where` past QA_CHROMA_TIMEOUT (at 1M)
                    if not changed:
                        raise
                    line(f"{tag}: retrieve warm, {label}{name}", f"stopped: {exc}")
                    break
                times.append(time.perf_counter() - t)
                short += len(hits) < settings.k
                got.append([h.paper.key for h in hits])
            results[name] = got
            if not times:
                continue
            summary = latency_summary(times) + f", {short} calls < k hits"
            line(
                f"{tag}: retrieve warm, {label}{name}",
                f"{summary}, {counts['ids']} among ids, {counts['where']} where",
            )
    finally:
        for limit, value in limits.items():
            setattr(retrieval, limit, value)
        retrieval.Retriever.dense_candidates, retrieval.Retriever.nearest_among = dense, among
        retrieval.Retriever._allowed_neighbours = allowed
    *others, where = results.values()
    for (name, *_), got in zip(FILTER_PATHS, others, strict=False):
        same = sum(x == y for x, y in zip(got, where, strict=False))
        got = got[: len(where)]
        line(f"{tag}: {label}{name or ' (as is)'}: same hits as the where", f"{same}/{len(got)}")


def narrow_window(settings, share: float) -> tuple[str, str, float]:
    """(since, until, the share of chunks it allows): the window of consecutive first-version
    dates whose share of the chunks is nearest `share` (whole days: the share it gets is
    printed)."""
    from qa.retrieval import get_retriever

    published = get_retriever(settings).keyword_index.facets.published
    days, counts = np.unique(published[published > 0], return_counts=True)
    cum = np.concatenate([[0], np.cumsum(counts)])
    want = share * len(published)
    ends = np.minimum(np.searchsorted(cum, cum[:-1] + want), len(days))
    got = cum[ends] - cum[:-1]
    first = int(np.argmin(np.abs(got - want)))

    def iso(day: int) -> str:
        return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"

    return iso(int(days[first])), iso(int(days[ends[first] - 1])), got[first] / len(published)


# ---------------------------------------------------------------- phases (one process each)


def phase_ingest(args, settings, tag: str, pid: int | None) -> None:
    from qa.corpus import load_corpus
    from qa.index import open_index

    real = load_corpus()
    sample = [p for p, _ in synthetic_stream(real, len(real) + 300, args.seed)] or real
    line(
        f"{tag}: chunking (real tokenizer, sample)", f"{tokenizer_chunk_rate(sample):.0f} papers/s"
    )
    index = open_index(settings)
    index.create()  # written directly, like an index from before the corpus record
    vecs = real_vectors(real, index.model_id)
    rng = np.random.default_rng(args.seed + 1)

    def papers() -> Iterator[tuple]:
        for p, v in zip(real, vecs, strict=True):
            yield p, lambda n, v=v: rows_for(v, n)
        for p, b in synthetic_stream(real, args.papers, args.seed):
            yield p, lambda n, b=b: perturbed(rows_for(vecs[b], n), rng, args.noise)

    present = index.count() if args.resume else 0
    if present:
        line(f"{tag}: resumed", f"{present} chunks already in the store are passed over")
    w = write(index, papers(), args.batch, tag, pid, skip=present)
    line(
        f"{tag}: ingest into Chroma (vectors given)",
        f"{w['chunks']} chunks, {w['papers']} papers in {w['wall_s']:.0f} s = "
        f"{w['chunks'] / w['wall_s']:.0f} chunks/s (chunking {w['chunk_s']:.0f} s of it)",
    )
    line(
        f"{tag}: ingest CPU (client+server)",
        f"{w['cpu_s']:.0f} s = {w['chunks'] / w['cpu_s']:.0f} chunks per CPU-second",
    )
    line(
        f"{tag}: ingest RSS (before keyword index)",
        f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB",
    )
    commit(tag, index, w["chunks"], "commit + keyword index save (writer)")
    line(
        f"{tag}: ingest RSS (after keyword index)",
        f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB",
    )


def phase_keyword(args, settings, tag: str) -> None:
    """Commit and build the keyword index of a store whose ingest was stopped part-way
    (`--phase keyword --dir STORE`; then run `--phase reader` and `--phase grow` on it)."""
    from qa.index import open_index

    index = open_index(settings)
    index.create()
    line(f"{tag}: chunks in the store", str(index.count()))
    store, account = record_of(index)
    state = store.sync_state(account)
    if state.chunks != index.count() or state.id != str(index.collection.id):
        from qa.ingest import _sync_point  # what the writer does with an account it can't trust

        t = time.perf_counter()
        _sync_point(index, store, account)
        line(f"{tag}: account read again from Chroma", f"{time.perf_counter() - t:.1f} s")
    store.set_synced(account, store.counter("rev"), CHUNK_TOKENS)
    commit(tag, index, index.count(), "commit + keyword index save (writer)")
    line(f"{tag}: keyword build RSS", f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB")


def phase_reader(args, settings, tag: str) -> None:
    from qa.retrieval import get_retriever

    m = measure_retrieve(settings, questions(), rounds=args.rounds)
    line(f"{tag}: first retrieve (cold, fresh process)", f"{m['first']:.2f} s")
    line(f"{tag}: first retrieve stages", m["first_stages"].summary())
    line(
        f"{tag}: keyword index load in 1st call", f"{m['kw_build']:.2f} s (a build if no saved one)"
    )
    line(f"{tag}: retrieve warm, no filter", latency_summary(m["latencies"]))
    line(f"{tag}: client CPU per retrieve", cpu_summary(m["cpu"]))
    line(f"{tag}: stages", m["stages"].summary())
    line(f"{tag}: golden sanity check", golden_recall(settings))
    budget = args.compare_seconds
    filtered_latency(tag, settings, f"since {args.since}", args.rounds, budget, since=args.since)
    filtered_latency(
        tag, settings, f"category {args.category}", args.rounds, budget, categories=args.category
    )
    since, until, share = narrow_window(settings, args.narrow)
    label = f"{since} to {until} ({share:.2%} of chunks)"
    filtered_latency(tag, settings, label, args.rounds, budget, since=since, until=until)
    chunks = get_retriever(settings).index.count()
    line(
        f"{tag}: reader RSS",
        f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB ({chunks} chunks)",
    )


def phase_grow(args, settings, tag: str) -> None:
    """Add --grow more papers (ids 98xx.xxxxx) and commit them as the writer does (its
    keyword index update), then time a full build of the same state beside it."""
    from qa.corpus import load_corpus
    from qa.index import open_index
    from qa.keyword_index import KeywordIndex

    real = load_corpus()
    index = open_index(settings)
    index.create()
    vecs = real_vectors(real, index.model_id)
    rng = np.random.default_rng(args.seed + 8)
    extra = len(real) + int(args.papers * args.grow)
    papers = (
        (p, lambda n, b=b: perturbed(rows_for(vecs[b], n), rng, args.noise))
        for p, b in synthetic_stream(real, extra, args.seed + 7, prefix=args.grow_prefix)
    )
    w = write(index, papers, args.batch, tag)
    line(
        f"{tag}: +{args.grow:.0%} papers",
        f"{w['papers']} papers, {w['chunks']} chunks, {w['wall_s']:.1f} s",
    )
    update = commit(tag, index, w["chunks"], "commit + keyword index save (writer)")
    line(f"{tag}: grow RSS (after update)", f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB")
    if not args.grow_compare:
        return
    revision, count = index.snapshot()
    t = time.perf_counter()
    KeywordIndex().build(index, revision, count)  # read every chunk back (no copy to update)
    rebuild = time.perf_counter() - t
    line(
        f"{tag}: keyword index full build+save, same state",
        f"{rebuild:.1f} s; the update took {update / rebuild:.2f}x of it",
    )
    line(f"{tag}: grow RSS", f"{self_rss_mb():.0f} MB, peak {peak_rss_mb():.0f} MB")


def phase(name: str, args, where: Path, url: str | None) -> None:
    """Run one phase in a fresh process (its own peak RSS), output to ours."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--dir", str(where)]
    cmd += sys.argv[1:] + (["--url", url] if url else [])
    subprocess.run(cmd, check=True)


def drive(args, where: Path, url: str | None) -> None:
    tag = f"{'server' if url else 'embedded'} {args.papers}"
    pid = server_pid(url) if url else None

    def server_rss() -> None:
        if pid:
            line(
                f"{tag}: chroma run RSS",
                f"{proc_rss_mb(pid):.0f} MB, peak {proc_rss_mb(pid, 'VmHWM'):.0f} MB",
            )

    phase("ingest", args, where, url)
    time.sleep(1)
    line(f"{tag}: index size on disk (du)", f"{mb(du_bytes(where.parent))} ({where.parent})")
    server_rss()
    phase("reader", args, where, url)
    server_rss()
    if args.grow:
        phase("grow", args, where, url)
        line(f"{tag}: index size on disk after growing", mb(du_bytes(where.parent)))
        server_rss()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--papers", type=int, default=10000)
    parser.add_argument("--server", action="store_true", help="a real `chroma run` server")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions")
    parser.add_argument("--batch", type=int, default=2000, help="chunks per upsert")
    parser.add_argument("--noise", type=float, default=0.02, help="Gaussian sigma per dim")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--keep", action="store_true", help="keep the store (path printed)")
    parser.add_argument("--grow", type=float, default=0.01, help="share of papers added after")
    parser.add_argument(
        "--grow-prefix", default="98", help="the added papers' ids (another for a second grow)"
    )
    parser.add_argument(
        "--grow-compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time a full keyword build of the grown state beside the update",
    )
    parser.add_argument("--since", default="2023-06-01", help="date filter for a warm pass")
    parser.add_argument("--category", default="cs.CL", help="category filter for a warm pass")
    parser.add_argument(
        "--narrow",
        type=float,
        default=0.005,
        help="a warm pass with a date window allowing about this share of the chunks",
    )
    parser.add_argument(
        "--phase",
        choices=("ingest", "keyword", "reader", "grow"),
        help="run one phase on the store in --dir (the driver runs them all in order)",
    )
    parser.add_argument("--dir", type=Path, help="the store of --phase (printed with --keep)")
    parser.add_argument("--chroma-timeout", type=float, help="QA_CHROMA_TIMEOUT, seconds")
    parser.add_argument(
        "--compare-seconds",
        type=float,
        default=120,
        help="at most this long per filtered path before the current one (the where paths)",
    )
    parser.add_argument(
        "--chunk-cache", type=int, help="QA_CHUNK_CACHE: hold the chunks in the reader's memory"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        help="a stopped run's folder (printed with --keep): go on writing where it stopped",
    )
    parser.add_argument("--url", help="with --phase: the `chroma run` server's URL")
    args = parser.parse_args()

    default_settings(chroma_timeout=args.chroma_timeout, chunk_cache=args.chunk_cache)
    if args.phase:
        from qa.config import Settings

        if args.url:
            settings = Settings(chroma_url=args.url, persist_dir=args.dir.parent / "client")
        else:
            settings = Settings(persist_dir=args.dir)
        tag = f"{'server' if args.url else 'embedded'} {args.papers}"
        if args.phase == "ingest":
            phase_ingest(args, settings, tag, server_pid(args.url) if args.url else None)
        elif args.phase == "keyword":
            phase_keyword(args, settings, tag)
        elif args.phase == "reader":
            phase_reader(args, settings, tag)
        else:
            phase_grow(args, settings, tag)
        return
    mode = "server" if args.server else "embedded"
    print(f"scale run: {args.papers} papers, {mode}", flush=True)
    kept = contextlib.nullcontext(args.resume) if args.resume else None
    with kept or temp_dir(f"bench-scale-{args.papers}-", keep=args.keep) as tmp:
        if args.keep or args.resume:
            print(f"store kept in {tmp}", flush=True)
        if args.server:
            with chroma_server(tmp / "server") as url:
                drive(args, tmp / "server", url)
        else:
            drive(args, tmp / "store", None)


if __name__ == "__main__":
    main()
