"""Tools a Llama agent can call: the `Tool` base class, `@tool`, and the built-in tools.

It only re-exports the public names, with the settings and result types users need
(`HttpSettings`, `SandboxLimits`, `ExecutionResult`); it does not export the executors behind the
code interpreter (`_sandbox`, `_unsafe_executor`, `_repl_session`) or the HTTP client (`_http`).
"""

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
