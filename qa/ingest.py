"""The writer side: record papers durably, then bring the index in line with the whole record.

Every write (`qa ingest`, `qa remove`, `qa.build_index`, the very first build a reader may do)
holds the one-writer lock (qa/store.py), records papers before indexing them, upserts only what
is missing or changed (content hashes: a re-run adds nothing, an interrupted run resumes), and
bumps the record's generation when its work is committed so readers follow. A rebuild (or a
new embedding model) fills a new collection beside the active one and switches readers to it
only when it is complete.

A write costs what changed, not the size of the record: the record keeps, per collection, what
each paper's chunks are (`indexed`) and up to which change every paper is in line
(`SyncState`), so a fill examines only the papers recorded since, plus removals. Only when the
cheap check fails (a new or recreated collection, a chunk count that is not the record's, an
index from before the record) is the account rebuilt from Chroma, a page at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.embeddings import Embeddings

from qa.config import Settings, get_settings
from qa.corpus import Paper
from qa.embeddings import token_length, token_lengths
from qa.index import (
    EMBEDDED,
    CachedEmbeddings,
    Chunk,
    Index,
    IndexUnavailable,
    Stored,
    StoreDamaged,
    check_model,
    chunk_paper,
    describe_location,
    forget_index,
    forget_indexes,
    is_kept_file,
    open_index,
    paper_hash,
    record_key,
)
from qa.keyword_index import Held
from qa.store import (
    BUNDLED,
    USER,
    Active,
    AddReport,
    CorpusStore,
    SyncState,
    open_store,
    writer_lock,
)

log = logging.getLogger(__name__)

WRITE_BATCH = 256  # chunks per upsert; a paper's chunks always go in one call


@dataclass
class IngestReport:
    """What one write did: to the record (`recorded`) and to the index (the counts)."""

    papers: int = 0  # papers in the corpus record (and so in the index) after the run
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks_written: int = 0
    vectors_from_cache: int = 0
    vectors_computed: int = 0
    rebuilt: str | None = None
    seconds: float = 0.0
    recorded: AddReport = field(default_factory=AddReport)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{self.papers} papers: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged" + (f", {self.removed} removed" if self.removed else ""),
            f"{self.chunks_written} chunks written "
            f"({self.vectors_from_cache} vectors from cache, {self.vectors_computed} computed)",
            f"{self.seconds:.1f} s",
        ]
        rec = self.recorded
        if rec.replaced or rec.kept_both:
            parts.insert(
                1,
                f"{len(rec.replaced)} replaced by a new version, "
                f"{len(rec.kept_both)} kept beside another version of their ID",
            )
        if self.rebuilt:
            parts.insert(0, f"rebuilt ({self.rebuilt})")
        return "; ".join(parts)

    def notes(self) -> list[str]:
        """Every record that was replaced or kept beside another version, by ID."""
        rec = self.recorded
        lines = [f"replaced {key}: a file given now has another abstract" for key in rec.replaced]
        return lines + rec.kept_both


def _wipe_corrupt_store(settings: Settings) -> None:
    """Rebuild of an embedded store that cannot even be opened: remove Chroma's files (the
    corpus record, the resolve cache and hidden files stay) and start from an empty folder."""
    path = Path(settings.persist_dir)
    forget_indexes()  # every handle on the damaged files
    if settings.chroma_url or not path.exists():
        return
    for child in path.iterdir():
        if is_kept_file(child.name, settings):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _progress(total: int, enabled: bool):
    """A bar over the papers a fill examines (those recorded since the last complete fill)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="paper", desc="indexing", disable=not enabled or total < 20)


