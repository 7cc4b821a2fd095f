"""The corpus record: every paper ingested, durably, in SQLite beside (not inside) the index.

Chroma and the keyword index are derived from this record and can always be rebuilt from it:
a damaged or deleted collection, a rebuild, a change of embedding model never lose a paper.
Each paper is stored whole, as the JSON of its dataclass fields, so fields added to `Paper`
later are kept without a schema change. The record also holds which collection is active
(a rebuild fills a new one beside it and switches only when it is complete) and a generation
counter that every write bumps, so readers in other processes notice new data.

One writer at a time: `writer_lock()` (filelock, beside the record) serialises `qa ingest`,
`qa remove` and first builds; readers never take it and never write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from qa.config import Settings, get_settings
from qa.corpus import Paper, as_variant, normalize

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS papers (
    key TEXT PRIMARY KEY,
    arxiv_id TEXT,
    origin TEXT NOT NULL,          -- 'bundled' (the shipped seeds) or 'user'
    data TEXT NOT NULL,            -- the Paper's fields as JSON
    added REAL NOT NULL,
    updated REAL NOT NULL,
    rev INTEGER NOT NULL DEFAULT 0 -- the record's change counter when last added or changed
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- what each collection holds per paper, as the writer left it (see `SyncState`)
CREATE TABLE IF NOT EXISTS indexed (
    coll TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,            -- paper_hash of its chunks ('mixed' if they disagree)
    present INTEGER NOT NULL,      -- chunks held
    expected INTEGER NOT NULL,     -- chunks the paper was split into
    sources TEXT NOT NULL,         -- comma-joined seed files on its chunks
    PRIMARY KEY (coll, key)
) WITHOUT ROWID;
"""
INDEXES = "CREATE INDEX IF NOT EXISTS papers_by_rev ON papers (rev);"  # (rev, rowid)
BUNDLED, USER = "bundled", "user"
SETTLED = 2.0  # seconds: a file time older than this cannot be that of a commit still to come


class IndexUnavailable(RuntimeError):
    """The index or its corpus record cannot be used; the message says what to do."""


class WriterBusy(IndexUnavailable):
    """Another writer held the lock for longer than QA_WRITER_WAIT."""


# ---------------------------------------------------------------- Paper <-> dict


_FIELDS = tuple(f.name for f in dataclasses.fields(Paper))


def paper_to_dict(paper: Paper) -> dict:
    """Every dataclass field of the paper (new fields included automatically); lists copied.

    Not `dataclasses.asdict`: its recursive deep copy was 0.11 ms a paper, most of what
    recording a paper cost (Paper's fields are flat: text, dates, lists of text)."""
    return {
        name: list(value) if isinstance(value, list) else value
        for name in _FIELDS
        for value in (getattr(paper, name),)
    }


def _json_value(value: object) -> object:
    """Non-JSON field values: dates as ISO strings, sets and tuples as lists."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot record a {type(value).__name__} field value in the corpus record")


def paper_from_dict(data: dict) -> Paper:
    """A Paper from `paper_to_dict` output; keys this version does not know are ignored."""
    names = {f.name for f in dataclasses.fields(Paper)}
    return Paper(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------- resource faults


def fault_reason(exc: BaseException, where: Path | None = None) -> str | None:
    """Name a resource fault (disk full, read-only, permission denied) hidden in `exc`.

    SQLite reports a write that fails on a full disk as "disk I/O error" as often as
    SQLITE_FULL (it depends on which file, the WAL or the database, hit the end of the
    disk), so an I/O error is named a full disk when `where`'s file system has no room left."""
    reason = _named_fault(exc)
    if reason is None and where is not None and _io_error(exc) and _no_room(where):
        return "the disk is full"
    return reason


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and its causes, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _io_error(exc: BaseException) -> bool:
    return any(
        getattr(e, "errno", None) == errno.EIO or "disk i/o error" in str(e).lower()
        for e in _chain(exc)
    )


def _no_room(where: Path, spare: int = 1 << 20) -> bool:
    """Less than `spare` bytes free on the file system holding `where` (or its nearest
    existing parent)."""
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < spare
    except OSError:
        return False


def _named_fault(exc: BaseException) -> str | None:
    for e in _chain(exc):
        code = getattr(e, "errno", None)
        text = str(e).lower()
        if code == errno.ENOSPC or "disk is full" in text or "no space left" in text:
            return "the disk is full"
        if code == errno.EROFS or "read-only file system" in text or "readonly database" in text:
            return "it is read-only"
        if code in (errno.EACCES, errno.EPERM) or "permission denied" in text:
            return "permission denied"
    return None


