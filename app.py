"""Gradio chat UI for arxiv-qa: streamed, cited answers beside the papers they came from.

`demo` is a module-level `gr.Blocks`, so tests (and `gradio app.py`) can import and launch it;
`python app.py` builds the index on first start (console progress bar) and then serves on
QA_HOST:QA_PORT (127.0.0.1:7860), behind a login when QA_AUTH=user:password is set. A bad
setting or a start-up problem ends it with one line naming the variable (exit status 2).

Everything that comes from an abstract or a model is rendered inert: chat text is HTML-escaped
and Markdown's link makers are escaped so it cannot form links, autolinks or images (only our
own `[arXiv:ID]` markers become links), the Chatbot keeps Gradio's HTML sanitiser on, and the
sources panel is built from escaped text only. Visitors choose among the operator's models
(qa/policy.py); every input is bounded by a setting (qa/config.py, qa/serving.py). The
conversation is kept in the browser, so it survives a refresh and a server restart.

Two endpoints for scripts (`gradio_client`):
- `/ask(message, history, model, k, since, until, categories) -> (answer_markdown, sources)`:
  the documented one; `history` is `[{"role", "content"}]`, `model` one of QA_MODELS ("" = the
  first), `k` 1–50 (None = QA_K), `since`/`until` (YYYY[-MM[-DD]]) and `categories`
  ("cs.CL,cs.AI") optional filters, `sources` a list of dicts (arxiv_id, title, url, snippet,
  score, cited, authors, categories, published). `client.submit(...)` streams the answer.
- `/similar(arxiv_id, k) -> sources_html`: the papers most like one paper.
- `/chat`: the UI's own event (textbox, chatbot, model, k), callable but undocumented.
"""

import html
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import gradio as gr
from starlette.middleware import Middleware

from qa.chain import Answer, QuestionError, stream
from qa.citations import render_markdown
from qa.config import Settings, SettingsError, get_settings, split_auth
from qa.corpus import ARXIV_ID
from qa.embeddings import EmbeddingsUnavailable
from qa.index import Index, IndexUnavailable, ensure_index, open_index
from qa.mcp_tools import install as install_mcp_tools
from qa.mcp_tools import with_mcp
from qa.models import ModelError
from qa.policy import ModelNotOffered, offered, redact, visitor_model
from qa.retrieval import Hit, retrieve
from qa.serving import BodyLimit, bind_problem, check_bind
from qa.similarity import UnknownPaper, similar
from qa.support import mark_weak

log = logging.getLogger("arxiv_qa.app")

EXAMPLES = [
    "Which methods exist for machine unlearning in large language models?",
    "What is POMP and what does it pre-train?",
    "How can voice conversion be used for backdoor attacks on speech classification?",
    "What can Kosmos-2 do that earlier multimodal models could not?",
    "How does MiniLLM distil knowledge from large language models?",
]
SNIPPET_CHARS = 420
# The conversation is kept in the visitor's browser (localStorage) so it survives a refresh
# and a server restart. Gradio encrypts BrowserState with this key; a fixed key is what lets
# a restarted server read it back. It is no security boundary: the value is the visitor's
# own conversation, re-checked on restore like any other input (`restore_conversation`).
CONVERSATION_KEY = "arxiv-qa-conversation"
THINKING = "_Searching the abstracts…_"
WARNING = "⚠️ "
NOTE = "ℹ️ "  # a note after an answer (something was cut to fit a bound); not history

_MARKER = re.compile(rf"(\[arXiv:{ARXIV_ID}\])")
_LINKED_MARKER = re.compile(rf"\[arXiv:({ARXIV_ID})\]\(https://arxiv\.org/abs/[^)\s]+\)")
# Backslash-escaped so Markdown finds no link, image or autolink: `\`, `[`, `]`, `@` (e-mail
# autolinks), the `:` of `scheme://` and the `.` of `www.` (GFM's bare-URL autolinks).
_MD_SPECIAL = re.compile(r"([\\\[\]@]|:(?=//)|(?<=www)\.)", re.IGNORECASE)
_MD_ESCAPED = re.compile(r"\\([\\\[\]@:.])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_STOP = frozenset(
    {"the", "and", "for", "with", "that", "this", "from", "are", "was", "were", "what", "which"}
    | {"how", "does", "did", "they", "their", "its", "into", "can", "use", "using", "about"}
)

