"""The keyword index: BM25 (bm25s) over stemmed chunk texts, plus each chunk's filter facets.

Derived from the chunks Chroma holds, so Chroma stays the one source of truth. A writer saves
it beside the store for each state it commits (`build`) and readers load that copy; a reader
never writes (for a state no writer saved, it builds one in memory).

A writer's save costs what changed, not the corpus: each saved copy also keeps every chunk's
token ids and its paper's content hash (`rows.npz`), so the next save starts from it, drops the
chunks of papers removed or re-written, reads back from Chroma (by id) only the chunks of
papers added or re-written since, and re-assembles the BM25 matrix, idf and facets from the
arrays. Which papers changed is what the writer's record says the collection holds now
(`Held`) against the hashes in the copy, so it holds across any number of writes and kills
between saves. A copy it cannot trust (missing, unreadable, another collection or chunk size,
an account rebuilt from Chroma since, a count that does not add up) means a full build, which
reads Chroma a page at a time and stems each page as it arrives: it holds the flat arrays and
one page of texts, not every chunk's text and metadata (10.2 GB at 1.0M chunks before).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from qa.filters import ChunkFacets
from qa.index import Index
from qa.wording import american_spelling, split_scripts

if TYPE_CHECKING:
    from qa.retrieval import ChunkTable

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it forces DEBUG on itself

STALE_CHECK_SECONDS = 2.0
_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s' token pattern
_STOPWORDS = frozenset(STOPWORDS_EN)
_STEMMERS = threading.local()  # PyStemmer objects are not thread-safe

# In the saved keyword index's name, so a new tokeniser rebuilds it (t2: scripts split,
# British spellings folded).
TOKENIZER = "t2"
FACETS_FILE = "facets.npz"  # per-chunk dates and match keys (filters), beside the BM25 files
ROWS_FILE = "rows.npz"  # per-chunk token ids and papers: what the writer's next update starts from
PAGE = 5000  # chunks per Chroma `get` of a full build (one page of texts held at a time)
MATRIX_BLOCK = 4096  # chunks whose terms `bm25_matrix` counts at a time
READ_BATCH = 1000  # chunk ids per Chroma `get` when reading back changed papers
MIXED = "mixed"  # a paper whose chunks carry different hashes (never trusted as unchanged)
K1, B = 1.5, 0.75  # bm25s' defaults (method "lucene")


def stems(text: str) -> list[str]:
    """Lower-cased, stop-word-free, Snowball-stemmed words: the keyword index's tokens.

    Scripts are split first, so a Latin term glued to CJK text (`什么是POMP`) is its own word,
    and British spellings folded into American ones ("initialise" finds "initialize").
    Words are folded and stemmed once each (cached): a corpus repeats its vocabulary, and
    per-text regexes made stemming 3x slower (the keyword index build at 1M chunks).
    """
    text = text.lower()
    if not text.isascii():  # only CJK/Thai text has script edges
        text = split_scripts(text)
    return [s for s in map(_stem, _WORD.findall(text)) if s]


@lru_cache(maxsize=1 << 18)
def _stem(word: str) -> str:
    """A word's token ("" for a stop word); the spelling fold is per word, as on the text."""
    word = american_spelling(word)
    if word in _STOPWORDS:
        return ""
    stemmer = getattr(_STEMMERS, "stemmer", None)
    if stemmer is None:
        stemmer = _STEMMERS.stemmer = Stemmer.Stemmer("english")
    return stemmer.stemWord(word)


# ---------------------------------------------------------------- what an update needs


@dataclass(frozen=True)
class Held:
    """What the writer's record says a collection holds now: the base of an update."""

    lineage: str  # the collection's Chroma id, chunk size and account rebuilds: a saved
    # copy with another lineage is never updated
    papers: dict[str, tuple[str, int]]  # paper key → (paper hash, chunks `key#0..n-1`)