def build_index(
    papers: Iterable[Paper] | None = None,
    *,
    settings: Settings | None = None,
    rebuild: bool = False,
    prune: bool = False,
    progress: bool = True,
    origin: str = USER,
    say: Callable[[str], None] | None = None,
    keyword_index: bool = True,
) -> IngestReport:
    """`qa.build_index`: record papers durably, then bring the index in line with the whole
    corpus record (unchanged papers are skipped).

    `papers=None` records the bundled seeds. With `prune`, the record becomes exactly
    `papers` (the others are removed). With `rebuild`, a new collection is filled from the
    whole record beside the active one and replaces it only when complete: how a damaged
    index is repaired and how a new embedding model is applied.
    """
    from qa.corpus import load_corpus

    settings = settings or get_settings()
    start = time.perf_counter()
    if papers is None:
        papers, origin = load_corpus(settings.seeds_dir), BUNDLED
    papers = _unique(list(papers))
    store = open_store(settings)
    with writer_lock(settings, say), store.held_open():
        _adopt_unrecorded(settings, store)
        report = IngestReport(recorded=store.add(papers, origin))
        if prune:
            keep = {p.key for p in report.recorded.papers}
            store.remove([key for key in store.held_keys() if key not in keep])
        if rebuild:
            _rebuild(settings, store, report, progress)
        else:
            _update(settings, store, report, progress, keyword_index)
    report.seconds = time.perf_counter() - start
    log.info("ingest: %s", report.summary())
    return report


