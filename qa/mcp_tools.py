"""MCP tools for agents (Claude Desktop, Cursor, any MCP client), served by Gradio's MCP server.

With `QA_MCP=true` (`qa serve --mcp`) the UI also serves three tools at `/gradio_api/mcp/`
(streamable HTTP): `search_papers`, `ask_question` and `get_paper`. Gradio turns each function
into a tool: its name, its docstring (the agent reads it) and its typed parameters.

What an agent may send is what a visitor may send: no model, URL or file (the operator's
settings choose those), every text bounded by `QA_MAX_QUESTION_CHARS`, `k` by
`QA_MCP_MAX_RESULTS`, and at most `QA_CONCURRENCY_LIMIT` answers generated at once. Gradio's
login does not cover its MCP route, so with `QA_AUTH` set `McpAuth` refuses MCP requests that
do not carry the same credentials (HTTP Basic).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import importlib.util
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qa.chain import Answer, ask, clean_question
from qa.citations import ARXIV_ID
from qa.config import Settings
from qa.corpus import Paper
from qa.index import IndexUnavailable
from qa.retrieval import Hit, get_retriever, retrieve
from qa.retriever import filter_names

log = logging.getLogger(__name__)

MCP_PATH = "/gradio_api/mcp"
SNIPPET_CHARS = 600
OPERATOR_FIELDS = frozenset({"sources"})  # the files a paper was ingested from
_PAPER_ID = re.compile(
    rf"^(?:https?://arxiv\.org/(?:abs|pdf)/|arxiv:\s*|ref:\s*)?({ARXIV_ID}|h[0-9a-f]{{12}})"
    r"(?:v\d+)?(?:\.pdf)?$",
    re.IGNORECASE,
)


class ToolError(gr.Error):
    """A failure the agent reads: one line naming the cause and the fix."""

    def __str__(self) -> str:  # gr.Error's is repr(message): quotes around the line
        return str(self.message)


# ---------------------------------------------------------------- inputs


def _bounded_k(k: Any, settings: Settings) -> int:
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise ToolError(f"k must be a whole number, got {k!r}") from None
    return max(1, min(value, settings.mcp_max_results))


def _text(name: str, value: Any, settings: Settings) -> str:
    """An optional text input, bounded like a question."""
    text = " ".join(str(value or "").split())
    if len(text) > settings.max_question_chars:
        raise ToolError(
            f"{name} is {len(text):,} characters long; the limit is "
            f"{settings.max_question_chars:,} (QA_MAX_QUESTION_CHARS)"
        )
    return text


def search_filters(settings: Settings, **given: Any) -> dict[str, Any]:
    """The non-empty filters, as `qa.retrieve` takes them (lists for categories/authors);
    a filter this server's search does not support is refused by name."""
    filters: dict[str, Any] = {}
    for name, value in given.items():
        text = _text(name, value, settings)
        if not text:
            continue
        if name not in filter_names():
            raise ToolError(f"this server's search does not support the {name} filter")
        is_list = name in ("categories", "authors")
        filters[name] = [v.strip() for v in text.split(",") if v.strip()] if is_list else text
    return filters


def paper_key(arxiv_id: Any) -> str:
    """`2304.04704`, `arXiv:2304.04704v2`, an arxiv.org URL or a `ref:` key → the index key."""
    text = str(arxiv_id or "").strip()
    match = _PAPER_ID.match(text) if len(text) <= 100 else None
    if not match:
        raise ToolError(
            f"{text[:100]!r} is not an arXiv ID (e.g. 2304.04704) or a ref: key from search_papers"
        )
    return match.group(1)


# ---------------------------------------------------------------- outputs


def paper_record(paper: Paper) -> dict[str, Any]:
    """What an agent may see of a paper: its record without the operator's file names."""
    return {k: v for k, v in paper.to_dict().items() if k not in OPERATOR_FIELDS}


def _paper_summary(hit: Hit) -> dict[str, Any]:
    """A search result: the record without the abstract, plus the score and the snippet."""
    snippet = hit.snippet
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"
    record = paper_record(hit.paper)
    record.pop("abstract", None)
    return {**record, "score": round(hit.score, 4), "snippet": snippet}


def answer_text(answer: Answer) -> str:
    """The answer with its [arXiv:ID] markers, then the cited papers with their links."""
    lines = [answer.text]
    if answer.citations:
        lines.append("\nCited papers:")
        lines += [f"- {p.marker} {p.title} — {p.url or 'no arXiv link'}" for p in answer.citations]
    return "\n".join(lines)


# ---------------------------------------------------------------- the tools