SOURCES_CSS = """
.qa-sources { font-size: 0.92rem; line-height: 1.45; padding: 0 0.4rem; }
.qa-sources h4 { margin: 0.6rem 0 0.4rem; font-size: 0.95rem; }
.qa-sources .qa-query { color: var(--body-text-color-subdued); margin: 0 0 0.4rem; }
.qa-sources ol { margin: 0; padding-left: 1.3rem; }
.qa-sources li { margin: 0 0 0.7rem; }
.qa-sources .qa-title { font-weight: 600; }
.qa-sources .qa-id a { color: var(--link-text-color, #2563eb); text-decoration: underline; }
.qa-sources .qa-snippet { display: block; margin: 0.25rem 0 0; padding-left: 0.6rem;
  border-left: 3px solid var(--border-color-primary); font-size: 0.88rem; }
.qa-sources .qa-uncited { opacity: 0.8; }
.qa-sources .qa-badge { font-size: 0.75rem; padding: 0 0.35rem; border-radius: 0.3rem;
  border: 1px solid var(--border-color-primary); color: var(--body-text-color-subdued); }
.qa-sources .qa-empty { color: var(--body-text-color-subdued); }
.qa-sources .qa-meta { font-size: 0.8rem; color: var(--body-text-color-subdued); }
"""


# ---------------------------------------------------------------- rendering (inert by design)


def esc(text: object) -> str:
    """HTML-escape text for the sources panel, including `$` and `{` so that no template
    syntax in an abstract can reach gr.HTML's template engine."""
    return html.escape(str(text)).replace("$", "&#36;").replace("{", "&#123;")


def inert_markdown(text: str) -> str:
    """Chat markdown for untrusted text: HTML escaped, Markdown's link makers escaped (`[`,
    `]`, bare URLs, e-mail addresses) so the text forms no link or image, and only our own
    `[arXiv:ID]` markers turned into arXiv links."""
    parts = _MARKER.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a marker captured by the split
            out.append(render_markdown(part))
        else:
            out.append(_MD_SPECIAL.sub(r"\\\1", html.escape(part, quote=False)))
    return "".join(out)


def plain_text(content: object) -> str:
    """The inverse of `inert_markdown` for a chat message (any Gradio content shape): the
    plain text with `[arXiv:ID]` markers that the chain expects as history."""
    if isinstance(content, list):
        return " ".join(plain_text(part) for part in content)
    if isinstance(content, dict):
        content = content.get("text", content.get("content", ""))
    text = str(content or "")
    text = _LINKED_MARKER.sub(r"[arXiv:\1]", text)
    return html.unescape(_MD_ESCAPED.sub(r"\1", text))


def plain_history(chat: list | None) -> list[dict[str, str]]:
    """Chatbot messages → `[{"role", "content"}]` with plain-text content; placeholders,
    error notices, notes and other roles are left out so they do not steer a follow-up."""
    history = []
    for message in chat or []:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            continue
        text = plain_text(message.get("content", "")).split(f"\n\n{NOTE}")[0].strip()
        if text and text != plain_text(THINKING) and not text.startswith(WARNING.strip()):
            history.append({"role": message["role"], "content": text})
    return history


def _terms(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9-]{2,}", text.lower()) if w not in _STOP}


def _snippet(text: str, query: str) -> str:
    """The part of a matched chunk worth reading: the sentence sharing most words with the
    question, widened with its neighbours up to SNIPPET_CHARS ("…" marks what was cut)."""
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    if len(" ".join(sentences)) <= SNIPPET_CHARS:
        return " ".join(sentences)
    wanted = _terms(query)
    best = max(range(len(sentences)), key=lambda i: (len(_terms(sentences[i]) & wanted), -i))
    start, end = best, best + 1
    for grown in _widenings(len(sentences), start, end):
        if len(" ".join(sentences[grown[0] : grown[1]])) <= SNIPPET_CHARS:
            start, end = grown
    shown = " ".join(sentences[start:end])
    if len(shown) > SNIPPET_CHARS:
        shown, end = shown[:SNIPPET_CHARS].rsplit(" ", 1)[0], len(sentences) + 1
    return ("… " if start else "") + shown + (" …" if end < len(sentences) else "")


