"""Chunks and the Chroma collection (embedded or server) they live in, as readers see it.

The corpus record (qa/store.py) is the source of truth; the collection is derived from it by
the writer side (qa/ingest.py). Chunks are the paper's title plus a slice of its abstract sized
to the embedding model's window, with deterministic IDs `"{key}#{i}"`, each carrying its
paper's content hash. An `Index` is a handle on the active collection (the record names it);
readers never write through it and reopen it when the record's generation changes.
`build_index`, `ensure_index` and `remove_papers` live in qa/ingest.py and are importable
from here as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import chromadb
from chromadb.config import Settings as ChromaSettings
from langchain_core.embeddings import Embeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter

from qa.config import PROJECT_ROOT, Settings, get_settings
from qa.corpus import Paper
from qa.embeddings import get_embeddings, token_length
from qa.paper_meta import digest_parts, from_chroma, to_chroma
from qa.store import CorpusStore, IndexUnavailable, corpus_path, fault_reason, open_store

log = logging.getLogger(__name__)

VECTOR_CACHE_DIR = PROJECT_ROOT / "seeds" / "vectors"
# chunks a writer keeps in hand for its keyword-index update: ~2.3 KB each with their paper's
# abstract (tracemalloc over the seeds' chunks), so ~115 MB at most
WRITTEN_KEPT = 50_000


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
    parts += digest_parts(paper)  # authors, categories, dates: filters read them from chunks
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
        **to_chroma(paper),  # on every chunk: Chroma `where` filters select chunks
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
    """Rebuild a Paper from its first chunk's metadata (what a hit shows; also how an index
    from before the corpus record is adopted into it)."""
    return Paper(
        key=meta["key"],
        arxiv_id=meta.get("arxiv_id") or None,
        title=meta.get("title", ""),
        abstract=meta.get("abstract", ""),
        comment=meta.get("comment", ""),
        sources=[s for s in meta.get("sources", "").split(",") if s],
        **from_chroma(meta),
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
        """Computed vectors are not kept: an ingest of any size holds one batch's vectors."""
        found = [self._cache.get(_text_hash(self.model_id, t)) for t in texts]
        missing = [i for i, vec in enumerate(found) if vec is None]
        fresh = self.inner.embed_documents([texts[i] for i in missing]) if missing else []
        vectors = [vec.tolist() if vec is not None else vec for vec in found]
        for i, vec in zip(missing, fresh, strict=True):
            vectors[i] = vec
        self.computed += len(missing)
        self.hits += len(texts) - len(missing)
        return vectors

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


def describe_location(settings: Settings) -> str:
    if settings.chroma_url:
        return f"the Chroma server at {settings.chroma_url} (QA_CHROMA_URL)"
    return f"the index at {settings.persist_dir} (QA_PERSIST_DIR)"


def make_client(settings: Settings, fresh: bool = False) -> chromadb.ClientAPI:
    """An embedded PersistentClient, or an HttpClient when QA_CHROMA_URL is set.

    `fresh`: a new embedded system even if this process has one for the path. An embedded
    client keeps its vector index in memory and never sees another process's writes (queries
    then fail with "Error finding id"); a reader reopens this way when the record changes.
    """
    try:
        if settings.chroma_url:
            url = urlparse(settings.chroma_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise IndexUnavailable(
                    f"QA_CHROMA_URL={settings.chroma_url!r} is not a URL like http://host:8000"
                )
            _heartbeat(settings.chroma_url, settings.chroma_timeout)
            client = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_chroma_settings(),
            )
            _bound_http_timeout(client, settings.chroma_timeout)
            return client
        _check_store_files(settings)
        settings.persist_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            _detach_chroma_system(str(settings.persist_dir))
        return chromadb.PersistentClient(
            path=str(settings.persist_dir), settings=_chroma_settings()
        )
    except IndexUnavailable:
        raise
    except Exception as exc:  # chromadb raises many kinds; the user needs one message
        if not settings.chroma_url:
            _discard_chroma_system(str(settings.persist_dir))
        raise chroma_error(settings, exc) from exc


