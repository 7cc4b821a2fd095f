"""Issue 9: a user's papers are never lost. Real `qa` processes against a real Chroma (embedded
and `chroma run`): the corpus record under the index, rebuilds from the whole record, reads
that never write, one writer at a time, readers that follow writers without a restart, and
kills mid-rebuild."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("chroma_server")

from chroma_server import reset_qa_caches  # noqa: E402
from processes import kill_when  # noqa: E402

import qa  # noqa: E402
from qa.config import get_settings  # noqa: E402
from qa.index import open_index  # noqa: E402
from qa.store import open_store  # noqa: E402

pytest_plugins = ["chroma_server"]

ROOT = Path(__file__).resolve().parent.parent
QA_TIMEOUT = 300


def run_qa(*args: str, env: dict | None = None, timeout: float = QA_TIMEOUT):
    """`python -m qa.cli ARGS` in a new process, with this test's QA_* environment."""
    return subprocess.run(
        [sys.executable, "-m", "qa.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_qa(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qa.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def made_up(word: str, n: int = 0) -> dict:
    """A paper no seed resembles, findable by its invented word."""
    return {
        "arxiv_id": f"2512.{n:05d}",
        "title": f"On {word} in sparse estimators",
        "abstract": f"We introduce {word}, a regulariser for sparse estimators, and study how "
        f"{word} behaves on noisy tabular data with {n} features.",
    }


def seed_rows(start: int, n: int) -> list[dict]:
    papers = qa.load_corpus(ROOT / "seeds")[start : start + n]
    return [{"arxiv_id": p.arxiv_id, "title": p.title, "abstract": p.abstract} for p in papers]


@pytest.fixture
def small_seeds(tmp_path, monkeypatch) -> Path:
    """Bundled seeds cut to 12 papers (QA_SEEDS_DIR), so every process starts in seconds."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    write_jsonl(seeds / "seeds.jsonl", [r for r in seed_rows(0, 40) if r["arxiv_id"]][:12])
    monkeypatch.setenv("QA_SEEDS_DIR", str(seeds))
    get_settings.cache_clear()
    return seeds


def keys_found(question: str) -> list[str]:
    reset_qa_caches()
    return [h.paper.key for h in qa.retrieve(question, k=3)]


def chunk_ids() -> list[str]:
    reset_qa_caches()
    return open_index().collection.get(include=[])["ids"]


# ---------------------------------------------------------------- the record under the index


def test_rebuild_keeps_user_papers(index_mode, small_seeds, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation"), made_up("quintaflex", 1)])
    assert run_qa("ingest").returncode == 0
    assert run_qa("ingest", str(mine)).returncode == 0
    rebuilt = run_qa("ingest", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt (requested)" in rebuilt.stdout and "14 papers" in rebuilt.stdout
    assert keys_found("zorbulation regulariser")[0] == "2512.00000"
    assert keys_found("quintaflex regulariser")[0] == "2512.00001"
    ids = chunk_ids()
    assert len(ids) == len(set(ids))
    papers = run_qa("papers")
    assert "14 papers" in papers.stdout and "12 bundled, 2 added by you" in papers.stdout
    assert "mine.jsonl" in papers.stdout
    where = get_settings().chroma_url or qa.index.EMBEDDED  # the one index, where it lives
    assert papers.stdout.count("index: collection ") == 1
    assert f"({where}), {len(ids)} chunks" in papers.stdout


def test_deleted_index_is_rebuilt_from_the_record_with_user_papers(small_seeds, tmp_path):
    """The record is a file of its own: deleting Chroma's files loses nothing."""
    mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation")])
    assert run_qa("ingest").returncode == 0
    assert run_qa("ingest", str(mine)).returncode == 0
    store_dir = get_settings().persist_dir
    for child in store_dir.iterdir():
        if not child.name.startswith("corpus."):
            subprocess.run(["rm", "-rf", str(child)], check=True)
    answer = run_qa("ask", "What is zorbulation?")  # the first ask builds from the record
    assert answer.returncode == 0, answer.stderr
    assert "2512.00000" in answer.stdout
    assert keys_found("zorbulation regulariser")[0] == "2512.00000"
    assert len(set(chunk_ids())) >= 13


def test_remove_takes_papers_out_of_record_and_index(index_mode, small_seeds, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation"), made_up("quintaflex", 1)])
    assert run_qa("ingest", str(mine)).returncode == 0
    removed = run_qa("remove", "2512.00000", "arXiv:2512.09999")
    assert removed.returncode == 0, removed.stderr
    assert "removed 1 papers (2512.00000)" in removed.stdout
    assert "2512.09999 is not in the corpus record" in removed.stderr
    assert [p.key for p in open_store().papers()] == ["2512.00001"]
    assert not any(c.startswith("2512.00000#") for c in chunk_ids())
    assert "2512.00000" not in keys_found("zorbulation regulariser")
    assert run_qa("remove", "2512.09999").returncode == 2


# ---------------------------------------------------------------- reads never write


def test_other_embedding_model_on_ask_touches_nothing(index_mode, small_seeds, tmp_path):
    """The issue's first report: `QA_EMBEDDINGS=ollama:… qa ask` with no Ollama running."""
    mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation")])
    assert run_qa("ingest", str(mine)).returncode == 0
    before = sorted(chunk_ids())
    generation = open_store().generation()
    for spec in ("ollama:nomic-embed-text", "openai-compatible:m@http://127.0.0.1:9/v1"):
        asked = run_qa("ask", "What is zorbulation?", env={"QA_EMBEDDINGS": spec})
        assert asked.returncode == 2
        assert "Traceback" not in asked.stderr
        assert len(asked.stderr.strip().splitlines()) == 1, asked.stderr
        assert "qa ingest --rebuild" in asked.stderr and "QA_EMBEDDINGS=minilm" in asked.stderr
    assert sorted(chunk_ids()) == before
    assert open_store().generation() == generation
    assert keys_found("zorbulation regulariser")[0] == "2512.00000"


def _target() -> str:
    """The index's name in the corpus record (the URL as written: one server, one URL here)."""
    settings = get_settings()
    return qa.index.record_key(settings.chroma_url or qa.index.EMBEDDED, settings.collection)


def test_rebuild_with_an_unusable_model_touches_nothing(small_seeds, monkeypatch):
    """`--rebuild` with embeddings that cannot load (no API key) stops before any write."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert run_qa("ingest").returncode == 0
    before, active = sorted(chunk_ids()), open_store().active(_target())
    rebuilt = run_qa("ingest", "--rebuild", env={"QA_EMBEDDINGS": "openai:text-embedding-3-small"})
    assert rebuilt.returncode == 2 and "OPENAI_API_KEY" in rebuilt.stderr, rebuilt.stderr
    assert sorted(chunk_ids()) == before
    assert open_store().active(_target()) == active


def test_reembed_kill_leaves_the_old_index_answering_then_completes(index_mode, small_seeds):
    """kill -9 while `--rebuild` fills the new collection: the old one stays active; the
    next rebuild resumes the unfinished one and switches."""
    assert run_qa("ingest").returncode == 0
    store = open_store()
    active = store.active(_target())
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_REBUILD],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def new_collection_part_filled() -> bool:
        pending = store.get_meta(f"pending:{_target()}")
        return bool(pending) and _count(pending) >= 3

    kill_when(child, new_collection_part_filled, timeout=120)
    assert store.active(_target()) == active  # not switched
    probe = json.loads((small_seeds / "seeds.jsonl").read_text().splitlines()[3])
    asked = run_qa("ask", probe["title"])
    assert asked.returncode == 0, asked.stderr
    assert f"[arXiv:{probe['arxiv_id']}]" in asked.stdout

    done = run_qa("ingest", "--rebuild")
    assert done.returncode == 0, done.stderr
    now = store.active(_target())
    assert now.name != active.name and now.chunks == active.chunks
    assert len(set(chunk_ids())) == active.chunks
    assert f"[arXiv:{probe['arxiv_id']}]" in run_qa("ask", probe["title"]).stdout


SLOW_REBUILD = textwrap.dedent(
    """
    import time
    from pathlib import Path
    import qa.index, qa.ingest
    qa.index.VECTOR_CACHE_DIR = Path("/nonexistent")  # every vector computed
    qa.ingest.WRITE_BATCH = 2                         # one paper per upsert
    inner = qa.index.CachedEmbeddings.embed_documents
    def slow(self, texts):
        time.sleep(0.3)
        return inner(self, texts)
    qa.index.CachedEmbeddings.embed_documents = slow
    qa.ingest.build_index([], rebuild=True, progress=False)
    print("done", flush=True)
    """
)


def _count(collection: str) -> int:
    """Chunks in a collection, read by a client of its own (like another process would)."""
    import chromadb

    settings = get_settings()
    try:
        if settings.chroma_url:
            host, port = settings.chroma_url.rsplit("//", 1)[1].split(":")
            client = chromadb.HttpClient(host=host, port=int(port))
        else:
            return _sqlite_count(settings.persist_dir / "chroma.sqlite3", collection)
        return client.get_collection(collection).count()
    except Exception:
        return 0


def _sqlite_count(db: Path, collection: str) -> int:
    import sqlite3

    query = (
        "SELECT count(*) FROM embeddings e JOIN segments s ON e.segment_id = s.id "
        "JOIN collections c ON s.collection = c.id WHERE c.name = ?"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            return conn.execute(query, (collection,)).fetchone()[0]
    except sqlite3.Error:
        return 0


# ---------------------------------------------------------------- one writer, many readers


def test_two_concurrent_ingests_end_with_every_paper_once(index_mode, small_seeds, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [made_up(f"alpha{i}word", i) for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [made_up(f"beta{i}word", 100 + i) for i in range(30)])
    from filelock import FileLock

    from qa.store import corpus_path

    assert run_qa("ingest").returncode == 0
    # Both start while the record is held, so they surely overlap (two processes merely
    # started together may not, on a loaded machine): each waits and says so; released, one
    # writes while the other waits for it.
    with FileLock(f"{corpus_path()}.lock"):
        first, second = start_qa("ingest", str(a)), start_qa("ingest", str(b))
        errs = [_lines(first.stderr), _lines(second.stderr)]
        deadline = time.monotonic() + QA_TIMEOUT
        while not all(any("waiting up to" in line for line in err) for err in errs):
            running = first.poll() is None and second.poll() is None
            assert running and time.monotonic() < deadline, errs
            time.sleep(0.05)
    results = [p.communicate(timeout=QA_TIMEOUT)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, (results, errs)
    ids = chunk_ids()
    assert len(ids) == len(set(ids))
    keys = {c.rsplit("#", 1)[0] for c in ids}
    expected = {f"2512.{i:05d}" for i in [*range(30), *range(100, 130)]}
    assert expected <= keys and len(keys) == 12 + 60
    assert len(open_store().papers()) == 72
    assert keys_found("beta7word regulariser")[0] == "2512.00107"


def _lines(stream) -> list[str]:
    """The lines of a child's stream as they come (a thread reads them into the list)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    return lines


def test_second_writer_gives_up_after_the_wait_with_a_clear_message(small_seeds, monkeypatch):
    from filelock import FileLock

    from qa.store import corpus_path

    assert run_qa("ingest").returncode == 0
    with FileLock(f"{corpus_path()}.lock"):
        blocked = run_qa("ingest", env={"QA_WRITER_WAIT": "1"})
    assert blocked.returncode == 2
    assert "another writer" in blocked.stderr and "QA_WRITER_WAIT" in blocked.stderr
    assert "Traceback" not in blocked.stderr


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import qa
    stop = Path(sys.argv[1])
    while not stop.exists():
        try:
            answer = qa.ask("What is zorbulation?")
            keys = [h.paper.key for h in answer.sources]
            print(json.dumps({"ok": keys, "error": answer.error}), flush=True)
        except Exception as exc:
            print(json.dumps({"err": f"{type(exc).__name__}: {exc}"}), flush=True)
        time.sleep(0.05)
    """
)


def _next_answer(reader: subprocess.Popen) -> dict:
    """The reader's next JSON line; its death (EOF) fails with its stderr, not a JSON error."""
    while True:
        raw = reader.stdout.readline()
        if not raw:
            pytest.fail(f"the reader process ended: {reader.stderr.read()[-2000:]}")
        if raw.lstrip().startswith("{"):
            return json.loads(raw)


def test_reader_answers_during_an_ingest_and_then_finds_the_new_papers(
    index_mode, small_seeds, tmp_path
):
    """A long-lived reader (what the UI does per question) in another process: every answer
    during the ingest works, and the new paper is found after it, without a restart."""
    assert run_qa("ingest").returncode == 0
    rows = [made_up("zorbulation")] + [
        dict(r, arxiv_id=f"2511.{i:05d}", abstract="Revisited: " + r["abstract"])
        for i, r in enumerate(seed_rows(100, 60))
    ]
    new = write_jsonl(tmp_path / "new.jsonl", rows)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(stop)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict] = []
    try:
        first = _next_answer(reader)
        assert "ok" in first and "2512.00000" not in first["ok"], first
        writer = run_qa("ingest", str(new), env={"QA_EMBED_BATCH": "4"})
        assert writer.returncode == 0, writer.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = _next_answer(reader)
            lines.append(line)
            if "2512.00000" in line.get("ok", []):
                break
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    lines += [json.loads(x) for x in out.splitlines() if x.lstrip().startswith("{")]
    failures = [x for x in lines if "err" in x or x.get("error")]
    assert not failures, failures[:3]
    assert any("2512.00000" in x.get("ok", []) for x in lines), lines[-3:]
    assert len(lines) >= 5


# ---------------------------------------------------------------- a failing embedding backend


class EmbeddingServer:
    """A loopback OpenAI-compatible /v1/embeddings server: hashed bag-of-words vectors."""

    DIM = 64

    def __init__(self) -> None:
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> EmbeddingServer:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _embedding_handler(self.DIM))
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def _embedding_handler(dim: int) -> type[BaseHTTPRequestHandler]:
    def vector(text: str) -> np.ndarray:
        v = np.zeros(dim, dtype=np.float32)
        for word in text.lower().split():
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
        return v / (np.linalg.norm(v) or 1.0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = []
            for i, text in enumerate(texts):
                vec = vector(text)
                emb = (
                    base64.b64encode(vec.tobytes()).decode()
                    if body.get("encoding_format") == "base64"
                    else vec.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": emb})
            usage = {"prompt_tokens": 0, "total_tokens": 0}
            reply = {"object": "list", "data": data, "model": body["model"], "usage": usage}
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def test_embedding_backend_down_during_ask_touches_nothing(
    index_mode, small_seeds, tmp_path, monkeypatch
):
    """The index was built with a remote embedding server that is now down: `qa ask` says
    so in one line and every paper stays retrievable once the server is back."""
    server = EmbeddingServer().start()
    try:
        monkeypatch.setenv("QA_EMBEDDINGS", f"openai-compatible:hash@{server.base_url}")
        monkeypatch.setenv("QA_MAX_RETRIES", "0")
        get_settings.cache_clear()
        mine = write_jsonl(tmp_path / "mine.jsonl", [made_up("zorbulation")])
        assert run_qa("ingest").returncode == 0
        assert run_qa("ingest", str(mine)).returncode == 0
        assert run_qa("ask", "What is zorbulation?").returncode == 0
        assert keys_found("zorbulation regulariser")[0] == "2512.00000"
        before, generation = sorted(chunk_ids()), open_store().generation()
        port = server.port
        server.stop()

        asked = run_qa("ask", "What is zorbulation?")
        assert asked.returncode == 2 and "Traceback" not in asked.stderr
        assert len(asked.stderr.strip().splitlines()) == 1, asked.stderr
        assert "QA_EMBEDDINGS" in asked.stderr and "failed" in asked.stderr
        assert open_store().generation() == generation

        server.start(port=port)
        assert sorted(chunk_ids()) == before
        assert run_qa("ask", "What is zorbulation?").returncode == 0
        assert keys_found("zorbulation regulariser")[0] == "2512.00000"
    finally:
        server.stop()


def test_app_py_keeps_answering_during_an_ingest_and_then_finds_new_papers(
    index_mode, small_seeds, tmp_path
):
    """The issue's UI report: `python app.py` serving while another process ingests."""
    from chroma_server import free_port
    from gradio_client import Client

    assert run_qa("ingest").returncode == 0
    rows = [made_up("zorbulation")] + [
        dict(r, arxiv_id=f"2511.{i:05d}", abstract="Revisited: " + r["abstract"])
        for i, r in enumerate(seed_rows(100, 60))
    ]
    new = write_jsonl(tmp_path / "new.jsonl", rows)
    port = free_port()
    env = {**os.environ, "QA_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("QA_AUTH", None)
    with open(tmp_path / "app.log", "wb") as log:
        app = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        client = _connect(Client, f"http://127.0.0.1:{port}/", app)

        def ask() -> tuple[str, list[str]]:
            answer, sources = client.predict("What is zorbulation?", [], "stub", 5, api_name="/ask")
            return answer, [s["arxiv_id"] for s in sources]

        assert "2512.00000" not in ask()[1]
        writer = start_qa("ingest", str(new), env={"QA_EMBED_BATCH": "4"})
        answers = []
        while writer.poll() is None:
            answers.append(ask())
        assert writer.returncode == 0, writer.communicate()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "2512.00000" not in answers[-1][1]:
            answers.append(ask())
    finally:
        app.terminate()
        app.wait(timeout=30)
    broken = [a for a, _ in answers if "unavailable" in a or "went wrong" in a]
    assert not broken, broken[:2]
    assert len(answers) >= 3
    assert "2512.00000" in answers[-1][1]  # found without a restart


def _connect(client_class, url: str, proc: subprocess.Popen, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with {proc.returncode}")
        try:
            return client_class(url, verbose=False)
        except Exception:  # not up yet
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up within {seconds} s")
