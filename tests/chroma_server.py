"""A real Chroma server (`chroma run`) on 127.0.0.1 for tests, plus index-mode fixtures.

Use it from any test module (tests/ is on sys.path under pytest's default import mode):

    pytest_plugins = ["chroma_server"]

    def test_x(chroma_server):            # session-wide server: "http://127.0.0.1:<port>"
        ...

    def test_y(index_mode):               # runs twice: embedded, then server
        qa.build_index(papers)            # QA_CHROMA_URL is set (server) or not (embedded)

    def test_z(fresh_chroma_server):      # a server of its own, which the test may stop
        fresh_chroma_server.stop()

Server-mode tests get a collection of their own (QA_COLLECTION) on the shared server, so they
stay independent. A missing `chroma` executable skips the server tests with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 30.0
HEARTBEAT = "/api/v2/heartbeat"


def chroma_executable() -> str | None:
    """The `chroma` CLI of this interpreter's environment (next to sys.executable), or PATH's."""
    here = Path(sys.executable).parent / "chroma"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("chroma")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heartbeat(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + HEARTBEAT, timeout=timeout) as resp:
            return resp.status == 200 and any("heartbeat" in k for k in json.loads(resp.read()))
    except (OSError, ValueError, TypeError, urllib.error.URLError):
        return False


class ChromaServer:
    """One `chroma run --path <dir> --host 127.0.0.1 --port <free>` subprocess."""

    def __init__(self, path: Path, log_path: Path):
        self.path = path
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> ChromaServer:
        """Start (or restart, on `port`, with the same data) and wait for the heartbeat."""
        exe = chroma_executable()
        if exe is None:
            pytest.skip("the `chroma` executable is not installed next to the interpreter")
        self.port = port or free_port()
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "run", "--path", str(self.path), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port)]
        env = dict(os.environ, ANONYMIZED_TELEMETRY="False", NO_COLOR="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"`chroma run` exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if heartbeat(self.url):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"`chroma run` gave no heartbeat in {STARTUP_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGCONT)  # a paused server could not act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its port but answers nothing (a hung server)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def running_server(path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(path / "data", path / "chroma.log").start()
    try:
        yield server
    finally:
        server.stop()


def reset_qa_caches() -> None:
    """Forget cached settings and index handles after the environment changed."""
    from qa.config import get_settings
    from qa.index import forget_indexes

    get_settings.cache_clear()
    forget_indexes()


def use_server(monkeypatch: pytest.MonkeyPatch, url: str, collection: str | None = None) -> None:
    """Point qa at a Chroma server (and a collection of the test's own) from now on."""
    monkeypatch.setenv("QA_CHROMA_URL", url)
    monkeypatch.setenv("QA_COLLECTION", collection or f"t-{uuid.uuid4().hex[:12]}")
    reset_qa_caches()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory) -> Iterator[str]:
    """URL of a Chroma server shared by the session (tests use their own collections)."""
    with running_server(tmp_path_factory.mktemp("chroma-server")) as server:
        yield server.url


@pytest.fixture
def fresh_chroma_server(tmp_path) -> Iterator[ChromaServer]:
    """A server of the test's own, which it may stop (`.stop()`) to simulate an outage."""
    with running_server(tmp_path / "chroma-server") as server:
        yield server


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def index_mode(request, monkeypatch) -> Iterator[str]:
    """Run the test against an embedded store and against the shared Chroma server."""
    reset_qa_caches()
    if request.param == "server":
        use_server(monkeypatch, request.getfixturevalue("chroma_server"))
    yield request.param
    reset_qa_caches()


# ---------------------------------------------------------------- the bundled seeds, indexed


@dataclass
class SeededIndex:
    """The full bundled corpus indexed once per session and mode (read-only for tests)."""

    mode: str
    env: dict[str, str | None]  # QA_* variables that select this index
    report: object  # qa.index.IngestReport of the one build
    papers: list

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Select this index through the environment (cached handles are kept: it's fast)."""
        from qa.config import get_settings

        for name, value in self.env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def seeded_factory(tmp_path_factory, request) -> Callable[[str], SeededIndex]:
    """`seeded_factory(mode)`: the seeds indexed in that mode (built on first request)."""
    built: dict[str, SeededIndex] = {}

    def get(mode: str) -> SeededIndex:
        if mode not in built:
            from qa.config import Settings
            from qa.corpus import load_corpus
            from qa.index import build_index

            root = tmp_path_factory.mktemp(f"seeded-{mode}")
            env: dict[str, str | None] = {
                "QA_PERSIST_DIR": str(root / "vectorstore"),
                "QA_CHROMA_URL": None,
                "QA_COLLECTION": "seeds",
            }
            if mode == "server":
                env["QA_CHROMA_URL"] = request.getfixturevalue("chroma_server")
            settings = Settings(
                persist_dir=env["QA_PERSIST_DIR"],
                chroma_url=env["QA_CHROMA_URL"],
                collection="seeds",
            )
            papers = load_corpus(settings.seeds_dir)
            report = build_index(papers, settings=settings, progress=False)
            built[mode] = SeededIndex(mode, env, report, papers)
        return built[mode]

    return get


@pytest.fixture
def seeds(seeded_factory, monkeypatch):
    """The bundled corpus, indexed once per session (embedded), selected for this test
    through the environment; returns the settings that see it."""
    from qa.config import get_settings

    seeded_factory("embedded").activate(monkeypatch)
    return get_settings()
