"""The offline stub model: deterministic and extractive, so the pipeline runs without an LLM."""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from qa.citations import paper_keys
from qa.models.schema import bare, bound_schema
from qa.models.specs import emit
from qa.wording import normalize_question, refers_back, synonym_table

_HEADER = re.compile(r"^\[((?:arXiv|ref):[^\]\s]+)\]\s*(.*)$")
_MARKER_LIKE = re.compile(
    r"\[\s*(?:arxiv|ref)\s*:[^\]]*\]|\b(?:arxiv|ref)\s*:\s*[\w./-]+", re.IGNORECASE
)
_CITED = re.compile(r"\[(?:arXiv|ref):[^\]\s]+\]")
_INJECTION = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,40}\b(instructions?|prompt|rules)\b|\bsystem prompt\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "etc.", "vs.", "fig.", "eq.", "cf.", "approx.")
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing done down during each
    few for from further had has have having he her here hers him his how i if in into is it
    its itself just me more most my no nor not now of off on once only or other our ours out
    over own same she should so some such than that the their theirs them then there these
    they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours paper papers abstract abstracts
    article articles study work please tell explain describe show give know say says said
    use used using there any many much way ways
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
NO_ANSWER = "The abstracts in the context do not address this question."
KEY_SHARE = 0.6  # a sentence must hold a question word at least this rare (vs the rarest)
PAPER_SHARE = 0.7  # ... and come from a paper covering this share of the best paper's words


@functools.lru_cache(maxsize=1)
def _stemmer_factory() -> Any:
    import Stemmer

    return Stemmer.Stemmer


_local = threading.local()


def _stem(words: list[str]) -> list[str]:
    """English Snowball stems (PyStemmer; one stemmer per thread, it is not thread-safe)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = _stemmer_factory()("english")
    return stemmer.stemWords(words)


def _terms(text: str) -> list[str]:
    """Content-word stems of a text, in order (synonyms mapped to their group's first word)."""
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS]
    stems = _stem([w for w in words if len(w) > 1 or w.isdigit()])
    synonyms = _synonyms()
    return [synonyms.get(s, s) for s in stems]


@functools.lru_cache(maxsize=1)
def _synonyms() -> dict[str, str]:
    return synonym_table(_stem)


def _strip_markers(text: str) -> str:
    """Drop marker-like text so quoted abstracts can never smuggle in a citation."""
    return re.sub(r"\s{2,}", " ", _MARKER_LIKE.sub("", text)).strip()


