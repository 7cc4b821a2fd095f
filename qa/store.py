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
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BUNDLED, USER = "bundled", "user"


class IndexUnavailable(RuntimeError):
    """The index or its corpus record cannot be used; the message says what to do."""


class WriterBusy(IndexUnavailable):
    """Another writer held the lock for longer than QA_WRITER_WAIT."""


# ---------------------------------------------------------------- Paper <-> dict


def paper_to_dict(paper: Paper) -> dict:
    """Every dataclass field of the paper (new fields included automatically)."""
    return dataclasses.asdict(paper)


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
class Active:
    """The collection readers use, and the embedding model that built it."""

    name: str
    model: str
    chunks: int


class CorpusStore:
    """The SQLite corpus record at `path` (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- connections

    def exists(self) -> bool:
        """Has anything been recorded? (A first write that failed may leave an empty file.)"""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection; works on a read-only store and never creates the file."""
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction (committed on success); faults are named, nothing half-written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("write", exc) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
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
            for paper in papers:
                row = conn.execute(
                    "SELECT data, origin FROM papers WHERE key = ?", (paper.key,)
                ).fetchone()
                if row is None:
                    self._put(conn, paper, origin, now, new=True)
                    report.added.append(paper.key)
                    report.papers.append(paper)
                    continue
                held, held_origin = paper_from_dict(json.loads(row[0])), row[1]
                if _same_text(held.abstract, paper.abstract):
                    merged = _merge(held, paper)
                    if paper_to_dict(merged) == paper_to_dict(held):
                        report.unchanged.append(paper.key)
                    else:
                        self._put(conn, merged, held_origin, now, new=False)
                        report.updated.append(paper.key)
                    report.papers.append(merged)
                elif set(held.sources) <= set(paper.sources) and (
                    held_origin == origin or origin == BUNDLED
                ):
                    self._put(conn, paper, origin, now, new=False)
                    report.replaced.append(paper.key)
                    report.papers.append(paper)
                else:
                    twin = as_variant(paper)
                    exists = conn.execute("SELECT 1 FROM papers WHERE key = ?", (twin.key,))
                    if exists.fetchone() is None:
                        self._put(conn, twin, origin, now, new=True)
                        report.added.append(twin.key)
                        report.kept_both.append(
                            f"{paper.arxiv_id}: {', '.join(paper.sources)} has another abstract "
                            f"than the {held_origin} paper held under that ID; kept both "
                            f"(yours as ref:{twin.key})"
                        )
                    else:
                        report.unchanged.append(twin.key)
                    report.papers.append(twin)
        return report

    def _put(self, conn: sqlite3.Connection, paper: Paper, origin: str, now: float, new: bool):
        data = json.dumps(paper_to_dict(paper), ensure_ascii=False, default=_json_value)
        if new:
            conn.execute(
                "INSERT INTO papers (key, arxiv_id, origin, data, added, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (paper.key, paper.arxiv_id, origin, data, now, now),
            )
        else:
            conn.execute(
                "UPDATE papers SET arxiv_id = ?, origin = ?, data = ?, updated = ? WHERE key = ?",
                (paper.arxiv_id, origin, data, now, paper.key),
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
        return gone

    def find(self, ids: Iterable[str]) -> dict[str, list[str]]:
        """arXiv ID or key → the keys it names ([] when the record holds neither)."""
        held = {p.key: p for p in self.papers()}
        by_id: dict[str, list[str]] = {}
        for p in held.values():
            if p.arxiv_id:
                by_id.setdefault(p.arxiv_id, []).append(p.key)
        return {i: ([i] if i in held else by_id.get(i, [])) for i in ids}

    # -- active collection and generation

    def generation(self) -> int:
        """Bumped when a writer commits a new index state (never while it is still writing):
        readers compare it to notice new papers or a switched collection."""
        if not self.exists():
            return 0
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0]) if row else 0

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

    def active(self, target: str) -> Active | None:
        raw = self.get_meta(f"active:{target}")
        return Active(**json.loads(raw)) if raw else None

    def set_active(self, target: str, active: Active, **more: str | None) -> int:
        """Switch readers to `active` (with other meta changes, atomically)."""
        values = {f"active:{target}": json.dumps(dataclasses.asdict(active)), **more}
        return self.set_meta(values)


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
    return int(row[0]) if row else 0


def _bump(conn: sqlite3.Connection) -> int:
    value = _generation(conn) + 1
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('generation', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (str(value),),
    )
    return value


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