def _heartbeat(url: str, timeout: float) -> None:
    """Ask the server for a heartbeat first: a hung server fails here within the timeout
    (chromadb's own client would wait forever), and a server that is not Chroma (an HTTP
    error, an HTML page) is named as such instead of showing its reply."""
    import json
    import urllib.error
    import urllib.request

    endpoint = url.rstrip("/") + "/api/v2/heartbeat"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:
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


def _bound_http_timeout(client: chromadb.ClientAPI, timeout: float) -> None:
    """chromadb's HttpClient sends with `timeout=None`: bound every request instead, so a
    server that stops answering mid-session becomes an IndexUnavailable, not a hang."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(timeout, connect=5.0)
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


def _detach_chroma_system(identifier: str) -> None:
    """Make the next client for this path start a new system; clients of the old one keep
    working (a query in flight in another thread finishes) until they are dropped."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient
    except ImportError:  # pragma: no cover - a chromadb without the shared cache
        return
    with SharedSystemClient._refcount_lock:
        SharedSystemClient._identifier_to_system.pop(identifier, None)
        SharedSystemClient._identifier_to_refcount.pop(identifier, None)


STORE_FILE = "chroma.sqlite3"
KEPT_FILES = {"resolved.tsv"}  # user data that lives beside the store and survives a rebuild


def is_kept_file(name: str, settings: Settings) -> bool:
    """Files in the store folder that are not Chroma's, which a rebuild never deletes: the
    resolve cache, hidden files, the corpus record with its -wal, -shm and .lock files."""
    record = corpus_path(settings).name
    return name in KEPT_FILES or name.startswith((record, "."))


def _check_store_files(settings: Settings) -> None:
    """An embedded store whose segment folders remain but whose database is gone is damaged.

    Chroma would silently start an empty database next to the orphaned vectors; say so instead.
    (A missing or empty folder is simply "no index yet" and gets built on first use.)
    """
    path = Path(settings.persist_dir)
    if not path.is_dir() or (path / STORE_FILE).exists():
        return
    leftovers = [c.name for c in path.iterdir() if not is_kept_file(c.name, settings)]
    if leftovers:
        raise StoreDamaged(
            f"cannot use the index at {path} (QA_PERSIST_DIR): {STORE_FILE} is missing but "
            f"{len(leftovers)} other index file(s) remain; run `qa ingest --rebuild` to rebuild it"
        )


def _server_hint(url: str) -> str:
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    return f"is the server running (`chroma run --path <dir> --host {host} --port {port}`)?"


class StoreDamaged(IndexUnavailable):
    """An embedded Chroma store that fails for no resource reason: only `--rebuild` may wipe
    it (an embedding, corpus-record, full-disk or read-only failure never counts as this)."""


def chroma_error(settings: Settings, exc: BaseException) -> IndexUnavailable:
    """The one-line error for a failed Chroma call (StoreDamaged when the files are at fault)."""
    damaged = not settings.chroma_url and fault_reason(exc, settings.persist_dir) is None
    return (StoreDamaged if damaged else IndexUnavailable)(unavailable_message(settings, exc))


def unavailable_message(settings: Settings, exc: BaseException) -> str:
    """One line: where, what went wrong (a full disk or read-only store by name), the fix."""
    what = describe_location(settings)
    fault = fault_reason(exc, None if settings.chroma_url else settings.persist_dir)
    if fault == "the disk is full":
        return (
            f"cannot use {what}: the disk is full; free some space and run the same command "
            "again (every recorded paper is kept)"
        )
    if fault:
        return (
            f"cannot use {what}: {fault} (an embedded Chroma store needs write access even to "
            "answer); make it writable, or copy the folder and point QA_PERSIST_DIR at the copy"
        )
    hint = (
        _server_hint(settings.chroma_url)
        if settings.chroma_url
        else "run `qa ingest --rebuild` to rebuild it from the corpus record"
    )
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if settings.chroma_url and _timed_out(exc):
        reason = f"no answer within QA_CHROMA_TIMEOUT={settings.chroma_timeout:g} s"
        hint += " If it is busy (a large write), raise QA_CHROMA_TIMEOUT."
    return f"cannot use {what}: {reason}; {hint}"