@dataclass
class Rows:
    """Every chunk's token ids and paper, flat (a few int32 arrays, not Python lists)."""

    tokens: np.ndarray  # int32: every chunk's token ids, concatenated
    offsets: np.ndarray  # int64, chunks + 1: chunk i is tokens[offsets[i]:offsets[i + 1]]
    vocab: list[str]  # token id → stem
    paper: np.ndarray  # int32 per chunk: its paper, an index into keys / hashes
    keys: list[str]
    hashes: list[str]

    @classmethod
    def encode(
        cls, texts: list[str], metadatas: list[dict | None], ids: list[str], vocab: list[str]
    ) -> Rows:
        """Stem chunks into token ids, extending `vocab` (shared with the rows they join)."""
        encoder = Encoder(vocab)
        encoder.add(texts, metadatas, ids)
        return encoder.rows()

    def whole(self, chunks: int) -> bool:
        """Consistent with an index of `chunks` chunks (a copy damaged in ways numpy reads)."""
        offsets, paper, tokens = self.offsets, self.paper, self.tokens
        return (
            len(offsets) == chunks + 1
            and len(paper) == chunks
            and len(self.keys) == len(self.hashes)
            and offsets[0] == 0
            and offsets[-1] == len(tokens)
            and bool((np.diff(offsets) >= 0).all())
            and _within(paper, len(self.keys))
            and _within(tokens, len(self.vocab))
        )

    def select(self, keep: np.ndarray) -> Rows:
        """The rows `keep` (bool per row) allows, in order."""
        lengths = np.diff(self.offsets)
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        tokens = self.tokens[np.repeat(keep, lengths)]
        return Rows(tokens, offsets, self.vocab, self.paper[keep], self.keys, self.hashes)

    def extended(self, new: Rows) -> Rows:
        """These rows, then `new`'s (encoded with a vocab extending ours)."""
        offsets = np.concatenate([self.offsets[:-1], new.offsets + self.offsets[-1]])
        return Rows(
            np.concatenate([self.tokens, new.tokens]),
            offsets,
            new.vocab,
            np.concatenate([self.paper, new.paper + len(self.keys)]),
            self.keys + new.keys,
            self.hashes + new.hashes,
        )

    def compacted(self) -> Rows:
        """Without the words and papers no row uses any more (what a full build has)."""
        tokens, vocab = self.tokens, self.vocab
        used = np.bincount(tokens, minlength=len(vocab)) > 0
        if not used.all():
            tokens = (np.cumsum(used, dtype=np.int32) - 1)[tokens]
            vocab = [w for w, u in zip(vocab, used.tolist(), strict=True) if u]
        paper, keys, hashes = self.paper, self.keys, self.hashes
        held = np.bincount(paper, minlength=len(keys)) > 0
        if not held.all():
            paper = (np.cumsum(held, dtype=np.int32) - 1)[paper]
            keep = held.tolist()
            keys = [k for k, u in zip(keys, keep, strict=True) if u]
            hashes = [h for h, u in zip(hashes, keep, strict=True) if u]
        return Rows(tokens, self.offsets, vocab, paper, keys, hashes)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            tokens=self.tokens,
            offsets=self.offsets,
            vocab=_pack(self.vocab),
            paper=self.paper,
            keys=_pack(self.keys),
            hashes=_pack(self.hashes),
        )

    @classmethod
    def load(cls, path: Path) -> Rows:
        with np.load(path) as data:
            return cls(
                data["tokens"],
                data["offsets"],
                _unpack(data["vocab"]),
                data["paper"],
                _unpack(data["keys"]),
                _unpack(data["hashes"]),
            )


