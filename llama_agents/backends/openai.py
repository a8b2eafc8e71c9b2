"""OpenAI-compatible raw completions (`POST /v1/completions`): vLLM, SGLang, TGI, llama.cpp, LM Studio.

What it does: sends our exact Llama 3.1 prompt to the *completions* endpoint (not chat completions,
which would re-render it with the server's template), streams the reply (server-sent events ending
in `data: [DONE]`) and stops on `<|eom_id|>`, `<|eot_id|>` and `<|end_of_text|>`.

- `VLLMBackend`: the prompt goes as token ids (vLLM accepts a list of ints as `prompt`, so nothing
  is re-tokenized and no second `<|begin_of_text|>` is added), with vLLM's `skip_special_tokens:
  false` and `include_stop_str_in_output: true` so the reply keeps `<|python_tag|>` and its stop
  token, and `stop_token_ids`; vLLM's `stop_reason` (the stop string or token id) is read too.
- `OpenAIBackend`: any other server: the prompt as text with special tokens written out and the
  leading `<|begin_of_text|>` left off (servers add it when they tokenize text; `strip_bos=False`
  keeps it), `stop` strings, and whatever it says in `finish_reason` / `stop_reason`.

What it does not do: chat completions, server-side tool parsing, `n > 1`, or logprobs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx

from llama_agents.backends._remote import RemoteBackend, StreamEnd, iter_sse_data, stream_error
from llama_agents.errors import BackendError

__all__ = ["OpenAIBackend", "VLLMBackend"]

logger = logging.getLogger(__name__)


class OpenAIBackend(RemoteBackend):
    """An OpenAI-compatible `/v1/completions` server, prompted with text.

    Takes `RemoteBackend`'s arguments, plus `strip_bos` (default True: leave the leading
    `<|begin_of_text|>` for the server to add) and `extra_body`: fields added to every request, for a
    server's own sampling parameters (llama-cpp-python applies `repeat_penalty` 1.1, `top_k` 40 and
    `min_p` 0.05 unless told otherwise: `{"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}` samples
    as the Llama reference does).
    """

    engine = "openai"
    path = "/v1/completions"

    def __init__(
        self, *args: Any, strip_bos: bool = True, extra_body: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.strip_bos = strip_bos
        self.extra_body = dict(extra_body or {})
        self._warned = False  # the special-token warning is logged once per backend

    def _prompt(self, prompt_tokens: list[int]) -> str | list[int]:
        text = self.prompt_text(prompt_tokens, strip_bos=self.strip_bos)
        sent = (
            prompt_tokens[1:]
            if self.strip_bos and prompt_tokens[:1] == [self.tokenizer.bos_id]
            else prompt_tokens
        )
        if not self._warned and self.tokenizer.encode(text, allowed_special="all") != sent:
            # Servers tokenize a text prompt with special tokens parsed (llama-cpp-python, TGI): text
            # such as a tool result that spells "<|eot_id|>" becomes that control token there.
            self._warned = True
            logger.warning(
                "%s server at %s: the prompt text spells a special token (e.g. '<|eot_id|>') inside a "
                "message, which this server will read as the token itself, not as text; use an engine "
                "that takes token ids (vllm+, llamacpp+) to keep it plain",
                self.engine,
                self.base_url,
            )
        return text

    def _request(
        self, prompt_tokens: list[int], max_tokens: int, temperature: float, top_p: float
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "prompt": self._prompt(prompt_tokens),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": self.stop_strings,
            "stream": True,
        }
        if self.model is not None:
            body["model"] = self.model
        body.update(self.extra_body)
        return self.path, body

    def _events(self, response: httpx.Response, end: StreamEnd) -> Iterator[str]:
        for data in iter_sse_data(response):
            if data.strip() == "[DONE]":
                end.finished = True
                return
            try:
                chunk = json.loads(data)
            except ValueError as e:
                raise BackendError(
                    f"the {self.engine} server sent an event that is not JSON: {data[:200]!r}"
                ) from e
            if not isinstance(chunk, dict):
                raise BackendError(f"the {self.engine} server sent an unexpected event: {data[:200]!r}")
            if "error" in chunk or chunk.get("object") == "error":
                raise stream_error(self.engine, chunk)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                details = usage.get("prompt_tokens_details")
                cached = details.get("cached_tokens") if isinstance(details, dict) else None
                prompt = usage.get("prompt_tokens")
                if isinstance(cached, int) and isinstance(prompt, int):
                    end.prefilled = prompt - cached
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                text = choice.get("text")
                if isinstance(text, str) and text:
                    yield text
                reason = choice.get("finish_reason")
                if reason is None:
                    continue
                end.finished = True
                end.length = reason == "length"
                stop_reason = choice.get("stop_reason")
                if isinstance(stop_reason, int) and not isinstance(stop_reason, bool):
                    end.stop_id = stop_reason
                elif isinstance(stop_reason, str):
                    end.stop_text = stop_reason


class VLLMBackend(OpenAIBackend):
    """A vLLM (or SGLang) server: token-id prompts and vLLM's special-token sampling parameters."""

    engine = "vllm"

    def _prompt(self, prompt_tokens: list[int]) -> str | list[int]:
        return prompt_tokens

    def _request(
        self, prompt_tokens: list[int], max_tokens: int, temperature: float, top_p: float
    ) -> tuple[str, dict[str, Any]]:
        path, body = super()._request(prompt_tokens, max_tokens, temperature, top_p)
        body.update(
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
            include_stop_str_in_output=True,
            stop_token_ids=sorted(self.tokenizer.stop_tokens),
            stream_options={"include_usage": True},
        )
        return path, body
