"""The answer chain: condense a follow-up → retrieve → prompt → model → validated citations.

`stream()` is the one implementation; `ask()` drains it. Every step is an LCEL runnable, and
nothing the model writes reaches the user before the citation guard has checked it: a marker
for a paper that was not in the context is never shown.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any

import ijson
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableGenerator
from langchain_core.runnables.config import run_in_executor
from langchain_core.utils.json import parse_partial_json

from qa.citations import StreamGuard, marker_for_key, paper_keys, validate
from qa.config import PROJECT_ROOT, Settings, get_settings, with_overrides
from qa.corpus import Paper
from qa.filters import FilterError, Filters, from_question
from qa.models import (
    ModelError,
    bind_citation_schema,
    explain_error,
    get_chat_model,
    parse_spec,
    supports_structured,
)
from qa.relevance import is_relevant
from qa.retrieval import Hit, retrieve
from qa.support import SentenceSupport, check_support
from qa.wording import refers_back

log = logging.getLogger(__name__)

PROMPTS_DIR = PROJECT_ROOT / "prompts"
_CHITCHAT = re.compile(
    r"^(hi|hello|hey|hiya|yo|good (morning|afternoon|evening)|thanks?|thank you|ok(ay)?|cool|"
    r"great|nice|bye|goodbye|cheers)\b[^?]*$|^(who|what) are you\W*$|^what can you do\W*$|"
    r"^help\W*$",
    re.IGNORECASE,
)


class QuestionError(ValueError):
    """A question that cannot be answered as given (empty, too long); message for the user."""


@dataclass
class Answer:
    """What `qa.ask` returns and `qa.stream` ends with."""

    text: str
    citations: list[Paper] = field(default_factory=list)
    sources: list[Hit] = field(default_factory=list)
    abstained: bool = False
    question: str = ""
    standalone_question: str = ""
    model: str = ""
    dropped_citations: list[str] = field(default_factory=list)
    error: str | None = None
    support: list[SentenceSupport] = field(default_factory=list)  # per sentence, see qa.support
    notes: list[str] = field(default_factory=list)  # what was cut to fit the bounds
    filters: Filters = field(default_factory=Filters)  # what retrieval was restricted to

    def bibtex(self) -> str:
        """BibTeX entries of the cited papers."""
        from qa.bibliography import bibtex

        return bibtex(self.citations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "text": self.text,
            "abstained": self.abstained,
            "model": self.model,
            "citations": [p.to_dict() for p in self.citations],
            "sources": [h.to_dict() for h in self.sources],
            "dropped_citations": self.dropped_citations,
            "error": self.error,
            "filters": self.filters.to_dict(),
            "support": [s.to_dict() for s in self.support],
            "notes": self.notes,
        }


# ---------------------------------------------------------------- inputs


@cache
def load_prompt(name: str) -> str:
    """A prompt template from prompts/<name>.txt."""
    return (PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8").strip()


def clean_question(question: str, settings: Settings) -> str:
    """Strip control characters; refuse empty or over-long questions with a clear message."""
    if not isinstance(question, str):
        raise QuestionError("The question must be text.")
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t" else c for c in question
    )
    text = " ".join(text.split())
    if not text:
        raise QuestionError("Please type a question about the indexed arXiv papers.")
    if len(text) > settings.max_question_chars:
        raise QuestionError(
            f"Your question is {len(text):,} characters long; the limit is "
            f"{settings.max_question_chars:,} (QA_MAX_QUESTION_CHARS). Please shorten it."
        )
    return text


def _content(message: Any) -> str:
    """Text of a history entry in any shape Gradio or a script may send."""
    content = message.get("content", "") if isinstance(message, dict) else message
    if isinstance(content, list):
        return " ".join(_content({"content": part}) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content or "")


def normalize_history(history: list | None, settings: Settings | None = None) -> list[BaseMessage]:
    """`[{"role", "content"}]` → LangChain messages within the history bounds."""
    return bounded_history(history, settings or get_settings())[0]


def bounded_history(
    history: list | None, settings: Settings
) -> tuple[list[BaseMessage], list[str]]:
    """(messages, notes): user/assistant turns only, the last QA_MAX_HISTORY_TURNS of them,
    each cut to QA_MAX_HISTORY_MESSAGE_CHARS (noted), then the oldest dropped until the rest
    fit QA_MAX_HISTORY_CHARS. Whatever a client sends, the model request stays bounded."""
    if not isinstance(history, list | tuple):
        history = []
    turns: list[tuple[str, str]] = []
    for entry in history[-settings.max_history_turns :] if settings.max_history_turns else []:
        role = entry.get("role") if isinstance(entry, dict) else None
        if role in ("user", "assistant"):
            text = _content(entry).strip()
            if text:
                turns.append((role, text))
    notes, limit, cut = [], settings.max_history_message_chars, []
    for role, text in turns:
        if len(text) > limit:
            notes.append(
                f"An earlier message of {len(text):,} characters was cut to its first "
                f"{limit:,} (QA_MAX_HISTORY_MESSAGE_CHARS)."
            )
            text = text[:limit] + " […]"
        cut.append((role, text))
    kept_turns: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(cut):  # newest first: older turns go first
        total += len(text)
        if total > settings.max_history_chars:
            break
        kept_turns.append((role, text))
    messages: list[BaseMessage] = [
        HumanMessage(text) if role == "user" else AIMessage(text)
        for role, text in reversed(kept_turns)
    ]
    return messages, notes


def is_chitchat(question: str) -> bool:
    """Greetings and thanks (short, no question mark): answered without a search."""
    text = question.strip()
    return len(text.split()) <= 8 and bool(_CHITCHAT.match(text))


# ---------------------------------------------------------------- steps


def condense(question: str, history: list[BaseMessage], model, settings: Settings) -> str:
    """A standalone search question for a follow-up (no history: the question itself)."""
    if not any(isinstance(m, HumanMessage) for m in history):
        return question
    transcript = "\n".join(
        f"{'user' if isinstance(m, HumanMessage) else 'assistant'}: {m.content[:1500]}"
        for m in history
    )
    prompt = ChatPromptTemplate.from_messages([("human", load_prompt("condense"))])
    rewritten = (prompt | model | StrOutputParser()).invoke(
        {"history": transcript, "question": question}
    )
    rewritten = " ".join(rewritten.split())[: settings.max_question_chars]
    return rewritten or question


def papers_under_discussion(question: str, history: list[BaseMessage]) -> list[str]:
    """Keys cited in the last answer, when the follow-up refers back to them ("they", "it")."""
    if not refers_back(question):
        return []
    for message in reversed(history):
        if isinstance(message, AIMessage):
            return list(dict.fromkeys(paper_keys(message.content)))
    return []


def search_query(
    question: str, history: list[BaseMessage], model, settings: Settings
) -> tuple[str, str]:
    """(standalone question, retrieval query): the follow-up rewritten, plus pinned papers."""
    standalone = condense(question, history, model, settings)
    pinned = papers_under_discussion(question, history)
    return standalone, " ".join([standalone, *map(marker_for_key, pinned)])


def format_context(hits: list[Hit]) -> str:
    """Each paper introduced by its citation marker and title, then its abstract."""
    return "\n\n".join(
        f"{h.paper.marker} {h.paper.title or '(untitled)'}\n{h.paper.abstract}" for h in hits
    )


def filter_note(filters: Filters, explicit: Filters) -> str:
    """The line that opens a filtered answer, saying what the question itself asked for."""
    if not filters:
        return ""
    named = " (named in the question)" if filters != explicit else ""
    return f"_Only papers matching: {filters.describe()}{named}._\n\n"


def unknown_ids(question: str, hits: list[Hit]) -> list[str]:
    """IDs named in the question that the index does not hold (named papers are pinned)."""
    found = {k for h in hits if h.pinned for k in (h.paper.key, h.paper.arxiv_id) if k}
    return [k for k in dict.fromkeys(paper_keys(question)) if k not in found]


def not_indexed_text(keys: list[str], hits: list[Hit]) -> str:
    named = ", ".join(marker_for_key(k).strip("[]") for k in keys)
    verb = "is" if len(keys) == 1 else "are"
    lines = [f"{named} {verb} not in the index, so I cannot answer about it from its abstract."]
    if hits:
        lines.append("\nThe nearest indexed papers:")
        lines += [f"- {h.paper.title} ({h.paper.arxiv_id or h.paper.key})" for h in hits[:3]]
    return "\n".join(lines)


def abstention_text(hits: list[Hit]) -> str:
    lines = ["The indexed abstracts do not cover this question, so I will not guess an answer."]
    if hits:
        lines.append("\nThe nearest papers, which may still be of interest:")
        lines += [f"- {h.paper.title} ({h.paper.arxiv_id or h.paper.key})" for h in hits[:3]]
    return "\n".join(lines)


CHITCHAT_REPLY = (
    "Hello! I answer questions about the arXiv abstracts in this index, citing each claim "
    "with the paper's arXiv ID. Try asking, for example, which papers study machine "
    "unlearning in language models, and how."
)


def _use_structured(spec: str, settings: Settings, structured: bool | None) -> bool:
    if structured is not None:
        return structured
    return (
        settings.structured_output and parse_spec(spec).kind != "stub" and supports_structured(spec)
    )


def _answer_prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages(
        [
            ("system", load_prompt("system")),
            MessagesPlaceholder("history"),
            ("human", load_prompt("answer")),
        ]
    )


def _sentences_to_text(sentences: list[dict]) -> str:
    """Structured output → markdown text with markers (validated like free text)."""
    parts = []
    for sentence in sentences:
        if not isinstance(sentence, dict):
            continue
        text = " ".join(str(sentence.get("text", "")).split())
        cites = sentence.get("cite") or []
        markers = "".join(f"[{c}]" for c in dict.fromkeys(c for c in cites if isinstance(c, str)))
        if text:
            parts.append(f"{text} {markers}".strip())
    return " ".join(parts)


def _stream_structured(
    runnable, inputs: dict, context: list[Paper], raw_text: list[str]
) -> Iterator[str]:
    """Emit each sentence of a JSON answer as soon as its object closes.

    ijson reads the chunks as they come, each byte once; re-parsing the growing buffer on
    every chunk made a 400-sentence answer quadratic (benchmarks/stream_structured.py). The
    end is parsed once more leniently, for a last sentence cut short by max_tokens. The
    whole answer, markers unvalidated, goes to `raw_text` so dropped citations are known.
    """
    chunks: list[str] = []
    done = ijson.sendable_list()
    parser = ijson.items_coro(done, "sentences.item")
    emitted = 0
    guard = StreamGuard(context)
    for chunk in runnable.stream(inputs):
        chunks.append(chunk)
        if parser is not None and chunk:
            try:
                parser.send(chunk.encode())
            except ijson.JSONError:  # not our JSON (yet): the final parse decides
                parser = None
        if done:
            text = _sentences_to_text(done)
            yield from guard.feed(("" if emitted == 0 else " ") + text)
            emitted += len(done)
            del done[:]
    raw = "".join(chunks)
    parsed = parse_partial_json(raw) if raw.strip() else None
    if not isinstance(parsed, dict):
        raise ModelError("the model did not return the JSON answer it was asked for")
    sentences = parsed.get("sentences", [])
    raw_text.append(_sentences_to_text(sentences))
    rest = sentences[emitted:]
    if rest:
        yield from guard.feed(("" if emitted == 0 else " ") + _sentences_to_text(rest))
    yield from guard.flush()


# ---------------------------------------------------------------- public API


def stream(
    question: str,
    history: list | None = None,
    model: str | None = None,
    *,
    k: int | None = None,
    settings: Settings | None = None,
    structured: bool | None = None,
    since: str | date | None = None,
    until: str | date | None = None,
    categories: str | list[str] | None = None,
    authors: str | list[str] | None = None,
) -> Iterator[str | Answer]:
    """`qa.stream`: answer text as it is generated, then the final `Answer`. Filters (and a
    period or category the question names) restrict which papers it may use.

    `k` is validated like QA_K (SettingsError "k: must be an integer between 1 and 50").
    """
    settings = with_overrides(settings or get_settings(), k=k)
    spec = model or settings.model
    question = clean_question(question, settings)
    try:
        explicit = Filters.make(since, until, categories, authors)
    except FilterError as exc:
        raise QuestionError(str(exc)) from exc
    messages, notes = bounded_history(history, settings)
    answer = Answer(text="", question=question, standalone_question=question, model=spec)
    answer.notes = notes

    if is_chitchat(question):
        answer.text, answer.abstained = CHITCHAT_REPLY, True
        yield from _whole(answer)
        return

    llm = get_chat_model(spec, settings)
    try:
        standalone, search = search_query(question, messages, llm, settings)
    except Exception as exc:  # a dead server fails here first
        answer.error = explain_error(exc, spec, settings)
        answer.text = answer.error
        yield from _whole(answer)
        return
    answer.standalone_question = standalone
    answer.filters = explicit.merged(from_question(standalone))
    hits = retrieve(search, settings.k, settings=settings, filters=answer.filters or None)
    answer.sources = hits
    note = filter_note(answer.filters, explicit)

    missing = unknown_ids(question, hits)
    if missing and not any(h.pinned for h in hits):
        answer.text, answer.abstained = note + not_indexed_text(missing, hits), True
        yield from _whole(answer)
        return
    if not is_relevant(standalone, hits, settings):
        nothing = "No indexed paper matches this filter." if answer.filters and not hits else ""
        answer.text, answer.abstained = note + (nothing or abstention_text(hits)), True
        yield from _whole(answer)
        return
    if note:
        yield note

    context = [h.paper for h in hits]
    inputs = {"context": format_context(hits), "question": question, "history": messages}
    raw_parts: list[str] = []
    shown: list[str] = []
    try:
        if _use_structured(spec, settings, structured):
            bound = bind_citation_schema(llm, spec, [p.marker for p in context])
            chain = _answer_prompt() | bound | StrOutputParser()
            pieces = _stream_structured(chain, inputs, context, raw_parts)
        else:
            chain = _answer_prompt() | llm | StrOutputParser()
            pieces = _guarded(chain, inputs, StreamGuard(context), raw_parts)
        for piece in _capped(pieces, settings.max_answer_chars, answer.notes):
            shown.append(piece)
            yield piece
    except Exception as exc:  # mid-stream failure: keep what was shown and the sources
        answer.error = explain_error(exc, spec, settings)
        log.warning("model error: %s", answer.error)
        notice = f"\n\n⚠️ {answer.error}"
        shown.append(notice)
        yield notice
    text = "".join(shown)
    raw = "".join(raw_parts)
    checked = validate(text, context)
    answer.text = checked.text
    answer.citations = checked.citations
    answer.dropped_citations = validate(raw, context).dropped if raw else checked.dropped
    if not answer.text.strip():
        answer.text = "The model returned an empty answer."
    answer.support = check_support(answer.text, context)
    answer.text = note + answer.text  # the filter line is ours, not a claim to support
    yield answer


def _capped(pieces: Generator[str, None, None], limit: int, notes: list[str]) -> Iterator[str]:
    """The non-empty pieces up to `limit` characters in all; past it the model's stream is
    closed and a note says so (a server that ignores max_tokens cannot stream forever)."""
    used = 0
    for piece in pieces:
        if used + len(piece) > limit:
            if piece[: limit - used]:
                yield piece[: limit - used]
            notes.append(f"The answer was cut at {limit:,} characters (QA_MAX_ANSWER_CHARS).")
            pieces.close()
            return
        used += len(piece)
        if piece:
            yield piece


def _whole(answer: Answer) -> Iterator[str | Answer]:
    """An answer decided without streaming (chit-chat, abstention, early error)."""
    yield answer.text
    yield answer


def _guarded(runnable, inputs: dict, guard: StreamGuard, raw: list[str]) -> Iterator[str]:
    """Stream model text through the citation guard, keeping the raw text for the record."""
    for chunk in runnable.stream(inputs):
        raw.append(chunk)
        yield from guard.feed(chunk)
    yield from guard.flush()


def ask(
    question: str,
    history: list | None = None,
    model: str | None = None,
    *,
    k: int | None = None,
    settings: Settings | None = None,
    structured: bool | None = None,
    **filters: Any,
) -> Answer:
    """`qa.ask`: the final Answer (text with [arXiv:ID] markers, citations, sources);
    `since`, `until`, `categories`, `authors` filter the papers as in `qa.stream`."""
    final = None
    events = stream(
        question, history, model, k=k, settings=settings, structured=structured, **filters
    )
    for event in events:
        if isinstance(event, Answer):
            final = event
    assert final is not None
    return final


def _text_pieces(
    inputs: dict | str, model: str | None, k: int | None, settings: Settings | None
) -> Iterator[str]:
    """What `qa.stream` shows, as text only (the final text if nothing was streamed)."""
    if isinstance(inputs, str):
        inputs = {"question": inputs}
    shown = False
    for event in stream(inputs["question"], inputs.get("history"), model, k=k, settings=settings):
        if isinstance(event, str):
            shown = shown or bool(event)
            yield event
        elif not shown:  # e.g. the "empty answer" notice
            yield event.text


def as_runnable(
    model: str | None = None, *, k: int | None = None, settings: Settings | None = None
) -> Runnable[dict, str]:
    """The answer chain as a LangChain Runnable: `{"question", "history"}` → answer text.

    `.stream()`/`.astream()` yield the validated pieces `qa.stream` yields (citations checked
    before they are shown); `.invoke()` returns the whole text. `qa.ask` gives the `Answer`.
    """

    def answer(inputs: Iterator[dict | str]) -> Iterator[str]:
        *_, last = inputs
        yield from _text_pieces(last, model, k, settings)

    async def aanswer(inputs: AsyncIterator[dict | str]) -> AsyncIterator[str]:
        last = [value async for value in inputs][-1]
        pieces, done = _text_pieces(last, model, k, settings), object()
        while (piece := await run_in_executor(None, next, pieces, done)) is not done:
            yield piece  # the chain is synchronous: each step runs in the executor

    return RunnableGenerator(answer, aanswer, name="arxiv_qa_answer")
