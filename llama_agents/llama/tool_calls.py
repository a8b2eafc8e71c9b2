"""Tool-call syntax of Llama 3.x: read calls out of assistant text, and write calls as the model does.

Pure functions over text: no tokens, no torch, no I/O. `ChatFormat` strips the header, the leading
`<|python_tag|>` and the stop token, and hands the rest (the *body*) to `parse_tool_calls`.

Shapes read (the whole body must be the call(s), modulo surrounding whitespace; prose that merely
contains something call-like is a plain answer):

- built-in: `brave_search.call(query="...")`, `wolfram_alpha.call(...)`, `photogen.call(...)`,
  `code_interpreter.call(code="...")`: any quoting Python allows, keyword arguments of literal
  values, several calls separated by newlines or `;`. Only `BuiltinTool` names are read this way.
- code: with the python tag, a body that is none of the structured shapes is code for
  `code_interpreter` (`{"code": body}`), kept verbatim, syntax errors included (the interpreter
  reports them to the model).
- JSON: `{"type": "function", "name": ..., "parameters": {...}}`, also with `"arguments"`, without
  `"type"`, or nested as `{"type": "function", "function": {...}}`; several objects separated by
  whitespace/newlines and/or `;`, or one JSON array of such objects.
- function tag: `<function=name>{...}</function>`, several in a row, the last `</function>` may be
  missing at the very end; arguments that are not JSON are read as a Python dict literal.
- python list: `[f(a=1, b="x"), g(c=[1, 2])]`: keyword arguments with literal values only, read
  from the syntax tree (never evaluated); `true`/`false`/`null` are accepted as JSON spellings.

A built-in name written in a custom shape (`{"name": "brave_search", ...}`) maps to the built-in
tool; arguments are kept as written (never renamed). Malformed or truncated output gives `[]`.

Writing (`encode_tool_calls`): built-in calls as `name.call(key="escaped literal")` one per line, a
lone code call as its raw code (when that reads back as the same code), and custom calls in the
requested `ToolPromptFormat` (JSON objects one per line, function tags back to back, python list
as one list). A message that mixes built-in and custom calls is written entirely in the custom
format, built-ins under their names, which reads back to the same built-in tools.

Not done here: deciding whether a call is allowed or its arguments valid (the tools do that), and
anything about tokens or stop reasons (`chat_format.py`).
"""

from __future__ import annotations

import ast
import json
import keyword
import logging
import math
import re
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

from llama_agents.errors import UsageError
from llama_agents.types import BuiltinTool, ToolCall, ToolPromptFormat

__all__ = ["encode_tool_calls", "parse_tool_calls", "uses_python_tag"]

logger = logging.getLogger(__name__)

_BUILTIN_NAMES = frozenset(t.value for t in BuiltinTool)
# The argument a built-in tool takes when the model passes it positionally.
_BUILTIN_MAIN_ARG = {
    BuiltinTool.brave_search: "query",
    BuiltinTool.wolfram_alpha: "query",
    BuiltinTool.photogen: "query",
    BuiltinTool.code_interpreter: "code",
}
_FUNCTION_OPEN = re.compile(r"<function=(?P<name>[^>]+)>")
_FUNCTION_CLOSE = "</function>"
# A built-in call the Python parser rejects, typically for unescaped quotes inside the query.
_LOOSE_BUILTIN = re.compile(
    r"(?P<name>\w+)\.call\(\s*(?P<key>\w+)\s*=\s*(?P<q>[\"'])(?P<value>.*)(?P=q)\s*\)",
    re.DOTALL,
)
_ATTEMPTED_PY_CALL = re.compile(
    r"\[\s*[A-Za-z_]\w*\s*\(|(?:" + "|".join(sorted(_BUILTIN_NAMES)) + r")\.call\s*\("
)
_JSON_DECODER = json.JSONDecoder()


class _NotACall(Exception):
    """Internal: the text is not the shape being tried."""


# --------------------------------------------------------------------------------------- parsing


def parse_tool_calls(body: str, *, python_tag: bool) -> list[ToolCall]:
    """Return every tool call in an assistant message body, each with a fresh call_id.

    `body` is the text after the header and the leading `<|python_tag|>`, before the stop token;
    `python_tag` says whether the message started with that tag. A plain answer, and any output
    that is malformed or truncated, gives `[]`. Never raises.
    """
    try:
        found = _parse(body, python_tag=python_tag)
        return [ToolCall(call_id=str(uuid.uuid4()), tool_name=name, arguments=args) for name, args in found]
    except Exception:  # the contract is "never raises": anything unforeseen is not a call
        logger.debug("tool-call parsing failed; keeping the body as content", exc_info=True)
        return []