class Encoder:
    """Rows built page by page: each page's texts are stemmed into token ids as it arrives
    and can then be dropped, so a full build holds one page of texts, not the corpus's."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab  # extended in place by `rows` (shared with the rows they join)
        self.word_id = {w: i for i, w in enumerate(vocab)}
        self.tokens = array("i")
        self.lengths = array("q")
        self.paper = array("i")
        self.paper_of: dict[str, int] = {}
        self.hashes: list[str] = []

    def add(self, texts: list[str], metadatas: list[dict | None], ids: list[str]) -> None:
        word_id, tokens, lengths = self.word_id, self.tokens, self.lengths
        for text in texts:
            words = stems(text)
            lengths.append(len(words))
            tokens.extend([word_id.setdefault(w, len(word_id)) for w in words])
        paper_of, hashes = self.paper_of, self.hashes
        for cid, meta in zip(ids, metadatas, strict=True):
            meta = meta or {}
            key = str(meta.get("key") or cid.rsplit("#", 1)[0])
            digest = str(meta.get("paper_hash") or MIXED)
            at = paper_of.setdefault(key, len(paper_of))
            if at == len(hashes):
                hashes.append(digest)
            elif hashes[at] != digest:
                hashes[at] = MIXED
            self.paper.append(at)

    def rows(self) -> Rows:
        vocab = self.vocab
        vocab[len(vocab) :] = list(self.word_id)[len(vocab) :]
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(_numpy(self.lengths, np.int64), out=offsets[1:])
        return Rows(
            _numpy(self.tokens, np.int32),
            offsets,
            vocab,
            _numpy(self.paper, np.int32),
            list(self.paper_of),
            self.hashes,
        )


def _numpy(values: array, dtype: type) -> np.ndarray:
    """An array.array as numpy, without a copy."""
    return np.frombuffer(values, dtype=dtype) if values else np.zeros(0, dtype)


class FacetPages:
    """Filter facets built page by page: each page's postings are kept as flat (key, row)
    int32 pairs, put in key order once at the end (the same postings, in the same order, as
    `ChunkFacets.from_metadatas` over every page at once)."""

    def __init__(self) -> None:
        self.published: list[np.ndarray] = []
        self.key_of: dict[str, int] = {}
        self.keys: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.count = 0

    def add(self, metadatas: list[dict | None]) -> None:
        page = ChunkFacets.from_metadatas(metadatas)
        names = list(page.postings)
        at = np.asarray([self.key_of.setdefault(n, len(self.key_of)) for n in names], np.int32)
        lists = [page.postings[n] for n in names]
        sizes = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        self.keys.append(np.repeat(at, sizes))
        self.rows.append(np.concatenate(lists) + np.int32(self.count) if lists else _NO_ROWS)
        self.published.append(page.published)
        self.count += len(metadatas)

    def facets(self) -> ChunkFacets:
        keys = np.concatenate(self.keys) if self.keys else _NO_ROWS
        rows = np.concatenate(self.rows) if self.rows else _NO_ROWS
        order = np.argsort(keys, kind="stable")  # key by key, rows ascending within each
        sizes = np.bincount(keys, minlength=len(self.key_of))
        parts = np.split(rows[order], np.cumsum(sizes)[:-1]) if self.key_of else []
        published = np.concatenate(self.published) if self.published else _NO_ROWS
        return ChunkFacets(published, dict(zip(self.key_of, parts, strict=True)))


_NO_ROWS = np.zeros(0, dtype=np.int32)


def _within(values: np.ndarray, size: int) -> bool:
    """Every value indexes a list of `size` items."""
    return not len(values) or (int(values.min()) >= 0 and int(values.max()) < size)


def _pack(words: list[str]) -> np.ndarray:
    """Strings as one NUL-separated UTF-8 byte array (numpy's fixed-width str arrays would
    pad every stem to the longest one)."""
    return np.frombuffer("\0".join(words).encode(), dtype=np.uint8)


def _unpack(packed: np.ndarray) -> list[str]:
    return packed.tobytes().decode().split("\0") if len(packed) else []


def bm25_matrix(rows: Rows) -> tuple[bm25s.BM25, np.ndarray]:
    """The bm25s model of the rows (lucene BM25, bm25s' defaults) and each word's document
    frequency, assembled with a few numpy operations from the flat token arrays.

    `bm25s.BM25.index` counts terms with a Python loop (a Counter per document) over lists of
    lists; on the flat arrays this gives the same matrix, float for float (the same formula
    in the same order; tests/test_keyword_index.py), 3.5x faster (17,560 seed chunks: 0.36 s
    against 1.26 s), and an update need not turn its arrays back into lists.

    Terms are counted MATRIX_BLOCK chunks at a time and each block's (word, chunk) pairs are
    then placed into the column-compressed matrix (a counting sort), so the temporaries are
    a block's, not ~40 bytes per token of the whole corpus: at 87,612 chunks (7.2M tokens)
    +126 MB peak and 1.1-1.4 s, against +300 MB and 2.7-2.9 s in one `np.unique` (blocks of
    16,384 chunks: +190 MB; 1,024: +115 MB, no faster)."""
    n, n_vocab = len(rows.offsets) - 1, len(rows.vocab)
    lengths = np.diff(rows.offsets)
    blocks = [
        _term_counts(rows, start, min(n, start + MATRIX_BLOCK))
        for start in range(0, n, MATRIX_BLOCK)
    ]
    df = np.zeros(n_vocab, dtype=np.int64)
    for col, _, _ in blocks:
        df += np.bincount(col, minlength=n_vocab)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
    avg = lengths.mean() if n else 1.0
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.float32)
    filled = indptr[:-1].copy()  # per word: where its next chunk goes
    while blocks:
        col, row, tf32 = blocks.pop(0)  # word-major, chunks ascending within a word
        counts = np.bincount(col, minlength=n_vocab)
        first = np.cumsum(counts) - counts  # where each word's pairs start in this block
        at = filled[col] + (np.arange(len(col)) - first[col])
        tfc = tf32 / (K1 * ((1 - B) + B * lengths[row] / avg) + tf32)
        indices[at] = row
        data[at] = (idf[col] * tfc).astype(np.float32)
        filled += counts
    model = bm25s.BM25(k1=K1, b=B)
    model.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": n}
    model.vocab_dict = {w: i for i, w in enumerate(rows.vocab)}
    model.unique_token_ids_set = set(model.vocab_dict.values())
    model.nonoccurrence_array = None
    return model, df


def _term_counts(rows: Rows, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word, chunk, term frequency) of every distinct word of chunks start..stop-1, sorted by
    word then chunk."""
    size = stop - start
    doc = np.repeat(np.arange(size, dtype=np.int64), np.diff(rows.offsets[start : stop + 1]))
    words = rows.tokens[rows.offsets[start] : rows.offsets[stop]].astype(np.int64)
    pairs, tf = np.unique(words * size + doc, return_counts=True)
    col, row = np.divmod(pairs, size)
    return col.astype(np.int32), (row + start).astype(np.int32), tf.astype(np.float32)


# ---------------------------------------------------------------- the index


@dataclass
class KeywordIndex:
    """BM25 over the chunks Chroma holds, rebuilt when Chroma's revision changes."""

    revision: int = -1
    count: int = -1
    ids: list[str] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    model: bm25s.BM25 | None = None
    idf: dict[str, float] = field(default_factory=dict)
    max_idf: float = 1.0  # the weight of a question word no chunk has
    checked_at: float = 0.0
    writes: int = -1  # the Index's in-process write count at the last check
    table: ChunkTable | None = None  # its chunks' vectors and texts, for small indexes
    facets: ChunkFacets | None = None  # its chunks' dates and match keys, for filter masks
    rows: Rows | None = None  # its chunks' token ids and papers (built, not loaded)
    lineage: str = ""  # the collection state its rows describe (see Held)

    def chunk_table(self) -> ChunkTable | None:
        """The in-memory chunk table of this state (None: not loaded, or made for the
        state this object held before an in-place rebuild)."""
        table = self.table
        return table if table is not None and table.ids is self.ids else None

    def rebuild(self, index: Index) -> None:
        """Readers: load the saved index for the committed state, or build it in memory (a
        reader never writes: only a writer's `build` saves one)."""
        revision, count = index.snapshot()  # the last committed write, not one in progress
        if not self.load_saved(index, revision, count):
            self.build_in_memory(index, revision, count)

    def load_saved(self, index: Index, revision: int, count: int) -> bool:
        """Load the index a writer saved for this state (False when there is none)."""
        return self._load(_cache_dir(index, revision, count), revision, count)

    def build(self, index: Index, revision: int, count: int, held: Held | None = None) -> bool:
        """Writers only: make the index for state (revision, count) and save it beside the
        store (dropping older copies). A writer calls this before committing that state, so
        readers load it instead of building it. With `held` (what the record says the
        collection holds), the latest saved copy is updated with what changed since it was
        saved; returns whether it was (False: a full build, reading every chunk)."""
        try:
            updated = held is not None and self.update(index, revision, count, held)
        except (ValueError, IndexError) as exc:  # a copy damaged in a way its checks missed
            log.warning("could not update the saved keyword index (%s); rebuilding it", exc)
            updated = False
        if not updated:
            self.build_in_memory(index, revision, count, keep_rows=True)
            self.lineage = held.lineage if held else ""
        self._save(_cache_dir(index, revision, count))
        return updated

    def build_in_memory(
        self, index: Index, revision: int, count: int, keep_rows: bool = False
    ) -> None:
        """Read every chunk back from Chroma and index it, writing nothing (what a reader does
        for a state no writer saved an index for). `keep_rows`: keep the token arrays (a
        writer saves them; a reader would only hold them)."""
        ids: list[str] = []
        encoder, facets = Encoder([]), FacetPages()
        for page in _pages(index, count):
            ids += page["ids"]
            encoder.add(page["documents"], page["metadatas"], page["ids"])
            facets.add(page["metadatas"])
        self._assemble(ids, encoder.rows(), facets.facets(), revision, count)
        if not keep_rows:
            self.rows = None
        log.debug("keyword index rebuilt: %d chunks (revision %d)", count, revision)

    def update(self, index: Index, revision: int, count: int, held: Held) -> bool:
        """Writers: the latest saved copy of this collection, with the chunks of papers added,
        re-written or removed since (by `held`); False, changing nothing, when there is no
        copy to trust or the result would not hold exactly `count` chunks."""
        base = _latest_saved(index, revision, held.lineage) or _nothing_saved(index, held)
        if base is None:
            return False
        ids, rows, facets = base
        count_of = np.bincount(rows.paper, minlength=len(rows.keys))
        old_of = {key: i for i, key in enumerate(rows.keys)}
        stale = np.ones(len(rows.keys), dtype=bool)  # papers whose rows go
        fetch: list[tuple[str, str, int]] = []  # (key, hash, chunks) to read back
        for key, (digest, n) in held.papers.items():
            at = old_of.get(key)
            same = at is not None and rows.hashes[at] == digest and int(count_of[at]) == n
            if same and digest != MIXED:
                stale[at] = False
                continue
            fetch.append((key, digest, n))
        keep = ~stale[rows.paper]
        new = _read_back(index, fetch)
        if new is None:
            return False
        new_ids, texts, metadatas = new
        ids = [cid for cid, ok in zip(ids, keep.tolist(), strict=True) if ok] + new_ids
        if len(ids) != count or len(set(ids)) != count:
            log.info("the saved keyword index does not add up to %d chunks; rebuilding", count)
            return False
        merged = rows.select(keep).extended(Rows.encode(texts, metadatas, new_ids, rows.vocab))
        facets = facets.select(keep).extended(ChunkFacets.from_metadatas(metadatas))
        self._assemble(ids, merged.compacted(), facets, revision, count)
        self.lineage = held.lineage
        log.info(
            "keyword index updated: %d chunks kept, %d added, %d dropped",
            int(keep.sum()),
            len(new_ids),
            int((~keep).sum()),
        )
        return True

    def _assemble(
        self, ids: list[str], rows: Rows, facets: ChunkFacets, revision: int, count: int
    ) -> None:
        """BM25, idf and lookups from the rows (the one path of a full build and an update)."""
        model, df = bm25_matrix(rows)
        n = len(ids)
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        pairs = zip(rows.vocab, idf.tolist(), df.tolist(), strict=True)
        self.idf = {w: v for w, v, d in pairs if d}
        self.max_idf = max(self.idf.values(), default=1.0)
        self.ids, self.row_of, self.vocab, self.model = (
            ids,
            {c: i for i, c in enumerate(ids)},
            model.vocab_dict,
            model,
        )
        self.rows, self.facets = rows, facets
        self.revision, self.count = revision, count
        self.checked_at = time.monotonic()

    def _save(self, cache: Path) -> None:
        """Keep the index on disk so the next start skips the rebuild (a minute at 100k)."""
        if not self.ids:
            return
        tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save(str(tmp))
            extra = {"ids": self.ids, "idf": self.idf, "lineage": self.lineage}
            (tmp / "qa.json").write_text(json.dumps(extra))
            if self.facets is not None:
                self.facets.save(tmp / FACETS_FILE)
            if self.rows is not None:
                self.rows.save(tmp / ROWS_FILE)
            shutil.rmtree(cache, ignore_errors=True)  # an unreadable copy of the same state
            os.replace(tmp, cache)
            _drop_superseded(cache)
        except OSError as exc:  # a read-only or full disk only costs the next start time
            log.warning("could not save the keyword index to %s: %s", cache, exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, cache: Path, revision: int, count: int) -> bool:
        if not (cache / "qa.json").is_file():
            return False
        try:
            extra = json.loads((cache / "qa.json").read_text())
            model = bm25s.BM25.load(str(cache))
            facets_file = cache / FACETS_FILE
            facets = ChunkFacets.load(facets_file) if facets_file.is_file() else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable keyword index %s: %s", cache, exc)
            return False
        if len(extra["ids"]) != count:
            return False
        self.ids, self.idf, self.model, self.facets = extra["ids"], extra["idf"], model, facets
        self.max_idf = max(self.idf.values(), default=1.0)
        self.vocab = model.vocab_dict
        self.row_of = {c: i for i, c in enumerate(self.ids)}
        self.revision, self.count = revision, count
        self.checked_at = time.monotonic()
        return True

    def coverage(self, query_stems: set[str], text: str, chunk_id: str | None = None) -> float:
        """IDF-weighted share of the query's words present in `text`; unknown words weigh most.

        A question whose rare words appear nowhere in the corpus ("protein folding") gets a
        low coverage even when its common words ("graph", "network") match.
        """
        if not query_stems:
            return 0.0
        weight = {w: self.idf.get(w, self.max_idf) for w in query_stems}
        row = self.row_of.get(chunk_id) if chunk_id else None
        if row is None or self.model is None:
            found = query_stems & set(stems(text))
        else:  # the chunk's words are in the BM25 matrix already: no re-stemming on the hot path
            found = {w for w in query_stems if self._has(w, row)}
        return sum(weight[w] for w in found) / sum(weight.values())

    def _has(self, stem: str, row: int) -> bool:
        """Whether chunk `row` contains `stem`: a look-up in the BM25 matrix's column for it
        (bm25s keeps it column-compressed with sorted row indices)."""
        token = self.vocab.get(stem)
        if token is None:
            return False
        matrix = self.model.scores
        rows = matrix["indices"][matrix["indptr"][token] : matrix["indptr"][token + 1]]
        at = int(np.searchsorted(rows, row))
        return at < len(rows) and int(rows[at]) == row

    def refresh(self, index: Index) -> None:
        """Rebuild if Chroma changed since the last build (checked at most every 2 s)."""
        recent = time.monotonic() - self.checked_at < STALE_CHECK_SECONDS
        if self.model is not None and recent and index.writes == self.writes:
            return  # other processes' writes are seen within STALE_CHECK_SECONDS; ours at once
        if self.model is None or index.snapshot() != (self.revision, self.count):
            self.rebuild(index)
        self.checked_at = time.monotonic()
        self.writes = index.writes

    def scores(self, query_stems: list[str]) -> np.ndarray:
        """BM25 score of every chunk for the query (zeros when no query word is known)."""
        ids = [self.vocab[w] for w in query_stems if w in self.vocab]
        if self.model is None or not self.ids or not ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.model.get_scores(ids), dtype=np.float32)


