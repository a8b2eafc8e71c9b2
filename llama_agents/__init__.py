"""llama-agents: tool-using agents on Meta's Llama 3.1, exact to its native prompt format.

The public API in one place::

    from llama_agents import Agent, tool, BraveSearch, WolframAlpha, CodeInterpreter

Importing this package imports no torch: the names that need it (`Llama`, `LocalBackend`) load on
first use. It only re-exports: it defines no behaviour of its own, and it does not export the
lower-level pieces (`llama_agents.llama.*` codec and model, `llama_agents.backends.*` engines), which
are imported from their modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_agents.agent import (
    Agent,
    AgentEvent,
    AgentResult,
    FinalAnswer,
    RunStopReason,
    Step,
    StepFinished,
    TextDelta,
    ToolCallStarted,
    ToolResultEvent,
    ToolRun,
    read_jsonl,
)
from llama_agents.backends import Backend, connect
from llama_agents.errors import (
    CheckpointError,
    LlamaAgentsError,
    ModelRetry,
    PromptTooLongError,
    RunLimitExceeded,
    SandboxUnavailableError,
    ToolConfigurationError,
    UsageError,
)
from llama_agents.tools import BraveSearch, CodeInterpreter, Tool, ToolResult, WolframAlpha, tool
from llama_agents.types import (
    BuiltinTool,
    Message,
    StopReason,
    ToolCall,
    ToolDefinition,
    ToolPromptFormat,
)

if TYPE_CHECKING:
    from llama_agents.backends.local import LocalBackend
    from llama_agents.llama.generation import Llama

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentEvent",
    "AgentResult",
    "Backend",
    "BraveSearch",
    "BuiltinTool",
    "CheckpointError",
    "CodeInterpreter",
    "FinalAnswer",
    "Llama",
    "LlamaAgentsError",
    "LocalBackend",
    "Message",
    "ModelRetry",
    "PromptTooLongError",
    "RunLimitExceeded",
    "RunStopReason",
    "SandboxUnavailableError",
    "Step",
    "StepFinished",
    "StopReason",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallStarted",
    "ToolConfigurationError",
    "ToolDefinition",
    "ToolPromptFormat",
    "ToolResult",
    "ToolResultEvent",
    "ToolRun",
    "UsageError",
    "WolframAlpha",
    "__version__",
    "connect",
    "read_jsonl",
    "tool",
]


def __getattr__(name: str) -> Any:
    # torch-backed names load on first use, so `import llama_agents` stays light.
    if name == "LocalBackend":
        from llama_agents.backends.local import LocalBackend

        return LocalBackend
    if name == "Llama":
        from llama_agents.llama.generation import Llama

        return Llama
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
