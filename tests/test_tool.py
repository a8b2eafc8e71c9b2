"""Tests of Tool and @tool: schemas from hints and docstrings, validation, errors, sync and async."""

from __future__ import annotations

import asyncio
import json
import threading
from enum import Enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from llama_agents.errors import ModelRetry, ToolConfigurationError, UsageError
from llama_agents.tools import FunctionTool, Tool, ToolResult, tool
from llama_agents.tools._schema import parse_docstring
from llama_agents.types import ToolDefinition


class Color(Enum):
    red = "red"
    green = "green"


class Priority(int, Enum):
    low = 1
    high = 2


class Point(BaseModel):
    """A point on the plane."""

    x: int
    y: int = 0


class Node(BaseModel):
    value: int
    children: list[Node] = []


def _props(t: FunctionTool) -> dict[str, Any]:
    return t.parameters["properties"]


# -- schema generation ------------------------------------------------------------------------


def test_schema_for_every_supported_type() -> None:
    @tool
    def f(
        s: str,
        i: int,
        x: float,
        b: bool,
        lit: Literal["celsius", "fahrenheit"],
        color: Color,
        prio: Priority,
        items: list[int],
        scores: dict[str, float],
        maybe: str | None,
        point: Point,
        opt_point: Point | None = None,
        n: int = 3,
    ) -> str:
        return "ok"

    schema = f.parameters
    assert schema["type"] == "object"
    assert schema["required"] == [
        "s",
        "i",
        "x",
        "b",
        "lit",
        "color",
        "prio",
        "items",
        "scores",
        "maybe",
        "point",
    ]
    props = schema["properties"]
    assert props["s"] == {"type": "string"}
    assert props["i"] == {"type": "integer"}
    assert props["x"] == {"type": "number"}
    assert props["b"] == {"type": "boolean"}
    assert props["lit"] == {"enum": ["celsius", "fahrenheit"], "type": "string"}
    assert props["color"] == {"enum": ["red", "green"], "type": "string"}
    assert props["prio"] == {"enum": [1, 2], "type": "integer"}
    assert props["items"] == {"type": "array", "items": {"type": "integer"}}
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["maybe"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    # pydantic models are inlined (no $ref for the model to chase), without titles
    assert props["point"] == {
        "description": "A point on the plane.",
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0}},
        "required": ["x"],
    }
    assert props["opt_point"]["anyOf"][0]["properties"]["x"] == {"type": "integer"}
    assert props["opt_point"]["default"] is None
    assert props["n"] == {"type": "integer", "default": 3}
    assert "$defs" not in schema and "title" not in json.dumps(schema)


