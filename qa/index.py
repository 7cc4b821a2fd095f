"""Papers → chunks → Chroma (embedded or server), idempotently.

Chunks are the paper's title plus a slice of its abstract sized to the embedding model's window,
with deterministic IDs `"{key}#{i}"`. Every chunk carries its paper's content hash, so a re-run
skips unchanged papers and an interrupted run resumes where it stopped. The collection records
which embedding model built it; a different model means a rebuild, never mixed vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
WRITE_BATCH = 64  # chunks per upsert; a paper's chunks always go in one call


class IndexUnavailable(RuntimeError):
    """The index cannot be opened or reached; the message says what to do."""


# ---------------------------------------------------------------- chunks


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    metadata: dict


def paper_hash(paper: Paper) -> str:
    """Hash of everything a chunk is made from: a change means re-chunking the paper."""
    parts = [paper.arxiv_id or "", paper.title, paper.abstract, ",".join(paper.sources)]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def chunk_paper(
    paper: Paper, max_tokens: int, length: Callable[[str], int] = token_length
) -> list[Chunk]:
    """Title + abstract slices, each within `max_tokens` of the embedding model."""
    title_tokens = length(paper.title) if paper.title else 0
    budget = max(48, max_tokens - title_tokens - 4)
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=budget,
        chunk_overlap=budget // 6,
        length_function=length,
        separators=[". ", "; ", ", ", " ", ""],
        keep_separator="end",
    )
    pieces = splitter.split_text(paper.abstract) or [paper.abstract]
    digest = paper_hash(paper)
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
        text = f"{paper.title}\n{piece.strip()}" if paper.title else piece.strip()
        chunks.append(Chunk(f"{paper.key}#{i}", text, meta))
    return chunks


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
            return chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_chroma_settings(),
            )
        settings.persist_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(
            path=str(settings.persist_dir), settings=_chroma_settings()
        )
    except IndexUnavailable:
        raise
    except Exception as exc:  # chromadb raises many kinds; the user needs one message
        raise IndexUnavailable(unavailable_message(settings, exc)) from exc


def unavailable_message(settings: Settings, exc: BaseException) -> str:
    what = _describe_location(settings)
    hint = (
        "is the server running (`chroma run --host 127.0.0.1 --port 8000`)?"
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
        self.store = self._open_store()

    def _open_store(self) -> Chroma:
        try:
            return Chroma(
                collection_name=self.settings.collection,
                embedding_function=self.embeddings,
                client=self.client,
                collection_metadata={"embedding_model": self.model_id, "revision": 0},
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

    def bump_revision(self) -> None:
        meta = self.metadata()
        meta["revision"] = int(meta.get("revision", 0)) + 1
        meta["embedding_model"] = self.model_id
        self.call(self.collection.modify, metadata=meta)

    def existing_hashes(self) -> dict[str, tuple[str, int, int]]:
        """key → (paper_hash, chunks present, chunks expected) for what Chroma holds."""
        seen: dict[str, tuple[str, int, int]] = {}
        total = self.count()
        for offset in range(0, total, 5000):
            got = self.call(self.collection.get, include=["metadatas"], limit=5000, offset=offset)
            for meta in got["metadatas"]:
                key = meta["key"]
                digest, present, _ = seen.get(key, (meta["paper_hash"], 0, 0))
                if digest != meta["paper_hash"]:
                    digest = "mixed"
                seen[key] = (digest, present + 1, int(meta["n_chunks"]))
        return seen

    def papers(self, keys: Sequence[str]) -> dict[str, Paper]:
        """Full records for paper keys, from their first chunks."""
        if not keys:
            return {}
        got = self.call(self.collection.get, ids=[f"{k}#0" for k in keys], include=["metadatas"])
        return {m["key"]: paper_from_metadata(m) for m in got["metadatas"]}

    def drop(self) -> None:
        """Delete the collection (rebuild, or a change of embedding model)."""
        with self.lock:
            try:
                self.client.delete_collection(self.settings.collection)
            except Exception as exc:  # absent already is fine
                log.debug("delete_collection: %s", exc)
            self.store = self._open_store()


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


def forget_indexes() -> None:
    """Drop cached handles (tests, `--rebuild` of a corrupted store)."""
    with _INDEXES_LOCK:
        _INDEXES.clear()


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
    if settings.chroma_url or not path.exists():
        return
    forget_indexes()
    for child in path.iterdir():
        if child.name == "resolved.tsv":  # the resolve cache is user data, keep it
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _open_for_build(settings: Settings, rebuild: bool) -> tuple[Index, str | None]:
    try:
        index = open_index(settings)
    except IndexUnavailable:
        if not rebuild or settings.chroma_url:
            raise
        _wipe_corrupt_store(settings)
        return open_index(settings), "the old index could not be opened"
    if rebuild:
        index.drop()
        return index, "requested"
    built_with = index.built_with()
    if built_with and built_with != index.model_id and index.count():
        log.warning("index built with %s, now using %s: rebuilding", built_with, index.model_id)
        index.drop()
        return index, f"embedding model changed from {built_with} to {index.model_id}"
    return index, None


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
    index, rebuilt = _open_for_build(settings, rebuild)
    report = IngestReport(papers=len(papers), rebuilt=rebuilt)
    with index.lock:
        existing = index.existing_hashes()
        todo = []
        for paper in papers:
            have = existing.get(paper.key)
            if have and have[0] == paper_hash(paper) and have[1] == have[2]:
                report.unchanged += 1
            else:
                todo.append((paper, have))
        embedder = CachedEmbeddings(index.embeddings, index.model_id)
        with _progress(len(todo), progress) as bar:
            for batch in _batches(todo, WRITE_BATCH):
                _write_batch(index, embedder, batch, report)
                bar.update(len(batch))
        if prune:
            _prune(index, existing, {p.key for p in papers}, report)
        report.vectors_from_cache = embedder.hits
        report.vectors_computed = embedder.computed
        if report.chunks_written or report.removed or rebuilt:
            index.bump_revision()
    report.seconds = time.perf_counter() - start
    log.info("ingest: %s", report.summary())
    return report


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
        new = chunk_paper(paper, index.settings.chunk_tokens)
        chunks += new
        if have:
            report.updated += 1
            stale += [f"{paper.key}#{i}" for i in range(len(new), max(have[1], have[2]))]
        else:
            report.added += 1
    if stale:
        index.call(index.collection.delete, ids=stale)
    vectors = embedder.embed_documents([c.text for c in chunks])
    index.call(
        index.collection.upsert,
        ids=[c.id for c in chunks],
        documents=[c.text for c in chunks],
        metadatas=[c.metadata for c in chunks],
        embeddings=vectors,
    )
    report.chunks_written += len(chunks)


def _prune(index: Index, existing: dict, keep: set[str], report: IngestReport) -> None:
    gone = [key for key in existing if key not in keep]
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