def remove_papers(
    ids: Sequence[str],
    *,
    settings: Settings | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[list[str], list[str], IngestReport]:
    """`qa remove`: take papers (arXiv IDs or `ref:` keys) out of the record and the index.

    Returns (keys removed, IDs not found, the index report)."""
    settings = settings or get_settings()
    wanted = [i.strip().removeprefix("arXiv:").removeprefix("ref:") for i in ids]
    store = open_store(settings)
    with writer_lock(settings, say), store.held_open():
        _adopt_unrecorded(settings, store)
        found = store.find(wanted)
        missing = [i for i, keys in found.items() if not keys]
        gone = store.remove([k for keys in found.values() for k in keys])
        report = IngestReport()
        if gone:
            _update(settings, store, report, progress=False)
    return gone, missing, report


def _adopt_unrecorded(settings: Settings, store: CorpusStore) -> None:
    """An index built before the corpus record existed: its papers enter the record first,
    so nothing a user ingested then is lost by the first write (or rebuild) now."""
    if store.exists():
        return
    try:
        index = open_index(settings)
        papers = index.all_papers() if index.exists else []
    except IndexUnavailable as exc:
        log.warning("could not read the existing index to record its papers: %s", exc)
        return
    if papers:
        log.warning("recording the %d papers of the existing index in %s", len(papers), store.path)
        store.add(papers, USER)


def _update(
    settings: Settings,
    store: CorpusStore,
    report: IngestReport,
    progress: bool,
    keyword_index: bool = True,
) -> None:
    """Bring the active collection in line with the record (created if there is none).
    `keyword_index=False` leaves the saved keyword index to a later batch (streamed ingest)."""
    index = open_index(settings)
    if index.exists:
        check_model(index)
    else:
        index.create()
    _drop_retired(index, store)
    _fill(index, store, report, progress)
    _commit(index, store, report, keyword_index)


def _rebuild(settings: Settings, store: CorpusStore, report: IngestReport, progress: bool) -> None:
    """Fill a new collection from the whole record; switch readers to it when complete.

    A kill at any point leaves the old collection active and answering; the next rebuild
    resumes the unfinished new one (its papers' hashes say what is done).
    """
    if not settings.chroma_url:
        forget_index(settings)  # a handle may hold a database deleted or damaged since
    try:
        current = open_index(settings)
        target = current.target
        old = current.name if current.exists else None
        built_with = current.built_with() if old else None
        report.rebuilt = (
            f"embedding model changed from {built_with} to {current.model_id}"
            if built_with and built_with != current.model_id
            else "requested"
        )
    except StoreDamaged:  # Chroma's own files: a bad model, record, full disk never get here
        _wipe_corrupt_store(settings)
        target = record_key(EMBEDDED, settings.collection)  # StoreDamaged is embedded-only
        old, report.rebuilt = None, "the old index could not be opened"
    pending = store.get_meta(f"pending:{target}")
    name = pending if pending and pending != old else f"{settings.collection}-g{store.generation()}"
    store.set_meta({f"pending:{target}": name}, bump=False)
    new = Index(settings, name=name, create=True)
    if new.built_with() != new.model_id:  # an unfinished build with another model
        new.call(new.client.delete_collection, name)
        new = Index(settings, name=name, create=True)
    _drop_retired(new, store)
    _fill(new, store, report, progress)
    retired = [n for n in [*_retired(store, target), old] if n and n != name]
    count = new.count()
    _save_keyword_index(new, store, store.generation() + 1, count)
    generation = store.set_active(
        target,
        Active(name, new.model_id, count),
        **{f"pending:{target}": None, f"retired:{target}": json.dumps(retired)},
    )
    new.generation = generation
    new.bump_revision()
    new.close()


def _retired(store: CorpusStore, target: str) -> list[str]:
    return json.loads(store.get_meta(f"retired:{target}") or "[]")


def _drop_retired(index: Index, store: CorpusStore) -> None:
    """Delete the collections earlier rebuilds replaced. Left until the next write, so a
    question in flight in a reader when the switch was committed still finishes on the old
    one (readers move to the new one at their next question)."""
    target = index.target
    names = _retired(store, target)
    if not names:
        return
    for name in names:
        try:
            index.client.delete_collection(name)
        except Exception as exc:  # gone already is fine
            log.debug("delete_collection %s: %s", name, exc)
        store.forget_collection(index.coll(name))
    store.set_meta({f"retired:{target}": None}, bump=False)


def _commit(
    index: Index, store: CorpusStore, report: IngestReport, keyword_index: bool = True
) -> None:
    """Point readers at the collection's new state (bumps the generation they watch)."""
    target = index.target
    active = store.active(target)
    changed = report.chunks_written or report.removed or active is None
    if not (changed or report.recorded.added or report.recorded.updated):
        return  # nothing new: readers keep their keyword index
    count = index.count()
    if keyword_index:  # a streamed ingest saves it once, after its last batch
        _save_keyword_index(index, store, store.generation() + 1, count)
    index.generation = store.set_active(target, Active(index.name, index.model_id, count))
    index.bump_revision()


def _save_keyword_index(index: Index, store: CorpusStore, generation: int, count: int) -> bool:
    """Save the keyword index for the state about to be committed (`generation`: the writer
    lock is held, so no one else bumps it), so readers only ever load it: the latest saved
    copy updated with the papers changed since, by the record's account of the collection
    (a full build when it cannot be). Returns whether it was an update."""
    from qa.keyword_index import KeywordIndex

    try:
        return KeywordIndex().build(index, generation, count, _held(index, store, count))
    except IndexUnavailable as exc:  # readers build it themselves; only their start is slower
        log.warning("could not save the keyword index: %s", exc)
        return False
    finally:
        index.forget_written()


def _held(index: Index, store: CorpusStore, count: int) -> Held | None:
    """What the record says the collection holds after a complete fill (None: an account that
    does not match Chroma's count, or a paper not whole; the keyword index is then rebuilt)."""
    coll = index.coll()
    state = store.sync_state(coll)
    if state is None or state.chunks != count or state.id != str(index.collection.id):
        return None
    papers: dict[str, tuple[str, int]] = {}
    for key, digest, present, expected in store.held(coll):
        if present != expected:
            return None
        papers[key] = (digest, present)
    return Held(f"{state.id}|{state.tokens}|{store.resets(coll)}", papers)


def _fill(index: Index, store: CorpusStore, report: IngestReport, progress: bool) -> None:
    """Upsert what is missing or changed, relabel sources, remove what the record lacks,
    examining only the papers recorded since the collection was last in line."""
    with index.lock:
        index.create()
        coll = index.coll()
        since, removals = _sync_point(index, store, coll)
        head = store.counter("rev")
        embedder = CachedEmbeddings(index.embeddings, index.model_id)
        with (
            _progress(store.count_changed(since), progress) as bar,
            ThreadPoolExecutor(1, thread_name_prefix="qa-ingest-embed") as pool,
        ):
            # The next batch is embedded (in the worker) while this one is written: the
            # embedder never waits on Chroma. It is chunked here, before this batch's upsert:
            # Chroma holds the GIL through an upsert, so a worker that chunked first would
            # sit idle until the upsert ended. Two batches at most in memory.
            todo = _changed(index, store, coll, since, bar.update)
            rate = _ChunkRate()
            pending: Future | None = None
            for batch in _batches(todo, WRITE_BATCH, rate.per_paper):
                prepared = _chunk_batch(index, batch, report)
                rate.note(prepared.papers, len(prepared.chunks))
                following = pool.submit(_embed, embedder, prepared)
                if pending:
                    bar.update(_write_batch(index, store, coll, pending.result(), report))
                pending = following
            if pending:
                bar.update(_write_batch(index, store, coll, pending.result(), report))
        if removals:
            _prune(index, store, coll, report)
        store.set_synced(coll, head, index.settings.chunk_tokens)
        report.papers = store.count()
        report.unchanged = report.papers - report.added - report.updated
        report.vectors_from_cache = embedder.hits
        report.vectors_computed = embedder.computed


def _sync_point(index: Index, store: CorpusStore, coll: str) -> tuple[int, bool]:
    """(the record's change counter after which papers must be examined, whether removals
    must be looked for). Reconciles the record's account with Chroma when it cannot be
    trusted: a new or recreated collection, a count that differs (a write killed between
    Chroma and the record, someone else's write), or no account yet (an older record)."""
    state = store.sync_state(coll)
    ident = str(index.collection.id)
    tokens = index.settings.chunk_tokens
    if state is None or state.id != ident or state.chunks != index.count():
        if state is not None:
            log.info("the record's account of %s is out of date; reading it from Chroma", coll)
        store.reset_indexed(coll, SyncState(ident, -1, 0, tokens))
        for metadatas in index.chunk_metadata():
            store.note_chunks(coll, metadatas)
        return -1, True
    if state.tokens != tokens:  # every paper's chunk boundaries moved
        return -1, True
    return state.rev, store.counter("removed_rev") > state.rev


def _changed(
    index: Index,
    store: CorpusStore,
    coll: str,
    since: int,
    skipped: Callable[[int], object],
) -> Iterator[tuple[Paper, Stored | None]]:
    """Papers recorded after `since` whose chunks are missing or differ, with what the
    collection holds for them; papers that only gained a source file are relabelled here."""
    tokens = index.settings.chunk_tokens
    for page in store.changed_since(since):
        held = store.indexed(coll, [p.key for p in page])
        relabel: list[tuple[Paper, Stored]] = []
        for paper in page:
            row = held.get(paper.key)
            have = Stored(row[0], row[1], row[2], _split(row[3])) if row else None
            if have and have.digest == paper_hash(paper, tokens) and have.present == have.expected:
                if not set(paper.sources) <= set(have.sources):
                    relabel.append((paper, have))
                skipped(1)
            else:
                yield paper, have
        if relabel:
            store.mark_indexed(coll, _merge_sources(index, relabel))


def _split(sources: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for s in sources.split(",") if s))