def test_recursive_model_keeps_its_definition() -> None:
    @tool
    def walk(tree: Node) -> int:
        return tree.value

    schema = walk.parameters
    node = schema["properties"]["tree"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["value"] == {"type": "integer"}
    assert walk.call({"tree": {"value": 1, "children": [{"value": 2}]}}).content == "1"


def test_descriptions_from_google_docstring() -> None:
    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> str:
        """Get the weather forecast for a city.

        Uses the national weather service.

        Args:
            city (str): The city's name,
                in English.
            unit: Temperature unit.
            days: How many days ahead.

        Returns:
            The forecast as text.
        """
        return city

    assert get_weather.name == "get_weather"
    assert (
        get_weather.description
        == "Get the weather forecast for a city.\n\nUses the national weather service."
    )
    props = _props(get_weather)
    assert props["city"]["description"] == "The city's name, in English."
    assert props["unit"]["description"] == "Temperature unit."
    assert props["days"] == {"type": "integer", "default": 1, "description": "How many days ahead."}
    assert get_weather.parameters["required"] == ["city"]


def test_descriptions_from_sphinx_docstring_and_annotated_field() -> None:
    @tool
    def convert(amount: float, currency: Annotated[str, Field(description="ISO 4217 code")]) -> str:
        """Convert money.

        :param amount: How much money.
        :returns: the converted amount.
        """
        return ""

    assert convert.description == "Convert money."
    assert _props(convert)["amount"]["description"] == "How much money."
    assert _props(convert)["currency"]["description"] == "ISO 4217 code"


def test_parse_docstring_edge_cases() -> None:
    assert parse_docstring(None) == ("", {})
    summary, params = parse_docstring("Just a summary.")
    assert (summary, params) == ("Just a summary.", {})
    summary, params = parse_docstring(
        "Sum.\n\nArgs:\n    *values: Numbers.\n    **opts: Options.\nRaises:\n  X: y"
    )
    assert summary == "Sum." and params == {"values": "Numbers.", "opts": "Options."}


def test_name_and_description_overrides_and_definition() -> None:
    @tool(name="lookup_user", description="Find a user by id.")
    def find(user_id: int) -> str:
        """Ignored summary."""
        return str(user_id)

    assert isinstance(find, Tool) and find.name == "lookup_user"
    definition = find.definition()
    assert isinstance(definition, ToolDefinition)
    assert definition.name == "lookup_user"
    assert definition.description == "Find a user by id."
    assert definition.required == ["user_id"]
    assert definition.properties == {"user_id": {"type": "integer"}}
    assert find.builtin is None


def test_parameter_names_that_clash_with_pydantic_attributes() -> None:
    @tool
    def odd(json: str, schema: int, model_config: bool = False, _private: int = 0) -> dict:
        return {"json": json, "schema": schema, "model_config": model_config, "_private": _private}

    assert set(_props(odd)) == {"json", "schema", "model_config", "_private"}
    result = odd.call({"json": "a", "schema": "2", "model_config": True, "_private": 5})
    assert json.loads(result.content) == {"json": "a", "schema": 2, "model_config": True, "_private": 5}


def test_positional_only_and_keyword_only_parameters() -> None:
    @tool
    def f(a: int, /, b: int, *, c: int = 10) -> int:
        return a * 100 + b * 10 + c

    assert f.parameters["required"] == ["a", "b"]
    assert f.call({"a": 1, "b": 2, "c": 3}).content == "123"
    assert f.call({"a": 1, "b": 2}).content == "130"


# -- coercion and validation ------------------------------------------------------------------


def test_arguments_are_coerced_to_declared_types() -> None:
    seen: dict[str, Any] = {}

    @tool
    def f(
        i: int, x: float, b: bool, color: Color, items: list[int], point: Point, maybe: int | None = None
    ) -> str:
        seen.update(i=i, x=x, b=b, color=color, items=items, point=point, maybe=maybe)
        return "done"

    result = f.call(
        {
            "i": "10",
            "x": "2.5",
            "b": "true",
            "color": "green",
            "items": ["1", 2],
            "point": {"x": "4"},
            "maybe": None,
        }
    )
    assert result == ToolResult(content="done")
    assert seen == {
        "i": 10,
        "x": 2.5,
        "b": True,
        "color": Color.green,
        "items": [1, 2],
        "point": Point(x=4, y=0),
        "maybe": None,
    }
    assert type(seen["i"]) is int and isinstance(seen["point"], Point)


def test_validation_error_names_field_value_and_expected_type() -> None:
    calls: list[Any] = []

    @tool
    def f(count: int, unit: Literal["c", "f"], tags: list[str]) -> str:
        calls.append(count)
        return "never"

    result = f.call({"count": "ten", "unit": "kelvin", "tags": ["a", 3]})
    assert result.is_error and calls == []
    text = result.content
    assert text.startswith("Invalid arguments for tool 'f':")
    assert "- count: Input should be a valid integer" in text and "(got 'ten'); expected integer" in text
    assert "- unit: Input should be 'c' or 'f' (got 'kelvin'); expected one of 'c', 'f'" in text
    assert "- tags.1: Input should be a valid string (got 3)" in text
    assert text.endswith("Fix the arguments and call the tool again.")


def test_missing_and_unknown_arguments_are_named() -> None:
    @tool
    def f(city: str, days: int = 1) -> str:
        return city

    result = f.call({"days": 2, "cty": "Paris", "verbose": True})
    assert result.is_error
    assert "- city: missing required argument; expected string" in result.content
    assert "- unexpected argument(s) 'cty', 'verbose'; f takes: city, days" in result.content


def test_arguments_that_are_not_an_object() -> None:
    @tool
    def f(city: str) -> str:
        return city

    result = f.call(["Paris"])  # type: ignore[arg-type]
    assert result.is_error
    assert "must be a JSON object of named arguments, got list" in result.content


# -- errors inside tools ----------------------------------------------------------------------


def test_exception_in_tool_becomes_error_result_without_traceback() -> None:
    @tool
    def divide(a: float, b: float) -> float:
        return a / b

    result = divide.call({"a": 1, "b": 0})
    assert result.is_error
    assert result.content == "Tool 'divide' failed: ZeroDivisionError: float division by zero"
    assert "Traceback" not in result.content
    assert divide.call({"a": 1, "b": 4}).content == "0.25"


def test_model_retry_message_is_the_result() -> None:
    @tool
    async def lookup(user_id: int) -> str:
        if user_id < 0:
            raise ModelRetry("user_id must be positive; list users with list_users() first")
        return "alice"

    result = lookup.call({"user_id": -1})
    assert result == ToolResult(
        content="user_id must be positive; list users with list_users() first", is_error=True
    )


def test_developer_errors_are_raised_not_fed_back() -> None:
    @tool
    def needs_key(q: str) -> str:
        raise ToolConfigurationError("set MY_KEY")

    with pytest.raises(ToolConfigurationError, match="set MY_KEY"):
        needs_key.call({"q": "x"})
    with pytest.raises(ToolConfigurationError, match="set MY_KEY"):
        asyncio.run(needs_key.acall({"q": "x"}))


# -- sync and async ---------------------------------------------------------------------------


def test_sync_tool_runs_off_the_event_loop_from_acall() -> None:
    threads: list[int] = []
    both_running = threading.Barrier(2, timeout=10)

    @tool
    def slow(n: int) -> int:
        threads.append(threading.get_ident())
        both_running.wait()  # passes only while both calls run at once (in turn: BrokenBarrierError)
        return n

    async def main() -> list[ToolResult]:
        return await asyncio.gather(slow.acall({"n": 1}), slow.acall({"n": 2}))

    results = asyncio.run(main())
    assert [(r.content, r.is_error) for r in results] == [("1", False), ("2", False)]
    assert threading.get_ident() not in threads and len(set(threads)) == 2
    # call() runs a sync function right in the caller's thread (alone: a one-party barrier)
    both_running = threading.Barrier(1)
    threads.clear()
    assert slow.call({"n": 3}).content == "3" and threads == [threading.get_ident()]


def test_async_tool_call_and_acall() -> None:
    @tool
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert add.is_async
    assert add.call({"a": "2", "b": 3}) == ToolResult(content="5", data=5)
    assert asyncio.run(add.acall({"a": 2, "b": 3})).content == "5"


def test_call_works_inside_a_running_event_loop() -> None:
    @tool
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @tool
    def mul(a: int, b: int) -> int:
        return a * b

    async def main() -> tuple[ToolResult, ToolResult]:
        return add.call({"a": 1, "b": 2}), mul.call({"a": 3, "b": 4})

    assert [r.content for r in asyncio.run(main())] == ["3", "12"]


def test_decorated_object_stays_callable_as_the_function() -> None:
    def area(w: float, h: float = 1.0) -> float:
        """Area of a rectangle."""
        return w * h

    t = tool(area)
    assert t(2, h=3) == 6
    assert t.__name__ == "area" and t.__doc__ == "Area of a rectangle." and t.__wrapped__ is area

    @tool
    async def ping() -> str:
        return "pong"

    assert asyncio.run(ping()) == "pong"
    assert ping.parameters == {"type": "object", "properties": {}}
    assert ping.call({}).content == "pong"


def test_bound_methods_and_callable_objects() -> None:
    class Counter:
        def __init__(self) -> None:
            self.total = 0

        def add(self, n: int) -> int:
            """Add n to the counter."""
            self.total += n
            return self.total

    counter = Counter()
    t = tool(counter.add)
    assert list(_props(t)) == ["n"]
    assert t.call({"n": "5"}).content == "5" and counter.total == 5


# -- return values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("plain text", "plain text"),
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "é"], '[1,"é"]'),
        (3.5, "3.5"),
        (None, "null"),
        (True, "true"),
        (Point(x=1), '{"x":1,"y":0}'),
        (Color.red, '"red"'),
    ],
)
def test_return_values_become_text(value: Any, content: str) -> None:
    @tool
    def f() -> Any:
        return value

    result = f.call({})
    assert result.content == content and not result.is_error
    assert result.data == (None if isinstance(value, str) else value)


