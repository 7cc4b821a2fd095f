"""Structured citations: the JSON schema of a cited answer and how each backend is bound to it."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

from qa.models.specs import ModelError, parse_spec

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


def bare(marker: str) -> str:
    return marker.strip().removeprefix("[").removesuffix("]").strip()


def citation_schema(markers: list[str], bounded: bool = False) -> dict[str, Any]:
    """JSON schema of an answer as sentences, each citing only markers from the context.

    `additionalProperties: false` is there because OpenAI's strict mode requires it.
    `bounded` adds length limits for grammar-constrained local models, which otherwise
    may write one endless string or repeat a citation until `max_tokens` cuts the JSON.
    """
    allowed = list(dict.fromkeys(bare(m) for m in markers if bare(m)))
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


def bound_schema(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a caller bound via `response_format`, in either accepted form."""
    fmt = kwargs.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return fmt.get("json_schema", {}).get("schema") or {}
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or {}
    return None
