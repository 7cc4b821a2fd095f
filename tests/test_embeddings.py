"""Embeddings: the real offline model, the factory, and an OpenAI-compatible loopback server."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

import qa.embeddings as emb
from qa.embeddings import (
    DIMENSION,
    MAX_TOKENS,
    MiniLMEmbeddings,
    ModelFileError,
    get_embeddings,
    token_length,
)

QUERY = "Large language models can be fine-tuned with reinforcement learning from human feedback."
PARAPHRASE = "RLHF fine-tunes big language models using human preference data."
UNRELATED = "The recipe calls for two cups of flour and an egg."


@pytest.fixture(scope="module")
def minilm() -> Embeddings:
    return MiniLMEmbeddings(batch_size=16, threads=2)


@pytest.fixture(scope="module")
def abstracts() -> list[str]:
    from qa.corpus import load_corpus

    return [f"{p.title}\n{p.abstract}" for p in load_corpus()[:30]]


def cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))  # both unit vectors


# ---------------------------------------------------------------- the offline model


def test_default_spec_is_minilm_and_shared():
    first = get_embeddings()
    assert isinstance(first, Embeddings)
    assert first is get_embeddings("minilm")  # one instance: the session loads once
    assert first.model_id == f"minilm-int8:{emb.MODEL_SHA256[:12]}"


def test_vectors_are_unit_384(minilm):
    vectors = np.array(minilm.embed_documents([QUERY, PARAPHRASE, UNRELATED]))
    assert vectors.shape == (3, DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrase_closer_than_unrelated(minilm):
    q = minilm.embed_query(QUERY)
    para, unrelated = minilm.embed_documents([PARAPHRASE, UNRELATED])
    assert cos(q, para) > 0.5
    assert cos(q, para) - cos(q, unrelated) > 0.3


def test_batch_equals_single(minilm, abstracts):
    texts = [*abstracts[:8], "short", ""]
    batched = np.array(minilm.embed_documents(texts))
    single = np.array([minilm.embed_query(t) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_order_preserved_across_length_sorted_batches(abstracts):
    small = MiniLMEmbeddings(batch_size=3)
    texts = ["x", abstracts[0], "a much shorter text", abstracts[1], "y z", abstracts[2], "q"]
    got = np.array(small.embed_documents(texts))
    want = np.array([small.embed_query(t) for t in texts])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_empty_inputs(minilm):
    assert minilm.embed_documents([]) == []
    vector = minilm.embed_query("")
    assert len(vector) == DIMENSION
    assert np.isfinite(vector).all()


def test_window_is_256_not_the_files_128(minilm):
    """Text past token 128 changes the vector; text past token 256 does not."""
    base = " ".join(["model"] * 150)  # "model" is one WordPiece token
    assert token_length(base) == 150
    assert minilm.embed_query(base) != minilm.embed_query(base + " galaxy cluster")
    long = " ".join(["model"] * 300)
    assert minilm.embed_query(long) == minilm.embed_query(long + " galaxy cluster")


def test_title_finds_its_own_abstract(minilm, abstracts):
    """Each paper's title retrieves its own title+abstract first among 30 papers."""
    docs = np.array(minilm.embed_documents(abstracts))
    titles = [a.split("\n", 1)[0] for a in abstracts]
    queries = np.array(minilm.embed_documents(titles))
    top1 = (queries @ docs.T).argmax(axis=1)
    assert (top1 == np.arange(len(abstracts))).mean() >= 0.9


def test_concurrent_first_use_loads_once(monkeypatch):
    monkeypatch.setattr(emb, "_RUNTIMES", {})
    results: list[list[float]] = []
    model = MiniLMEmbeddings(threads=1)

    def work() -> None:
        results.append(model.embed_query(QUERY))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(emb._RUNTIMES) == 1
    assert len(results) == 6
    np.testing.assert_allclose(np.array(results), np.array(results[:1] * 6), atol=1e-6)


def test_threads_setting_reaches_the_runtime(monkeypatch):
    monkeypatch.setenv("QA_EMBED_THREADS", "1")
    monkeypatch.setenv("QA_EMBED_BATCH", "4")
    emb.get_settings.cache_clear()
    model = get_embeddings("minilm")
    assert (model.threads, model.batch_size) == (1, 4)


# ---------------------------------------------------------------- files are pinned


