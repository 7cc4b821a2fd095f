"""Model spec strings (`stub`, `openai:<model>`, ...), the error type every backend raises,
and the one streaming helper the in-process backends share."""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessageChunk,
)
from langchain_core.outputs import ChatGenerationChunk


class ModelError(RuntimeError):
    """A model could not be built or called; the message is meant for the user."""


LOCAL_SERVERS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434/v1",
    "llamacpp-server": "http://127.0.0.1:8080/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "lmstudio": "http://127.0.0.1:1234/v1",
}
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
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


def missing_key_message(spec: str) -> str:
    """What to do when an OpenAI spec has no key (shared by the builder and `explain_error`)."""
    return (
        f"{spec} needs an OpenAI API key: set OPENAI_API_KEY, or run offline with "
        "`--model stub` or a local model such as `--model ollama:llama3.2`."
    )


def emit(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
    """One streamed chunk, reported to LangChain callbacks (stub and llama.cpp share it)."""
    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
    if run_manager:
        run_manager.on_llm_new_token(text, chunk=chunk)
    return chunk