def test_tool_result_is_passed_through_and_unserialisable_falls_back_to_str() -> None:
    @tool
    def f(fail: bool) -> Any:
        return ToolResult(content="custom", is_error=fail)

    assert f.call({"fail": True}) == ToolResult(content="custom", is_error=True)

    class Opaque:
        def __str__(self) -> str:
            return "opaque-object"

    @tool
    def g() -> Any:
        return Opaque()

    assert g.call({}).content == "opaque-object"


# -- developer mistakes at decoration time ------------------------------------------------------


def test_missing_type_hint_raises_with_the_fix() -> None:
    def f(city, days: int) -> str:  # type: ignore[no-untyped-def]
        return ""

    with pytest.raises(UsageError, match=r"parameter 'city' has no type hint.*`city: str`"):
        tool(f)


def test_var_args_and_kwargs_are_rejected() -> None:
    def f(*names: str) -> str:
        return ""

    def g(**opts: str) -> str:
        return ""

    with pytest.raises(UsageError, match=r"\*names is not supported"):
        tool(f)
    with pytest.raises(UsageError, match=r"\*\*opts is not supported"):
        tool(g)


def test_bad_callables_and_names_are_rejected() -> None:
    with pytest.raises(UsageError, match="needs a function, got int"):
        tool(42)  # type: ignore[call-overload]
    with pytest.raises(UsageError, match=r"not a valid identifier.*@tool\(name="):
        tool(lambda x: x)  # a lambda's name is '<lambda>'
    with pytest.raises(UsageError, match="reserved for the Llama built-in tool"):
        tool(name="brave_search")(lambda query: query)
    with pytest.raises(UsageError, match="already a Tool"):

        @tool
        @tool
        def f() -> str:
            return ""