def _sentences(text: str) -> list[str]:
    """Split an abstract into sentences, not breaking after common abbreviations."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(" ".join(text.split())):
        if out and out[-1].lower().endswith(_ABBREVIATIONS):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return [s for s in out if len(s) > 1]


@dataclass
class _Paper:
    marker: str  # exactly as in the context, brackets included
    title: str
    abstract: str
    rank: int


@dataclass
class _Pick:
    paper: _Paper
    index: int
    text: str
    score: float


def _parse_context(context: str) -> list[_Paper]:
    """Paper blocks: blank-line separated, first line `<marker> <title>`, then the abstract."""
    papers: list[_Paper] = []
    for block in re.split(r"\n\s*\n", context.strip()):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        header = _HEADER.match(lines[0])
        if header:
            marker = f"[{header[1]}]"
            papers.append(_Paper(marker, header[2], " ".join(lines[1:]), len(papers)))
        elif papers:  # a blank line inside an abstract: still the same paper
            papers[-1].abstract += " " + " ".join(lines)
    return papers


def _parse_answer_prompt(prompt: str) -> tuple[list[_Paper], str] | None:
    """(papers, question) from the answer prompt, or None if this is not one."""
    question_at = prompt.rfind("Question:")
    if question_at < 0:
        return None
    question = prompt[question_at + len("Question:") :].strip()
    context = prompt[:question_at]
    if "<papers>" in context:
        context = context.split("<papers>", 1)[1].rsplit("</papers>", 1)[0]
    papers = _parse_context(context)
    return (papers, question) if papers else None


def _candidates(papers: list[_Paper]) -> list[tuple[_Paper, int, str, set[str]]]:
    rows = []
    for paper in papers:
        for i, sentence in enumerate(_sentences(_strip_markers(paper.abstract))):
            if not _INJECTION.search(sentence):
                rows.append((paper, i, sentence, set(_terms(sentence))))
    return rows


def _score(question: str, papers: list[_Paper], share: float = 0.3, need: int = 2) -> list[_Pick]:
    """IDF-weighted overlap of each sentence with the question, plus small title/order bonuses.

    Only sentences that cover a fair share of the question's weight are kept, so an
    off-topic question gets no picks rather than the least-bad sentence.
    """
    wanted = set(_terms(question))
    rows = _candidates(papers)
    if not wanted or not rows:
        return []
    df = Counter(t for *_, terms in rows for t in terms & wanted)
    # Words no abstract in the context contains cannot be covered by any sentence, so the
    # share is taken of the question's coverable weight (a paraphrase uses other words).
    idf = {t: math.log(1 + len(rows) / df[t]) for t in wanted if df[t]}
    total = sum(idf.values())
    if not total:
        return []
    picks = []
    need = min(need, len(wanted))  # one shared word ("recipe") is not an answer
    keys = {t for t, v in idf.items() if v >= KEY_SHARE * max(idf.values())}
    for paper, i, sentence, terms in rows:
        matched = terms & wanted
        overlap = sum(idf.get(t, 0.0) for t in matched)
        if overlap / total < share or len(matched & idf.keys()) < need or not matched & keys:
            continue  # off-topic: none of the question's distinctive words
        title = sum(idf.get(t, 0.0) for t in set(_terms(paper.title)) & wanted)
        order = 0.05 * (len(papers) - paper.rank) / len(papers)
        picks.append(_Pick(paper, i, sentence, overlap + 0.25 * title + order))
    return _on_topic(picks, rows, idf) or _lead_paper_picks(rows, wanted, idf, need)


def _on_topic(
    picks: list[_Pick], rows: list[tuple[_Paper, int, str, set[str]]], idf: dict[str, float]
) -> list[_Pick]:
    """Picks from papers that, as a whole, cover nearly as much of the question as the best
    one: a membership-inference paper shares "attack" and "model" with a question about
    speech backdoors, but not the topic."""
    words: dict[str, set[str]] = {}
    for paper, _, _, terms in rows:
        words.setdefault(paper.marker, set()).update(terms)
    cover = {m: sum(v for t, v in idf.items() if t in found) for m, found in words.items()}
    best = max((cover[p.paper.marker] for p in picks), default=0.0)
    return [p for p in picks if cover[p.paper.marker] >= PAPER_SHARE * best]


def _lead_paper_picks(
    rows: list[tuple[_Paper, int, str, set[str]]],
    wanted: set[str],
    idf: dict[str, float],
    need: int,
) -> list[_Pick]:
    """A paraphrased question shares few words with any one sentence. The context comes
    ranked by relevance, so when the first paper as a whole shares enough of the question's
    words, its best-matching sentences answer it."""
    lead = [row for row in rows if row[0].rank == min(r[0].rank for r in rows)]
    shared = set().union(*(terms for *_, terms in lead)) & wanted
    if len(shared) < max(need, 2):
        return []
    scored = [
        _Pick(paper, i, sentence, sum(idf.get(t, 0.0) for t in terms & wanted))
        for paper, i, sentence, terms in lead
    ]
    return [p for p in scored if p.score > 0]


def _select(picks: list[_Pick], most: int, per_paper: int) -> list[_Pick]:
    """Best sentences first, at most `per_paper` from one paper, near the best score only."""
    ranked = sorted(picks, key=lambda p: (-p.score, p.paper.rank, p.index))
    if not ranked:
        return []
    floor = 0.5 * ranked[0].score
    chosen: list[_Pick] = []
    per: Counter[str] = Counter()
    seen: set[str] = set()  # duplicate abstracts: the same sentence under two markers
    for pick in ranked:
        same = " ".join(_terms(pick.text))
        if same in seen:
            continue
        if pick.score >= floor and per[pick.paper.marker] < per_paper and len(chosen) < most:
            chosen.append(pick)
            seen.add(same)
            per[pick.paper.marker] += 1
    first = {}
    for pick in chosen:
        first.setdefault(pick.paper.marker, len(first))
    return sorted(chosen, key=lambda p: (first[p.paper.marker], p.index))


def _with_marker(sentence: str, marker: str) -> str:
    """`Text [arXiv:ID].` — the marker goes before the final full stop."""
    text = sentence.rstrip()
    if text and text[-1] in ".!?":
        return f"{text[:-1]} {marker}{text[-1]}"
    return f"{text} {marker}."


def _structured_answer(picks: list[_Pick], schema: dict[str, Any]) -> str:
    allowed = _schema_markers(schema)
    sentences = [
        {"text": p.text, "cite": [m for m in [bare(p.paper.marker)] if m in allowed]} for p in picks
    ] or [{"text": NO_ANSWER, "cite": []}]
    return json.dumps({"sentences": sentences}, ensure_ascii=False)


def _schema_markers(schema: dict[str, Any]) -> set[str]:
    """The `enum` of citable markers in a bound citation schema (empty if absent)."""
    try:
        cite = schema["properties"]["sentences"]["items"]["properties"]["cite"]
        return set(cite["items"].get("enum", []))
    except (KeyError, TypeError):
        return set()


def _parse_turns(conversation: str) -> list[tuple[str, str]]:
    """`user: ...` / `assistant: ...` lines; unprefixed lines continue the previous turn."""
    turns: list[tuple[str, str]] = []
    for line in conversation.splitlines():
        match = re.match(r"^\s*(user|assistant|human|ai)\s*:\s?(.*)$", line, re.IGNORECASE)
        if match:
            role = "user" if match[1].lower() in ("user", "human") else "assistant"
            turns.append((role, match[2]))
        elif turns and line.strip():
            role, text = turns[-1]
            turns[-1] = (role, f"{text}\n{line}")
    return turns


def _section(prompt: str, start: str, end: str) -> str:
    head = prompt.split(start, 1)[1] if start in prompt else ""
    return head.split(end, 1)[0] if end in head else head


def _key_words(text: str, skip: str, limit: int = 6) -> list[str]:
    """Content words of `text` (surface form, first occurrence) whose stems `skip` lacks."""
    have = set(_terms(skip))
    words: dict[str, None] = {}
    for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9-]*", _strip_markers(text)):
        stems = _terms(word)
        if stems and stems[0] not in have and word.lower() not in words:
            words[word.lower()] = None
            have.add(stems[0])
    return list(words)[:limit]


def condense(prompt: str) -> str:
    """Deterministic standalone question: the last user message, the previous user turn's
    key words, and the arXiv markers of the last answer (so retrieval keeps those papers)."""
    last = _section(prompt, "Last user message:", "Standalone question:").strip()
    turns = _parse_turns(_section(prompt, "Conversation:", "Last user message:"))
    users = [t for role, t in turns if role == "user" and t.strip() != last]
    answers = [t for role, t in turns if role == "assistant"]
    words = _key_words(users[-1], last) if users else []
    markers = list(dict.fromkeys(_CITED.findall(answers[-1]))) if answers else []
    return " ".join(part for part in [last, *words, *markers] if part)


def _answer(
    papers: list[_Paper], question: str, most: int, per_paper: int, focus: set[str]
) -> list[_Pick]:
    """Best sentences. A question naming a paper, or a follow-up about the papers the last
    answer cited (`focus`), is answered from those papers only; one naming a paper and
    asking nothing else gets the start of its abstract."""
    question = normalize_question(question)
    named = {p.marker for p in papers if _key(p.marker) in set(paper_keys(question))}
    rest = re.sub(r"\b\d{4}\.\d{4,5}(?:v\d+)?\b", " ", _MARKER_LIKE.sub(" ", question))
    pinned = [p for p in papers if p.marker in (named or focus)]
    if named and not _terms(rest):
        return [_Pick(p, i, s, 1.0) for p in pinned for i, s in _opening(p, per_paper)][:most]
    if pinned:  # the papers under discussion: any word of the question may point at a line
        picks = _score(rest, pinned, share=0.0, need=1)
        if named and not picks:
            return [_Pick(p, i, s, 1.0) for p in pinned for i, s in _opening(p, per_paper)][:most]
        return _select(picks, most, per_paper)
    return _select(_score(rest, papers), most, per_paper)


def _key(marker: str) -> str:
    keys = paper_keys(marker)
    return keys[0] if keys else ""


def _opening(paper: _Paper, count: int) -> list[tuple[int, str]]:
    """The first sentences of an abstract (what a paper is about), injections skipped."""
    sentences = _sentences(_strip_markers(paper.abstract))
    return [(i, s) for i, s in enumerate(sentences) if not _INJECTION.search(s)][:count]


def _cited_before(messages: list[BaseMessage]) -> set[str]:
    """Markers of the most recent earlier answer: the papers a follow-up is about."""
    for message in reversed(messages[:-1]):
        if isinstance(message, AIMessage):
            return set(_CITED.findall(message.text))
    return set()


def _last_human(messages: list[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return messages[-1].text if messages else ""


class StubChatModel(BaseChatModel):
    """Offline, deterministic, extractive: quotes the context sentences that best match
    the question and cites their papers, so the whole pipeline runs without an LLM.

    It reads the two prompts the chain sends (answer: `<papers>` + `Question:`; condense:
    `Standalone question:`). Bound with a citation schema (`response_format`), it answers
    with that JSON instead of text.
    """

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field("stub", alias="model", description="Reported to tracers.")
    max_sentences: int = 4
    per_paper: int = 2
    stop: list[str] | None = Field(None, description="Cut the reply at the first of these.")

    @property
    def _llm_type(self) -> str:
        return "arxiv-qa-stub"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_sentences": self.max_sentences,
            "per_paper": self.per_paper,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangChain's standard tracing params (LangSmith etc. show which model answered)."""
        params = super()._get_ls_params(stop=stop or self.stop, **kwargs)
        params["ls_provider"] = "arxiv-qa"
        return params

    def _reply(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> str:
        """`respond`, cut before the first stop sequence (as a real model stops there)."""
        text = self.respond(messages, **kwargs)
        cuts = [text.find(s) for s in (stop or self.stop or []) if s and s in text]
        return text[: min(cuts)] if cuts else text

    def respond(self, messages: list[BaseMessage], **kwargs: Any) -> str:
        """The full reply text for these messages (what `_generate` returns)."""
        prompt = _last_human(messages)
        schema = bound_schema(kwargs)
        if schema is None and "Standalone question:" in prompt:
            return condense(prompt)
        parsed = _parse_answer_prompt(prompt)
        focus = _cited_before(messages) if parsed and refers_back(parsed[1]) else set()
        picks = _answer(*parsed, self.max_sentences, self.per_paper, focus) if parsed else []
        if schema is not None:
            return _structured_answer(picks, schema)
        if not picks:
            return NO_ANSWER
        return " ".join(_with_marker(p.text, p.paper.marker) for p in picks)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._reply(messages, stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in re.split(r"(?<=\s)(?=\S)", self._reply(messages, stop, **kwargs)):
            if piece:
                yield emit(piece, run_manager)