def _unique(papers: list[Paper]) -> list[Paper]:
    """One paper per key (the last one given wins), so a batch never upserts an ID twice."""
    return list({p.key: p for p in papers}.values())


def _merge_sources(index: Index, relabel: list[tuple[Paper, Stored]]) -> list[tuple]:
    """Add the names of files that repeat stored papers to their chunks' `sources`; returns
    the papers' new account for the record."""
    index.note_write()
    ids: list[str] = []
    metadatas: list[dict] = []
    marks: list[tuple] = []
    for paper, have in relabel:
        merged = ",".join(dict.fromkeys([*have.sources, *paper.sources]))
        marks.append((paper.key, have.digest, have.expected, merged))
        for i in range(have.expected):
            ids.append(f"{paper.key}#{i}")
            metadatas.append({"sources": merged})
    for start in range(0, len(ids), 1000):
        index.call(
            index.collection.update,
            ids=ids[start : start + 1000],
            metadatas=metadatas[start : start + 1000],
        )
    return marks


@dataclass
class _ChunkRate:
    """Chunks per paper so far: how many papers make an upsert of `WRITE_BATCH` chunks
    (papers are batched before they are chunked)."""

    papers: int = 0
    chunks: int = 0

    def note(self, papers: int, chunks: int) -> None:
        self.papers += papers
        self.chunks += chunks

    def per_paper(self) -> float:
        return self.chunks / self.papers if self.papers else 2.0  # before any is chunked


