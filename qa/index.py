"""Papers → chunks → Chroma (embedded or server), idempotently.

Chunks are the paper's title plus a slice of its abstract sized to the embedding model's window,
with deterministic IDs `"{key}#{i}"`. Every chunk carries its paper's content hash, so a re-run
skips unchanged papers and an interrupted run resumes where it stopped. The collection records
which embedding model built it; a different model means a rebuild, never mixed vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import chromadb
from chromadb.config import Settings as ChromaSettings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter

from qa.config import PROJECT_ROOT, Settings, get_settings
from qa.corpus import Paper
from qa.embeddings import get_embeddings, token_length

log = logging.getLogger(__name__)

VECTOR_CACHE_DIR = PROJECT_ROOT / "seeds" / "vectors"
WRITE_BATCH = 256  # chunks per upsert; a paper's chunks always go in one call
CHROMA_TIMEOUT_SECONDS = 60.0  # per request to a Chroma server (large upserts included)


class IndexUnavailable(RuntimeError):
    """The index cannot be opened or reached; the message says what to do."""


# ---------------------------------------------------------------- chunks


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    metadata: dict


def paper_hash(paper: Paper, max_tokens: int | None = None) -> str:
    """Hash of everything a paper's chunks are made from: a change means re-chunking it.

    The seed files a paper came from are not part of it: ingesting a duplicate of a file
    only adds its name to the stored `sources` (a metadata update, nothing re-embedded).
    """
    parts = [paper.key, paper.arxiv_id or "", paper.title, paper.abstract, paper.comment]
    if max_tokens is not None:  # chunk boundaries depend on the window
        parts.append(str(max_tokens))
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def chunk_paper(
    paper: Paper, max_tokens: int, length: Callable[[str], int] = token_length
) -> list[Chunk]:
    """Title + abstract slices, each within `max_tokens` of the embedding model."""
    title = _title_prefix(paper.title, max_tokens, length)
    title_tokens = length(title) if title else 0
    budget = max(8, max_tokens - title_tokens - 4)
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=budget,
        chunk_overlap=budget // 6,
        length_function=length,
        separators=[". ", "; ", ", ", " ", ""],
        keep_separator="end",
    )
    fits = length(paper.abstract) <= budget  # a third of abstracts: skip the splitter's work
    pieces = [paper.abstract] if fits else splitter.split_text(paper.abstract) or [paper.abstract]
    digest = paper_hash(paper, max_tokens)
    base = {
        "key": paper.key,
        "arxiv_id": paper.arxiv_id or "",
        "title": paper.title,
        "sources": ",".join(paper.sources),
        "paper_hash": digest,
        "n_chunks": len(pieces),
    }
    chunks = []
    for i, piece in enumerate(pieces):
        meta = dict(base, chunk=i)
        if i == 0:  # the full record lives once, on the first chunk
            meta.update(abstract=paper.abstract, comment=paper.comment)
        text = f"{title}\n{piece.strip()}" if title else piece.strip()
        chunks.append(Chunk(f"{paper.key}#{i}", text, meta))
    return chunks


def _title_prefix(title: str, max_tokens: int, length: Callable[[str], int]) -> str:
    """The title as prepended to chunks: whole, unless it would take over half the window.

    A freak "title" (a mis-parsed paragraph) must not push chunks past the model's window,
    where the embedding would silently truncate them.
    """
    cap = max(1, max_tokens // 2)
    if not title or length(title) <= cap:
        return title
    kept: list[str] = []
    for word in title.split():
        if length(" ".join([*kept, word])) > cap:
            break
        kept.append(word)
    text = " ".join(kept) or title[:cap]
    while text and length(text) > cap:  # one enormous "word"
        text = text[: len(text) * 3 // 4]
    return text


def paper_from_metadata(meta: dict) -> Paper:
    """Rebuild a Paper from its first chunk's metadata (Chroma is the source of truth)."""
    return Paper(
        key=meta["key"],
        arxiv_id=meta.get("arxiv_id") or None,
        title=meta.get("title", ""),
        abstract=meta.get("abstract", ""),
        comment=meta.get("comment", ""),
        sources=[s for s in meta.get("sources", "").split(",") if s],
    )


