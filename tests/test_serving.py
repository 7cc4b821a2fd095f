"""Settings and start-up problems through the real entry points, as subprocesses: `qa …`,
`python app.py` and `qa serve`. Each bad setting ends in exit status 2 and one line naming
the variable, with no traceback and no secret; `qa serve` starts and answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-ant-FAKE-do-not-print-0123456789"
pytest_plugins = ["fake_openai"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without QA_*/OPENAI_* variables, with a temp index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QA_", "OPENAI_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        QA_PERSIST_DIR=str(tmp_path / "vectorstore"),
        GRADIO_ANALYTICS_ENABLED="False",
        **extra,
    )
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(result, *names: str) -> str:
    """Exit 2, exactly one line on stderr naming each of `names`, no traceback (besides
    the progress bar of a first index build, which may have started)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "paper/s]" not in ln]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


QA = ["-m", "qa.cli"]
APP = [str(ROOT / "app.py")]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("QA_K", "abc", 'QA_K: must be an integer between 1 and 50 (got "abc")'),
        ("QA_K", "0", "QA_K: must be an integer between 1 and 50"),
        ("QA_PORT", "abc", "QA_PORT: must be an integer between 1 and 65,535"),
        ("QA_PORT", "70000", "QA_PORT: must be an integer between 1 and 65,535"),
        ("QA_CONCURRENCY_LIMIT", "0", "QA_CONCURRENCY_LIMIT: must be an integer of at least 1"),
        ("QA_EMBEDDINGS", "bogus", "QA_EMBEDDINGS: unknown embeddings spec 'bogus'"),
        ("QA_EMBEDDINGS", "openai:text-embedding-3-small", "QA_EMBEDDINGS: openai:"),
        ("QA_MODEL", "gpt-5-please", "QA_MODEL: Unknown model spec"),
        ("QA_MODELS", "stub,nonsense", "QA_MODELS: Unknown model spec 'nonsense'"),
        ("QA_FUSION", "max", "QA_FUSION: must be one of convex, rrf"),
        ("QA_STRUCTURED_OUTPUT", "maybe", "QA_STRUCTURED_OUTPUT: must be true or false"),
        ("QA_KEYWORD_WEIGHT", "2", "QA_KEYWORD_WEIGHT: must be a number between 0 and 1"),
        ("QA_AUTH", "no-colon", "QA_AUTH: must look like user:password"),
        ("QA_MAX_HISTORY_CHARS", "10", "QA_MAX_HISTORY_CHARS: must be an integer between"),
        ("QA_TOPK", "3", "QA_TOPK: not a setting of arxiv-qa"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(tmp_path, variable, value, expected):
    result = run([*QA, "ask", "What is POMP?"], tmp_path, clean_env(tmp_path, **{variable: value}))
    assert expected in assert_one_line(result, variable)
    if variable == "QA_AUTH":
        assert value not in result.stderr, "a secret's value is never shown"


@pytest.mark.parametrize("entry", ["app.py", "qa serve"])
@pytest.mark.parametrize(("variable", "value"), [("QA_K", "abc"), ("QA_PORT", "70000")])
def test_ui_entry_points_report_bad_settings_in_one_line(tmp_path, entry, variable, value):
    args = APP if entry == "app.py" else [*QA, "serve"]
    result = run(args, tmp_path, clean_env(tmp_path, **{variable: value}))
    assert_one_line(result, variable)


def test_dotenv_with_other_tools_secrets_is_ignored_and_never_shown(tmp_path):
    (tmp_path / ".env").write_text(
        f"ANTHROPIC_API_KEY={SECRET}\nHF_TOKEN={SECRET}-hf\nDATABASE_URL=postgres://u:{SECRET}@db/x\n"
        f"QA_OPENAI_API_KEY={SECRET}-qa\nQA_K=3\n",
        encoding="utf-8",
    )
    result = run([*QA, "ask", "What is POMP?", "--json"], tmp_path, clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"arxiv_id": "2304.04704"' in result.stdout
    assert result.stdout.count('"snippet"') == 3, "QA_K=3 from .env was applied"
    assert SECRET not in result.stdout + result.stderr


def test_typo_in_dotenv_is_caught_with_a_suggestion(tmp_path):
    (tmp_path / ".env").write_text(f"QA_MODLE=stub\nOPENAI_API_KEY={SECRET}\n", encoding="utf-8")
    result = run([*QA, "ask", "What is POMP?"], tmp_path, clean_env(tmp_path))
    line = assert_one_line(result, "QA_MODLE", "did you mean QA_MODEL?")
    assert SECRET not in line


def test_bad_flags_name_the_flag(tmp_path):
    env = clean_env(tmp_path)
    for k in ("0", "-1", "10000"):
        result = run([*QA, "ask", "What is POMP?", "--k", k], tmp_path, env)
        assert_one_line(result, "--k: must be an integer between 1 and 50", f"(got {k})")
    result = run([*QA, "serve", "--port", "70000"], tmp_path, env)
    assert_one_line(result, "--port: must be an integer between 1 and 65,535")


class Listener:
    """A loopback HTTP server answering every GET with `status` and an HTML page."""

    def __init__(self, status: int = 200):
        page = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [200, 404])
def test_chroma_url_that_is_not_chroma_is_named(tmp_path, status):
    web = Listener(status)
    try:
        result = run(
            [*QA, "ask", "What is POMP?"], tmp_path, clean_env(tmp_path, QA_CHROMA_URL=web.url)
        )
    finally:
        web.close()
    line = assert_one_line(result, f"QA_CHROMA_URL={web.url} is not a Chroma server")
    assert "nginx" not in line and "<" not in line


def test_embeddings_server_that_is_not_one_is_named(tmp_path, fake_openai):
    spec = f"openai-compatible:nomic@{fake_openai.base_url}"
    env = clean_env(tmp_path, QA_EMBEDDINGS=spec, QA_MAX_RETRIES="0")
    result = run([*QA, "ask", "What is POMP?"], tmp_path, env)
    line = assert_one_line(result, f"QA_EMBEDDINGS={spec}", "HTTP 404")
    assert "Unknown path" not in line, "the server's reply is not relayed"


def test_busy_port_and_bad_host_name_the_variable(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (APP, [*QA, "serve"]):
            result = run(args, tmp_path, clean_env(tmp_path, QA_PORT=str(port)))
            line = assert_one_line(result, "QA_PORT", f"port {port}", "already in use")
            assert "GRADIO_SERVER_PORT" not in line
    for host in ("no-such-host.invalid", "192.0.2.1"):
        result = run([*QA, "serve"], tmp_path, clean_env(tmp_path, QA_HOST=host))
        assert_one_line(result, "QA_HOST", host)


def test_qa_serve_starts_and_answers(tmp_path):
    """`qa serve --mcp` with another tool's secret in `.env`: it serves the UI's API and the
    MCP tools, and never prints the secret."""
    from gradio_client import Client
    from test_mcp import TOOLS, run

    (tmp_path / ".env").write_text(f"HF_TOKEN={SECRET}\n", encoding="utf-8")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *QA, "serve", "--port", str(port), "--mcp"],
            cwd=tmp_path,
            env=clean_env(tmp_path),
            stdout=out,
            stderr=out,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            answer, sources = Client(url, verbose=False).predict(
                "What is POMP?", [], "", None, api_name="/ask"
            )
            tools = run(f"{url}gradio_api/mcp/", lambda session: session.list_tools()).tools
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert "https://arxiv.org/abs/2304.04704" in answer and sources
    assert {tool.name for tool in tools} == TOOLS
    assert f"serving on http://127.0.0.1:{port}" in log.read_text()
    assert SECRET not in log.read_text() + answer + str(sources)