def _batches(todo: Iterable, max_chunks: int, per_paper: Callable[[], float]) -> Iterator[list]:
    """Group papers so each upsert holds whole papers and about `max_chunks` chunks, at
    `per_paper()` chunks a paper. Chroma's upsert has a cost per call: 4,427 chunks took
    19.2 s in calls of 128 and 15.7 s in calls of 256 (load 7), so batches are filled."""
    batch: list = []
    for item in todo:
        batch.append(item)
        if len(batch) >= max(1, int(max_chunks / per_paper())):
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Prepared:
    """One batch's chunks, their vectors once embedded, the old chunks it makes stale, and
    the papers' account for the record once written: (key, hash, chunks, sources)."""

    papers: int
    chunks: list[Chunk]
    stale: list[str]
    marks: list[tuple]
    vectors: list[list[float]] = field(default_factory=list)


_WHITESPACE = re.compile(r"[ \t\n\r]+")  # always a boundary between WordPiece tokens
_PIECES: dict[str, int] = {}  # whitespace piece → tokens, shared by every batch
PIECES_KEPT = 200_000  # ~25 MB; pieces beyond are measured per batch and not kept


def _batch_length(papers: list[Paper]) -> Callable[[str], int]:
    """`token_length` for chunking one batch, from memoised whitespace pieces.

    Token counts add up over pieces split at whitespace, and pieces repeat across abstracts
    ("the", "model,"), so each distinct piece is tokenized once (the batch's new ones in one
    `encode_batch` call) and a text's length is a sum of look-ups. The splitter asks for each
    sentence's length two or three times; one tokenizer call each was ~0.5 ms of CPU per
    abstract, most of what our pipeline adds to Chroma's own work. Those repeats are answered
    from a memo of the batch's texts, and a text whose pieces are all kept is summed in one
    `map` (chunking 3,000 papers: 0.67–0.86 → 0.52–0.65 s of CPU, same chunks)."""
    texts = (t for p in papers for t in (p.title, p.abstract))
    new = list({w for t in texts for w in _WHITESPACE.split(t) if w and w not in _PIECES})
    batch = dict(zip(new, token_lengths(new), strict=True)) if new else {}
    batch[""] = 0  # what a split yields at a text's leading or trailing whitespace
    if len(_PIECES) + len(batch) <= PIECES_KEPT:
        _PIECES.update(batch)
    memo: dict[str, int] = {}

    def pieces_length(pieces: list[str]) -> int:
        total = 0
        for piece in pieces:
            n = _PIECES.get(piece)
            if n is None:
                n = batch.get(piece)
                if n is None:  # a piece of a piece (the splitter's last resort)
                    n = batch[piece] = token_length(piece)
            total += n
        return total

    def length(text: str) -> int:
        n = memo.get(text)
        if n is None:
            pieces = _WHITESPACE.split(text)
            try:
                n = sum(map(_PIECES.__getitem__, pieces))
            except KeyError:
                n = pieces_length(pieces)
            memo[text] = n
        return n

    return length


