"""Turn a typed Python function into a pydantic arguments model and a compact JSON schema.

What it does: read a function's signature and type hints, read parameter descriptions from its
docstring (Google style `Args:` sections, or Sphinx `:param x:` lines), build a pydantic model that
validates and coerces the arguments a model writes, and derive the JSON schema shown to the model
(titles dropped, `$ref`s inlined so the model sees each parameter's whole type in place). It also
words pydantic validation errors so a model can correct its call.

What it does not do: call the function, or decide what counts as a model's mistake; that is
`base.py`. Developer mistakes found here raise `UsageError` with the fix in the message.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from llama_agents.errors import UsageError

__all__ = [
    "ArgsSpec",
    "build_args_spec",
    "describe_validation_error",
    "object_schema",
    "parse_docstring",
]

_SECTION = re.compile(
    r"^(args|arguments|parameters|params|keyword args|keyword arguments|other parameters|returns?|yields?|"
    r"raises|exceptions?|examples?|notes?|warnings?|see also|attributes|todo|references)\s*:\s*$",
    re.IGNORECASE,
)
_ARG_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_ARG_LINE = re.compile(r"^\*{0,2}(?P<name>[A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(?P<desc>.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<desc>.*)$")
_SPHINX_FIELD = re.compile(r"^:(?:type|rtype|returns?|raises?)\b[^:]*:")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into (summary, {parameter: description}).

    The summary is the text before the first section header (`Args:`, `Returns:`, ...), with
    paragraphs kept. Parameter descriptions come from a Google-style `Args:` section (continuation
    lines joined with a space) or from Sphinx `:param name: text` lines.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    sphinx_current: str | None = None
    for raw in lines:
        line = raw.rstrip()
        stripped = line.strip()
        header = _SECTION.match(stripped)
        if header and (len(line) - len(line.lstrip())) == 0:
            section, entry_indent, current, sphinx_current = header.group(1).lower(), None, None, None
            continue
        sphinx = _SPHINX_PARAM.match(stripped)
        if sphinx:
            sphinx_current = sphinx.group("name")
            params[sphinx_current] = sphinx.group("desc").strip()
            section = "sphinx"
            continue
        if _SPHINX_FIELD.match(stripped):
            section, sphinx_current = "sphinx-other", None
            continue
        if section is None:
            summary.append(line)
        elif section == "sphinx":
            if stripped and sphinx_current is not None:
                params[sphinx_current] = f"{params[sphinx_current]} {stripped}".strip()
        elif section in _ARG_SECTIONS:
            if not stripped:
                continue
            indent = len(line) - len(line.lstrip())
            if entry_indent is None:
                entry_indent = indent
            match = _ARG_LINE.match(stripped)
            if indent <= entry_indent and match:
                current = match.group("name")
                params[current] = match.group("desc").strip()
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()
    text = "\n".join(summary).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text, params


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The compact JSON schema of an arguments model: no titles, `$ref`s inlined where not recursive."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    kept: dict[str, Any] = {}
    schema = _inline(schema, defs, (), kept)
    if kept:
        schema["$defs"] = {name: _inline(defs[name], defs, (name,), kept) for name in sorted(kept)}
    schema.pop("title", None)
    schema.pop("additionalProperties", None)  # extra arguments are rejected by validation, not the prompt
    schema.setdefault("properties", {})
    schema["type"] = "object"
    return schema


def _inline(node: Any, defs: dict[str, Any], stack: tuple[str, ...], kept: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, stack, kept) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in stack or name not in defs:  # recursive: keep the reference and its definition
            kept[name] = True
            return dict(node)
        extra = {k: v for k, v in node.items() if k != "$ref"}
        inlined = _inline(copy.deepcopy(defs[name]), defs, (*stack, name), kept)
        inlined.pop("title", None)
        inlined.update(_inline(extra, defs, stack, kept))
        return inlined
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _inline(sub, defs, stack, kept) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs, stack, kept)
    return out


class ArgsSpec:
    """How to validate a function's arguments and call it with them.

    `model` validates a dict of arguments by parameter name (extra names are forbidden);
    `to_call(validated)` gives the (args, kwargs) to call the function with.
    """

    def __init__(self, model: type[BaseModel], fields: list[tuple[str, str, inspect._ParameterKind]]):
        self.model = model
        self._fields = fields  # (field name in the model, parameter name, kind)
        self.schema = object_schema(model)

    @property
    def parameter_names(self) -> list[str]:
        return [param for _, param, _ in self._fields]

    def to_call(self, validated: BaseModel) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field, param, kind in self._fields:
            value = getattr(validated, field)
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[param] = value
        return args, kwargs


def build_args_spec(fn: Callable[..., Any], tool_name: str, param_docs: dict[str, str]) -> ArgsSpec:
    """Build the arguments model of `fn`; raise `UsageError` for what cannot be a tool parameter."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise UsageError(f"@tool cannot read the signature of {fn!r}: {e}. Wrap it in a plain def.") from e
    try:
        hints = _type_hints(fn)
    except Exception as e:
        raise UsageError(
            f"@tool could not resolve the type hints of {tool_name!r}: {type(e).__name__}: {e}. "
            "Make every annotation importable at module level."
        ) from e
    definitions: dict[str, Any] = {}
    fields: list[tuple[str, str, inspect._ParameterKind]] = []
    for index, (pname, param) in enumerate(signature.parameters.items()):
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise UsageError(
                f"tool {tool_name!r}: *{pname} is not supported: a model passes arguments by name. "
                f"Replace it with a named parameter such as `{pname}: list[...]`."
            )
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            raise UsageError(
                f"tool {tool_name!r}: **{pname} is not supported: the model must be told every parameter. "
                f"Declare each one by name with a type hint, or take `{pname}: dict[str, ...]`."
            )
        if pname not in hints:
            raise UsageError(
                f"tool {tool_name!r}: parameter {pname!r} has no type hint, so its JSON schema cannot be "
                f"built. Annotate it, e.g. `{pname}: str`."
            )
        field_kwargs: dict[str, Any] = {"alias": pname}
        if param_docs.get(pname):
            field_kwargs["description"] = param_docs[pname]
        default = ... if param.default is inspect.Parameter.empty else param.default
        field = f"p{index}"
        definitions[field] = (hints[pname], Field(default, **field_kwargs))
        fields.append((field, pname, param.kind))
    try:
        model = create_model(  # type: ignore[call-overload]
            f"{_camel(tool_name)}Arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
            **definitions,
        )
        return ArgsSpec(model, fields)
    except Exception as e:
        culprit = _first_unsupported(definitions, fields)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"tool {tool_name!r}: cannot build a JSON schema for {culprit}: {first_line} "
            "Use JSON-friendly types: str, int, float, bool, Literal, Enum, list[X], dict[str, X], "
            "X | None, or a pydantic model."
        ) from e


