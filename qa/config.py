"""The one source of knobs: every setting the CLI, the UI and the API read.

Values come from (highest first) explicit overrides, `QA_*` environment variables, a `.env`
file in the working directory, and the defaults below. Other variables in `.env` (other tools'
keys) are ignored and never shown; a `QA_*` name that is not a setting is an error, so a typo
does not silently fall back to a default. Every invalid value becomes one `SettingsError` line
naming the variable, e.g. `QA_K: must be an integer between 1 and 50 (got "abc")`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """arxiv-qa configuration (env prefix `QA_`)."""

    model_config = SettingsConfigDict(
        env_prefix="QA_", env_file=".env", extra="ignore", populate_by_name=True
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
    chroma_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds one request to the Chroma server may take before it fails (a "
        "hung server becomes an error, not a hang); raise it for large writes into a busy "
        "server.",
    )
    collection: str = Field("arxiv_qa", description="Chroma collection name.")
    embeddings: str = Field("minilm", description="Embedding spec: minilm | openai:<model> | …")
    chunk_tokens: int = Field(256, description="Max tokens per chunk (the model's window).")
    embed_batch: int = Field(16, description="Texts per embedding batch.")
    embed_threads: int = Field(
        2, ge=1, description="onnxruntime intra-op threads for the local embedding model."
    )
    embed_server_batch: int = Field(
        64, ge=1, le=2048, description="Texts per request to an embeddings server."
    )
    embed_concurrency: int = Field(
        4, ge=1, le=64, description="Embedding requests in flight to an embeddings server."
    )
    embed_retries: int = Field(
        6, ge=0, le=20, description="Retries (with backoff) of an embedding request on 429/5xx."
    )

    # retrieval
    k: int = Field(5, ge=1, le=50, description="Papers shown to the model.")
    candidates: int = Field(50, ge=5, description="Chunks taken from each retriever.")
    keyword_weight: float = Field(0.6, ge=0, le=1, description="Keyword share of fused score.")
    fusion: Literal["convex", "rrf"] = Field("convex", description="How the channels fuse.")
    chunk_cache: int = Field(
        20000,
        ge=0,
        description="Indexes of up to this many chunks are held in a reader's memory (vectors, "
        "texts; ~4 KB a chunk) instead of read from Chroma per question (0: never).",
    )

    # answering
    model: str = Field("stub", description="Chat model spec: stub | openai:<m> | ollama:<m> | …")
    structured_output: bool = Field(
        True, description="Ask backends that support it for schema-constrained citations."
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16, le=32768)
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
    port: int = Field(7860, ge=1, le=65535, description="UI port.")
    auth: SecretStr | None = Field(None, description="user:password to require a login.")
    concurrency_limit: int = Field(8, ge=1, description="Answers generated at once in the UI.")

    # arXiv metadata and fetching (issue 12)
    arxiv_delay: float = Field(
        3.0, ge=0, description="Seconds between arXiv API requests (arXiv asks for 3)."
    )
    arxiv_page_size: int = Field(
        100, ge=1, le=2000, description="Results per arXiv API request (`qa fetch`)."
    )
    fetch_max: int = Field(
        1000, ge=1, le=100_000, description="Papers one `qa fetch` takes at most (--max)."
    )

    @field_validator("arxiv_api_url")
    @classmethod
    def _query_template(cls, url: str) -> str:
        """A plain endpoint (`http://127.0.0.1:8080/api/query`) gets the `?{}` query slot."""
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"QA_ARXIV_API_URL={url!r} is not an http(s) URL")
        if "{}" in url:
            return url
        return url + ("&{}" if "?" in url else "?{}")

    # MCP: the app's tools for agents (issue 14)
    mcp: bool = Field(
        False, description="Also serve MCP tools at /gradio_api/mcp/ (`qa serve --mcp`)."
    )
    mcp_max_results: int = Field(20, ge=1, le=50, description="Most papers an MCP search returns.")

    # serving: what a visitor may choose, and the bound on everything a visitor sends (issue 10)
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model specs the UI offers, comma-separated, first = default "
        "(default: QA_MODEL only).",
    )
    allow_custom_models: bool = Field(
        False,
        description="Let visitors type other model specs (never a file, never with our keys).",
    )
    max_history_turns: int = Field(6, ge=0, le=100, description="History messages used.")
    max_history_message_chars: int = Field(
        4000, ge=100, le=1_000_000, description="Longer history messages are cut (noted)."
    )
    max_history_chars: int = Field(
        12000, ge=100, le=10_000_000, description="History kept in total; oldest dropped first."
    )
    max_answer_chars: int = Field(
        8000, ge=200, le=1_000_000, description="Answers are cut (noted) beyond this length."
    )
    max_request_bytes: int = Field(
        1_000_000,
        ge=10_000,
        le=1_000_000_000,
        description="Largest HTTP request to the UI.",
    )
    max_upload_bytes: int = Field(
        0, ge=0, le=1_000_000_000, description="Largest upload the UI takes (0: none)."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """`QA_MODELS=stub,ollama:llama3.2` → a list; blanks and repeats dropped."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return list(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
        return value

    @field_validator("auth")
    @classmethod
    def _user_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            split_auth(value.get_secret_value())
        return value

    @field_validator("model", "models")
    @classmethod
    def _known_models(cls, value: str | list[str]) -> str | list[str]:
        from qa.models import ModelError, parse_spec

        for spec in [value] if isinstance(value, str) else value:
            try:
                parse_spec(spec)
            except ModelError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("embeddings")
    @classmethod
    def _known_embeddings(cls, value: str) -> str:
        from qa.embeddings import parse_embeddings_spec

        parse_embeddings_spec(value)
        return value

    @model_validator(mode="after")
    def _embeddings_key(self) -> Settings:
        key = self.openai_api_key.get_secret_value().strip() if self.openai_api_key else ""
        if self.embeddings.strip().lower().startswith("openai:") and not key:
            raise ValueError(
                f"QA_EMBEDDINGS: {self.embeddings} needs an API key: set OPENAI_API_KEY, "
                "or use the offline default QA_EMBEDDINGS=minilm"
            )
        return self

    # corpus record and writers (issue 9)
    corpus_path: Path | None = Field(
        None,
        description="SQLite corpus record, the source of truth the index is built from "
        "(default: persist_dir/corpus.sqlite3). With QA_CHROMA_URL, every writer must use "
        "the same path.",
    )
    writer_wait: float = Field(
        600.0, ge=0, description="Seconds `qa ingest`/`qa remove` wait for another writer."
    )

    @property
    def resolve_cache_path(self) -> Path:
        return self.resolve_cache or self.persist_dir / "resolved.tsv"

    @property
    def offered_models(self) -> list[str]:
        """The specs a UI visitor may use: QA_MODELS, or just QA_MODEL."""
        return self.models or [self.model]


