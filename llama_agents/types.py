"""The vocabulary every layer shares: messages, tool calls, tool definitions, stop reasons.

Plain pydantic v2 models and string enums, with no behaviour beyond validation. Nothing here knows
about tokens, tensors, templates or HTTP; those live in the layers above (`llama/`, `prompts/`,
`tools/`, `agent.py`), which all import from here and never the other way round.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BuiltinTool",
    "Message",
    "Role",
    "StopReason",
    "ToolCall",
    "ToolDefinition",
    "ToolPromptFormat",
]

Role = Literal["system", "user", "assistant", "tool"]
"""Who wrote a message. The `tool` role is written with the `ipython` header, as Llama 3.1 requires."""


class BuiltinTool(str, Enum):
    """The tools Llama 3.1 was trained to call in its built-in `name.call(query=...)` / code form."""

    brave_search = "brave_search"
    wolfram_alpha = "wolfram_alpha"
    code_interpreter = "code_interpreter"
    photogen = "photogen"


class StopReason(str, Enum):
    """Why the model stopped writing a message.

    `end_of_turn` (`<|eot_id|>`): the answer is finished. `end_of_message` (`<|eom_id|>`): the model
    waits for the result of a tool call. `out_of_tokens`: the token budget ran out mid-message.
    """

    end_of_turn = "end_of_turn"
    end_of_message = "end_of_message"
    out_of_tokens = "out_of_tokens"


class ToolPromptFormat(str, Enum):
    """How custom (non built-in) tools are described to the model and how it writes their calls.

    - `json`: `{"type": "function", "name": "f", "parameters": {...}}` (Llama 3.1)
    - `function_tag`: `<function=f>{...}</function>` (Llama 3.1)
    - `python_list`: `[f(a=1, b="x")]` (Llama 3.2 and later)
    """

    json = "json"
    function_tag = "function_tag"
    python_list = "python_list"


class ToolCall(BaseModel):
    """One call of a tool, as written by the model.

    `tool_name` is a `BuiltinTool` for the built-in tools (whatever format the model wrote the call
    in), and the plain function name otherwise. `arguments` keeps JSON types: ints stay ints, nested
    objects stay objects.
    """

    model_config = ConfigDict(frozen=True)

    call_id: str
    tool_name: BuiltinTool | str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _builtin_names(cls, data: Any) -> Any:
        # "brave_search" given as a plain string is the built-in tool, not a custom one of that name.
        if isinstance(data, dict):
            name = data.get("tool_name")
            if (
                isinstance(name, str)
                and not isinstance(name, BuiltinTool)
                and name in BuiltinTool.__members__
            ):
                data = {**data, "tool_name": BuiltinTool(name)}
        return data

    @property
    def name(self) -> str:
        """The tool's name as a plain string, built-in or not."""
        return self.tool_name.value if isinstance(self.tool_name, BuiltinTool) else self.tool_name


class Message(BaseModel):
    """One message of a dialog.

    - `system` / `user`: `content` only.
    - `assistant`: `content` (the answer text, empty when the message is only tool calls),
      `tool_calls` found in it, and `stop_reason`. A message decoded from model output keeps the
      exact generated `tokens` (without the trailing stop token), so that encoding it again gives
      back exactly what the model wrote and a conversation's prompt only ever grows by appending.
    - `tool`: the result of one tool call: `content`, the `call_id` it answers and the `tool_name`.
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    call_id: str | None = None
    tool_name: BuiltinTool | str | None = None
    tokens: list[int] | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not a {self.role!r} message")
        if self.tokens is not None and self.role != "assistant":
            raise ValueError(f"only assistant messages keep generated tokens, not a {self.role!r} message")
        if self.call_id is not None and self.role != "tool":
            raise ValueError(f"only tool messages carry a call_id, not a {self.role!r} message")
        return self


class ToolDefinition(BaseModel):
    """What the model is told about a custom tool: its name, what it does, its JSON-schema parameters.

    `parameters` is a JSON schema of type `object` (`properties`, `required`); each property may
    carry `type`, `description`, `default`, `enum`, `items`, ... as JSON schema does.
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        return dict(self.parameters.get("properties", {}))