def _timed_out(exc: BaseException) -> bool:
    """A request the server did not answer in time (httpx's or the heartbeat's socket)."""
    import httpx

    while exc is not None:
        if isinstance(exc, httpx.TimeoutException | TimeoutError) or isinstance(
            getattr(exc, "reason", None),
            TimeoutError,  # urllib's URLError around it
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


EMBEDDED = "embedded"  # the record's name for where an embedded store's collections live


def record_key(where: str, name: str) -> str:
    """A target's or a collection's name in the corpus record: where it lives, then which."""
    return f"{where}|{name}"


def split_record_key(key: str) -> tuple[str, str]:
    """(where, name) of a `record_key` (a Chroma name never holds "|"; a URL may not)."""
    where, _, name = key.rpartition("|")
    return where, name


def store_where(settings: Settings, corpus: CorpusStore, client: chromadb.ClientAPI) -> str:
    """The record's name for where the collections live: "embedded", or the Chroma server's
    URL as it was first recorded.

    The same server reached by another URL (restarted on another port, `localhost` for
    `127.0.0.1`, behind a proxy) is recognised by its collections' Chroma ids, which are
    UUIDs: keyed by the URL as written, a reader there saw no index and started a first
    build, a write reconciling every chunk (at 1M chunks it read all their metadata)."""
    url = settings.chroma_url
    if not url:
        return EMBEDDED
    if not corpus.exists() or corpus.active(record_key(url, settings.collection)):
        return url
    for coll, state in corpus.sync_states().items():
        where, name = split_record_key(coll)
        if where in (EMBEDDED, url):
            continue
        try:
            found = client.get_collection(name, embedding_function=None)
        except chromadb.errors.NotFoundError:
            continue
        except Exception as exc:
            raise chroma_error(settings, exc) from exc
        if str(found.id) == state.id:
            return where
    return url


class GuardedEmbeddings(Embeddings):
    """The configured embeddings, with a failing backend turned into one clear message."""

    def __init__(self, inner: Embeddings, spec: str):
        self.inner = inner
        self.spec = spec
        self.model_id: str = getattr(inner, "model_id", type(inner).__name__)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._call(self.inner.embed_documents, texts)

    def embed_query(self, text: str) -> list[float]:
        return self._call(self.inner.embed_query, text)

    def _call(self, fn: Callable, arg):
        try:
            return fn(arg)
        except IndexUnavailable:
            raise
        except Exception as exc:  # HTTP, ONNX, import errors: the user needs one line
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise IndexUnavailable(
                f"the embedding model {self.spec!r} (QA_EMBEDDINGS) failed: {reason}; start or "
                "fix that backend, or set QA_EMBEDDINGS to the model the index was built with"
            ) from exc


def _load_embeddings(settings: Settings) -> Embeddings:
    try:
        inner = get_embeddings(settings.embeddings)
    except Exception as exc:  # unknown spec, missing key, missing extra
        raise IndexUnavailable(
            f"cannot load the embedding model {settings.embeddings!r} (QA_EMBEDDINGS): {exc}"
        ) from exc
    return GuardedEmbeddings(inner, settings.embeddings)


def _chroma_system(client: chromadb.ClientAPI):
    """The shared system a client runs on (None for a server client)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    ident = getattr(client, "_identifier", None)
    return SharedSystemClient._identifier_to_system.get(ident) if ident else None


class Index:
    """One Chroma collection (the active one, unless `name` says which) plus its embeddings."""

    def __init__(
        self,
        settings: Settings,
        embeddings: Embeddings | None = None,
        *,
        name: str | None = None,
        create: bool = False,
    ):
        self.settings = settings
        self.embeddings = embeddings or _load_embeddings(settings)
        self.model_id: str = getattr(self.embeddings, "model_id", type(self.embeddings).__name__)
        self.corpus: CorpusStore = open_store(settings)
        self.lock = threading.RLock()
        # Writes made through this handle: a reader in the same process (the keyword index)
        # can see its own process's changes at once, without a round-trip to Chroma.
        self.writes = 0
        # Chunks this handle upserted since its last commit (id → text, metadata), so the
        # writer's keyword-index update reads them from here, not back from Chroma: at 3,000
        # papers that read-back was ~1 s of a ~9 s ingest's CPU. Bounded by WRITTEN_KEPT.
        self.written: dict[str, tuple[str, dict]] = {}
        self.generation = self.corpus.generation()
        self.client = make_client(settings)
        self._system = _chroma_system(self.client)
        self._retired_systems: list = []
        self.where = store_where(settings, self.corpus, self.client)
        self.pinned = name is not None  # a collection being built: never follows the pointer
        self.name = name or self._active_name()
        self._collection = self._open_collection(create)

    @property
    def target(self) -> str:
        """The record's name for this index (the active collection's pointer is kept there)."""
        return record_key(self.where, self.settings.collection)

    def coll(self, name: str | None = None) -> str:
        """The record's name for a collection's account (this handle's, unless `name`)."""
        return record_key(self.where, name or self.name)

    def _active_name(self) -> str:
        active = self.corpus.active(self.target)
        return active.name if active else self.settings.collection

    def _open_collection(self, create: bool) -> chromadb.Collection | None:
        """The collection (created when `create`), or None when it does not exist yet."""
        try:
            if create:
                return self.client.get_or_create_collection(
                    self.name,
                    metadata={
                        "embedding_model": self.model_id,
                        "embedding_spec": self.settings.embeddings,
                        "revision": 0,
                    },
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
            return self.client.get_collection(self.name, embedding_function=None)
        except chromadb.errors.NotFoundError:
            return None
        except Exception as exc:
            raise chroma_error(self.settings, exc) from exc

    @property
    def exists(self) -> bool:
        return self._collection is not None

    @property
    def collection(self) -> chromadb.Collection:
        if self._collection is None:
            raise IndexUnavailable(
                f"there is no index yet in {describe_location(self.settings)}; run "
                "`qa ingest` to build it from the corpus record"
            )
        return self._collection

    def create(self) -> None:
        """Writers only: create the collection if it does not exist."""
        if self._collection is None:
            self._collection = self._open_collection(create=True)

    def sync(self) -> None:
        """Pick up what a writer committed since (new papers, a switched collection).

        Cheap when nothing changed (one read of the record's generation). An embedded store
        is reopened on a fresh Chroma system: the old one's in-memory vectors are stale.
        """
        generation = self.corpus.generation()
        if generation == self.generation or self.pinned:
            return
        with self.lock:
            if generation == self.generation:
                return
            if not self.settings.chroma_url:
                self._retire_system()
                self.client = make_client(self.settings, fresh=True)
                self._system = _chroma_system(self.client)
            self.where = store_where(self.settings, self.corpus, self.client)
            self.name = self._active_name()
            self._collection = self._open_collection(create=False)
            if self.exists:
                check_model(self)  # raises until fixed: the generation stays unseen
            self.generation = generation
            self.note_write()

    def _retire_system(self) -> None:
        """Before a reopen: stop the system the previous reopen replaced (its in-memory
        vectors would otherwise stay for the life of the process, measured ~1.5 MB per
        reopen at 517 papers); the one replaced now may still serve a question in flight in
        another thread, so it is stopped at the next reopen (or on close)."""
        self._stop_retired()
        self._retired_systems = [self._system] if self._system is not None else []

    def _stop_retired(self) -> None:
        for system in self._retired_systems:
            try:
                system.stop()
            except Exception as exc:  # a system that cannot stop cleanly is dropped anyway
                log.debug("stopping a replaced Chroma system: %s", exc)
        self._retired_systems = []

    def call(self, fn: Callable, *args, **kwargs):
        """Run a Chroma call, turning its many failure types into one clear error."""
        try:
            return fn(*args, **kwargs)
        except IndexUnavailable:
            raise
        except Exception as exc:
            raise chroma_error(self.settings, exc) from exc

    def metadata(self) -> dict:
        """Collection metadata, fetched fresh: another process may have written since."""
        fresh = self.call(self.client.get_collection, self.name, embedding_function=None)
        return dict(fresh.metadata or {})

    def revision(self) -> int:
        """The committed state's number: the record's generation (the collection's own
        revision stamp for an index that has no corpus record)."""
        if self.corpus.exists() and not self.pinned:
            return self.generation
        return int(self.metadata().get("revision", 0))

    def snapshot(self) -> tuple[int, int]:
        """(revision, chunks) of the last committed write: what readers' keyword index
        follows, so chunks a writer is still adding are not seen half-way."""
        active = self.corpus.active(self.target) if not self.pinned else None
        if active and active.name == self.name:
            return self.generation, active.chunks
        return self.revision(), self.count()

    def built_with(self) -> str | None:
        return self.metadata().get("embedding_model")

    def count(self) -> int:
        """Chunks in the collection (0 when there is no index yet)."""
        return self.call(self._collection.count) if self.exists else 0

    def note_write(self) -> None:
        self.writes += 1

    def note_written(self, chunks: list[Chunk]) -> None:
        """Keep what an upsert just wrote for the keyword-index update (up to WRITTEN_KEPT
        chunks; the rest is read back from Chroma)."""
        if len(self.written) + len(chunks) <= WRITTEN_KEPT:
            self.written.update((c.id, (c.text, c.metadata)) for c in chunks)

    def forget_written(self, ids: list[str] | None = None) -> None:
        """Drop deleted chunks from what this handle wrote (all of them: after a commit)."""
        if ids is None:
            self.written.clear()
        for cid in ids or ():
            self.written.pop(cid, None)

    def bump_revision(self) -> None:
        self.note_write()
        meta = self.metadata()
        meta["revision"] = int(meta.get("revision", 0)) + 1
        meta["embedding_model"] = self.model_id
        meta["embedding_spec"] = self.settings.embeddings
        self.call(self.collection.modify, metadata=meta)

    def chunk_metadata(self, page: int = 5000) -> Iterator[list[dict]]:
        """Every chunk's metadata, a page at a time: what a writer reconciles the record's
        account of this collection from (never all in memory)."""
        total = self.count()
        for offset in range(0, total, page):
            got = self.call(self.collection.get, include=["metadatas"], limit=page, offset=offset)
            yield got["metadatas"]

    def all_papers(self) -> list[Paper]:
        """Every paper the collection holds (from first chunks): adopting a pre-record index."""
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

    def close(self) -> None:
        """Release the client (an embedded store's database handles) for good.

        A client whose system was replaced by a fresh reopen is left to the garbage collector:
        closing it would release the new system, which other handles use.
        """
        self._stop_retired()
        close = getattr(self.client, "close", None)
        if close is None or (
            self._system is not None and _chroma_system(self.client) is not self._system
        ):
            return
        try:
            close()
        except Exception as exc:  # closing a broken client must not mask the real error
            log.debug("closing the Chroma client: %s", exc)


def check_model(index: Index) -> None:
    """Refuse to query or extend a collection built with another embedding model."""
    built = index.metadata()
    built_with = built.get("embedding_model")
    if not built_with or built_with == index.model_id or index.count() == 0:
        return
    spec = built.get("embedding_spec")
    back = f"set QA_EMBEDDINGS={spec} again" if spec else "set QA_EMBEDDINGS back"
    raise IndexUnavailable(
        f"{describe_location(index.settings)} was built with the embedding model {built_with}, "
        f"but QA_EMBEDDINGS={index.settings.embeddings} selects {index.model_id}; run "
        f"`qa ingest --rebuild` to re-embed every recorded paper with it (the current index "
        f"keeps answering until that finishes), or {back}"
    )


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
    """The shared reader handle for these settings (one client per path, as Chroma requires),
    brought up to date with what writers have committed since."""
    settings = settings or get_settings()
    key = _index_key(settings)
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = Index(settings)
        index = _INDEXES[key]
    index.sync()
    return index


def forget_index(settings: Settings) -> None:
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


_WRITER_SIDE = {"IngestReport", "build_index", "ensure_index", "remove_papers"}


def __getattr__(name: str):
    """The writer side moved to qa/ingest.py; `from qa.index import build_index` still works."""
    if name in _WRITER_SIDE:
        from qa import ingest

        return getattr(ingest, name)
    raise AttributeError(f"module 'qa.index' has no attribute {name!r}")
