"""Tools a Llama agent can call: the `Tool` base class, `@tool`, and the built-in tools."""

from llama_agents.tools.base import FunctionTool, Tool, ToolResult, tool

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolResult",
    "tool",
]
