"""The MCP tools, served by Gradio's MCP server on 127.0.0.1 and called with the official `mcp`
Python client over streamable HTTP: list the tools, call each, check the results; bounded
inputs; behind QA_AUTH, requests without the credentials are refused.

The app is built with `app.build_demo(settings)` and launched on a free port, with the options
`python app.py` uses (`app.launch_options`); `python app.py` itself is started once, as a
subprocess with QA_MCP=true, to check the wiring from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mcp", reason="MCP needs the mcp extra: pip install 'arxiv-qa[mcp]'")

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # app.py lives at the project root
    sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from qa.config import Settings  # noqa: E402
from qa.index import ensure_index  # noqa: E402
from qa.mcp_tools import paper_key, search_filters  # noqa: E402
from qa.retriever import filter_names  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

POMP = "2304.04704"
VOICE_BACKDOOR = "2306.15875"
TOOLS = {"search_papers", "ask_question", "get_paper"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mcp_index(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mcp-index")
    ensure_index(Settings(persist_dir=path), progress=False)
    return path


@contextmanager
def served(settings: Settings):
    """The app with these settings on a free loopback port; yields the MCP URL."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    demo = app.build_demo(settings)
    options = app.launch_options(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, **options)
    try:
        yield f"http://127.0.0.1:{port}/gradio_api/mcp/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def mcp_url(mcp_index):
    with served(Settings(persist_dir=mcp_index, mcp=True)) as url:
        yield url


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _session_call(url: str, headers: dict[str, str] | None, calls):
    async with (
        httpx.AsyncClient(headers=headers or {}, timeout=120) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await calls(session)


def run(url: str, calls, headers: dict[str, str] | None = None):
    """Run `calls(session)` in an initialised MCP client session against `url`."""
    return asyncio.run(_session_call(url, headers, calls))


def call(url: str, name: str, arguments: dict, headers=None):
    return run(url, lambda s: s.call_tool(name, arguments), headers)


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def json_of(result):
    return json.loads(text_of(result))


# ---------------------------------------------------------------- the tools an agent sees


def test_lists_exactly_our_tools_with_descriptions(mcp_url):
    tools = run(mcp_url, lambda s: s.list_tools()).tools
    by_name = {t.name: t for t in tools}
    assert set(by_name) == TOOLS  # the app's own /ask (with its model box) is not a tool
    for tool in tools:
        assert len(tool.description) > 80, tool.name
        for name, prop in tool.inputSchema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    search = by_name["search_papers"].inputSchema
    assert search["required"] == ["query"]
    assert set(search["properties"]) == {"query", "k", "since", "until", "categories", "authors"}
    assert set(by_name["ask_question"].inputSchema["properties"]) == {"question"}
    assert set(by_name["get_paper"].inputSchema["properties"]) == {"arxiv_id"}
    every_param = {p for t in tools for p in t.inputSchema["properties"]}
    assert not every_param & {"model", "url", "file", "path", "base_url"}


def test_search_papers_returns_ids_titles_snippets(mcp_url):
    result = call(mcp_url, "search_papers", {"query": "What is POMP?", "k": 3})
    assert not result.isError, text_of(result)
    papers = json_of(result)
    assert len(papers) == 3
    assert papers[0]["arxiv_id"] == POMP
    assert papers[0]["url"] == f"https://arxiv.org/abs/{POMP}"
    for paper in papers:
        assert paper["title"] and paper["snippet"] and 0 <= paper["score"] <= 1
        assert "abstract" not in paper and "sources" not in paper  # no operator file names


def test_search_k_is_capped_by_the_setting(mcp_url):
    papers = json_of(call(mcp_url, "search_papers", {"query": "language models", "k": 500}))
    assert len(papers) == Settings().mcp_max_results


def test_ask_question_answers_with_citations(mcp_url):
    question = "How can voice conversion be used for backdoor attacks on speech classification?"
    result = call(mcp_url, "ask_question", {"question": question})
    assert not result.isError, text_of(result)
    text = text_of(result)
    assert f"[arXiv:{VOICE_BACKDOOR}]" in text
    assert "Cited papers:" in text
    assert f"https://arxiv.org/abs/{VOICE_BACKDOOR}" in text


def test_ask_question_off_corpus_abstains(mcp_url):
    text = text_of(call(mcp_url, "ask_question", {"question": "How do I bake sourdough bread?"}))
    assert "do not cover this question" in text
    assert "Cited papers:" not in text


def test_get_paper_by_id_and_its_spellings(mcp_url):
    paper = json_of(call(mcp_url, "get_paper", {"arxiv_id": POMP}))
    assert paper["arxiv_id"] == POMP
    assert paper["title"] and len(paper["abstract"]) > 200
    assert "sources" not in paper
    again = json_of(call(mcp_url, "get_paper", {"arxiv_id": f"https://arxiv.org/abs/{POMP}v2"}))
    assert again == paper


def test_get_paper_unknown_or_malformed_is_one_line_for_the_agent(mcp_url):
    result = call(mcp_url, "get_paper", {"arxiv_id": "9912.12345"})
    assert result.isError
    assert text_of(result) == (
        "no paper 9912.12345 in this index; search_papers finds papers by topic"
    )
    result = call(mcp_url, "get_paper", {"arxiv_id": "../../etc/passwd"})
    assert result.isError
    assert "is not an arXiv ID" in text_of(result)
    assert "Traceback" not in text_of(result)


def test_over_long_question_is_refused_naming_the_setting(mcp_url):
    long = "why " * 1000
    for name, args in (("ask_question", {"question": long}), ("search_papers", {"query": long})):
        result = call(mcp_url, name, args)
        assert result.isError
        assert "QA_MAX_QUESTION_CHARS" in text_of(result)


def test_unexpected_failures_name_only_their_type(mcp_url, monkeypatch):
    """An internal error's message may hold paths or URLs: the agent gets its type only."""
    import qa.mcp_tools

    def broken(*args, **kwargs):
        raise RuntimeError("cannot open /srv/secret/chroma.sqlite3 for user:pw@db")

    monkeypatch.setattr(qa.mcp_tools, "retrieve", broken)
    result = call(mcp_url, "search_papers", {"query": "What is POMP?"})
    assert result.isError
    assert text_of(result) == (
        "search_papers failed (RuntimeError); the details are in the server log"
    )


# ---------------------------------------------------------------- filters


def test_filters_pass_through_or_are_refused_by_name():
    """Filters `qa.retrieve` supports reach it (lists split on commas); others are named."""
    settings = Settings()
    assert search_filters(settings, since="", categories=" ") == {}
    for name in ("since", "categories"):
        value = "2023-01-01" if name == "since" else "cs.CL, cs.LG"
        if name in filter_names():
            got = search_filters(settings, **{name: value})
            assert got == {name: ["cs.CL", "cs.LG"] if name == "categories" else value}
        else:
            with pytest.raises(Exception, match=f"does not support the {name} filter"):
                search_filters(settings, **{name: value})


def test_paper_key_accepts_the_usual_spellings():
    for text in (POMP, f"arXiv:{POMP}", f"arxiv:{POMP}v3", f"https://arxiv.org/pdf/{POMP}v1"):
        assert paper_key(text) == POMP
    assert paper_key("ref:h0123456789ab") == "h0123456789ab"
    for bad in ("", "hello", "x" * 500, f"{POMP} OR 1=1"):
        with pytest.raises(Exception, match="not an arXiv ID"):
            paper_key(bad)


# ---------------------------------------------------------------- behind a login


def test_with_qa_auth_mcp_needs_the_credentials(mcp_index):
    settings = Settings(persist_dir=mcp_index, mcp=True, auth="ann:s3cret:x")
    with served(settings) as url:
        refused = (
            None,
            basic("ann", "wrong"),
            {"Authorization": "Bearer s3cret:x"},
            {"Authorization": "Basic !!not-base64"},
        )
        for headers in refused:
            response = httpx.post(url, json={}, headers=headers or {})
            assert response.status_code == 401
            assert "QA_AUTH" in response.text
            with pytest.raises(ExceptionGroup) as error:  # it cannot even initialise
                run(url, lambda s: s.list_tools(), headers)
            assert error.group_contains(httpx.HTTPStatusError, match="401 Unauthorized")
        tools = run(url, lambda s: s.list_tools(), basic("ann", "s3cret:x")).tools
        assert {t.name for t in tools} == TOOLS
        result = call(url, "get_paper", {"arxiv_id": POMP}, basic("ann", "s3cret:x"))
        assert json_of(result)["arxiv_id"] == POMP
        schema = httpx.get(url + "schema")
        assert schema.status_code == 401


def test_without_qa_mcp_there_is_no_mcp_server(mcp_index):
    with served(Settings(persist_dir=mcp_index)) as url:
        response = httpx.post(url, json={}, headers={"Accept": "text/event-stream"})
        assert response.status_code == 404
        assert "search_papers" not in httpx.get(url.replace("gradio_api/mcp/", "config")).text


# ---------------------------------------------------------------- `python app.py` with QA_MCP


def test_python_app_py_serves_mcp_from_the_environment(mcp_index, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "QA_PERSIST_DIR": str(mcp_index),
        "QA_MCP": "true",
        "QA_HOST": "127.0.0.1",
        "QA_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/gradio_api/mcp/"
        assert {t.name for t in run(url, lambda s: s.list_tools()).tools} == TOOLS
        papers = json_of(call(url, "search_papers", {"query": "What is POMP?", "k": 1}))
        assert papers[0]["arxiv_id"] == POMP
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_qa_serve_has_the_mcp_flag():
    from qa.cli import build_parser

    assert build_parser().parse_args(["serve", "--mcp"]).mcp is True
    assert build_parser().parse_args(["serve"]).mcp is False


# ---------------------------------------------------------------- launch options


def test_with_mcp_keeps_other_middleware_and_adds_the_login_check():
    from starlette.middleware import Middleware

    from qa.mcp_tools import McpAuth, with_mcp

    base = {"auth": ("ann", "pw"), "app_kwargs": {"middleware": [Middleware(dict)]}}
    assert with_mcp(Settings(), base) is base  # QA_MCP off: untouched
    options = with_mcp(Settings(mcp=True), base)
    assert options["mcp_server"] is True
    kinds = [m.cls for m in options["app_kwargs"]["middleware"]]
    assert kinds == [dict, McpAuth]
    assert len(base["app_kwargs"]["middleware"]) == 1  # the caller's options are not mutated
    open_options = with_mcp(Settings(mcp=True), {"auth": None})
    assert "app_kwargs" not in open_options  # no login, no check


def test_qa_mcp_without_the_extra_is_one_line_naming_the_fix(monkeypatch):
    import importlib.util

    from qa.mcp_tools import with_mcp

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"QA_MCP=true .* pip install 'arxiv-qa\[mcp\]'"):
        with_mcp(Settings(mcp=True), {})
