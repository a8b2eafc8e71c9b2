"""Tools a Llama agent can call: the `Tool` base class, `@tool`, and the built-in tools."""

from llama_agents.tools._http import HttpSettings
from llama_agents.tools.base import FunctionTool, Tool, ToolResult, tool
from llama_agents.tools.brave_search import BraveSearch
from llama_agents.tools.code_interpreter import CodeInterpreter, ExecutionResult, SandboxLimits
from llama_agents.tools.wolfram_alpha import WolframAlpha

__all__ = [
    "BraveSearch",
    "CodeInterpreter",
    "ExecutionResult",
    "FunctionTool",
    "HttpSettings",
    "SandboxLimits",
    "Tool",
    "ToolResult",
    "WolframAlpha",
    "tool",
]
