"""The one source of knobs: every setting the CLI, the UI and the API read.

Values come from (highest first) explicit overrides, `QA_*` environment variables, a `.env`
file in the working directory, and the defaults below.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """arxiv-qa configuration (env prefix `QA_`)."""

    model_config = SettingsConfigDict(
        env_prefix="QA_", env_file=".env", extra="forbid", populate_by_name=True
    )

    # corpus
    seeds_dir: Path = Field(PROJECT_ROOT / "seeds", description="Bundled seed files.")
    metadata_path: Path = Field(
        PROJECT_ROOT / "seeds" / "metadata.tsv",
        description="TSV with arxiv_id/title per paper, joined by content.",
    )
    resolve_cache: Path | None = Field(
        None, description="TSV cache of `qa resolve` look-ups (default: persist_dir/resolved.tsv)."
    )
    arxiv_api_url: str = Field(
        "https://export.arxiv.org/api/query?{}", description="arXiv API query URL format."
    )

    # index
    persist_dir: Path = Field(PROJECT_ROOT / "vectorstore", description="Embedded Chroma path.")
    chroma_url: str | None = Field(None, description="Chroma server URL; embedded when unset.")
    collection: str = Field("arxiv_qa", description="Chroma collection name.")
    embeddings: str = Field("minilm", description="Embedding spec: minilm | openai:<model> | …")
    chunk_tokens: int = Field(256, description="Max tokens per chunk (the model's window).")
    embed_batch: int = Field(16, description="Texts per embedding batch.")
    embed_threads: int = Field(
        2, ge=1, description="onnxruntime intra-op threads for the local embedding model."
    )

    # retrieval
    k: int = Field(5, ge=1, le=50, description="Papers shown to the model.")
    candidates: int = Field(50, ge=5, description="Chunks taken from each retriever.")
    keyword_weight: float = Field(0.6, ge=0, le=1, description="Keyword share of fused score.")
    fusion: Literal["convex", "rrf"] = Field("convex", description="How the channels fuse.")

    # answering
    model: str = Field("stub", description="Chat model spec: stub | openai:<m> | ollama:<m> | …")
    structured_output: bool = Field(
        True, description="Ask backends that support it for schema-constrained citations."
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    request_timeout: float = Field(60.0, gt=0, description="Seconds per LLM request.")
    max_retries: int = Field(2, ge=0, description="Retries on 429/5xx.")
    llm_threads: int = Field(2, ge=1, description="Threads for in-process llama.cpp.")
    max_question_chars: int = Field(2000, ge=10, description="Longer questions are refused.")
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "QA_OPENAI_API_KEY"),
        description="Key for openai:* specs.",
    )
    llm_api_key: SecretStr | None = Field(
        None, description="Key for OpenAI-compatible/local servers (OPENAI_API_KEY never is)."
    )

    # answer or abstain; follow-ups; support check (issue 11)
    relevance_model: Path = Field(
        PROJECT_ROOT / "qa" / "relevance.json",
        description="Fitted relevance model (`qa eval --calibrate` writes it).",
    )
    abstain_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Relevance probability below which answers abstain (default: the model's).",
    )

    # UI
    host: str = Field("127.0.0.1", description="UI bind address.")
    port: int = Field(7860, description="UI port.")
    auth: SecretStr | None = Field(None, description="user:password to require a login.")
    concurrency_limit: int = Field(8, ge=1, description="Answers generated at once in the UI.")

    # MCP: the app's tools for agents (issue 14)
    mcp: bool = Field(
        False, description="Also serve MCP tools at /gradio_api/mcp/ (`qa serve --mcp`)."
    )
    mcp_max_results: int = Field(20, ge=1, le=50, description="Most papers an MCP search returns.")

    @property
    def resolve_cache_path(self) -> Path:
        return self.resolve_cache or self.persist_dir / "resolved.tsv"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once; tests clear the cache after changing the env."""
    return Settings()
