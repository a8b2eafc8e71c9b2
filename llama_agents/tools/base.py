"""The Tool interface, its result type, and the `@tool` decorator that makes a Tool of a function.

What it does: `Tool` is the base class every tool subclasses (the built-in web tools, the code
interpreter, tools made by `@tool`). Subclasses implement `async def run(self, arguments)`; the base
class's `acall` validates the arguments (when the tool declares an `args_model`), runs the tool and
turns what happens into a `ToolResult`:

- the model's mistakes (bad or unknown arguments) and the tool's failures (an exception inside the
  tool, a `ModelRetry`) become an error result (`is_error=True`) whose text the model can act on;
- the developer's mistakes (`UsageError` and its children, such as a missing or rejected API key)
  and run limits (`RunLimitExceeded`) are raised, because no retry by the model can fix them.

What it does not do: choose which tool to call, render the tool into a prompt (that is
`prompts/`), or time out a synchronous function (a thread cannot be killed; tools that can hang
must bound their own time, as the web tools do).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, overload

import pydantic_core
from pydantic import BaseModel, ValidationError

from llama_agents.errors import ModelRetry, RunLimitExceeded, UsageError
from llama_agents.tools._schema import ArgsSpec, build_args_spec, describe_validation_error, object_schema
from llama_agents.tools._schema import parse_docstring as _parse_docstring
from llama_agents.types import BuiltinTool, ToolDefinition

__all__ = ["FunctionTool", "Tool", "ToolResult", "tool"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ToolResult(BaseModel):
    """What a tool call produced.

    `content` is the text the model reads. `is_error` marks a failure the model should see and may
    correct. `data` keeps the structured value behind `content` (the function's return value, the
    parsed API answer) for the program, never shown to the model.
    """

    content: str
    is_error: bool = False
    data: Any = None

    @classmethod
    def error(cls, message: str, data: Any = None) -> ToolResult:
        """An error result with `message` as what the model reads."""
        return cls(content=message, is_error=True, data=data)


class Tool:
    """Base class of every tool.

    Set `name`, `description` and either `parameters` (a JSON schema of type object) or
    `args_model` (a pydantic model: the schema is derived from it and the model's arguments are
    validated against it before `run`), and `builtin` for the tools Llama 3.1 knows natively.
    Implement `async def run(self, arguments) -> ToolResult | Any`: a `ToolResult` is passed
    through, a `str` becomes the content, anything else is JSON-serialised. Raise `ModelRetry`
    to send the model a message to act on; any other exception becomes an error result too.
    Override `reset` (new conversation) and `close` (release resources) when the tool holds state.
    Set `repeatable = True` for a tool whose result may differ for the same arguments (a clock, a
    random draw, a counter): the agent then runs a repeated call again instead of answering it with
    a notice that points to the earlier result.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any]
    builtin: BuiltinTool | None = None
    repeatable: bool = False
    args_model: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "parameters" not in cls.__dict__ and cls.__dict__.get("args_model") is not None:
            cls.parameters = object_schema(cls.args_model)  # type: ignore[arg-type]

    def definition(self) -> ToolDefinition:
        """What the prompt templates render for this tool: name, description, parameters."""
        parameters = getattr(self, "parameters", None) or {"type": "object", "properties": {}}
        return ToolDefinition(name=self.name, description=self.description, parameters=parameters)

    async def run(self, arguments: dict[str, Any]) -> Any:
        """Do the work. `arguments` are already validated when the tool has an `args_model`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def run(self, arguments)`")

    async def acall(self, arguments: dict[str, Any]) -> ToolResult:
        """Run the tool on the arguments a model wrote. Never raises for the model's mistakes or the
        tool's failures (those come back with `is_error=True`); raises `UsageError` for the developer's."""
        validated = self._validate(arguments)
        if isinstance(validated, ToolResult):
            return validated
        try:
            value = await self._invoke(validated)
        except Exception as e:
            return self._failure(e)
        return to_tool_result(value)

    def call(self, arguments: dict[str, Any]) -> ToolResult:
        """Synchronous `acall`. Works outside an event loop and inside one (it then runs the call on
        its own loop in a worker thread and blocks the caller until it finishes)."""
        return run_sync(lambda: self.acall(arguments))

    def reset(self) -> None:
        """Forget per-conversation state (a new conversation starts). Stateless tools do nothing."""

    def close(self) -> None:
        """Release resources (processes, connections). The tool may not be used afterwards."""

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        builtin = f", builtin={self.builtin.value}" if self.builtin is not None else ""
        return f"{type(self).__name__}(name={self.name!r}{builtin})"

    # -- the machinery behind acall ------------------------------------------------------------

    def _arguments_model(self) -> type[BaseModel] | None:
        return self.args_model

    def _validate(self, arguments: Any) -> dict[str, Any] | BaseModel | ToolResult:
        """The validated arguments, or the error result that tells the model what was wrong."""
        if not isinstance(arguments, dict):
            return ToolResult.error(
                f"Arguments for tool {self.name!r} must be a JSON object of named arguments, "
                f"got {type(arguments).__name__}: {arguments!r:.200}"
            )
        model = self._arguments_model()
        if model is None:
            return arguments
        schema = getattr(self, "parameters", None) or {}
        try:
            validated = model.model_validate(arguments)
        except ValidationError as e:
            return ToolResult.error(describe_validation_error(self.name, e, schema))
        if model.model_config.get("extra") in (None, "ignore"):  # unknown names must not pass silently
            known = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
            unknown = [name for name in arguments if name not in known]
            if unknown:
                takes = ", ".join(schema.get("properties", {})) or "no arguments"
                return ToolResult.error(
                    f"Invalid arguments for tool {self.name!r}:\n- unexpected argument(s) "
                    f"{', '.join(repr(n) for n in unknown)}; {self.name} takes: {takes}\n"
                    "Fix the arguments and call the tool again."
                )
        return validated

    async def _invoke(self, validated: dict[str, Any] | BaseModel) -> Any:
        if isinstance(validated, BaseModel):
            validated = validated.model_dump()
        return await self.run(validated)

    def _failure(self, error: Exception) -> ToolResult:
        """An exception from inside the tool as an error result; the developer's errors re-raised."""
        if isinstance(error, (UsageError, RunLimitExceeded)):
            raise error
        if isinstance(error, ModelRetry):
            return ToolResult.error(str(error) or f"Tool {self.name!r} asked the model to try again.")
        logger.warning("tool %r failed", self.name, exc_info=error)
        message = str(error).strip()
        detail = f"{type(error).__name__}: {message}" if message else type(error).__name__
        return ToolResult.error(f"Tool {self.name!r} failed: {detail}")


