"""What an agent run produces: its steps, its result, and the events `Agent.stream` yields.

Plain pydantic models with no behaviour beyond (de)serialisation. The loop that fills them in is
`agent.py`; this module knows nothing of backends or tools.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from llama_agents.types import Message, ToolCall

__all__ = [
    "AgentEvent",
    "AgentResult",
    "FinalAnswer",
    "RunStopReason",
    "Step",
    "StepFinished",
    "TextDelta",
    "ToolCallStarted",
    "ToolResultEvent",
    "ToolRun",
    "read_jsonl",
]


class RunStopReason(str, Enum):
    """Why a run ended.

    - `final_answer`: the model answered (a message without tool calls).
    - `max_steps`: the model was still calling tools after `max_steps` replies.
    - `max_tokens`: a reply was cut off at `max_tokens` (the answer is incomplete).
    - `token_budget`: the run used up its `token_budget` of generated tokens.
    - `context_length`: the conversation no longer fits the model's context; start a new session.
    """

    final_answer = "final_answer"
    max_steps = "max_steps"
    max_tokens = "max_tokens"
    token_budget = "token_budget"
    context_length = "context_length"


class ToolRun(BaseModel):
    """One tool call of a step and what came back to the model for it."""

    call: ToolCall
    content: str
    is_error: bool = False
    repeated: bool = False
    duration_s: float = 0.0


class Step(BaseModel):
    """One model reply and the tool calls it made.

    Token counts: `prompt_tokens` is the prompt's length; `prefilled` / `reused` say how many of them
    the backend ran through the model or served from its cache (None when it does not report them);
    `generated` counts the reply's ids, stop token included.
    """

    index: int
    message: Message
    tool_runs: list[ToolRun] = Field(default_factory=list)
    prompt_tokens: int
    prefilled: int | None = None
    reused: int | None = None
    generated: int
    generation_s: float
    tools_s: float = 0.0


class AgentResult(BaseModel):
    """The outcome of one `Agent.run`.

    `answer` is the final message's text without leading whitespace, exactly what `stream()`'s text
    deltas add up to (the partial text when a reply was cut off, "" when the run stopped while the
    model was still calling tools); the transcript keeps the message as the model wrote it.
    `detail` explains a stop in words. `messages` is the whole session transcript so far, system
    prompt included.
    """

    answer: str
    stop_reason: RunStopReason
    detail: str = ""
    steps: list[Step] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)

    @property
    def tool_runs(self) -> list[ToolRun]:
        return [run for step in self.steps for run in step.tool_runs]

    @property
    def generated_tokens(self) -> int:
        return sum(step.generated for step in self.steps)

    @property
    def prefilled_tokens(self) -> int:
        return sum(step.prefilled or 0 for step in self.steps)

    @property
    def reused_tokens(self) -> int:
        return sum(step.reused or 0 for step in self.steps)

    def to_jsonl(self) -> str:
        """The transcript as JSON lines, one message a line (generated token ids included)."""
        return "".join(message.model_dump_json(exclude_none=True) + "\n" for message in self.messages)

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write the transcript to `path` as JSON lines (see `read_jsonl`)."""
        Path(path).write_text(self.to_jsonl(), encoding="utf-8")


def read_jsonl(path: str | os.PathLike[str]) -> list[Message]:
    """Read a transcript written by `AgentResult.write_jsonl`."""
    messages = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages.append(Message.model_validate(json.loads(line)))
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not a transcript message: {e}") from e
    return messages


class TextDelta(BaseModel):
    """A piece of the answer text, as it is generated (never tool-call syntax)."""

    type: Literal["text_delta"] = "text_delta"
    step: int
    text: str


class ToolCallStarted(BaseModel):
    """The model called a tool; it is running now."""

    type: Literal["tool_call_started"] = "tool_call_started"
    step: int
    call: ToolCall


class ToolResultEvent(BaseModel):
    """A tool call finished; its result went back to the model (in call order)."""

    type: Literal["tool_result"] = "tool_result"
    step: int
    run: ToolRun


class StepFinished(BaseModel):
    """A model reply and all its tool calls are done."""

    type: Literal["step_finished"] = "step_finished"
    step: Step


class FinalAnswer(BaseModel):
    """The run is over (always the last event); `result.stop_reason` says why."""

    type: Literal["final_answer"] = "final_answer"
    result: AgentResult


AgentEvent = Annotated[
    TextDelta | ToolCallStarted | ToolResultEvent | StepFinished | FinalAnswer, Field(discriminator="type")
]
"""Any event of `Agent.stream`; dispatch on `event.type`."""
