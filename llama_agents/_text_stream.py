"""Incremental answer text from generated token ids, for `Agent.stream`.

Decodes id by id with `Tokenizer.decode_bytes`, holding back incomplete UTF-8 sequences and any
text that is, or may become, tool-call syntax (`<|python_tag|>` code, `<function=...>`, a JSON or
python-list call, `brave_search.call(...)`). It only decides what to show while a reply is being
written; it does not decode the message itself (`ChatFormat.decode_assistant_message` does).
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from llama_agents.types import Message

if TYPE_CHECKING:
    from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["AnswerTextStream"]

# Text that opens a tool call when a reply starts with it.
_CALL_OPENERS = ("{", "[", "<function=", "brave_search.", "wolfram_alpha.", "code_interpreter.", "photogen.")
# Text that opens a tool call anywhere in a reply.
_INLINE_OPENER = "<function="


class AnswerTextStream:
    """Feed generated ids one by one; get back the answer text that is safe to show."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._start: int | None = None  # where the shown text starts (after leading whitespace)
        self._shown = 0  # characters of self._text shown so far
        self._call = False  # a tool call has begun: show nothing more

    @property
    def shown(self) -> str:
        return "" if self._start is None else self._text[self._start : self._shown]

    def feed(self, token: int) -> str:
        tok = self._tokenizer
        if token in tok.stop_tokens:
            return ""
        if token == tok.python_tag_id:
            self._call = True
            return ""
        self._text += self._decoder.decode(tok.decode_bytes([token]))
        if self._call:
            return ""
        return self._advance()

    def finish(self, message: Message) -> str:
        """The rest of the answer once the reply is complete ("" when it holds tool calls)."""
        if message.tool_calls or message.role != "assistant":
            return ""
        shown = self.shown
        answer = message.content.lstrip()  # as `AgentResult.answer`: without leading whitespace
        if answer.startswith(shown):
            rest = answer[len(shown) :]
        else:  # the decoded message differs (e.g. whitespace trimmed): show what was not shown yet
            rest = self._text[self._shown :] if self._start is not None else answer
        self._call = True
        return rest

    def _advance(self) -> str:
        text = self._text
        if self._start is None:
            stripped = text.lstrip()
            if not stripped or any(o.startswith(stripped) or stripped.startswith(o) for o in _CALL_OPENERS):
                return ""  # nothing yet, or it may be a call: hold until the reply ends
            self._start = self._shown = len(text) - len(stripped)
        end = len(text)
        found = text.find(_INLINE_OPENER, self._start)
        if found >= 0:
            end = found
            self._call = True
        else:
            last = text.rfind("<", self._start)
            if last >= 0 and _INLINE_OPENER.startswith(text[last:]):
                end = last  # may be the start of "<function="
        if end <= self._shown:
            return ""
        delta = text[self._shown : end]
        self._shown = end
        return delta