# ---------------------------------------------------------------- the record


@dataclass
class AddReport:
    """What recording a batch of papers did, by key (nothing is dropped without a line here)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # same abstract, fields or sources changed
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # same ID, another abstract, replaced
    kept_both: list[str] = field(default_factory=list)  # messages: same ID, both versions kept
    papers: list[Paper] = field(default_factory=list)  # the versions now held, in input order


@dataclass
class SyncState:
    """How far a collection is in line with the record, so a write examines only what changed.

    Every paper with `rev` ≤ `rev` was indexed as the `indexed` table says, in the collection
    with Chroma id `id`, chunked for `tokens`; `chunks` is the sum of the table's `present`,
    which must equal the collection's count (else the writer reconciles from Chroma).
    `rev` -1: examine every paper."""

    id: str
    rev: int
    chunks: int
    tokens: int


@dataclass
class Active:
    """The collection readers use, and the embedding model that built it."""

    name: str
    model: str
    chunks: int


class CorpusStore:
    """The SQLite corpus record at `path` (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._held: sqlite3.Connection | None = None  # see `held_open`
        self._holder: int | None = None  # the thread that holds it open
        self._seen: tuple[list, int] | None = None  # see `generation`

    # -- connections

    def exists(self) -> bool:
        """Has anything been recorded? (A first write that failed may leave an empty file.)"""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    @contextlib.contextmanager
    def held_open(self) -> Iterator[None]:
        """Keep one connection for a writer's whole run (taken under the writer lock): every
        transaction of this thread reuses it, and it is closed once at the end.

        A connection per transaction costs its set-up, and closing SQLite's last connection
        to a WAL database checkpoints it (copies the WAL into the database, syncing both):
        11 ms per small transaction alone, 42 ms after each batch of an ingest (load 4),
        against under 1 ms on a kept connection. Durability is unchanged: each transaction
        is committed (and synced as `_write` says) before it returns."""
        if self._holder is not None:  # re-entrant: the outer one closes it (another
            yield  # thread's transactions meanwhile open connections of their own)
            return
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            conn, self._held, self._holder = self._held, None, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _own(self) -> sqlite3.Connection | None:
        """The held connection, if this thread holds one open."""
        return self._held if self._holder == threading.get_ident() else None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection; works on a read-only store and never creates the file."""
        held = self._own()
        if held is not None:  # a writer reads its own record through its connection
            try:
                yield held
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
            return
        conn = None
        try:
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
                conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                if "no such table" in str(exc):
                    raise
                # a read-only folder: WAL needs its -shm file; nobody can write there anyway
                conn = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True)
            yield conn
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc
        finally:
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def _write(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction (committed on success); faults are named, nothing half-written.

        Papers and the active collection are synced to disk at each commit (a power cut
        keeps them). The per-collection account (`synced=False`: `indexed` rows, sync
        states) only needs what a killed process keeps, which an unsynced WAL commit is: if a
        power cut drops its last commits, the WAL keeps an earlier, consistent prefix, whose
        chunk total no longer matches Chroma's count, and the next write reconciles it from
        Chroma (`_sync_point`). Measured: a synced commit after each ingest batch waited
        28 ms on the disk Chroma was writing to, 17 ms unsynced (3,000 papers, load 4)."""
        held = self._holder == threading.get_ident()
        conn = self._held if held else None
        try:
            if conn is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("write", exc) from exc
        try:
            if conn is not self._held:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
                _migrate(conn)
                if held:
                    self._held = conn
            conn.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise self._error("write", exc) from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            if conn is not self._held:
                conn.close()

    def _error(self, what: str, exc: BaseException) -> IndexUnavailable:
        reason = fault_reason(exc, self.path)
        where = f"the corpus record {self.path} (QA_CORPUS_PATH)"
        if reason == "the disk is full":
            fix = "free some space and run the same command again; nothing recorded is lost"
        elif reason:
            fix = "make it writable (or point QA_CORPUS_PATH at a writable copy) and run again"
        else:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            fix = (
                "move the file aside (keep it) and run `qa ingest`: it records the papers the "
                "index holds again"
            )
        return IndexUnavailable(f"cannot {what} {where}: {reason}; {fix}")

    # -- papers

    def count(self) -> int:
        if not self.exists():
            return 0
        with self._read() as conn:
            return conn.execute("SELECT count(*) FROM papers").fetchone()[0]

    def papers(self) -> list[Paper]:
        """Every paper held, in the order first recorded."""
        if not self.exists():
            return []
        with self._read() as conn:
            rows = conn.execute("SELECT data FROM papers ORDER BY added, rowid").fetchall()
        return [paper_from_dict(json.loads(data)) for (data,) in rows]

    def get(self, keys: Iterable[str]) -> dict[str, Paper]:
        keys = list(keys)
        if not keys or not self.exists():
            return {}
        found: dict[str, Paper] = {}
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                query = f"SELECT key, data FROM papers WHERE key IN ({marks})"
                for key, data in conn.execute(query, part):
                    found[key] = paper_from_dict(json.loads(data))
        return found

    def origins(self) -> dict[str, str]:
        """key → 'bundled' or 'user'."""
        if not self.exists():
            return {}
        with self._read() as conn:
            return dict(conn.execute("SELECT key, origin FROM papers"))

    def add(self, papers: Iterable[Paper], origin: str = USER) -> AddReport:
        """Record papers (one transaction), applying the identity rules of the README.

        Same key and abstract: one paper, sources merged, non-empty new fields win. Same arXiv
        ID and another abstract: the new version replaces the held one only if the held one
        came from nothing but the files given now (re-ingesting an edited file) and a user file
        is not replacing a bundled paper; otherwise both are kept, the new one under its
        content key (cited as `ref:…`), and the report says so by ID.
        """
        report = AddReport()
        now = time.time()
        with self._write() as conn:
            rev = _counter(conn, "rev") + 1  # every paper changed now is examined by the next fill
            for paper in papers:
                row = conn.execute(
                    "SELECT data, origin FROM papers WHERE key = ?", (paper.key,)
                ).fetchone()
                if row is None:
                    self._put(conn, paper, origin, now, rev, new=True)
                    report.added.append(paper.key)
                    report.papers.append(paper)
                    continue
                held, held_origin = paper_from_dict(json.loads(row[0])), row[1]
                if _same_text(held.abstract, paper.abstract):
                    merged = _merge(held, paper)
                    if paper_to_dict(merged) == paper_to_dict(held):
                        report.unchanged.append(paper.key)
                    else:
                        self._put(conn, merged, held_origin, now, rev, new=False)
                        report.updated.append(paper.key)
                    report.papers.append(merged)
                elif set(held.sources) <= set(paper.sources) and (
                    held_origin == origin or origin == BUNDLED
                ):
                    self._put(conn, paper, origin, now, rev, new=False)
                    report.replaced.append(paper.key)
                    report.papers.append(paper)
                else:
                    twin = as_variant(paper)
                    exists = conn.execute("SELECT 1 FROM papers WHERE key = ?", (twin.key,))
                    if exists.fetchone() is None:
                        self._put(conn, twin, origin, now, rev, new=True)
                        report.added.append(twin.key)
                        report.kept_both.append(
                            f"{paper.arxiv_id}: {', '.join(paper.sources)} has another abstract "
                            f"than the {held_origin} paper held under that ID; kept both "
                            f"(yours as ref:{twin.key})"
                        )
                    else:
                        report.unchanged.append(twin.key)
                    report.papers.append(twin)
            if report.added or report.updated or report.replaced:
                _set(conn, "rev", rev)
        return report

    def _put(
        self, conn: sqlite3.Connection, paper: Paper, origin: str, now: float, rev: int, new: bool
    ):
        data = json.dumps(paper_to_dict(paper), ensure_ascii=False, default=_json_value)
        if new:
            conn.execute(
                "INSERT INTO papers (key, arxiv_id, origin, data, added, updated, rev) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (paper.key, paper.arxiv_id, origin, data, now, now, rev),
            )
        else:
            conn.execute(
                "UPDATE papers SET arxiv_id = ?, origin = ?, data = ?, updated = ?, rev = ? "
                "WHERE key = ?",
                (paper.arxiv_id, origin, data, now, rev, paper.key),
            )

    def remove(self, keys: Iterable[str]) -> list[str]:
        """Take papers out of the record; returns the keys that were held."""
        keys = list(dict.fromkeys(keys))
        if not keys or not self.exists():
            return []
        with self._write() as conn:
            gone = [
                k for k in keys if conn.execute("DELETE FROM papers WHERE key = ?", (k,)).rowcount
            ]
            if gone:  # the next fill of each collection deletes their chunks
                _set(conn, "removed_rev", _set(conn, "rev", _counter(conn, "rev") + 1))
        return gone

    def held_keys(self) -> list[str]:
        if not self.exists():
            return []
        with self._read() as conn:
            return [k for (k,) in conn.execute("SELECT key FROM papers")]

    def find(self, ids: Iterable[str]) -> dict[str, list[str]]:
        """arXiv ID or key → the keys it names ([] when the record holds neither)."""
        ids = list(ids)
        if not self.exists():
            return {i: [] for i in ids}
        found: dict[str, list[str]] = {}
        with self._read() as conn:
            for i in ids:
                rows = conn.execute(
                    "SELECT key FROM papers WHERE key = ? UNION ALL "
                    "SELECT key FROM papers WHERE arxiv_id = ? AND key != ? ORDER BY 1",
                    (i, i, i),
                ).fetchall()
                keys = [k for (k,) in rows]
                found[i] = [i] if i in keys else keys
        return found

    # -- what each collection holds (so a write examines only what changed)

    def counter(self, name: str) -> int:
        """A counter in meta: 'generation', 'rev' (bumped by every add or remove that changed
        the record) or 'removed_rev' (the last remove)."""
        if not self.exists():
            return 0
        with self._read() as conn:
            return _counter(conn, name)

    def sync_state(self, coll: str) -> SyncState | None:
        raw = self.get_meta(f"synced:{coll}")
        return SyncState(**json.loads(raw)) if raw else None

    def sync_states(self) -> dict[str, SyncState]:
        """Every collection the record keeps an account of, by its record name."""
        return {c: SyncState(**json.loads(v)) for c, v in self._metas("synced:").items()}

    def set_synced(self, coll: str, rev: int, tokens: int) -> None:
        """Every paper up to `rev` is now in line with `coll`, chunked for `tokens` (after a
        complete fill)."""
        with self._write(synced=False) as conn:
            state = _state(conn, coll)
            state.rev, state.tokens = rev, tokens
            _put_state(conn, coll, state)

    def reset_indexed(self, coll: str, state: SyncState) -> None:
        """Forget what `coll` was thought to hold (a reconciliation refills it from Chroma),
        counted in `resets(coll)`."""
        with self._write(synced=False) as conn:
            conn.execute("DELETE FROM indexed WHERE coll = ?", (coll,))
            _put_state(conn, coll, state)
            _set(conn, f"resets:{coll}", _counter(conn, f"resets:{coll}") + 1)

    def resets(self, coll: str) -> int:
        """How often `coll`'s account was read again from Chroma: a saved keyword index from
        before the last time is rebuilt, never updated."""
        return self.counter(f"resets:{coll}")

    def forget_collection(self, coll: str) -> None:
        """A deleted collection: drop its rows and state."""
        with self._write(synced=False) as conn:
            conn.execute("DELETE FROM indexed WHERE coll = ?", (coll,))
            names = (f"synced:{coll}", f"resets:{coll}")
            conn.execute("DELETE FROM meta WHERE name IN (?, ?)", names)

    def count_changed(self, rev: int) -> int:
        if not self.exists():
            return 0
        with self._read() as conn:
            return conn.execute("SELECT count(*) FROM papers WHERE rev > ?", (rev,)).fetchone()[0]

    def changed_since(self, rev: int, page: int = 1000) -> Iterator[list[Paper]]:
        """Papers added or changed after `rev`, a page at a time (never the whole record), in
        the order they were changed and first recorded."""
        last: tuple[int, int | None] = (rev, None)  # (rev, NULL): every row of a later rev
        while self.exists():
            with self._read() as conn:
                rows = conn.execute(
                    "SELECT rev, rowid, data FROM papers WHERE (rev, rowid) > (?, ?) "
                    "ORDER BY rev, rowid LIMIT ?",
                    (*last, page),
                ).fetchall()
            if not rows:
                return
            last = (rows[-1][0], rows[-1][1])
            yield [paper_from_dict(json.loads(data)) for _, _, data in rows]

    def indexed(self, coll: str, keys: list[str]) -> dict[str, tuple[str, int, int, str]]:
        """key → (hash, present, expected, sources) of what `coll` holds for those papers."""
        if not keys or not self.exists():
            return {}
        found = {}
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                query = (
                    "SELECT key, hash, present, expected, sources FROM indexed "
                    f"WHERE coll = ? AND key IN ({marks})"
                )
                for key, *row in conn.execute(query, [coll, *part]):
                    found[key] = tuple(row)
        return found

    def held(self, coll: str) -> Iterator[tuple[str, str, int, int]]:
        """(key, hash, present, expected) of every paper `coll` holds (one indexed scan)."""
        if not self.exists():
            return
        with self._read() as conn:
            yield from conn.execute(
                "SELECT key, hash, present, expected FROM indexed WHERE coll = ?", (coll,)
            )

    def mark_indexed(self, coll: str, rows: list[tuple[str, str, int, str]]) -> None:
        """After their chunks were written: (key, hash, chunks, sources) of whole papers."""
        if not rows:
            return
        with self._write(synced=False) as conn:
            state = _state(conn, coll)
            for key, digest, n, sources in rows:
                old = conn.execute(
                    "SELECT present FROM indexed WHERE coll = ? AND key = ?", (coll, key)
                ).fetchone()
                state.chunks += n - (old[0] if old else 0)
                conn.execute(
                    "INSERT OR REPLACE INTO indexed VALUES (?, ?, ?, ?, ?, ?)",
                    (coll, key, digest, n, n, sources),
                )
            _put_state(conn, coll, state)

    def unindex(self, coll: str, keys: list[str]) -> None:
        """After their chunks were deleted."""
        with self._write(synced=False) as conn:
            state = _state(conn, coll)
            for key in keys:
                old = conn.execute(
                    "DELETE FROM indexed WHERE coll = ? AND key = ? RETURNING present", (coll, key)
                ).fetchone()
                state.chunks -= old[0] if old else 0
            _put_state(conn, coll, state)

    def note_chunks(self, coll: str, metadatas: list[dict]) -> None:
        """Reconciliation: add one page of the collection's chunk metadata to `coll`'s rows
        (chunks of one paper may span pages; SQLite merges them, so memory stays one page)."""
        with self._write(synced=False) as conn:
            state = _state(conn, coll)
            for meta in metadatas:
                conn.execute(
                    "INSERT INTO indexed VALUES (?, ?, ?, 1, ?, ?) "
                    "ON CONFLICT (coll, key) DO UPDATE SET present = present + 1, "
                    "expected = max(expected, excluded.expected), "
                    "hash = CASE WHEN hash = excluded.hash AND sources = excluded.sources "
                    "THEN hash ELSE 'mixed' END, "
                    "sources = CASE WHEN sources = excluded.sources THEN sources "
                    "ELSE sources || ',' || excluded.sources END",
                    (
                        coll,
                        meta["key"],
                        meta["paper_hash"],
                        int(meta["n_chunks"]),
                        str(meta.get("sources", "")),
                    ),
                )
            state.chunks += len(metadatas)
            _put_state(conn, coll, state)

    def orphans(self, coll: str) -> list[tuple[str, int]]:
        """(key, chunk IDs to delete) of papers `coll` holds that the record no longer has."""
        if not self.exists():
            return []
        with self._read() as conn:
            return conn.execute(
                "SELECT key, max(present, expected) FROM indexed i WHERE coll = ? AND NOT EXISTS "
                "(SELECT 1 FROM papers p WHERE p.key = i.key)",
                (coll,),
            ).fetchall()

    # -- active collection and generation

    def generation(self) -> int:
        """Bumped when a writer commits a new index state (never while it is still writing):
        readers compare it to notice new papers or a switched collection, once a question.

        Reading it opens a connection (~0.3 ms: benchmarks/README.md), so the value is kept
        with the signature of the record's files (inode, size, mtime of the database and its
        WAL, which every commit writes) and given again while they are unchanged. Only a
        signature older than SETTLED is trusted: a commit within the same tick of a coarse
        file clock could leave the mtime as it was. Not a kept connection: an open reader
        connection stops the writer's last close from checkpointing the WAL into the file."""
        start = time.time()
        signature = [_file_signature(Path(f"{self.path}{suffix}")) for suffix in ("", "-wal")]
        seen = self._seen
        if seen is not None and seen[0] == signature:
            return seen[1]
        value = self.counter("generation")
        settled = all(s is None or s[2] < (start - SETTLED) * 1e9 for s in signature)
        self._seen = (signature, value) if settled else None
        return value

    def get_meta(self, name: str) -> str | None:
        if not self.exists():
            return None
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, values: dict[str, str | None], bump: bool = True) -> int:
        """Set (None: delete) meta values in one transaction; returns the new generation."""
        with self._write() as conn:
            for name, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE name = ?", (name,))
                else:
                    conn.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (name, value),
                    )
            return _bump(conn) if bump else _generation(conn)

    def _metas(self, prefix: str) -> dict[str, str]:
        """Meta values whose name starts with `prefix`, by the rest of the name."""
        if not self.exists():
            return {}
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, value FROM meta WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return {name[len(prefix) :]: value for name, value in rows}

    def active(self, target: str) -> Active | None:
        raw = self.get_meta(f"active:{target}")
        return Active(**json.loads(raw)) if raw else None

    def actives(self) -> dict[str, Active]:
        """Every index readers use (embedded, each Chroma server), by its record name."""
        return {t: Active(**json.loads(v)) for t, v in self._metas("active:").items()}

    def set_active(self, target: str, active: Active, **more: str | None) -> int:
        """Switch readers to `active` (with other meta changes, atomically)."""
        values = {f"active:{target}": json.dumps(dataclasses.asdict(active)), **more}
        return self.set_meta(values)


