"""Ollama's raw generate endpoint (`POST /api/generate` with `raw: true`), streamed as NDJSON.

What it does: sends our exact Llama 3.1 prompt as text (special tokens written out, the leading
`<|begin_of_text|>` left for Ollama to add) with `raw: true`, so Ollama applies no template, and
`options.stop` set to the three Llama stop tokens. Each line of the reply is a JSON object with a
`response` piece; the last has `done: true` and `done_reason` (`stop` or `length`) and the prompt
ids evaluated (`prompt_eval_count`). Ollama strips the stop token it stopped at without naming it;
the base class puts back `<|eom_id|>` for a reply that starts with `<|python_tag|>` and
`<|eot_id|>` otherwise (what Llama 3.1 writes).

What it does not do: pull models (`ollama pull llama3.1` first), use `/api/chat`, or pass
Ollama's `context` array (the prompt is always sent whole; Ollama's own cache reuses its prefix).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from llama_agents.backends._remote import RemoteBackend, StreamEnd, stream_error
from llama_agents.errors import BackendError

__all__ = ["OllamaBackend"]


class OllamaBackend(RemoteBackend):
    """An Ollama server. `model` is required (an Ollama model name such as `llama3.1:8b`)."""

    engine = "ollama"
    path = "/api/generate"

    def _request(
        self, prompt_tokens: list[int], max_tokens: int, temperature: float, top_p: float
    ) -> tuple[str, dict[str, Any]]:
        body = {
            "model": self.model,
            "prompt": self.prompt_text(prompt_tokens, strip_bos=True),
            "raw": True,
            "stream": True,
            "options": {
                "num_predict": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stop": self.stop_strings,
            },
        }
        return self.path, body

    def _events(self, response: httpx.Response, end: StreamEnd) -> Iterator[str | list[int]]:
        for line in response.iter_lines():
            if not line.strip():
                continue
            try:
                chunk = json.loads(line)
            except ValueError as e:
                raise BackendError(f"the ollama server sent a line that is not JSON: {line[:200]!r}") from e
            if not isinstance(chunk, dict):
                raise BackendError(f"the ollama server sent an unexpected line: {line[:200]!r}")
            if "error" in chunk:
                raise stream_error(self.engine, chunk)
            text = chunk.get("response")
            if isinstance(text, str) and text:
                yield text
            if chunk.get("done"):
                end.finished = True
                end.length = chunk.get("done_reason") == "length"
                evaluated = chunk.get("prompt_eval_count")
                if isinstance(evaluated, int):
                    end.prefilled = evaluated
                return