def _parse(body: str, *, python_tag: bool) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    if not isinstance(body, str):
        return []
    text = body.strip()
    if not text:
        return []
    for parser in (_parse_builtin, _parse_json, _parse_function_tags, _parse_python_list):
        try:
            return parser(text)
        except _NotACall:
            continue
    if not python_tag:
        return []
    # With the python tag, anything that is not a (failed) structured call is code to run.
    if text.startswith(("{", "<function=")):
        return []
    module = _parse_python(text)
    if module is None and _ATTEMPTED_PY_CALL.match(text):
        return []
    if module is not None and _is_call_shaped(module):  # a call with non-literal arguments
        return []
    return [(BuiltinTool.code_interpreter, {"code": body})]


def _is_builtin_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "call"
        and isinstance(func.value, ast.Name)
        and func.value.id in _BUILTIN_NAMES
    )


def _is_call_shaped(module: ast.Module) -> bool:
    """Built-in `.call(...)` statements or a list of `name(...)` calls, whatever their arguments."""
    exprs = [stmt.value for stmt in module.body if isinstance(stmt, ast.Expr)]
    if not exprs or len(exprs) != len(module.body):
        return False
    if all(_is_builtin_call(e) for e in exprs):
        return True
    only = exprs[0]
    return (
        len(exprs) == 1
        and isinstance(only, ast.List)
        and bool(only.elts)
        and all(isinstance(e, ast.Call) and isinstance(e.func, ast.Name) for e in only.elts)
    )


def _tool_name(name: str) -> BuiltinTool | str:
    return BuiltinTool(name) if name in _BUILTIN_NAMES else name