def _nothing_saved(index: Index, held: Held) -> tuple[list[str], Rows, ChunkFacets] | None:
    """An empty base, when no copy was saved yet but this writer wrote every chunk the record
    accounts for (its first commit on a new store): the update then reads nothing back."""
    written = index.written
    whole = all(
        all(f"{key}#{i}" in written for i in range(n)) for key, (_, n) in held.papers.items()
    )
    if not whole:
        return None
    empty = np.zeros(0, dtype=np.int32)
    rows = Rows(empty, np.zeros(1, dtype=np.int64), [], empty, [], [])
    return [], rows, ChunkFacets(empty, {})


def _pages(index: Index, count: int) -> Iterator[dict]:
    """Every chunk's id, text and metadata, PAGE chunks per Chroma `get`, in Chroma's order."""
    for offset in range(0, count, PAGE):
        yield index.call(
            index.collection.get, include=["documents", "metadatas"], limit=PAGE, offset=offset
        )


def _read_back(
    index: Index, papers: list[tuple[str, str, int]]
) -> tuple[list[str], list[str], list[dict]] | None:
    """The chunks of `papers` (key, hash, chunks): those this writer wrote from its hands
    (`Index.written`), the rest from Chroma, by id; None when Chroma does not hold exactly
    those (the record's account and Chroma disagree: a full build)."""
    wanted = [(f"{key}#{i}", digest) for key, digest, n in papers for i in range(n)]
    found: dict[str, tuple[str, dict]] = {}
    missing: list[tuple[str, str]] = []
    for cid, digest in wanted:
        have = index.written.get(cid)
        if have is not None and have[1].get("paper_hash") == digest:
            found[cid] = have
        else:
            missing.append((cid, digest))
    for start in range(0, len(missing), READ_BATCH):
        part = dict(missing[start : start + READ_BATCH])
        got = index.call(index.collection.get, ids=list(part), include=["documents", "metadatas"])
        for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
            if (meta or {}).get("paper_hash") != part.get(cid):
                return None
            found[cid] = (doc, meta)
    if len(found) != len(wanted):
        return None
    ids = [cid for cid, _ in wanted]
    return ids, [found[c][0] for c in ids], [found[c][1] for c in ids]