def test_model_sha_mismatch_names_the_file(monkeypatch):
    monkeypatch.setattr(emb, "MODEL_SHA256", "0" * 64)
    monkeypatch.setattr(emb, "_RUNTIMES", {})
    with pytest.raises(ModelFileError, match=r"model\.onnx.*expected 0{64}"):
        MiniLMEmbeddings().embed_query("hello")


def test_tokenizer_sha_mismatch_names_the_file(monkeypatch):
    monkeypatch.setattr(emb, "TOKENIZER_SHA256", "f" * 64)
    with pytest.raises(ModelFileError, match=r"tokenizer\.json"):
        emb.tokenizer_file()


def test_files_verify():
    assert emb.model_file().name == "model.onnx"
    assert emb.tokenizer_file().name == "tokenizer.json"


# ---------------------------------------------------------------- token_length


def test_token_length_counts_wordpieces_without_specials():
    assert token_length("") == 0
    assert token_length("hello world") == 2
    assert token_length("word " * 400) == 400  # never truncated: the splitter needs the truth


def test_token_length_is_additive_over_words():
    text = "Retrieval-augmented generation improves factuality of LLMs."
    words = text.split(" ")
    assert token_length(text) == sum(token_length(w) for w in words)
    assert MAX_TOKENS == 256


# ---------------------------------------------------------------- factory


@pytest.mark.parametrize("spec", ["bogus", "openai", "openai:", "minilm:x", "openai-compatible:m"])
def test_unknown_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match=r"valid forms: minilm, openai:<model>") as err:
        get_embeddings(spec)
    assert "openai-compatible:<model>@<base_url>" in str(err.value)


def test_openai_without_key_names_the_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "   ")
    emb.get_settings.cache_clear()
    with pytest.raises(ValueError, match="OPENAI_API_KEY") as err:
        get_embeddings("openai:text-embedding-3-small")
    assert "sk-" not in str(err.value)


def test_openai_with_key_does_not_show_it(monkeypatch):
    secret = "sk-test-do-not-print-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    emb.get_settings.cache_clear()
    model = get_embeddings("openai:text-embedding-3-small")
    assert model.model_id == "openai:text-embedding-3-small"
    assert secret not in repr(model) and secret not in str(model)


def test_sentence_transformers_is_optional():
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("sentence-transformers is installed")
    with pytest.raises(ImportError, match=r"arxiv-qa\[sentence-transformers\]"):
        get_embeddings("sentence-transformers:all-MiniLM-L6-v2")


# ---------------------------------------------------------------- OpenAI-compatible server