def _first_unsupported(
    definitions: dict[str, Any], fields: list[tuple[str, str, inspect._ParameterKind]]
) -> str:
    for field, param, _ in fields:
        annotation = definitions[field][0]
        try:
            TypeAdapter(annotation).json_schema()
        except Exception:
            return f"parameter {param!r} ({getattr(annotation, '__name__', annotation)!s})"
    return "its parameters"


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    target = fn
    if not (inspect.isfunction(target) or inspect.ismethod(target)) and callable(target):
        target = type(target).__call__  # a callable object: its __call__ carries the hints
    return typing.get_type_hints(target, include_extras=True)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part) or "Tool"


def describe_validation_error(tool_name: str, error: ValidationError, spec_schema: dict[str, Any]) -> str:
    """Word a validation error for the model: each bad field, what was given, what was expected."""
    properties: dict[str, Any] = spec_schema.get("properties", {})
    lines: list[str] = []
    extras: list[str] = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item.get("loc", ())]
        kind = item.get("type", "")
        if kind == "extra_forbidden" and len(loc) == 1:
            extras.append(loc[0])
            continue
        where = ".".join(loc) if loc else "(arguments)"
        top = properties.get(loc[0]) if loc else None
        expected = f"; expected {_describe_type(top)}" if top is not None and len(loc) == 1 else ""
        if kind == "missing":
            lines.append(f"- {where}: missing required argument{expected}")
        else:
            given = item.get("input")
            lines.append(f"- {where}: {item.get('msg', 'invalid value')} (got {_short(given)}){expected}")
    if extras:
        known = ", ".join(properties) or "no arguments"
        names = ", ".join(repr(name) for name in extras)
        lines.append(f"- unexpected argument(s) {names}; {tool_name} takes: {known}")
    body = "\n".join(lines)
    return f"Invalid arguments for tool {tool_name!r}:\n{body}\nFix the arguments and call the tool again."


def _describe_type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(_short(v) for v in schema["enum"])
    if "const" in schema:
        return _short(schema["const"])
    if "anyOf" in schema:
        return " or ".join(_describe_type(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_describe_type(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_describe_type(schema['additionalProperties'])}"
    if kind == "object" and "properties" in schema:
        return "object with " + ", ".join(schema["properties"])
    return str(kind) if kind else "a value matching the schema"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
