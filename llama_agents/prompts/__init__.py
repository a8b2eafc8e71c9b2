"""Render the text Llama 3.x is prompted with: the system prompt and custom-tool definitions.

The layouts live in Jinja2 templates shipped with this package (`*.j2`, loaded through
`importlib.resources`) and rendered by one module-level `jinja2.Environment` with `StrictUndefined`.
Every JSON value in a prompt goes through the `tojson` filter; the date is passed in, never read.
The output is exact, to the whitespace, to the examples of the Llama 3.1 and Llama 3.2 prompt-format
documents (see docs/prompts.md for the rules and for where our templates differ from those docs).

This module returns strings only. It does not know about tokens or messages: wrapping the text in
`<|start_header_id|>system<|end_header_id|>` headers is `llama.chat_format`'s job, and deciding
which tools a conversation has is the agent's.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import jinja2

from llama_agents.errors import UsageError
from llama_agents.types import BuiltinTool, ToolDefinition, ToolPromptFormat

__all__ = [
    "KNOWLEDGE_CUTOFF",
    "format_date",
    "render_system_prompt",
    "render_tool_definitions",
]

KNOWLEDGE_CUTOFF = "December 2023"
"""The `Cutting Knowledge Date` Llama 3.1 was trained with, written with every date."""

# English month names, so that the date does not depend on the process locale as `%B` does.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# JSON schema type -> the python name the `<function>` format's `param_type` uses.
_PYTHON_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
    "null": "None",
}

_TEMPLATES = {
    ToolPromptFormat.json: "tools_json.j2",
    ToolPromptFormat.function_tag: "tools_function_tag.j2",
    ToolPromptFormat.python_list: "tools_python_list.j2",
}


def _load_template(name: str) -> str:
    try:
        return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError as e:  # a broken install: package data left out
        raise jinja2.TemplateNotFound(name) from e


def _tojson(value: Any, indent: int | None = None, offset: int = 0) -> str:
    """JSON for a prompt: keys in the given order, unicode as is, Python's standard separators.

    `offset` moves every line after the first that many spaces further in, to nest the JSON inside
    a layout (safe: a newline in JSON output is always structure, never inside a string). Jinja's
    `indent` filter is not, as it also breaks lines at U+0085, U+2028, ... inside strings.
    Replaces Jinja's own `tojson`, which sorts keys and HTML-escapes `<`, `>`, `&` and `'`.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    return text.replace("\n", "\n" + " " * offset) if offset else text


_env = jinja2.Environment(
    loader=jinja2.FunctionLoader(_load_template),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_env.filters["tojson"] = _tojson


def format_date(date: datetime.date) -> str:
    """`21 September 2024`: the `%d %B %Y` the prompt format uses, in English whatever the locale."""
    if not isinstance(date, datetime.date):
        raise UsageError(f"date must be a datetime.date, not {type(date).__name__}: {date!r}")
    return f"{date.day:02d} {_MONTHS[date.month - 1]} {date.year}"


def _builtin(tool: BuiltinTool | str) -> BuiltinTool:
    if isinstance(tool, BuiltinTool):
        return tool
    try:
        return BuiltinTool(tool)
    except ValueError as e:
        known = ", ".join(t.value for t in BuiltinTool)
        raise UsageError(
            f"unknown built-in tool {tool!r}; the built-in tools are: {known}. "
            "Describe other tools with render_tool_definitions."
        ) from e


def render_system_prompt(
    *,
    builtin_tools: Sequence[BuiltinTool] = (),
    ipython: bool | None = None,
    date: datetime.date | None = None,
    instructions: str | None = None,
) -> str:
    """The system prompt of a Llama 3.1 conversation.

    - `builtin_tools`: built-in tools to enable (their values as strings are accepted too).
      Any of them writes `Environment: ipython`; all but `code_interpreter`, which that line alone
      enables, are listed on the `Tools:` line in the order given.
    - `ipython`: write `Environment: ipython`. `None` (the default) means "when built-in tools are
      enabled"; pass `True` for custom tools, which need it too. `False` with built-in tools is an
      error, since the model cannot call them without it.
    - `date`: write `Cutting Knowledge Date: December 2023` and `Today Date: <date>`.
    - `instructions`: your own system text, written last and verbatim (Jinja syntax in it is text).

    With nothing enabled the prompt is `instructions` alone (or `""`).
    """
    if isinstance(builtin_tools, str):
        raise UsageError(f"builtin_tools must be a sequence of tools, not the single value {builtin_tools!r}")
    tools: list[BuiltinTool] = []
    for tool in builtin_tools:
        tool = _builtin(tool)
        if tool not in tools:
            tools.append(tool)
    if ipython is None:
        ipython = bool(tools)
    elif ipython is False and tools:
        raise UsageError(
            "ipython=False with built-in tools: the model can only call "
            f"{', '.join(t.value for t in tools)} under 'Environment: ipython'; pass ipython=None or True"
        )
    if instructions is not None and not isinstance(instructions, str):
        raise UsageError(f"instructions must be a string, not {type(instructions).__name__}")
    return _env.get_template("system.j2").render(
        ipython=bool(ipython),
        tools=[t.value for t in tools if t is not BuiltinTool.code_interpreter],
        today=None if date is None else format_date(date),
        knowledge_cutoff=KNOWLEDGE_CUTOFF,
        instructions=instructions or "",
    )


def _properties(tool: ToolDefinition) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The tool's parameter schemas and required names, checked: bad schemas are the developer's bug."""
    params = tool.parameters
    where = f"tool {tool.name!r}"
    if not isinstance(params, Mapping):
        raise UsageError(f"{where}: parameters must be a JSON schema object, not {type(params).__name__}")
    if params.get("type", "object") != "object":
        raise UsageError(
            f"{where}: parameters must be a JSON schema of type 'object', not {params['type']!r}"
        )
    properties = params.get("properties", {})
    if not isinstance(properties, Mapping):
        raise UsageError(f"{where}: parameters['properties'] must map names to schemas")
    for name, schema in properties.items():
        if not isinstance(schema, Mapping):
            raise UsageError(f"{where}: the schema of parameter {name!r} must be an object, not {schema!r}")
    required = params.get("required", [])
    if isinstance(required, str) or not isinstance(required, Sequence):
        raise UsageError(f"{where}: parameters['required'] must be a list of names, not {required!r}")
    unknown = [name for name in required if name not in properties]
    if unknown:
        raise UsageError(f"{where}: required parameters {unknown} are not in its properties")
    return {name: dict(schema) for name, schema in properties.items()}, list(required)


def _ordered(schema: Mapping[str, Any], first: Sequence[str]) -> dict[str, Any]:
    """The schema with the keys `first` (those present) at the front, the others after in order."""
    out = {key: schema[key] for key in first if key in schema}
    out.update((key, value) for key, value in schema.items() if key not in out)
    return out


def _python_type(schema: Mapping[str, Any]) -> str:
    """The python name of a JSON schema's type: `int`, `str | None`, ..., `Any` when it says none."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return _PYTHON_TYPES.get(kind, kind)
    if isinstance(kind, list) and kind:
        return " | ".join(_PYTHON_TYPES.get(k, str(k)) for k in kind)
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return " | ".join(_python_type(o) if isinstance(o, Mapping) else "Any" for o in options)
    return "Any"


def _json_context(tool: ToolDefinition) -> dict[str, Any]:
    properties, required = _properties(tool)
    return {
        "name": tool.name,
        "description": tool.description,
        "properties": [{name: _ordered(s, ("type", "description"))} for name, s in properties.items()],
        "required": required,
    }


def _function_tag_context(tool: ToolDefinition) -> dict[str, Any]:
    properties, required = _properties(tool)
    params: dict[str, dict[str, Any]] = {}
    for name, schema in properties.items():
        param: dict[str, Any] = {}
        if "description" in schema:
            param["description"] = schema["description"]
        param["param_type"] = _python_type(schema)
        param["required"] = name in required
        if "default" in schema:
            param["default"] = schema["default"]
        params[name] = param
    spec = {"name": tool.name, "description": tool.description, "parameters": params}
    return {"name": tool.name, "description": tool.description, "spec": spec}


def _python_list_context(tool: ToolDefinition) -> dict[str, Any]:
    properties, required = _properties(tool)
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": {
            "type": "dict",
            "required": required,
            "properties": {
                name: _ordered(s, ("type", "description", "default")) for name, s in properties.items()
            },
        },
    }


def render_tool_definitions(tools: Sequence[ToolDefinition], tool_prompt_format: ToolPromptFormat) -> str:
    """The text that describes custom tools to the model, in one tool prompt format.

    - `json` and `function_tag` (Llama 3.1): the text of a user message, sent before the first
      question. Pair them with `render_system_prompt(ipython=True, ...)`.
    - `python_list` (Llama 3.2): the text of the system prompt (pass it as `instructions` to
      `render_system_prompt` to add a date).

    Tools are described in the order given; no tools gives `""` (send no message then). A tool whose
    `parameters` is not a JSON schema object, or requires a parameter it does not define, is a
    `UsageError`; so are two tools with one name, and an unknown format.
    """
    try:
        fmt = ToolPromptFormat(tool_prompt_format)
    except ValueError as e:
        known = ", ".join(f.value for f in ToolPromptFormat)
        raise UsageError(f"unknown tool prompt format {tool_prompt_format!r}; use one of: {known}") from e
    if isinstance(tools, ToolDefinition):
        raise UsageError("tools must be a sequence of ToolDefinition, not a single ToolDefinition")
    seen: set[str] = set()
    for tool in tools:
        if not isinstance(tool, ToolDefinition):
            raise UsageError(f"tools must be ToolDefinition objects, got {type(tool).__name__}: {tool!r}")
        if not tool.name:
            raise UsageError("a ToolDefinition needs a non-empty name")
        if tool.name in seen:
            raise UsageError(f"two tools are named {tool.name!r}; tool names must be unique")
        seen.add(tool.name)
    if not tools:
        return ""
    template = _env.get_template(_TEMPLATES[fmt])
    if fmt is ToolPromptFormat.json:
        return template.render(tools=[_json_context(t) for t in tools])
    if fmt is ToolPromptFormat.function_tag:
        return template.render(tools=[_function_tag_context(t) for t in tools])
    return template.render(functions=[_python_list_context(t) for t in tools])