def _chunk_batch(index: Index, batch: list, report: IngestReport) -> Prepared:
    """Chunk one batch of (paper, what the collection holds for it)."""
    chunks: list[Chunk] = []
    stale: list[str] = []
    marks: list[tuple] = []
    length = _batch_length([paper for paper, _ in batch])
    for paper, have in batch:
        if have and not set(have.sources) <= set(paper.sources):
            # a file's papers keep the names of the other files they also came from
            paper = dataclasses.replace(
                paper, sources=list(dict.fromkeys([*have.sources, *paper.sources]))
            )
        new = chunk_paper(paper, index.settings.chunk_tokens, length)
        chunks += new
        first = new[0].metadata
        marks.append((paper.key, first["paper_hash"], len(new), first["sources"]))
        if have:
            report.updated += 1
            stale += [f"{paper.key}#{i}" for i in range(len(new), max(have.present, have.expected))]
        else:
            report.added += 1
    return Prepared(len(batch), chunks, stale, marks)


def _embed(embedder: Embeddings, prepared: Prepared) -> Prepared:
    """Embed one chunked batch (in the ingest worker, one batch at a time)."""
    prepared.vectors = embedder.embed_documents([c.text for c in prepared.chunks])
    return prepared


def _write_batch(
    index: Index, store: CorpusStore, coll: str, prepared: Prepared, report: IngestReport
) -> int:
    """Write one embedded batch; returns its papers (for the progress bar)."""
    # Embedded first (the slow part), then written, then the tail a shorter version no longer
    # has removed, then noted in the record: a kill before the note leaves the papers
    # unaccounted for (or the collection's count off the record's), and the next run redoes
    # exactly those papers.
    chunks, vectors = prepared.chunks, prepared.vectors
    index.note_write()
    index.call(
        index.collection.upsert,
        ids=[c.id for c in chunks],
        documents=[c.text for c in chunks],
        metadatas=[c.metadata for c in chunks],
        embeddings=vectors,
    )
    index.note_written(chunks)
    if prepared.stale:
        index.call(index.collection.delete, ids=prepared.stale)
        index.forget_written(prepared.stale)
    store.mark_indexed(coll, prepared.marks)
    report.chunks_written += len(chunks)
    return prepared.papers


def _prune(index: Index, store: CorpusStore, coll: str, report: IngestReport) -> None:
    """Delete the chunks of papers the record no longer holds."""
    gone = store.orphans(coll)
    if gone:
        index.note_write()
    ids = [f"{key}#{i}" for key, n in gone for i in range(n)]
    for start in range(0, len(ids), 1000):
        index.call(index.collection.delete, ids=ids[start : start + 1000])
    index.forget_written(ids)
    store.unindex(coll, [key for key, _ in gone])
    report.removed = len(gone)


def ensure_index(settings: Settings | None = None, progress: bool = True) -> Index:
    """Open the index for reading. With no index at all, build it from the corpus record (the
    bundled seeds on a fresh install): the one write a reader may do. An index built with
    another embedding model is refused with the fixing command, never rebuilt here."""
    settings = settings or get_settings()
    index = open_index(settings)
    if _first_build(index):
        papers = None if index.corpus.count() == 0 else []  # seeds, or the record as it is
        build_index(papers, settings=settings, progress=progress)
        index = open_index(settings)
    check_model(index)
    return index


def _first_build(index: Index) -> bool:
    """No index at all, or this record's own first build that never finished (recorded,
    never committed). An index from before the corpus record (no record) is used as it is.

    A collection holding chunks the record has no account of is refused, never taken over
    by a read: taking it over reconciles the account from every chunk's metadata (at 1M
    chunks on `chroma run`, a reader died in that write after its 60 s timeout)."""
    corpus = index.corpus
    if not index.exists:
        return True
    if corpus.active(index.target) is not None:
        return False
    chunks = index.count()
    if chunks == 0:
        return True
    if not corpus.exists():
        return False
    state = corpus.sync_state(index.coll())
    if state is not None and state.id == str(index.collection.id):
        return True
    raise IndexUnavailable(
        f"the collection {index.name!r} in {describe_location(index.settings)} holds "
        f"{chunks:,} chunks that the corpus record {corpus.path} has no account of (it "
        "was written through another QA_CHROMA_URL or by another record); point "
        "QA_CORPUS_PATH at the record that built it, or run `qa ingest` to take it over"
    )