def split_auth(value: str) -> tuple[str, str]:
    """`user:password` → (user, password); the password may itself contain ':'."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("must look like user:password")
    return user, password


class SettingsError(ValueError):
    """An invalid setting (or flag, or argument): one line naming it, what it must be, and
    the value given (never for a secret)."""


def env_name(field: str) -> str:
    """The variable that sets a field: `k` → `QA_K` (an alias such as OPENAI_API_KEY first)."""
    info = Settings.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"QA_{field.upper()}"


def expectation(field: str) -> str:
    """What a field's value must be, from its type and bounds ("an integer between 1 and 50")."""
    info = Settings.model_fields[field]
    bounds = {
        type(m).__name__: getattr(m, type(m).__name__.lower())
        for m in info.metadata
        if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")
    }
    kind = {int: "an integer", float: "a number", bool: "true or false"}.get(info.annotation)
    if getattr(info.annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(map(str, info.annotation.__args__))
    if kind is None:
        return "valid"
    low = bounds.get("Ge", bounds.get("Gt"))
    if "Ge" in bounds and "Le" in bounds:
        return f"{kind} between {bounds['Ge']:,} and {bounds['Le']:,}"
    if low is not None:
        return f"{kind} {'of at least' if 'Ge' in bounds else 'greater than'} {low:,}"
    return kind


def _shown(value: Any) -> str:
    """A given value for a message: short, and without a login inside a URL."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "", value if isinstance(value, str) else repr(value))
    text = text if len(text) <= 60 else text[:57] + "..."
    return json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text


def describe(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """A pydantic error as one line per setting, joined: `QA_K: must be … (got "abc")`."""
    parts = []
    for error in exc.errors():
        if not error["loc"]:  # a check across settings: its message names them
            parts.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = _field_for(str(error["loc"][0]))
        name = (names or {}).get(field) or env_name(field)
        if error["type"] == "value_error" or field not in Settings.model_fields:
            what = str(error["msg"]).removeprefix("Value error, ")
        else:
            what = f"must be {expectation(field)}"
        secret = field in Settings.model_fields and _is_secret(field)
        got = "" if secret or error["type"] == "missing" else f" (got {_shown(error['input'])})"
        parts.append(f"{name}: {what}{got}")
    return "; ".join(parts)


def _field_for(loc: str) -> str:
    """A field name for an error location, which may be an alias (OPENAI_API_KEY)."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if loc == field or (isinstance(alias, AliasChoices) and loc in alias.choices):
            return field
    return loc


def _is_secret(field: str) -> bool:
    return "SecretStr" in str(Settings.model_fields[field].annotation)


def unknown_variables(env_file: Path | str = ".env") -> list[str]:
    """`QA_*` names in the environment or `.env` that are no setting, each with a suggestion."""
    from dotenv import dotenv_values

    known = {env_name(f) for f in Settings.model_fields} | {
        str(name).upper()
        for info in Settings.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices)
        for name in info.validation_alias.choices
    }
    names = {n.upper() for n in os.environ if n.upper().startswith("QA_")}
    if Path(env_file).is_file():
        names |= {n.upper() for n in dotenv_values(env_file) if n.upper().startswith("QA_")}
    found = []
    for name in sorted(names - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean {close[0]}?" if close else "see the configuration table in README.md"
        found.append(f"{name}: not a setting of arxiv-qa ({hint})")
    return found


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env`, or a SettingsError naming every bad one."""
    problems = unknown_variables()
    if problems:
        raise SettingsError("; ".join(problems))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None


def with_overrides(
    settings: Settings, names: dict[str, str] | None = None, **values: Any
) -> Settings:
    """`settings` with `values` (CLI flags, API arguments) applied and validated exactly like
    the environment; `names` says how the caller calls each one in messages (`--k`, `k`)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), **values})
    except ValidationError as exc:
        raise SettingsError(describe(exc, {f: (names or {}).get(f, f) for f in values})) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once; tests clear the cache after changing the env."""
    return load_settings()
