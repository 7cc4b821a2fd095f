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
way whichever is picked. One module per concern:

    specs       spec strings, `ModelError`          registry   `get_chat_model`
    servers     OpenAI and compatible servers       llamacpp   in-process llama.cpp
    schema      the structured-citation schema      errors     failures in plain words
    stub        the offline extractive model
"""

from __future__ import annotations

from qa.models.errors import explain_error
from qa.models.llamacpp import LlamaCppChatModel, smollm2_path
from qa.models.registry import get_chat_model
from qa.models.schema import (
    bind_citation_schema,
    citation_schema,
    response_format_for,
    supports_structured,
)
from qa.models.specs import LOCAL_SERVERS, ModelError, ModelSpec, parse_spec
from qa.models.stub import NO_ANSWER, StubChatModel, condense

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
