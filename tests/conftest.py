"""Shared fixtures: the real Llama 3 tokenizer (shipped in the llama-models package)."""

from __future__ import annotations

from pathlib import Path

import pytest


def llama3_tokenizer_path() -> Path:
    import llama_models

    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.exists():  # pragma: no cover - a broken llama-models install
        raise FileNotFoundError(f"the Llama 3 tokenizer is missing from llama-models: {path}")
    return path


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    return llama3_tokenizer_path()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from llama_agents.llama.tokenizer import Tokenizer

    return Tokenizer(tokenizer_path)