def test_unsupported_parameter_type_is_rejected() -> None:
    def f(lock: threading.Lock) -> str:  # type: ignore[valid-type]
        return ""

    with pytest.raises(
        UsageError, match=r"cannot build a JSON schema for parameter 'lock'.*JSON-friendly types"
    ):
        tool(f)


def test_unresolvable_forward_reference_is_rejected() -> None:
    def f(x: NotDefinedAnywhere) -> str:  # type: ignore[name-defined]  # noqa: F821
        return ""

    with pytest.raises(UsageError, match="could not resolve the type hints"):
        tool(f)


# -- subclassing Tool -------------------------------------------------------------------------


class _EchoArgs(BaseModel):
    text: str = Field(description="What to echo.")
    times: int = 1


class Echo(Tool):
    name = "echo"
    description = "Echo text."
    args_model = _EchoArgs

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, arguments: dict[str, Any]) -> str:
        self.calls += 1
        return arguments["text"] * arguments["times"]

    def reset(self) -> None:
        self.calls = 0


def test_tool_subclass_with_args_model() -> None:
    echo = Echo()
    assert echo.parameters == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "What to echo."},
            "times": {"type": "integer", "default": 1},
        },
        "required": ["text"],
    }
    assert echo.call({"text": "ab", "times": "2"}).content == "abab"
    bad = echo.call({"txt": "ab"})
    assert bad.is_error and "text: missing required argument" in bad.content
    extra = echo.call({"text": "ab", "txt": "ab"})
    assert extra.is_error and "unexpected argument(s) 'txt'; echo takes: text, times" in extra.content
    assert echo.calls == 1
    echo.reset()
    assert echo.calls == 0
    assert repr(echo) == "Echo(name='echo')"


def test_tool_subclass_without_run_reports_an_error_result() -> None:
    class Empty(Tool):
        name = "empty"
        parameters = {"type": "object", "properties": {}}  # noqa: RUF012

    with Empty() as empty:
        result = empty.call({})
    assert result.is_error and "NotImplementedError" in result.content and "must implement" in result.content


def test_tools_are_not_repeatable_unless_declared():
    @tool
    def plain(x: int) -> int:
        """Plain."""
        return x

    @tool(repeatable=True, name="dice")
    def roll() -> int:
        """Roll."""
        return 4

    assert plain.repeatable is False and Tool.repeatable is False
    assert roll.repeatable is True and roll.name == "dice"
