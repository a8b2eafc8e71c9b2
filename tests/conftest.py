"""Shared fixtures: the real Llama 3 tokenizer (shipped in the llama-models package).

Under CI (`CI` set, as `.ci/run` runs), hypothesis draws the same examples on every run
(`derandomize`), so a landing never hangs on a new random draw; locally each run explores anew.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