def make_tools(current: Callable[[], Settings]) -> list[Callable[..., Any]]:
    """The tool functions, reading the settings at call time. Their names and docstrings are
    what an agent sees; the docstrings' Args sections describe the parameters."""

    def search_papers(
        query: str,
        k: int = 5,
        since: str = "",
        until: str = "",
        categories: str = "",
        authors: str = "",
    ) -> str:
        """Search the indexed arXiv abstracts for papers about a topic, best match first
        (hybrid keyword + semantic search). Use it to find papers and their arXiv IDs; use
        ask_question for a written, cited answer and get_paper for one paper's full abstract.

        Args:
            query: What to look for, in words or keywords, e.g. "machine unlearning in LLMs".
            k: How many papers to return (default 5; the server caps it, at 20 by default).
            since: Only papers published on or after this date, YYYY-MM-DD ("" = no limit).
            until: Only papers published on or before this date, YYYY-MM-DD ("" = no limit).
            categories: Comma-separated arXiv categories, e.g. "cs.CL, cs.LG" ("" = all).
            authors: Comma-separated author names; a paper by any of them matches ("" = all).

        Returns:
            JSON list of papers, best first: arxiv_id, key, title, url, score (0-1), snippet.
        """
        settings = current()
        question = _question(query, settings)
        filters = search_filters(
            settings, since=since, until=until, categories=categories, authors=authors
        )
        hits = retrieve(question, _bounded_k(k, settings), settings=settings, **filters)
        return _json([_paper_summary(hit) for hit in hits])

    def ask_question(question: str) -> str:
        """Answer a question from the indexed arXiv abstracts. Every claim cites its paper as
        [arXiv:ID], and the cited papers follow with their links. When the abstracts do not
        cover the question, the answer says so and names the nearest papers instead.

        Args:
            question: A research question, e.g. "How can voice conversion plant backdoors?".

        Returns:
            Markdown: the answer with [arXiv:ID] markers, then the cited papers and links.
        """
        settings = current()
        text = _question(question, settings)
        if not _answer_slots(settings.concurrency_limit).acquire(timeout=settings.request_timeout):
            raise ToolError(
                f"The server is busy ({settings.concurrency_limit} answers at once, "
                "QA_CONCURRENCY_LIMIT); try again shortly."
            )
        try:
            answer = ask(text, settings=settings)
        finally:
            _answer_slots(settings.concurrency_limit).release()
        return answer_text(answer)

    def get_paper(arxiv_id: str) -> str:
        """Get one indexed paper by its arXiv ID: title, full abstract, link and the rest of
        its record. Use an ID from search_papers or from an [arXiv:ID] citation.

        Args:
            arxiv_id: e.g. "2304.04704"; also "arXiv:2304.04704v2", an arxiv.org URL, "ref:h…".

        Returns:
            JSON object: arxiv_id, key, title, abstract, url and the paper's other metadata.
        """
        settings = current()
        key = paper_key(arxiv_id)
        papers = get_retriever(settings).index.papers([key])
        if key not in papers:
            raise ToolError(f"no paper {key} in this index; search_papers finds papers by topic")
        return _json(paper_record(papers[key]))

    return [for_agents(tool) for tool in (search_papers, ask_question, get_paper)]


def _json(value: Any) -> str:
    """Tool output as JSON text (Gradio would send a dict's Python repr)."""
    return json.dumps(value, ensure_ascii=False, indent=1)


def _question(text: Any, settings: Settings) -> str:
    return clean_question(str(text or ""), settings)


def for_agents(tool: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure becomes one line for the agent. Ours pass as they are: ToolError, and
    ValueError, the type of every input error we raise (QuestionError, a bad filter). Anything
    else names only its type: its message could hold internal details (the log has them)."""

    @functools.wraps(tool)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return tool(*args, **kwargs)
        except ToolError:
            raise
        except IndexUnavailable as exc:
            raise ToolError(f"The paper index is unavailable: {exc}") from None
        except ValueError as exc:
            raise ToolError(" ".join(str(exc).split())[:500]) from None
        except Exception as exc:
            log.exception("MCP tool %s failed", tool.__name__)
            raise ToolError(
                f"{tool.__name__} failed ({type(exc).__name__}); the details are in the server log"
            ) from None

    return run


@functools.cache
def _answer_slots(limit: int) -> threading.BoundedSemaphore:
    """Answers generated at once through MCP (its tools bypass Gradio's queue; see install)."""
    return threading.BoundedSemaphore(limit)


# ---------------------------------------------------------------- wiring into the Blocks


def install(demo: gr.Blocks, current: Callable[[], Settings]) -> None:
    """Register the tools on the Blocks being built (call inside `with demo:`), and keep the
    app's other endpoints out of the MCP tool list (agents get these three only).

    The tools are not queued: Gradio runs an unqueued tool in-process, while a queued one
    loops back over HTTP with Gradio's session login, which an MCP client does not have.
    """
    tools = make_tools(current)
    for tool in tools:
        gr.api(tool, api_name=tool.__name__, queue=False)
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and block_fn.fn not in tools:
            block_fn.fn._mcp_type = "not-an-mcp-tool"  # Gradio lists only type "tool"


class McpAuth:
    """ASGI middleware: MCP requests need the QA_AUTH credentials as HTTP Basic auth.

    Gradio's login protects its pages and API but not the MCP route it mounts, so without
    this an agent could search and ask behind a login.
    """

    def __init__(self, app: ASGIApp, credentials: tuple[str, str]):
        self.app = app
        self.expected = f"{credentials[0]}:{credentials[1]}".encode()

    def allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(MCP_PATH)
            and not self.allowed(scope)
        ):
            response = PlainTextResponse(
                "arxiv-qa MCP needs the QA_AUTH credentials: send "
                "`Authorization: Basic <base64 of user:password>`.",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="arxiv-qa MCP"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def with_mcp(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """`demo.launch()` options plus the MCP server (QA_MCP) and, behind a login, `McpAuth`."""
    if not settings.mcp:
        return options
    if importlib.util.find_spec("mcp") is None:  # Gradio would only print a warning
        raise ValueError(
            "QA_MCP=true (qa serve --mcp) needs the mcp extra: pip install 'arxiv-qa[mcp]'"
        )
    options = {**options, "mcp_server": True}
    if options.get("auth"):
        app_kwargs = dict(options.get("app_kwargs") or {})
        middleware = [
            *app_kwargs.get("middleware", []),
            Middleware(McpAuth, credentials=options["auth"]),
        ]
        options["app_kwargs"] = {**app_kwargs, "middleware": middleware}
    return options