def _widenings(n: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Ever wider windows around a sentence: the next one first (context reads forward)."""
    for step in range(1, n):
        yield start, min(n, end + step)
        yield max(0, start - step), min(n, end + step)


def _paper_html(hit: Hit, cited: bool, query: str) -> str:
    paper = hit.paper
    if paper.arxiv_id:
        url = esc(f"https://arxiv.org/abs/{paper.arxiv_id}")
        ident = (
            f'<a href="{url}" target="_blank" rel="noopener noreferrer">'
            f"arXiv:{esc(paper.arxiv_id)}</a>"
        )
    else:
        ident = f"ref:{esc(paper.key)}"
    badge = "" if cited else ' <span class="qa-badge">not cited</span>'
    return (
        f'<li class="{"qa-cited" if cited else "qa-uncited"}">'
        f'<span class="qa-title">{esc(paper.title or "(untitled)")}</span><br>'
        f'<span class="qa-id">{ident}</span>{badge}{_meta_html(paper)}'
        f'<div class="qa-snippet">{esc(_snippet(hit.snippet, query))}</div></li>'
    )


def _meta_html(paper) -> str:
    """Authors (first three), date of the first version, categories: one subdued line."""
    authors = ", ".join(paper.authors[:3]) + (" et al." if len(paper.authors) > 3 else "")
    parts = [authors, str(paper.published or ""), " ".join(paper.categories)]
    text = " · ".join(p for p in parts if p)
    return f'<div class="qa-meta">{esc(text)}</div>' if text else ""


def sources_html(answer: Answer | None) -> str:
    """The sources panel: cited papers first (title, ID link, matching snippet), then the
    other retrieved papers marked "not cited"."""
    if answer is None:
        return '<div class="qa-sources"><p class="qa-empty">Looking up papers…</p></div>'
    if not answer.sources:
        note = "No papers were retrieved." if answer.question else "Ask a question to see papers."
        return f'<div class="qa-sources"><p class="qa-empty">{note}</p></div>'
    cited_keys = [p.key for p in answer.citations]
    cited = sorted(
        (h for h in answer.sources if h.paper.key in cited_keys),
        key=lambda h: cited_keys.index(h.paper.key),
    )
    other = [h for h in answer.sources if h.paper.key not in cited_keys]
    query = answer.standalone_question or answer.question
    parts = ['<div class="qa-sources">']
    if answer.standalone_question and answer.standalone_question != answer.question:
        parts.append(f'<p class="qa-query">Searched for: {esc(answer.standalone_question)}</p>')
    if answer.filters:
        parts.append(f'<p class="qa-query">Only papers: {esc(answer.filters.describe())}</p>')
    parts.append(f"<h4>Cited papers ({len(cited)})</h4>")
    if cited:
        parts += ["<ol>", *(_paper_html(h, True, query) for h in cited), "</ol>"]
    else:
        parts.append('<p class="qa-empty">The answer cites none of the retrieved papers.</p>')
    if other:
        parts.append(f"<h4>Also retrieved, not cited ({len(other)})</h4>")
        parts += ["<ol>", *(_paper_html(h, False, query) for h in other), "</ol>"]
    parts.append("</div>")
    return "".join(parts)


def sources_data(answer: Answer) -> list[dict]:
    """Sources for API clients: every retrieved paper, flagged cited or not."""
    cited = {p.key for p in answer.citations}
    return [
        {
            "arxiv_id": h.paper.arxiv_id,
            "key": h.paper.key,
            "title": h.paper.title,
            "url": h.paper.url,
            "snippet": h.snippet,
            "score": round(h.score, 4),
            "cited": h.paper.key in cited,
            "authors": h.paper.authors,
            "categories": h.paper.categories,
            "published": h.paper.published.isoformat() if h.paper.published else None,
        }
        for h in answer.sources
    ]


def ui_filters(since: str, until: str, categories: str) -> dict:
    """The filter boxes as `qa.stream` arguments (blank boxes: no filter)."""
    return {"since": since or None, "until": until or None, "categories": categories or None}


def similar_html(arxiv_id: str, k: float | None, settings: Settings) -> str:
    """The sources panel listing papers like one paper; bad or unknown IDs say why."""
    try:
        hits = similar(str(arxiv_id or "")[:80], k, settings=settings)
    except (UnknownPaper, IndexUnavailable, SettingsError) as exc:
        return f'<div class="qa-sources"><p class="qa-empty">{esc(exc)}</p></div>'
    items = [_paper_html(h, True, "") for h in hits]
    heading = f"<h4>Papers like {esc(arxiv_id.strip())} ({len(hits)})</h4>"
    return f'<div class="qa-sources">{heading}<ol>{"".join(items)}</ol></div>'


# ---------------------------------------------------------------- answering


def _failure(question: str, message: str) -> Answer:
    return Answer(text=f"{WARNING}{message}", question=question, error=message)


def answer_events(
    message: str,
    history: list,
    model: str | None,
    k: int | None,
    settings: Settings,
    filters: dict | None = None,
) -> Iterator[tuple[str, Answer | None]]:
    """(growing answer text, None) while streaming, then (final text, Answer). The model is
    the visitor's choice among those the operator offers (qa/policy.py); `filters` are the
    since/until/categories the visitor typed (checked by qa/filters.py). Every failure
    becomes a readable final Answer with `.error` set, never an exception."""
    text, spec = "", redact(str(model or "").strip()[:200] or settings.offered_models[0])
    try:
        spec, model_settings = visitor_model(model, settings)
        events = stream(message, history, spec, k=k, settings=model_settings, **(filters or {}))
        for event in events:
            if isinstance(event, Answer):  # redact: a server URL in an error may hold a login
                event.text = redact(event.text)
                yield with_notes(mark_weak(event.text, event.support), event.notes), event
                return
            text += event
            yield redact(text), None
    except (QuestionError, ModelNotOffered, SettingsError) as exc:
        failed = _failure(message, str(exc))
    except ModelError as exc:
        failed = _failure(message, f"The model {redact(spec)[:200]!r} cannot be used: {exc}")
    except (IndexUnavailable, EmbeddingsUnavailable) as exc:
        failed = _failure(message, f"The paper index is unavailable: {exc}")
    except Exception as exc:  # the UI must stay usable whatever breaks; details go to the log
        log.exception("answering %r failed", message[:200])
        failed = _failure(
            message,
            f"Something went wrong while answering ({type(exc).__name__}); "
            "the details are in the server log. Please try again.",
        )
    if text:
        failed.text = f"{text}\n\n{failed.text}"
    yield failed.text, failed


def with_notes(text: str, notes: list[str]) -> str:
    """The answer followed by its notes, each a paragraph starting with NOTE."""
    return "".join([text, *(f"\n\n{NOTE}{note}" for note in notes)])


# ---------------------------------------------------------------- index status


_PAPER_COUNTS: dict[tuple, int] = {}


def count_papers(index: Index) -> int:
    """Papers in the index (each has exactly one first chunk), counted once per committed
    state: the status line is drawn on every page load, and the count reads every first
    chunk's id (~0.6M of them at 1M chunks)."""
    index.sync()
    where = (str(index.settings.persist_dir), index.settings.chroma_url, index.name)
    state = (*where, *index.snapshot())
    if state not in _PAPER_COUNTS:
        got = index.call(index.collection.get, where={"chunk": 0}, include=[])
        _PAPER_COUNTS.clear()  # one state per process is what the page shows
        _PAPER_COUNTS[state] = len(got["ids"])
    return _PAPER_COUNTS[state]


def index_status(settings: Settings) -> Iterator[str]:
    """The status line: built on first use (so a fresh install shows progress), then counts."""
    try:
        index = open_index(settings)
        if index.count() == 0:
            yield "Building the paper index from the bundled abstracts (first start)…"
        index = ensure_index(settings, progress=True)
        papers = count_papers(index)
    except (IndexUnavailable, EmbeddingsUnavailable) as exc:
        yield f"{WARNING}The paper index is unavailable: {esc(exc)}"
        return
    except Exception as exc:  # keep the page usable; the chat will report details per question
        log.exception("index status failed")
        yield f"{WARNING}The paper index could not be opened ({type(exc).__name__})."
        return
    yield (
        f"**{papers:,}** arXiv abstracts indexed · default model "
        f"`{esc(redact(settings.model))}` · answers cite papers as [arXiv:ID] links"
    )


# ---------------------------------------------------------------- the Blocks


def _handlers(current: Callable[[], Settings]):
    """The event functions, reading settings at call time (tests and reloads change them)."""

    def chat(
        message: str,
        chatbot: list,
        model: str,
        k: float,
        since: str = "",
        until: str = "",
        categories: str = "",
    ) -> Iterator[tuple[str, list, str, str]]:
        settings = current()
        history = plain_history(chatbot)
        messages = list(chatbot or [])
        if (message or "").strip():
            messages.append({"role": "user", "content": inert_markdown(message)})
        messages.append({"role": "assistant", "content": THINKING})
        yield "", messages, sources_html(None), ""
        filters = ui_filters(since, until, categories)
        for text, final in answer_events(message or "", history, model, k, settings, filters):
            messages[-1] = {"role": "assistant", "content": inert_markdown(text) or THINKING}
            if final:
                yield "", messages, sources_html(final), final.bibtex()
            else:
                yield "", messages, gr.skip(), gr.skip()

    # A generator (so `client.submit` streams), annotated with what each step yields:
    # `gr.api` derives the endpoint's outputs from the return annotation.
    def ask(
        message: str,
        history: list | None = None,
        model: str = "",
        k: int | None = None,
        since: str = "",
        until: str = "",
        categories: str = "",
    ) -> tuple[str, list]:
        """Answer a question about the indexed arXiv abstracts, with the chat history as
        [{"role", "content"}] dicts, one of the offered models ("" = the default) and k
        papers (None = QA_K); `since`/`until` (YYYY[-MM[-DD]]) and `categories`
        ("cs.CL,cs.AI") restrict the papers. Returns (answer markdown with arXiv links,
        sources)."""
        settings = current()
        turns = plain_history(history if isinstance(history, list) else [])
        filters = ui_filters(since, until, categories)
        for text, final in answer_events(message or "", turns, model, k, settings, filters):
            yield render_markdown(text), (sources_data(final) if final else [])

    def similar_papers(arxiv_id: str, k: float | None = None) -> str:
        """The sources panel listing the papers most like one paper (by arXiv ID)."""
        return similar_html(arxiv_id, k, current())

    def status() -> Iterator[str]:
        yield from index_status(current())

    def clear() -> tuple[list, str, str, list, str]:
        return [], "", sources_html(Answer(text="")), [], ""

    def restore(saved: object) -> list[dict]:
        return restore_conversation(saved, current())

    return chat, ask, status, clear, restore, similar_papers


def restore_conversation(saved: object, settings: Settings) -> list[dict]:
    """The conversation saved in this browser, shown again: checked like any visitor input
    (text only, re-escaped, placeholders and notices left out) and, newest first, no more
    than half of QA_MAX_REQUEST_BYTES, so the next question still fits in a request."""
    turns = plain_history(saved if isinstance(saved, list) else [])
    kept, total = [], 0
    for turn in reversed(turns):
        total += len(turn["content"])
        if total > settings.max_request_bytes // 2:
            break
        kept.append({"role": turn["role"], "content": inert_markdown(turn["content"])})
    return kept[::-1]


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """The UI. With `settings`, it is bound to them (tests run several apps in one process);
    without, every event reads `get_settings()` when it runs."""

    def current() -> Settings:
        return settings or get_settings()

    initial = current()
    limit = initial.concurrency_limit
    chat, ask, status, clear, restore, similar_papers = _handlers(current)
    choices = offered(initial)

    with gr.Blocks(title="arxiv-qa", analytics_enabled=False) as demo:
        gr.Markdown(
            "## arxiv-qa — ask the arXiv abstracts\n"
            "Every claim in an answer links to the paper it came from; the papers found for "
            "your question are listed on the right."
        )
        status_line = gr.Markdown("Opening the paper index…", elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                chatbot = gr.Chatbot(
                    label="Chat",
                    elem_id="chat",
                    height=560,
                    sanitize_html=True,  # Gradio's default; stated because it is load-bearing
                    allow_tags=False,
                    render_markdown=True,
                    latex_delimiters=[],
                    feedback_options=None,
                    buttons=["copy", "copy_all"],
                    placeholder="Ask about the papers in the index, e.g. one of the examples "
                    "below. Follow-up questions use the conversation so far.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question about the arXiv abstracts…",
                        show_label=False,
                        lines=1,
                        max_lines=6,
                        scale=5,
                        elem_id="question",
                        autofocus=True,
                    )
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                gr.Examples(EXAMPLES, inputs=[question], label="Example questions")
                new_chat = gr.Button("New conversation", size="sm", elem_id="new-chat")
            with gr.Column(scale=2, min_width=320):
                with gr.Accordion("Settings", open=True):
                    model = gr.Dropdown(
                        choices=choices,
                        value=choices[0],
                        allow_custom_value=initial.allow_custom_models,
                        label="Model",
                        info="The models this server offers (stub runs offline)."
                        + (
                            " You may also type a spec such as ollama:<model>@<url>; it runs "
                            "without the server's keys."
                            if initial.allow_custom_models
                            else ""
                        ),
                        elem_id="model",
                    )
                    k = gr.Slider(
                        1,
                        20,
                        value=min(initial.k, 20),
                        step=1,
                        label="Papers to retrieve (k)",
                        elem_id="k",
                    )
                    with gr.Row():
                        since = gr.Textbox(
                            label="Published since",
                            placeholder="YYYY[-MM[-DD]]",
                            max_length=10,
                            elem_id="since",
                        )
                        until = gr.Textbox(
                            label="until",
                            placeholder="YYYY[-MM[-DD]]",
                            max_length=10,
                            elem_id="until",
                        )
                    categories = gr.Textbox(
                        label="Categories",
                        placeholder="e.g. cs.CL, cs.AI (or cs)",
                        max_length=200,
                        elem_id="categories",
                    )
                with gr.Accordion("Similar papers", open=False), gr.Row():
                    similar_id = gr.Textbox(
                        placeholder="arXiv ID, e.g. 2304.04704",
                        show_label=False,
                        max_length=80,
                        scale=3,
                        elem_id="similar-id",
                    )
                    similar_button = gr.Button("Find similar", scale=1, elem_id="similar")
                gr.Markdown("### Sources")
                sources = gr.HTML(
                    sources_html(Answer(text="")),
                    css_template=SOURCES_CSS,
                    js_on_load=None,
                    elem_id="sources",
                    max_height=620,
                    padding=True,
                )
                bibtex = gr.Code(
                    label="BibTeX of the cited papers",
                    language=None,
                    interactive=False,
                    lines=3,
                    max_lines=12,
                    buttons=["copy", "download"],
                    elem_id="bibtex",
                )

        saved = gr.BrowserState([], storage_key=CONVERSATION_KEY, secret=CONVERSATION_KEY)
        gr.on(
            [question.submit, send.click],
            chat,
            inputs=[question, chatbot, model, k, since, until, categories],
            outputs=[question, chatbot, sources, bibtex],
            api_name="chat",
            api_visibility="undocumented",
            concurrency_limit=limit,
            concurrency_id="answer",
            show_progress="minimal",
        ).then(lambda c: c, inputs=[chatbot], outputs=[saved], api_visibility="private")
        gr.on(
            [new_chat.click, chatbot.clear],
            clear,
            outputs=[chatbot, question, sources, saved, bibtex],
            api_visibility="private",
        )
        demo.load(restore, inputs=[saved], outputs=[chatbot], api_visibility="private")
        gr.on(
            [similar_id.submit, similar_button.click],
            similar_papers,
            inputs=[similar_id, k],
            outputs=[sources],
            api_name="similar",
            concurrency_limit=limit,
            concurrency_id="answer",
        )
        demo.load(status, outputs=[status_line], api_visibility="private")
        gr.api(ask, api_name="ask", concurrency_limit=limit, concurrency_id="answer")
        if initial.mcp:  # QA_MCP: the agents' tools (qa/mcp_tools.py)
            install_mcp_tools(demo, current)
    demo.queue(default_concurrency_limit=limit)
    return demo


def parse_auth(auth: object) -> tuple[str, str] | None:
    """QA_AUTH=user:password → (user, password) (checked when the settings are read)."""
    if auth is None:
        return None
    value = auth.get_secret_value() if hasattr(auth, "get_secret_value") else str(auth)
    return split_auth(value)


def launch_options(settings: Settings) -> dict:
    """`demo.launch()` arguments from the settings: host, port, optional login, and the
    bounds on what a visitor may send (request bodies, uploads: the app takes none)."""
    options = {
        "server_name": settings.host,
        "server_port": settings.port,
        "auth": parse_auth(settings.auth),
        "auth_message": "arxiv-qa: log in with the QA_AUTH credentials." if settings.auth else None,
        "show_error": False,
        "max_file_size": settings.max_upload_bytes,
        "app_kwargs": {"middleware": [Middleware(BodyLimit, max_bytes=settings.max_request_bytes)]},
    }
    return with_mcp(settings, options)


def serve(settings: Settings, **extra: object) -> None:
    """Check the address, build the index if it is missing (progress bar), then serve.

    Problems the operator can fix raise SettingsError, IndexUnavailable or
    EmbeddingsUnavailable with one line naming the variable; `extra` goes to `launch()`.
    """
    options = {**launch_options(settings), **extra}
    check_bind(settings.host, settings.port)
    print("arxiv-qa: opening the paper index…", flush=True)
    start = time.perf_counter()
    index = ensure_index(settings, progress=True)
    print(
        f"arxiv-qa: {count_papers(index):,} papers ready in {time.perf_counter() - start:.1f} s; "
        f"serving on http://{settings.host}:{settings.port}"
        + (" (login required)" if settings.auth else ""),
        flush=True,
    )
    threading.Thread(target=warm_up, args=(settings,), name="warm-up", daemon=True).start()
    try:
        demo.launch(**options)
    except OSError as exc:  # taken since the check; Gradio's message names GRADIO_SERVER_PORT
        raise SettingsError(bind_problem(settings.host, settings.port, exc)) from None


def warm_up(settings: Settings) -> float | None:
    """Load what the first question would wait for (the embedding model, the vector index —
    ~9 s embedded at 666k chunks —, the keyword index) while the server starts, so the first
    visitor does not pay for it. A read: it writes nothing. Returns its seconds, or None when it
    failed (the first question then reports why, in one line)."""
    start = time.perf_counter()
    try:
        retrieve("arxiv-qa warm-up", k=1, settings=settings)
    except (IndexUnavailable, EmbeddingsUnavailable) as exc:  # one line, no secret
        log.warning("warm-up skipped: %s", exc)
        return None
    except Exception as exc:  # the first question reports it; never a traceback here
        log.warning("warm-up skipped (%s)", type(exc).__name__)
        return None
    seconds = time.perf_counter() - start
    print(f"arxiv-qa: retriever warm in {seconds:.1f} s", flush=True)
    return seconds


def exit_with(exc: Exception) -> None:
    """One line on stderr and exit status 2: how `python app.py` reports what to fix."""
    print(f"arxiv-qa: error: {exc}", file=sys.stderr)
    raise SystemExit(2)


try:
    demo = build_demo()
except SettingsError as exc:  # a bad setting at import (`python app.py`, `gradio app.py`)
    exit_with(exc)


def main() -> None:
    """`python app.py`: serve with the settings from the environment and `.env`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        serve(get_settings())
    except (SettingsError, IndexUnavailable, EmbeddingsUnavailable) as exc:
        exit_with(exc)


if __name__ == "__main__":
    main()
