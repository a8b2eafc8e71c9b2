"""The public API: every name in `llama_agents.__all__` resolves, and importing it pulls in no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_every_public_name_resolves():
    import llama_agents

    missing = [name for name in llama_agents.__all__ if not hasattr(llama_agents, name)]
    assert missing == []
    assert llama_agents.Llama.__name__ == "Llama"
    assert llama_agents.LocalBackend.__name__ == "LocalBackend"


def test_import_does_not_load_torch():
    code = "import sys, llama_agents; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    import llama_agents

    with pytest.raises(AttributeError, match="NoSuchThing"):
        llama_agents.NoSuchThing  # noqa: B018
    assert not hasattr(llama_agents, "NoSuchThing")
