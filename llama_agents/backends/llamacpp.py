"""The llama.cpp server's native endpoint (`POST /completion`), streamed as server-sent events.

What it does: sends the prompt as token ids (llama.cpp uses an id array as it is: nothing is
re-tokenized and no second `<|begin_of_text|>` is added), with `n_predict`, the three Llama stop
tokens as `stop` words, `cache_prompt: true` (reuse the slot's KV cache for the shared prefix) and
`return_tokens: true`: where the server sends each piece's ids (`tokens`) they are used exactly;
otherwise its `content` text is re-tokenized. The last event has `stop: true` and says why:
`stop_type` (`eos`, `word`, `limit`) or, in older servers, `stopped_eos` / `stopped_word` /
`stopped_limit` and `stopping_word`. `timings.prompt_n` is the prompt ids it evaluated.

Start `llama-server` with `--special` (`-sp`) where the server does not return token ids, so
`<|python_tag|>` is written into the text.

What it does not do: slots (`id_slot`), grammars, or the OpenAI-compatible routes of the same
server (use `OpenAIBackend` for those).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from llama_agents.backends._remote import RemoteBackend, StreamEnd, describe_error, iter_sse_data
from llama_agents.errors import BackendError

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend(RemoteBackend):
    """A llama.cpp `llama-server`; `model` is not needed (it serves one)."""

    engine = "llamacpp"
    path = "/completion"

    def _request(
        self, prompt_tokens: list[int], max_tokens: int, temperature: float, top_p: float
    ) -> tuple[str, dict[str, Any]]:
        body = {
            "prompt": prompt_tokens,
            "n_predict": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": self.stop_strings,
            "stream": True,
            "cache_prompt": True,
            "return_tokens": True,
        }
        return self.path, body

    def _events(self, response: httpx.Response, end: StreamEnd) -> Iterator[str | list[int]]:
        for data in iter_sse_data(response):
            try:
                chunk = json.loads(data)
            except ValueError as e:
                raise BackendError(
                    f"the llamacpp server sent an event that is not JSON: {data[:200]!r}"
                ) from (e)
            if not isinstance(chunk, dict):
                raise BackendError(f"the llamacpp server sent an unexpected event: {data[:200]!r}")
            if "error" in chunk:
                raise BackendError(f"the llamacpp server failed mid-reply: {describe_error(chunk)}")
            tokens = chunk.get("tokens")
            text = chunk.get("content")
            if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                yield [int(t) for t in tokens]
            elif isinstance(text, str) and text:
                yield text
            if chunk.get("stop"):
                end.finished = True
                stop_type = chunk.get("stop_type")
                end.length = stop_type == "limit" or bool(chunk.get("stopped_limit"))
                word = chunk.get("stopping_word")
                if isinstance(word, str) and word:
                    end.stop_text = word
                timings = chunk.get("timings")
                if isinstance(timings, dict) and isinstance(timings.get("prompt_n"), int):
                    end.prefilled = timings["prompt_n"]
                return
