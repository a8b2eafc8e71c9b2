"""The Llama 3.1 chat format: dialogs to prompt tokens, and generated tokens back to a message.

What it does: writes each message as `<|start_header_id|>role<|end_header_id|>\\n\\n` + content +
`<|eot_id|>` (or `<|eom_id|>` for an assistant message that waits for a tool result), with the
`tool` role written as `ipython`; writes an assistant message's tool calls in the format of
`tool_calls.py`, after `<|python_tag|>` where Llama 3.1 expects one; and turns what the model
generated back into a `Message` whose kept `tokens` re-encode to exactly what was generated, so a
conversation's prompt only ever grows by appending and the KV cache can be reused.

Prompts are token-for-token those of Meta's reference `llama_models.llama3.chat_format` for every
message without tool calls. With tool calls it follows the documented Llama 3.1 prompt format
instead of the reference code: `<|python_tag|>` precedes built-in calls, code and JSON calls (the
reference writes it only before code) and comes after any text of the message (see docs/codec.md).

What it does not do: parse or write the tool-call syntax itself (that is `tool_calls.py`), render
system prompts or tool definitions (`prompts/`), or touch tensors. Content is text only.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from llama_agents.errors import UsageError
from llama_agents.llama.tokenizer import Tokenizer
from llama_agents.llama.tool_calls import encode_tool_calls, parse_tool_calls, uses_python_tag
from llama_agents.types import Message, Role, StopReason, ToolPromptFormat

__all__ = ["ChatFormat"]

# The header names of the roles; Llama 3.1 calls the tool role `ipython`.
_HEADER_NAMES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "ipython",
}

_PYTHON_TAG = "<|python_tag|>"
_STOP_STRINGS: dict[str, StopReason] = {
    "<|eot_id|>": StopReason.end_of_turn,
    "<|eom_id|>": StopReason.end_of_message,
    "<|end_of_text|>": StopReason.end_of_turn,
}


class ChatFormat:
    """Encode dialogs for Llama 3.1 and decode what it generates; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._headers: dict[str, list[int]] = {
            role: self._build_header(name) for role, name in _HEADER_NAMES.items()
        }
        self._header_strings: dict[str, str] = {
            role: f"<|start_header_id|>{name}<|end_header_id|>\n\n" for role, name in _HEADER_NAMES.items()
        }

    def _build_header(self, name: str) -> list[int]:
        tok = self.tokenizer
        return [
            tok.start_header_id,
            *tok.encode(name),
            tok.end_header_id,
            *tok.encode("\n\n"),
        ]

    def encode_header(self, role: Role) -> list[int]:
        """The tokens of `<|start_header_id|>role<|end_header_id|>\\n\\n` (`tool` is `ipython`)."""
        try:
            return list(self._headers[role])
        except KeyError as e:
            raise UsageError(f"unknown role {role!r}; expected one of {sorted(_HEADER_NAMES)}") from e

    def encode_message(
        self, message: Message, tool_prompt_format: ToolPromptFormat = ToolPromptFormat.json
    ) -> list[int]:
        """The tokens of one message: header, body, then `<|eom_id|>` or `<|eot_id|>`.

        An assistant message decoded from model output (one that keeps `tokens`) is written as
        exactly those tokens; its `content` and `tool_calls` are then not re-encoded. Otherwise the
        body is the content as plain text (special-token look-alikes stay text), then for an
        assistant message its tool calls in `tool_prompt_format`, after `<|python_tag|>` when that
        format takes the tag. Only an assistant message with `stop_reason=end_of_message` ends in
        `<|eom_id|>`.
        """
        tok = self.tokenizer
        tokens = self.encode_header(message.role)
        if message.role == "assistant" and message.tokens is not None:
            tokens.extend(self._checked_generated(message.tokens))
        else:
            tokens.extend(tok.encode(message.content))
            if message.role == "assistant" and message.tool_calls:
                if uses_python_tag(message.tool_calls, tool_prompt_format):
                    tokens.append(tok.python_tag_id)
                tokens.extend(tok.encode(encode_tool_calls(message.tool_calls, tool_prompt_format)))
        eom = message.role == "assistant" and message.stop_reason == StopReason.end_of_message
        tokens.append(tok.eom_id if eom else tok.eot_id)
        return tokens

    def encode_dialog_prompt(
        self, messages: Sequence[Message], tool_prompt_format: ToolPromptFormat | None = None
    ) -> list[int]:
        """`<|begin_of_text|>`, every message, then the open assistant header for the model to complete."""
        fmt = tool_prompt_format or ToolPromptFormat.json
        tokens = [self.tokenizer.bos_id]
        for message in messages:
            tokens.extend(self.encode_message(message, fmt))
        tokens.extend(self._headers["assistant"])
        return tokens

    def decode_assistant_message(
        self, tokens: Sequence[int], stop_reason: StopReason | None = None
    ) -> Message:
        """Turn what the model generated after the assistant header into a `Message`.

        `tokens` may end with its stop token, which then decides `stop_reason` (`<|eom_id|>`:
        end_of_message; `<|eot_id|>`, `<|end_of_text|>`: end_of_turn); without one, `stop_reason`
        is the argument, by default out_of_tokens. `<|python_tag|>` marks the start of the tool
        calls: text before it is content, text after it is parsed with `python_tag=True`. Without
        the tag the whole text is parsed. When calls are found, content is the text outside them.

        The message keeps `tokens` (without the stop token), so `encode_message` gives back the
        header, those tokens and `<|eom_id|>` for end_of_message, else `<|eot_id|>`.
        """
        tok = self.tokenizer
        generated = self._checked_generated(tokens, allow_final_stop=True)
        if generated and generated[-1] in tok.stop_tokens:
            stop = generated.pop()
            reason = StopReason.end_of_message if stop == tok.eom_id else StopReason.end_of_turn
        else:
            reason = stop_reason if stop_reason is not None else StopReason.out_of_tokens

        if tok.python_tag_id in generated:
            at = generated.index(tok.python_tag_id)
            before, after = tok.decode_bytes(generated[:at]), tok.decode_bytes(generated[at + 1 :])
            calls = parse_tool_calls(after.decode("utf-8", errors="replace"), python_tag=True)
            text = before if calls else before + after
        else:
            text = tok.decode_bytes(generated)
            calls = parse_tool_calls(text.decode("utf-8", errors="replace"), python_tag=False)
            if calls:
                text = b""
        return Message(
            role="assistant",
            content=text.decode("utf-8", errors="replace"),
            tool_calls=calls,
            stop_reason=reason,
            tokens=generated,
        )

    def decode_assistant_message_from_content(self, text: str, stop_reason: StopReason) -> Message:
        """`decode_assistant_message` for an engine that returns text instead of token ids.

        As the reference does, spaces at both ends are dropped, then a leading assistant header, a
        `<|python_tag|>` and a trailing `<|eot_id|>` / `<|eom_id|>` / `<|end_of_text|>` are read
        as those tokens (the stop string decides `stop_reason`). The rest is encoded as plain
        text, except `<|python_tag|>`, and kept as the message's `tokens`.
        """
        if not isinstance(text, str):
            raise UsageError(f"decode_assistant_message_from_content takes a str, got {type(text).__name__}")
        tok = self.tokenizer
        body = text.strip(" ")
        header = self._header_strings["assistant"]
        if body.startswith(header):
            body = body[len(header) :]
        stop: list[int] = []
        for stop_string in _STOP_STRINGS:
            if body.endswith(stop_string):
                body = body[: -len(stop_string)]
                stop = [tok.special_tokens[stop_string]]
                break
        tokens = tok.encode(body, allowed_special={_PYTHON_TAG})
        return self.decode_assistant_message(tokens + stop, stop_reason)

    def _checked_generated(self, tokens: Sequence[int], *, allow_final_stop: bool = False) -> list[int]:
        """The generated ids as a list, after checking they are ids and hold no stop token inside."""
        tok = self.tokenizer
        try:
            generated = [operator.index(t) for t in tokens]
        except TypeError as e:
            raise UsageError(f"generated tokens must be int token ids, got {list(tokens)[:5]!r}...") from e
        for i, t in enumerate(generated):
            if not 0 <= t < tok.n_words:
                raise UsageError(f"generated token {i} is {t!r}, not a token id in [0, {tok.n_words})")
            if t in tok.stop_tokens and not (allow_final_stop and i == len(generated) - 1):
                raise UsageError(
                    f"generated token {i} is the stop token {tok.id_to_piece(t)} before the end of the "
                    "message; pass only the tokens of one message (generation stops at the first stop token)"
                )
        return generated