def _latest_saved(
    index: Index, revision: int, lineage: str
) -> tuple[list[str], Rows, ChunkFacets] | None:
    """(ids, rows, facets) of the newest saved copy up to `revision`, if it was saved by a
    writer for the same collection lineage and is whole."""
    here = _cache_dir(index, revision, 0)
    prefix = here.name.rpartition("-r")[0]
    copies = []
    for path in here.parent.glob(f"{prefix}-r*-n*"):
        theirs = _revision_of(path)
        if theirs is not None and theirs <= revision:
            copies.append((theirs, path))
    if not copies:
        return None
    path = max(copies)[1]
    try:
        extra = json.loads((path / "qa.json").read_text())
        if not lineage or extra.get("lineage") != lineage:
            return None
        rows = Rows.load(path / ROWS_FILE)
        facets = ChunkFacets.load(path / FACETS_FILE)
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        log.info("cannot update the saved keyword index %s: %s", path, exc)
        return None
    ids = extra["ids"]
    if not (rows.whole(len(ids)) and len(facets.published) == len(ids)):
        log.info("cannot update the saved keyword index %s: its arrays disagree", path)
        return None
    return ids, rows, facets


def _revision_of(path: Path) -> int | None:
    """The state number in a saved copy's name (None: a save in progress, or not ours)."""
    if ".tmp-" in path.name:
        return None
    try:
        return int(path.name.rpartition("-r")[2].split("-n", 1)[0])
    except ValueError:
        return None


def _drop_superseded(cache: Path) -> None:
    """Delete saved keyword indexes older than the one before `cache`: a writer saves the
    next state's before committing it, and readers may still load the current one."""
    prefix = cache.name.rpartition("-r")[0]
    revision = _revision_of(cache)
    for old in cache.parent.glob(f"{prefix}-r*"):
        theirs = _revision_of(old)
        if theirs is not None and theirs < revision - 1:
            shutil.rmtree(old, ignore_errors=True)


def _cache_dir(index: Index, revision: int, count: int) -> Path:
    """Where the keyword index for this collection state lives (hidden: not Chroma's)."""
    key = f"{index.target}|{TOKENIZER}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    return index.settings.persist_dir / ".keyword-index" / f"{tag}-r{revision}-n{count}"