def fake_vector(text: str) -> list[float]:
    """Deterministic and text-dependent, so a mix-up of order would show."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), 1.0]


class EmbeddingsHandler(BaseHTTPRequestHandler):
    """Just enough of POST /v1/embeddings, honouring encoding_format like OpenAI does."""

    requests: ClassVar[list[dict]] = []  # replaced per server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.path != "/v1/embeddings":
            self.send_error(404)
            return
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vector = fake_vector(text)
            if body.get("encoding_format") == "base64" and self.server.base64_ok:
                vector = base64.b64encode(np.array(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        reply = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        }
        raw = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self.embedded(inputs)

    def embedded(self, inputs: list[str]) -> None:
        """Called after an answered request (subclasses count what was embedded)."""

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["base64", "floats-only"])
def server(request) -> Iterator[tuple[str, list[dict]]]:
    """A loopback server; some real servers ignore encoding_format=base64, so try both."""
    handler = type("Handler", (EmbeddingsHandler,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.base64_ok = request.param
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_compatible_round_trip(server):
    url, requests = server
    model = get_embeddings(f"openai-compatible:nomic-embed-text@{url}")
    assert model.model_id == f"openai-compatible:nomic-embed-text@{url}"
    texts = ["alpha", "a longer second text", "ω unicode"]
    got = model.embed_documents(texts)
    assert got == [pytest.approx(fake_vector(t)) for t in texts]
    assert model.embed_query("query") == pytest.approx(fake_vector("query"))

    first = requests[0]
    assert first["path"] == "/v1/embeddings"
    assert first["body"]["model"] == "nomic-embed-text"
    assert first["body"]["input"] == texts  # raw strings, not tiktoken ids
    assert first["auth"] == "Bearer not-needed"  # a dummy key when none is configured


def test_openai_compatible_uses_configured_key(server, monkeypatch):
    url, requests = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-123")
    emb.get_settings.cache_clear()
    get_embeddings(f"openai-compatible:m@{url}").embed_query("x")
    assert requests[0]["auth"] == "Bearer sk-local-123"


class FlakyHandler(EmbeddingsHandler):
    """Answers like EmbeddingsHandler, slowly enough for requests to overlap; request n is
    refused with 429 when n % 3 == 1 and with 500 when n % 5 == 2 (nothing embedded then)."""

    lock = threading.Lock()
    served = 0
    in_flight = 0
    most_in_flight = 0
    answered: ClassVar[list[str]] = []  # every text an answered (200) request embedded

    def do_POST(self) -> None:
        cls = type(self)
        with cls.lock:
            n = cls.served = cls.served + 1
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            status = 429 if n % 3 == 1 else 500 if n % 5 == 2 else 200
            if status != 200:
                self.rfile.read(int(self.headers["Content-Length"]))
                raw = json.dumps({"error": {"message": "busy", "type": "server_error"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("retry-after-ms", "20")  # the openai client's own header
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            threading.Event().wait(0.05)  # a server busy long enough for requests to overlap
            super().do_POST()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def embedded(self, inputs: list[str]) -> None:
        with type(self).lock:
            type(self).answered.extend(inputs)


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, type[FlakyHandler]]]:
    handler = type("Flaky", (FlakyHandler,), {"requests": [], "answered": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.base64_ok = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_server_embeddings_run_concurrently_and_retry_without_loss_or_duplicates(
    flaky_server, monkeypatch
):
    url, handler = flaky_server
    monkeypatch.setenv("QA_EMBED_CONCURRENCY", "4")
    monkeypatch.setenv("QA_EMBED_SERVER_BATCH", "3")
    emb.get_settings.cache_clear()
    model = get_embeddings(f"openai-compatible:m@{url}")
    texts = [f"text number {i} " + "x" * (i % 7) for i in range(40)]
    got = model.embed_documents(texts)
    assert got == [pytest.approx(fake_vector(t)) for t in texts]  # all, in input order
    assert sorted(handler.answered) == sorted(texts)  # each batch embedded exactly once
    assert handler.served > 14  # 14 batches, some refused and retried
    assert 2 <= handler.most_in_flight <= 4  # several in flight, never above the setting
    # the request threads are started once per process, not per call (per ingest batch)
    workers = {t.ident for t in threading.enumerate() if t.name.startswith("qa-embed")}
    assert model.embed_documents(texts[:9]) == [pytest.approx(fake_vector(t)) for t in texts[:9]]
    assert {t.ident for t in threading.enumerate() if t.name.startswith("qa-embed")} == workers
    assert 2 <= len(workers) <= 4


def test_server_that_keeps_failing_names_the_setting(flaky_server, monkeypatch):
    url, _ = flaky_server
    monkeypatch.setenv("QA_EMBED_RETRIES", "0")
    emb.get_settings.cache_clear()
    model = get_embeddings(f"openai-compatible:m@{url}")
    with pytest.raises(emb.EmbeddingsUnavailable, match=r"QA_EMBEDDINGS=.*HTTP 429"):
        model.embed_documents(["a", "b"])  # the first request is refused, no retry allowed


def test_ingest_through_a_flaky_server_writes_every_chunk_once(flaky_server, monkeypatch):
    """`qa ingest` against a server that refuses some requests (429/500): every chunk is
    embedded exactly once and stored with its own vector, none lost, none twice."""
    from qa.corpus import load_corpus
    from qa.index import chunk_paper, open_index
    from qa.ingest import build_index

    url, handler = flaky_server
    monkeypatch.setenv("QA_EMBEDDINGS", f"openai-compatible:m@{url}")
    monkeypatch.setenv("QA_EMBED_CONCURRENCY", "3")
    monkeypatch.setenv("QA_EMBED_SERVER_BATCH", "4")
    emb.get_settings.cache_clear()
    papers = load_corpus()[:12]
    report = build_index(papers, progress=False)
    chunks = [c for p in papers for c in chunk_paper(p, emb.get_settings().chunk_tokens)]
    assert report.added == len(papers) and report.chunks_written == len(chunks)
    assert sorted(handler.answered) == sorted(c.text for c in chunks)
    got = open_index().collection.get(include=["documents", "embeddings"])
    assert sorted(got["ids"]) == sorted(c.id for c in chunks)
    for text, vector in zip(got["documents"], got["embeddings"], strict=True):
        assert list(vector) == pytest.approx(fake_vector(text))