def _parse_python(text: str) -> ast.Module | None:
    with warnings.catch_warnings():  # invalid escapes in model text warn; a library must stay quiet
        warnings.simplefilter("ignore")
        try:
            return ast.parse(text, mode="exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def _literal(node: ast.expr) -> Any:
    """A JSON value from a literal expression; raises _NotACall for anything else (never evaluates)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        raise _NotACall
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:  # {**x}
                raise _NotACall
            key = _literal(k)
            if not isinstance(key, str):
                raise _NotACall
            out[key] = _literal(v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if (
            isinstance(operand, ast.Constant)
            and isinstance(operand.value, (int, float))
            and not isinstance(operand.value, bool)
        ):
            value = -operand.value if isinstance(node.op, ast.USub) else operand.value
            if isinstance(value, float) and not math.isfinite(value):
                raise _NotACall
            return value
        raise _NotACall
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    raise _NotACall


def _keyword_args(call: ast.Call) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None or kw.arg in args:  # **kwargs, or a repeated name
            raise _NotACall
        args[kw.arg] = _literal(kw.value)
    return args


def _parse_builtin(text: str) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    module = _parse_python(text)
    if module is None:
        return _parse_loose_builtin(text)
    calls: list[tuple[BuiltinTool | str, dict[str, Any]]] = []
    for stmt in module.body:
        if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
            raise _NotACall
        call = stmt.value
        if not _is_builtin_call(call):
            raise _NotACall
        assert isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
        tool = BuiltinTool(call.func.value.id)
        args = _keyword_args(call)
        if call.args:
            main = _BUILTIN_MAIN_ARG[tool]
            if len(call.args) > 1 or main in args:
                raise _NotACall
            args = {main: _literal(call.args[0]), **args}
        calls.append((tool, args))
    if not calls:
        raise _NotACall
    return calls


def _parse_loose_builtin(text: str) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    # One built-in call whose string the Python parser rejects (`query="say "hi""`): everything
    # between the first and the last quote is the value, taken as written.
    if text.count(".call(") != 1:  # several calls: the greedy value would swallow the others
        raise _NotACall
    match = _LOOSE_BUILTIN.fullmatch(text)
    if match is None or match["name"] not in _BUILTIN_NAMES:
        raise _NotACall
    return [(BuiltinTool(match["name"]), {match["key"]: match["value"]})]


def _json_call(obj: Any) -> tuple[BuiltinTool | str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise _NotACall
    if obj.get("type", "function") != "function":
        raise _NotACall
    if "function" in obj and isinstance(obj["function"], dict) and "name" not in obj:
        return _json_call({"type": "function", **obj["function"]})
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _NotACall
    if "parameters" in obj and "arguments" in obj:
        raise _NotACall
    if "parameters" in obj or "arguments" in obj:
        args = obj.get("parameters", obj.get("arguments"))
    elif obj.get("type") == "function":
        args = {}
    else:  # {"name": "Bob"} alone is data, not a call
        raise _NotACall
    if isinstance(args, str):  # OpenAI style: arguments as a JSON-encoded string
        try:
            args = json.loads(args)
        except ValueError as e:
            raise _NotACall from e
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _NotACall
    return _tool_name(name.strip()), args


def _skip_separators(text: str, pos: int) -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
        pos += 1
    return pos


def _parse_json(text: str) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    if not text.startswith(("{", "[")):
        raise _NotACall
    calls: list[tuple[BuiltinTool | str, dict[str, Any]]] = []
    pos = 0
    while pos < len(text):
        try:
            obj, end = _JSON_DECODER.raw_decode(text, pos)
        except ValueError as e:
            raise _NotACall from e
        if isinstance(obj, list):
            if not obj:
                raise _NotACall
            calls.extend(_json_call(o) for o in obj)
        else:
            calls.append(_json_call(obj))
        pos = _skip_separators(text, end)
    return calls


def _parse_function_tags(text: str) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    calls: list[tuple[BuiltinTool | str, dict[str, Any]]] = []
    pos = 0
    while pos < len(text):
        match = _FUNCTION_OPEN.match(text, pos)
        if match is None:
            raise _NotACall
        name = match["name"].strip()
        if not name:
            raise _NotACall
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text.startswith(_FUNCTION_CLOSE, pos) or pos == len(text):
            args: Any = {}
        else:
            try:
                args, pos = _JSON_DECODER.raw_decode(text, pos)
            except ValueError:
                # Not JSON: a Python dict literal (single quotes, True/None) up to the closing tag.
                close = text.find(_FUNCTION_CLOSE, pos)
                end = len(text) if close < 0 else close
                args = _python_dict(text[pos:end])
                pos = end
        if not isinstance(args, dict):
            raise _NotACall
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text.startswith(_FUNCTION_CLOSE, pos):
            pos += len(_FUNCTION_CLOSE)
        elif pos < len(text):  # only the very last call may lack its closing tag
            raise _NotACall
        calls.append((_tool_name(name), args))
        pos = _skip_separators(text, pos)
    if not calls:
        raise _NotACall
    return calls


def _python_dict(source: str) -> dict[str, Any]:
    module = _parse_python(source.strip())
    if module is None or len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
        raise _NotACall
    value = _literal(module.body[0].value)
    if not isinstance(value, dict):
        raise _NotACall
    return value


def _parse_python_list(text: str) -> list[tuple[BuiltinTool | str, dict[str, Any]]]:
    if not text.startswith("["):
        raise _NotACall
    module = _parse_python(text)
    if module is None or len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
        raise _NotACall
    expr = module.body[0].value
    if not isinstance(expr, ast.List) or not expr.elts:
        raise _NotACall
    calls: list[tuple[BuiltinTool | str, dict[str, Any]]] = []
    for element in expr.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name) or element.args:
            raise _NotACall
        calls.append((_tool_name(element.func.id), _keyword_args(element)))
    return calls


# -------------------------------------------------------------------------------------- encoding


def uses_python_tag(calls: Sequence[ToolCall], tool_prompt_format: ToolPromptFormat) -> bool:
    """Whether a message with these calls starts with `<|python_tag|>`, as Llama 3.1 writes it.

    True for built-in calls (code included) and for JSON-format calls; False for function-tag and
    python-list calls (and for no calls).
    """
    if not calls:
        return False
    if all(isinstance(c.tool_name, BuiltinTool) for c in calls):
        return True
    return ToolPromptFormat(tool_prompt_format) == ToolPromptFormat.json


def encode_tool_calls(calls: Sequence[ToolCall], tool_prompt_format: ToolPromptFormat) -> str:
    """Write calls as the body of an assistant message (without `<|python_tag|>` or stop token).

    `parse_tool_calls(encode_tool_calls(c, f), python_tag=uses_python_tag(c, f))` gives back the
    same tool names and arguments. Raises `UsageError` for a call that cannot be written: an
    argument that is not a JSON value (finite numbers, strings, bools, None, lists, dicts with
    string keys), or a name or argument key the chosen format cannot spell (python_list needs
    identifiers). No calls give "".
    """
    try:
        fmt = ToolPromptFormat(tool_prompt_format)
    except ValueError as e:
        raise UsageError(
            f"unknown tool_prompt_format {tool_prompt_format!r}; "
            f"use one of {[f.value for f in ToolPromptFormat]}"
        ) from e
    for call in calls:
        if not isinstance(call, ToolCall):
            raise UsageError(f"encode_tool_calls takes ToolCall objects, not {type(call).__name__}")
        if not call.name or call.name != call.name.strip():
            raise UsageError(f"tool name {call.name!r} is empty or has surrounding whitespace")
        for key, value in call.arguments.items():
            _check_json(value, f"{call.name}.{key}")
    if not calls:
        return ""
    if all(isinstance(c.tool_name, BuiltinTool) for c in calls):
        if len(calls) == 1 and calls[0].tool_name == BuiltinTool.code_interpreter:
            code = calls[0].arguments.get("code")
            if set(calls[0].arguments) == {"code"} and isinstance(code, str) and _reads_as_code(code):
                return code
        return "\n".join(_encode_builtin(c) for c in calls)
    if fmt == ToolPromptFormat.json:
        return "\n".join(_encode_json(c) for c in calls)
    if fmt == ToolPromptFormat.function_tag:
        return "".join(_encode_function_tag(c) for c in calls)
    return "[" + ", ".join(_encode_python_call(c) for c in calls) + "]"


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"argument {where} is {value}; tool-call arguments must be finite numbers")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(
                    f"argument {where} has a non-string key {key!r}; JSON objects need string keys"
                )
            _check_json(item, f"{where}.{key}")
        return
    raise UsageError(
        f"argument {where} is a {type(value).__name__}; tool-call arguments must be JSON values "
        "(str, int, float, bool, None, list, dict)"
    )


def _reads_as_code(code: str) -> bool:
    try:
        parsed = _parse(code, python_tag=True)
    except Exception:
        return False
    return parsed == [(BuiltinTool.code_interpreter, {"code": code})]


def _py_str(s: str) -> str:
    """A double-quoted Python string literal for `s`, as the model writes queries."""
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])  # \x00, \u2028, \ud800, ...: always an escape here
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _py_value(value: Any) -> str:
    if isinstance(value, str):
        return _py_str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_value(v) for v in value) + "]"
    assert isinstance(value, dict), "checked by _check_json"
    return "{" + ", ".join(f"{_py_str(k)}: {_py_value(v)}" for k, v in value.items()) + "}"


def _py_keywords(call: ToolCall, form: str) -> str:
    for key in call.arguments:
        if not key.isidentifier() or keyword.iskeyword(key):
            raise UsageError(
                f"argument name {key!r} of {call.name} cannot be written as a keyword in the {form} "
                "form; use ToolPromptFormat.json, which takes any name"
            )
    return ", ".join(f"{k}={_py_value(v)}" for k, v in call.arguments.items())


def _encode_builtin(call: ToolCall) -> str:
    return f"{call.name}.call({_py_keywords(call, 'built-in call')})"


def _encode_python_call(call: ToolCall) -> str:
    if not call.name.isidentifier() or keyword.iskeyword(call.name):
        raise UsageError(
            f"tool name {call.name!r} is not a Python identifier, so python_list cannot write it; "
            "use ToolPromptFormat.json"
        )
    return f"{call.name}({_py_keywords(call, 'python_list')})"


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them rather than emit invalid UTF-8
        text = json.dumps(value)
    return text


def _encode_json(call: ToolCall) -> str:
    return _dumps({"type": "function", "name": call.name, "parameters": call.arguments})


def _encode_function_tag(call: ToolCall) -> str:
    if ">" in call.name or "\n" in call.name:
        raise UsageError(
            f"tool name {call.name!r} contains '>' or a newline, which function_tag cannot write; "
            "use ToolPromptFormat.json"
        )
    return f"<function={call.name}>{_dumps(call.arguments)}</function>"