def _migrate(conn: sqlite3.Connection) -> None:
    """A record written before the `rev` column: add it (0: examined at the first fill of
    each collection, which reconciles anyway since it has no sync state yet)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(papers)")}
    if "rev" not in columns:
        conn.execute("ALTER TABLE papers ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
    conn.execute(INDEXES)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file; None when it is missing or empty (a reader's
    connection creates an empty WAL and its close may delete it: neither holds a commit)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat.st_size else None


def _counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _set(conn: sqlite3.Connection, name: str, value: int) -> int:
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (name, str(value)),
    )
    return value


def _state(conn: sqlite3.Connection, coll: str) -> SyncState:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (f"synced:{coll}",)).fetchone()
    if row is None:
        raise RuntimeError(f"no sync state for {coll}: reset_indexed() first")  # a bug, not I/O
    return SyncState(**json.loads(row[0]))


def _put_state(conn: sqlite3.Connection, coll: str, state: SyncState) -> None:
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (f"synced:{coll}", json.dumps(dataclasses.asdict(state))),
    )


def _generation(conn: sqlite3.Connection) -> int:
    return _counter(conn, "generation")


def _bump(conn: sqlite3.Connection) -> int:
    return _set(conn, "generation", _generation(conn) + 1)


def _same_text(a: str, b: str) -> bool:
    return normalize(a) == normalize(b)


def _merge(held: Paper, new: Paper) -> Paper:
    """The held paper updated with the new one's non-empty fields; sources unioned."""
    merged = paper_to_dict(held)
    for name, value in paper_to_dict(new).items():
        if name == "sources":
            merged[name] = list(dict.fromkeys([*held.sources, *new.sources]))
        elif value not in (None, "", [], {}):
            merged[name] = value
    return paper_from_dict(merged)


