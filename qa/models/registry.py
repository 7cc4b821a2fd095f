"""The one entry point: build the chat model a spec string names."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from qa.config import Settings, get_settings
from qa.models.llamacpp import llamacpp_model
from qa.models.servers import openai_model, server_model
from qa.models.specs import parse_spec
from qa.models.stub import StubChatModel


def get_chat_model(spec: str | None = None, settings: Settings | None = None) -> BaseChatModel:
    """Build the chat model a spec names (default: `settings.model`)."""
    settings = settings or get_settings()
    parsed = parse_spec(spec or settings.model)
    if parsed.kind == "stub":
        return StubChatModel()
    if parsed.kind == "openai":
        return openai_model(parsed, settings)
    if parsed.kind == "llamacpp":
        return llamacpp_model(parsed, settings)
    return server_model(parsed, settings)