# ---------------------------------------------------------------- vector cache


def _text_hash(model_id: str, text: str) -> str:
    return hashlib.sha1(f"{model_id}\n{text}".encode()).hexdigest()


def vector_cache_path(model_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return VECTOR_CACHE_DIR / f"{safe}.npz"


class CachedEmbeddings(Embeddings):
    """Serve document vectors from a shipped cache (keyed by model and text); embed the rest.

    Embedding the bundled seeds takes about a minute on two cores; the cache makes a fresh
    install's first start take seconds while any new or changed text is still embedded.
    """

    def __init__(self, inner: Embeddings, model_id: str, path: Path | None = None):
        self.inner = inner
        self.model_id = model_id
        self.hits = 0
        self.computed = 0
        self._cache = self._load(path or vector_cache_path(model_id))

    def _load(self, path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            return {}
        try:
            data = np.load(path)
            return dict(zip(data["hashes"].tolist(), data["vectors"], strict=True))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable vector cache %s: %s", path, exc)
            return {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        keys = [_text_hash(self.model_id, t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = self.inner.embed_documents([texts[i] for i in missing])
            for i, vec in zip(missing, fresh, strict=True):
                self._cache[keys[i]] = np.asarray(vec, dtype=np.float32)
        self.computed += len(missing)
        self.hits += len(texts) - len(missing)
        return [self._cache[k].tolist() for k in keys]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def export_vector_cache(index: Index, path: Path | None = None) -> Path:
    """Write every chunk vector the collection holds to the shipped cache file."""
    got = index.collection.get(include=["documents", "embeddings"])
    hashes = np.array([_text_hash(index.model_id, d) for d in got["documents"]])
    vectors = np.asarray(got["embeddings"], dtype=np.float32)
    path = path or vector_cache_path(index.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, hashes=hashes, vectors=vectors)
    return path


# ---------------------------------------------------------------- the index


def _chroma_settings() -> ChromaSettings:
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def _describe_location(settings: Settings) -> str:
    if settings.chroma_url:
        return f"the Chroma server at {settings.chroma_url} (QA_CHROMA_URL)"
    return f"the index at {settings.persist_dir} (QA_PERSIST_DIR)"


def make_client(settings: Settings) -> chromadb.ClientAPI:
    """An embedded PersistentClient, or an HttpClient when QA_CHROMA_URL is set."""
    try:
        if settings.chroma_url:
            url = urlparse(settings.chroma_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise IndexUnavailable(
                    f"QA_CHROMA_URL={settings.chroma_url!r} is not a URL like http://host:8000"
                )
            _heartbeat(settings.chroma_url)
            client = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_chroma_settings(),
            )
            _bound_http_timeout(client)
            return client
        _check_store_files(Path(settings.persist_dir))
        settings.persist_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(
            path=str(settings.persist_dir), settings=_chroma_settings()
        )
    except IndexUnavailable:
        raise
    except Exception as exc:  # chromadb raises many kinds; the user needs one message
        if not settings.chroma_url:
            _discard_chroma_system(str(settings.persist_dir))
        raise IndexUnavailable(unavailable_message(settings, exc)) from exc


def _heartbeat(url: str) -> None:
    """Ask the server for a heartbeat first: a hung server fails here within the timeout
    (chromadb's own client would wait forever), and a server that is not Chroma (an HTTP
    error, an HTML page) is named as such instead of showing its reply."""
    import json
    import urllib.error
    import urllib.request

    endpoint = url.rstrip("/") + "/api/v2/heartbeat"
    try:
        with urllib.request.urlopen(endpoint, timeout=CHROMA_TIMEOUT_SECONDS) as response:
            body = response.read(4096)
    except urllib.error.HTTPError as exc:
        raise IndexUnavailable(_not_chroma(url, f"HTTP {exc.code} at /api/v2/heartbeat")) from None
    try:
        beat = json.loads(body)
    except ValueError:
        beat = None
    if not isinstance(beat, dict) or "nanosecond heartbeat" not in beat:
        raise IndexUnavailable(_not_chroma(url, "its /api/v2/heartbeat is not Chroma's"))


def _not_chroma(url: str, why: str) -> str:
    url = re.sub(r"(?<=://)[^/@\s]+@", "", url)  # no login in a message
    return (
        f"QA_CHROMA_URL={url} is not a Chroma server ({why}); point QA_CHROMA_URL at a "
        "`chroma run` server, or unset it to use the embedded index"
    )


def _bound_http_timeout(client: chromadb.ClientAPI) -> None:
    """chromadb's HttpClient sends with `timeout=None`: bound every request instead, so a
    server that stops answering mid-session becomes an IndexUnavailable, not a hang."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(CHROMA_TIMEOUT_SECONDS, connect=5.0)
    else:  # pragma: no cover - a chromadb whose internals moved
        log.warning("cannot set a timeout on the Chroma HTTP client; requests may hang")


def _discard_chroma_system(identifier: str) -> None:
    """Forget the half-started system a failed PersistentClient leaves in Chroma's cache.

    Chroma caches one system per path before starting it; when starting fails (a corrupted
    database) the broken system stays cached and every later client for that path, even
    after `qa ingest --rebuild` has replaced the files, fails with "no attribute 'bindings'".
    """
    try:
        from chromadb.api.shared_system_client import SharedSystemClient
    except ImportError:  # pragma: no cover - a chromadb without the shared cache
        return
    with SharedSystemClient._refcount_lock:
        if SharedSystemClient._identifier_to_refcount.get(identifier, 0) > 0:
            return  # a working client still uses it
        system = SharedSystemClient._identifier_to_system.pop(identifier, None)
    if system is not None:
        try:
            system.stop()
        except Exception as exc:
            log.debug("stopping a broken Chroma system: %s", exc)


STORE_FILE = "chroma.sqlite3"
KEPT_FILES = {"resolved.tsv"}  # user data that lives beside the store and survives a rebuild


def _check_store_files(path: Path) -> None:
    """An embedded store whose segment folders remain but whose database is gone is damaged.

    Chroma would silently start an empty database next to the orphaned vectors; say so instead.
    (A missing or empty folder is simply "no index yet" and gets built on first use.)
    """
    if not path.is_dir() or (path / STORE_FILE).exists():
        return
    leftovers = [  # hidden files (the repo's .gitkeep) are not Chroma's
        c.name for c in path.iterdir() if c.name not in KEPT_FILES and not c.name.startswith(".")
    ]
    if leftovers:
        raise IndexUnavailable(
            f"cannot use the index at {path} (QA_PERSIST_DIR): {STORE_FILE} is missing but "
            f"{len(leftovers)} other index file(s) remain; run `qa ingest --rebuild` to rebuild it"
        )


def _server_hint(url: str) -> str:
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    return f"is the server running (`chroma run --path <dir> --host {host} --port {port}`)?"


def unavailable_message(settings: Settings, exc: BaseException) -> str:
    what = _describe_location(settings)
    hint = (
        _server_hint(settings.chroma_url)
        if settings.chroma_url
        else "run `qa ingest --rebuild` to rebuild it"
    )
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"cannot use {what}: {reason}; {hint}"


class Index:
    """One Chroma collection plus the embeddings that built it."""

    def __init__(self, settings: Settings, embeddings: Embeddings | None = None):
        self.settings = settings
        self.embeddings = embeddings or get_embeddings(settings.embeddings)
        self.model_id: str = getattr(self.embeddings, "model_id", type(self.embeddings).__name__)
        self.client = make_client(settings)
        self.lock = threading.RLock()
        # Writes made through this handle: a reader in the same process (the keyword index)
        # can see its own process's changes at once, without a round-trip to Chroma.
        self.writes = 0
        self.store = self._open_store()

    def _open_store(self, revision: int = 0) -> Chroma:
        try:
            return Chroma(
                collection_name=self.settings.collection,
                embedding_function=self.embeddings,
                client=self.client,
                collection_metadata={"embedding_model": self.model_id, "revision": revision},
                collection_configuration={"hnsw": {"space": "cosine"}},
            )
        except Exception as exc:
            raise IndexUnavailable(unavailable_message(self.settings, exc)) from exc

    @property
    def collection(self) -> chromadb.Collection:
        return self.store._collection

    def call(self, fn: Callable, *args, **kwargs):
        """Run a Chroma call, turning its many failure types into one clear error."""
        try:
            return fn(*args, **kwargs)
        except IndexUnavailable:
            raise
        except Exception as exc:
            raise IndexUnavailable(unavailable_message(self.settings, exc)) from exc

    def metadata(self) -> dict:
        """Collection metadata, fetched fresh: another process may have written since."""
        fresh = self.call(self.client.get_collection, self.settings.collection)
        return dict(fresh.metadata or {})

    def revision(self) -> int:
        return int(self.metadata().get("revision", 0))

    def built_with(self) -> str | None:
        return self.metadata().get("embedding_model")

    def count(self) -> int:
        return self.call(self.collection.count)

    def note_write(self) -> None:
        self.writes += 1

    def bump_revision(self) -> None:
        self.note_write()
        meta = self.metadata()
        meta["revision"] = int(meta.get("revision", 0)) + 1
        meta["embedding_model"] = self.model_id
        self.call(self.collection.modify, metadata=meta)

    def existing_hashes(self) -> dict[str, Stored]:
        """key → (paper_hash, chunks present, chunks expected, sources) for what Chroma holds."""
        seen: dict[str, Stored] = {}
        total = self.count()
        for offset in range(0, total, 5000):
            got = self.call(self.collection.get, include=["metadatas"], limit=5000, offset=offset)
            for meta in got["metadatas"]:
                key = meta["key"]
                sources = tuple(s for s in str(meta.get("sources", "")).split(",") if s)
                old = seen.get(key)
                if old is None:
                    old = Stored(meta["paper_hash"], 0, int(meta["n_chunks"]), sources)
                digest = old.digest if old.digest == meta["paper_hash"] else "mixed"
                expected = max(old.expected, int(meta["n_chunks"]))
                if old.sources != sources:
                    digest = "mixed"  # an interrupted metadata update: redo the paper
                    sources = tuple(dict.fromkeys([*old.sources, *sources]))
                seen[key] = Stored(digest, old.present + 1, expected, sources)
        return seen

    def all_papers(self) -> list[Paper]:
        """Every paper the collection holds (from first chunks), e.g. to re-embed them."""
        papers: list[Paper] = []
        total = self.count()
        for offset in range(0, total, 5000):
            got = self.call(
                self.collection.get,
                where={"chunk": 0},
                include=["metadatas"],
                limit=5000,
                offset=offset,
            )
            papers += [paper_from_metadata(m) for m in got["metadatas"]]
        return papers

    def papers(self, keys: Sequence[str]) -> dict[str, Paper]:
        """Full records for paper keys, from their first chunks."""
        if not keys:
            return {}
        got = self.call(self.collection.get, ids=[f"{k}#0" for k in keys], include=["metadatas"])
        return {m["key"]: paper_from_metadata(m) for m in got["metadatas"]}

    def drop(self) -> None:
        """Delete the collection (rebuild, or a change of embedding model).

        The new collection's revision continues the old one's, so a keyword index built from
        the old collection never mistakes the new one (same revision and count) for it.
        """
        with self.lock:
            try:
                revision = self.revision() + 1
            except IndexUnavailable:
                revision = 1
            try:
                self.client.delete_collection(self.settings.collection)
            except Exception as exc:  # absent already is fine
                log.debug("delete_collection: %s", exc)
            self.store = self._open_store(revision)
            self.note_write()

    def close(self) -> None:
        """Release the client (an embedded store's database handles) for good."""
        close = getattr(self.client, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # closing a broken client must not mask the real error
            log.debug("closing the Chroma client: %s", exc)


class Stored(NamedTuple):
    """What the collection holds for one paper."""

    digest: str  # paper_hash of its chunks ("mixed" if they disagree)
    present: int  # chunks present
    expected: int  # chunks the paper was split into (n_chunks)
    sources: tuple[str, ...]  # seed files it came from


# ---------------------------------------------------------------- cached handle

_INDEXES: dict[tuple, Index] = {}
_INDEXES_LOCK = threading.Lock()


def _index_key(settings: Settings) -> tuple:
    where = settings.chroma_url or str(Path(settings.persist_dir).resolve())
    return (where, settings.collection, settings.embeddings)


def open_index(settings: Settings | None = None) -> Index:
    """The shared Index for these settings (one client per path, as Chroma requires)."""
    settings = settings or get_settings()
    key = _index_key(settings)
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = Index(settings)
        return _INDEXES[key]


def _forget_index(settings: Settings) -> None:
    with _INDEXES_LOCK:
        index = _INDEXES.pop(_index_key(settings), None)
    if index is not None:
        index.close()


def forget_indexes() -> None:
    """Drop cached handles and close their clients (tests, `--rebuild` of a corrupted store).

    Closing matters for embedded stores: Chroma shares one system per path inside a process,
    and an unclosed one keeps the old (possibly deleted or corrupted) database open.
    """
    with _INDEXES_LOCK:
        indexes = list(_INDEXES.values())
        _INDEXES.clear()
    for index in indexes:
        index.close()


# ---------------------------------------------------------------- building


@dataclass
class IngestReport:
    papers: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks_written: int = 0
    vectors_from_cache: int = 0
    vectors_computed: int = 0
    rebuilt: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{self.papers} papers: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged",
            f"{self.chunks_written} chunks written "
            f"({self.vectors_from_cache} vectors from cache, {self.vectors_computed} computed)",
            f"{self.seconds:.1f} s",
        ]
        if self.rebuilt:
            parts.insert(0, f"rebuilt ({self.rebuilt})")
        return "; ".join(parts)


def _wipe_corrupt_store(settings: Settings) -> None:
    """`--rebuild` of an embedded store that cannot even be opened: start from an empty dir."""
    path = Path(settings.persist_dir)
    _forget_index(settings)
    if settings.chroma_url or not path.exists():
        return
    for child in path.iterdir():
        if child.name in KEPT_FILES or child.name.startswith("."):  # user data, .gitkeep
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _open_for_build(settings: Settings, rebuild: bool) -> tuple[Index, str | None, list[Paper]]:
    """The index to write to, why it was rebuilt (if it was), and papers to carry over."""
    if rebuild and not settings.chroma_url:
        # A handle opened earlier in this process may hold a database that has since been
        # deleted or damaged (Chroma keeps serving it, read-only): look at the files afresh.
        _forget_index(settings)
    try:
        index = open_index(settings)
        if rebuild:
            index.drop()
            index.count()  # the recreated collection must be usable, not just created
            return index, "requested", []
    except IndexUnavailable:
        if not rebuild or settings.chroma_url:
            raise
        _wipe_corrupt_store(settings)
        return open_index(settings), "the old index could not be opened", []
    built_with = index.built_with()
    if built_with and built_with != index.model_id and index.count():
        # Re-embed everything the old collection holds (Chroma is the source of truth, and
        # papers ingested from the user's own files are not in the seeds), then start over.
        carried = index.all_papers()
        log.warning(
            "index built with %s, now using %s: rebuilding its %d papers",
            built_with,
            index.model_id,
            len(carried),
        )
        index.drop()
        return index, f"embedding model changed from {built_with} to {index.model_id}", carried
    return index, None, []


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="paper", desc="indexing", disable=not enabled or total < 20)


def build_index(
    papers: Iterable[Paper] | None = None,
    *,
    settings: Settings | None = None,
    rebuild: bool = False,
    prune: bool = False,
    progress: bool = True,
) -> IngestReport:
    """`qa.build_index`: upsert papers' chunks; unchanged papers are skipped.

    With `prune`, papers the collection holds that are not in `papers` are removed (used when
    the bundled corpus is the whole truth); otherwise ingesting more files only adds.
    """
    from qa.corpus import load_corpus

    settings = settings or get_settings()
    start = time.perf_counter()
    papers = list(papers) if papers is not None else load_corpus(settings.seeds_dir)
    index, rebuilt, carried = _open_for_build(settings, rebuild)
    if carried:
        given = {p.key for p in papers}
        papers += [p for p in carried if p.key not in given]
    report = IngestReport(papers=len(papers), rebuilt=rebuilt)
    with index.lock:
        existing = index.existing_hashes()
        todo = []
        relabel: list[tuple[Paper, Stored]] = []
        for paper in _unique(papers):
            have = existing.get(paper.key)
            digest = paper_hash(paper, settings.chunk_tokens)
            if have and have.digest == digest and have.present == have.expected:
                report.unchanged += 1
                if not set(paper.sources) <= set(have.sources):
                    relabel.append((paper, have))
            else:
                todo.append((paper, have))
        if relabel:
            _merge_sources(index, relabel)
        embedder = CachedEmbeddings(index.embeddings, index.model_id)
        with _progress(len(todo), progress) as bar:
            for batch in _batches(todo, WRITE_BATCH):
                _write_batch(index, embedder, batch, report)
                bar.update(len(batch))
        if prune:
            _prune(index, existing, {p.key for p in papers}, report)
        report.vectors_from_cache = embedder.hits
        report.vectors_computed = embedder.computed
        if report.chunks_written or report.removed or rebuilt or relabel:
            index.bump_revision()
    report.seconds = time.perf_counter() - start
    log.info("ingest: %s", report.summary())
    return report


def _unique(papers: list[Paper]) -> list[Paper]:
    """One paper per key (the last one given wins), so a batch never upserts an ID twice."""
    return list({p.key: p for p in papers}.values())


def _merge_sources(index: Index, relabel: list[tuple[Paper, Stored]]) -> None:
    """Add the names of files that repeat stored papers to their chunks' `sources`."""
    index.note_write()
    ids: list[str] = []
    metadatas: list[dict] = []
    for paper, have in relabel:
        merged = ",".join(dict.fromkeys([*have.sources, *paper.sources]))
        for i in range(have.expected):
            ids.append(f"{paper.key}#{i}")
            metadatas.append({"sources": merged})
    for start in range(0, len(ids), 1000):
        index.call(
            index.collection.update,
            ids=ids[start : start + 1000],
            metadatas=metadatas[start : start + 1000],
        )


def _batches(todo: list, max_chunks: int) -> Iterable[list]:
    """Group papers so each upsert holds whole papers and about `max_chunks` chunks."""
    batch: list = []
    for item in todo:
        batch.append(item)
        if len(batch) >= max(1, max_chunks // 2):
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(index: Index, embedder: Embeddings, batch: list, report: IngestReport) -> None:
    chunks: list[Chunk] = []
    stale: list[str] = []
    for paper, have in batch:
        if have and not set(have.sources) <= set(paper.sources):
            # a file's papers keep the names of the other files they also came from
            paper = dataclasses.replace(
                paper, sources=list(dict.fromkeys([*have.sources, *paper.sources]))
            )
        new = chunk_paper(paper, index.settings.chunk_tokens)
        chunks += new
        if have:
            report.updated += 1
            stale += [f"{paper.key}#{i}" for i in range(len(new), max(have.present, have.expected))]
        else:
            report.added += 1
    # Embed first (the slow part), then write, then remove the tail a shorter version no
    # longer has: a kill at any point leaves each paper whole or detectably mixed (its chunks'
    # hashes or counts disagree), and the next run redoes exactly those papers.
    vectors = embedder.embed_documents([c.text for c in chunks])
    index.note_write()
    index.call(
        index.collection.upsert,
        ids=[c.id for c in chunks],
        documents=[c.text for c in chunks],
        metadatas=[c.metadata for c in chunks],
        embeddings=vectors,
    )
    if stale:
        index.call(index.collection.delete, ids=stale)
    report.chunks_written += len(chunks)


def _prune(index: Index, existing: dict, keep: set[str], report: IngestReport) -> None:
    gone = [key for key in existing if key not in keep]
    if gone:
        index.note_write()
    for key in gone:
        n = max(existing[key][1], existing[key][2])
        index.call(index.collection.delete, ids=[f"{key}#{i}" for i in range(n)])
    report.removed = len(gone)


def ensure_index(settings: Settings | None = None, progress: bool = True) -> Index:
    """Open the index, building it from the bundled seeds when it is empty."""
    settings = settings or get_settings()
    index = open_index(settings)
    built_with = index.built_with()
    if index.count() == 0 or (built_with and built_with != index.model_id):
        build_index(settings=settings, progress=progress)
    return index
