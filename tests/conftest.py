"""Shared fixtures: every test gets its own index directory and fresh settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

pytest_plugins = ["fake_arxiv"]  # the loopback arXiv API (`serve` fixture)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Point QA_PERSIST_DIR at a temp dir and drop cached settings before and after."""
    from qa.config import get_settings

    monkeypatch.setenv("QA_PERSIST_DIR", str(tmp_path / "vectorstore"))
    monkeypatch.delenv("QA_CHROMA_URL", raising=False)
    monkeypatch.delenv("QA_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
