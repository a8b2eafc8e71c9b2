"""The llama.cpp server's native endpoint (`POST /completion`), streamed as server-sent events.

What it does: sends the prompt as token ids (llama.cpp uses an id array as it is: it adds BOS only to
a prompt that is a string or starts with one, so no second `<|begin_of_text|>`), with `n_predict`,
the three Llama stop tokens as `stop` words and `cache_prompt: true` (reuse the slot's KV cache for
the shared prefix).

What the server sends (checked against llama.cpp `tools/server/README.md` and
`server-context.cpp` / `server-task.cpp`): one event per sampled token,
`{"content", "tokens": [id], "stop": false, ...}` (streamed events always carry the id;
`return_tokens` only fills `tokens` of a non-streamed reply). `content` renders special tokens only
when the server runs with `--special`, so without it `<|python_tag|>` arrives as `""` with its id.
A token that ends inside a UTF-8 character sends no event; the next event has the whole character
in `content` but only its own id. Text that may begin a stop word is held back (`content` `""`)
and sent with a later event. The end-of-generation token (`<|eot_id|>`, `<|eom_id|>`,
`<|end_of_text|>`: all EOG in a Llama 3.1 GGUF) is sent as its own event. So an event's ids are
used exactly when they spell its `content`, or when `content` is empty and they are special tokens;
otherwise the `content` text is re-tokenized. The last event has `stop: true`, `stop_type`
(`eos`, `word`, `limit`; servers before late 2024 sent `stopped_eos` / `stopped_word` /
`stopped_limit` instead), `stopping_word` and `timings.prompt_n` (the prompt ids it evaluated).

A prompt longer than the slot's context is refused with HTTP 400, type
`exceed_context_size_error` (`PromptTooLongError`); older servers sent it as an SSE `error:` event.

What it does not do: slots (`id_slot`), grammars, or the OpenAI-compatible routes of the same
server (use `OpenAIBackend` for those).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import httpx

from llama_agents.backends._remote import RemoteBackend, StreamEnd, iter_sse_data, stream_error
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
        }
        return self.path, body

    def _events(self, response: httpx.Response, end: StreamEnd) -> Iterator[str | list[int]]:
        for data in iter_sse_data(response):
            try:
                chunk = json.loads(data)
            except ValueError as e:
                raise BackendError(
                    f"the llamacpp server sent an event that is not JSON: {data[:200]!r}"
                ) from e
            if not isinstance(chunk, dict):
                raise BackendError(f"the llamacpp server sent an unexpected event: {data[:200]!r}")
            if "error" in chunk:
                raise stream_error(self.engine, chunk)
            tokens = chunk.get("tokens")
            text = chunk.get("content")
            text = text if isinstance(text, str) else ""
            ids = tokens if isinstance(tokens, list) and all(type(t) is int for t in tokens) else []
            if ids and self._spells(ids, text):
                yield ids
            elif text:
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

    def _spells(self, ids: list[int], text: str) -> bool:
        """Whether an event's ids are exactly its text: they decode to it, or the text is empty and
        they are special tokens the server did not render (started without `--special`)."""
        if self.tokenizer.decode_bytes(ids) == text.encode("utf-8"):
            return True
        return not text and all(t in self._special_ids for t in ids)

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.special_tokens.values())