# ---------------------------------------------------------------- opening, the lock


def corpus_path(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.corpus_path or settings.persist_dir / "corpus.sqlite3"


def open_store(settings: Settings | None = None) -> CorpusStore:
    return CorpusStore(corpus_path(settings))


@contextlib.contextmanager
def writer_lock(
    settings: Settings | None = None, say: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the one-writer lock for this corpus record (waits up to QA_WRITER_WAIT seconds).

    The lock file sits beside the record, so every writer that shares the record (embedded,
    or several hosts writing to one `chroma run` server through a shared QA_CORPUS_PATH)
    shares the lock. Re-entrant within a process.
    """
    settings = settings or get_settings()
    path = corpus_path(settings)
    lock = _lock_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            (say or _stderr)(
                f"another writer (qa ingest / qa remove) is using {path}; waiting up to "
                f"{settings.writer_wait:.0f} s (QA_WRITER_WAIT) for it to finish…"
            )
            lock.acquire(timeout=settings.writer_wait)
    except Timeout as exc:
        raise WriterBusy(
            f"another writer still holds {lock.lock_file} after {settings.writer_wait:.0f} s "
            "(QA_WRITER_WAIT); run the command again when it has finished"
        ) from exc
    except OSError as exc:
        reason = fault_reason(exc) or (exc.strerror or str(exc))
        raise IndexUnavailable(
            f"cannot lock {path}.lock for writing: {reason}; make the folder writable "
            "(or set QA_PERSIST_DIR / QA_CORPUS_PATH to a writable place)"
        ) from exc
    try:
        yield
    finally:
        lock.release()


_LOCKS: dict[str, FileLock] = {}


def _lock_for(path: Path) -> FileLock:
    """One FileLock object per record path (filelock is re-entrant per object)."""
    key = str(path.resolve())
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(f"{path}.lock", thread_local=False)
    return _LOCKS[key]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