def to_tool_result(value: Any) -> ToolResult:
    """A tool's return value as a ToolResult: str as is, anything else as compact JSON."""
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, str):
        return ToolResult(content=value)
    if isinstance(value, BaseModel):
        return ToolResult(content=value.model_dump_json(), data=value)
    try:
        content = pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError:
        logger.debug("tool result of type %s is not JSON-serialisable; using str()", type(value).__name__)
        content = str(value)
    return ToolResult(content=content, data=value)


def run_sync(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run the awaitable `make()` to completion from synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(make))
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tool-call") as pool:
        return pool.submit(context.run, asyncio.run, _await(make)).result()


async def _await(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()


class FunctionTool(Tool):
    """A Tool made from a plain typed function (sync or async) by `@tool`.

    Calling the object calls the function itself, unchanged. Sync functions run in a worker thread
    from `acall` (so they do not block the event loop) and directly from `call`.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        repeatable: bool = False,
    ):
        if not callable(fn):
            raise UsageError(f"@tool needs a function, got {type(fn).__name__}: {fn!r:.100}")
        if isinstance(fn, Tool):
            raise UsageError(f"{fn!r} is already a Tool; do not apply @tool twice.")
        tool_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(tool_name, str) or not _NAME.match(tool_name):
            raise UsageError(
                f"tool name {tool_name!r} is not a valid identifier (letters, digits, _; not starting with "
                "a digit): the model writes it in its calls. Pass @tool(name='...')."
            )
        if tool_name in BuiltinTool.__members__:
            raise UsageError(
                f"tool name {tool_name!r} is reserved for the Llama built-in tool of that name. Use the "
                "built-in class (BraveSearch, WolframAlpha, CodeInterpreter) or choose another name."
            )
        summary, param_docs = _parse_docstring(inspect.getdoc(fn))
        self.fn = fn
        self.name = tool_name
        self.repeatable = repeatable
        self.description = description if description is not None else summary
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an async callable object
        )
        self.spec: ArgsSpec = build_args_spec(fn, tool_name, param_docs)
        self.parameters = self.spec.schema
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _arguments_model(self) -> type[BaseModel]:
        return self.spec.model

    async def _invoke(self, validated: dict[str, Any] | BaseModel) -> Any:
        assert isinstance(validated, BaseModel)
        args, kwargs = self.spec.to_call(validated)
        if self.is_async:
            return await self.fn(*args, **kwargs)
        result = await asyncio.to_thread(self.fn, *args, **kwargs)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            result = await result
        return result

    async def run(self, arguments: dict[str, Any]) -> Any:
        """Validate `arguments` and call the function (what `acall` does, without the error handling)."""
        return await self._invoke(self.spec.model.model_validate(arguments))

    def call(self, arguments: dict[str, Any]) -> ToolResult:
        if self.is_async:
            return super().call(arguments)
        # A sync function runs right here in the caller's thread, with no event loop in between.
        validated = self._validate(arguments)
        if isinstance(validated, ToolResult):
            return validated
        assert isinstance(validated, BaseModel)
        args, kwargs = self.spec.to_call(validated)
        try:
            value = self.fn(*args, **kwargs)
            if inspect.isawaitable(value):
                awaitable = value
                value = run_sync(lambda: awaitable)
        except Exception as e:
            return self._failure(e)
        return to_tool_result(value)


@overload
def tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    repeatable: bool = False,
) -> FunctionTool: ...
@overload
def tool(
    fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    repeatable: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    repeatable: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a Tool of a typed function: `@tool` or `@tool(name=..., description=..., repeatable=...)`.

    The JSON schema comes from the type hints (str, int, float, bool, Literal, Enum, list[X],
    dict[str, X], X | None, pydantic models; a default makes a parameter optional), the description
    from the docstring's summary and each parameter's description from its `Args:` section.
    """
    if fn is None:
        return lambda f: FunctionTool(f, name=name, description=description, repeatable=repeatable)
    return FunctionTool(fn, name=name, description=description, repeatable=repeatable)
