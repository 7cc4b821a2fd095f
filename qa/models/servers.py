"""OpenAI and OpenAI-compatible servers (Ollama, vLLM, LM Studio, llama.cpp's server)."""

from __future__ import annotations

import os
from typing import Any

from langchain_core.language_models import BaseChatModel

from qa.config import Settings
from qa.models.specs import ModelError, ModelSpec, missing_key_message


def openai_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
    """ChatOpenAI against OpenAI (or OPENAI_BASE_URL); refuses early without a key."""
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ModelError(missing_key_message(f"openai:{parsed.name}"))
    key = settings.openai_api_key.get_secret_value()
    return _chat_openai(parsed.name, os.environ.get("OPENAI_BASE_URL"), settings, api_key=key)


def server_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
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
