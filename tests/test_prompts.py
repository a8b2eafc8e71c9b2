"""Tests for llama_agents.prompts: golden checks against the official prompt-format docs, edge cases.

The golden texts are read from the installed llama-models package (`llama3_1/prompt_format.md`,
`llama3_2/text_prompt_format.md`): every ``` block after "Input Prompt Format", keyed by the `## `
heading above it. Whole prompts are joined with a small string helper (not our ChatFormat), and that
helper is itself checked against the reference llama-models ChatFormat, token for token.
"""

from __future__ import annotations

import datetime
import json
import re
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_agents.errors import UsageError
from llama_agents.prompts import format_date, render_system_prompt, render_tool_definitions
from llama_agents.types import BuiltinTool, ToolDefinition, ToolPromptFormat

SEP_21 = datetime.date(2024, 9, 21)
SEP_24 = datetime.date(2024, 9, 24)
HELPFUL = "You are a helpful assistant."


# ---------------------------------------------------------------- the docs and a prompt helper


def _doc_prompts(relative: str) -> dict[str, str]:
    """{section heading: input prompt} for every "Input Prompt Format" block of a llama-models doc."""
    import llama_models

    text = (Path(llama_models.__file__).parent / relative).read_text(encoding="utf-8")
    prompts: dict[str, str] = {}
    heading = None
    for match in re.finditer(
        r"^## ([^\n]+)$|^##### Input Prompt Format\n```\n(.*?)\n```$", text, re.M | re.S
    ):
        if match.group(1) is not None:
            heading = match.group(1).strip()
        else:
            assert heading is not None and heading not in prompts, heading
            prompts[heading] = match.group(2)
    return prompts


DOC_31 = _doc_prompts("llama3_1/prompt_format.md")
DOC_32 = _doc_prompts("llama3_2/text_prompt_format.md")

_MESSAGE = re.compile(
    r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(<\|eot_id\|>|<\|eom_id\|>)", re.S
)


def split_prompt(prompt: str) -> list[tuple[str, str, str]]:
    """(role, content, end token) of each finished message of a doc prompt."""
    return _MESSAGE.findall(prompt)


def join_prompt(*messages: tuple[str, str] | tuple[str, str, str]) -> str:
    """A whole Llama 3.1 prompt as the docs write it: messages, then the open assistant header."""
    out = "<|begin_of_text|>"
    for role, content, *end in messages:
        out += f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}{end[0] if end else '<|eot_id|>'}"
    return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_the_docs_have_the_examples_we_check():
    assert set(DOC_31) >= {
        "User and assistant conversation",
        "Builtin Tool Calling",
        "Builtin Code Interpreter",
        "Built-in tools full interaction",
        "JSON based tool calling",
        "`<function>` based tool calling",
    }
    assert set(DOC_32) >= {
        "Zero shot function calling",
        "Code Interpreter",
        "Zero shot function calling E2E format",
    }


# Tools as the docs describe them. The Llama 3.1 JSON example gives every parameter "type": "object"
# (the reference template hard-coded it); TRENDING_AS_DOC says so, TRENDING is the honest schema.
TRENDING_AS_DOC = ToolDefinition(
    name="trending_songs",
    description="Returns the trending songs on a Music site",
    parameters={
        "type": "object",
        "properties": {
            "n": {"type": "object", "description": "The number of songs to return"},
            "genre": {"type": "object", "description": "The genre of the songs to return"},
        },
        "required": ["n"],
    },
)
TRENDING = ToolDefinition(
    name="trending_songs",
    description="Returns the trending songs on a Music site",
    parameters={
        "type": "object",
        "properties": {
            "genre": {"type": "string", "description": "The genre of the songs to return"},
            "n": {"type": "integer", "description": "The number of songs to return"},
        },
        "required": ["n"],
    },
)
GET_WEATHER = ToolDefinition(
    name="get_weather",
    description="Get weather info for places",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The name of the city to get the weather for"},
            "metric": {
                "type": "string",
                "description": "The metric for weather. Options are: celsius, fahrenheit",
                "default": "celsius",
            },
        },
        "required": ["city"],
    },
)


# ---------------------------------------------------------------- golden: Llama 3.1 doc


def test_golden_plain_conversation():
    system = render_system_prompt(instructions="You are a helpful assistant")
    assert system == "You are a helpful assistant"
    expected = join_prompt(("system", system), ("user", "Answer who are you in the form of jeopardy?"))
    assert expected == DOC_31["User and assistant conversation"]


def test_golden_builtin_tools_with_date():
    system = render_system_prompt(
        builtin_tools=[BuiltinTool.brave_search, BuiltinTool.wolfram_alpha], date=SEP_21, instructions=HELPFUL
    )
    assert system == (
        "Environment: ipython\nTools: brave_search, wolfram_alpha\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n"
        "\nYou are a helpful assistant.\n"
    )
    prompt = join_prompt(("system", system), ("user", "Search the web for the latest price of 1oz gold?"))
    assert prompt == DOC_31["Builtin Tool Calling"]


def test_golden_code_interpreter_alone():
    system = render_system_prompt(builtin_tools=[BuiltinTool.code_interpreter])
    assert system == "Environment: ipython"
    user = "Write code to check if number is prime, use that to see if the number 7 is prime"
    assert join_prompt(("system", system), ("user", user)) == DOC_31["Builtin Code Interpreter"]


def test_golden_builtin_tools_full_interaction():
    doc = DOC_31["Built-in tools full interaction"]
    system = render_system_prompt(builtin_tools=["brave_search", "wolfram_alpha"])
    assert system == "Environment: ipython\nTools: brave_search, wolfram_alpha\n"
    (_, doc_system, _), _, _, (_, tool_output, _) = split_prompt(doc)
    assert system == doc_system
    prompt = join_prompt(
        ("system", system),
        ("user", "What is the 100th decimal of pi?"),
        ("assistant", '<|python_tag|>wolfram_alpha.call(query="100th decimal of pi")', "<|eom_id|>"),
        ("ipython", tool_output),
    )
    assert prompt == doc


def test_golden_json_tool_definitions():
    doc = DOC_31["JSON based tool calling"]
    system = render_system_prompt(ipython=True, date=SEP_21, instructions=HELPFUL)
    tools = render_tool_definitions([TRENDING_AS_DOC], ToolPromptFormat.json)
    (_, doc_system, _), (_, doc_tools, _), _ = split_prompt(doc)
    assert system == doc_system
    assert tools == doc_tools
    prompt = join_prompt(
        ("system", system), ("user", tools), ("user", "Use tools to get latest trending songs")
    )
    assert prompt == doc


def test_golden_function_tag_tool_definitions():
    doc = DOC_31["`<function>` based tool calling"]
    system = render_system_prompt(ipython=True, date=SEP_21, instructions=HELPFUL)
    tools = render_tool_definitions([TRENDING], ToolPromptFormat.function_tag)
    (_, doc_system, _), (_, doc_tools, _), _ = split_prompt(doc)
    assert system == doc_system
    assert tools == doc_tools
    prompt = join_prompt(
        ("system", system), ("user", tools), ("user", "Use tools to get latest trending songs")
    )
    assert prompt == doc


# ---------------------------------------------------------------- golden: Llama 3.2 doc


def test_golden_python_list_system_prompt():
    doc = DOC_32["Zero shot function calling"]
    system = render_system_prompt(instructions=render_tool_definitions([GET_WEATHER], "python_list"))
    assert system == render_tool_definitions([GET_WEATHER], ToolPromptFormat.python_list)
    assert join_prompt(("system", system), ("user", "What is the weather in SF and Seattle?")) == doc
    e2e = DOC_32["Zero shot function calling E2E format"]
    prompt = join_prompt(
        ("system", system),
        ("user", "What is the weather in SF?"),
        ("assistant", '<|python_tag|>[get_weather(city="San Francisco", metric="celsius")]'),
        ("ipython", '"25 C"'),
    )
    assert prompt == e2e


def test_golden_llama32_code_interpreter_with_date():
    system = render_system_prompt(builtin_tools=[BuiltinTool.code_interpreter], date=SEP_24)
    assert (
        system
        == "Environment: ipython\n\nCutting Knowledge Date: December 2023\nToday Date: 24 September 2024\n"
    )
    user = "Write code to check if number is prime. Use it to verify if number 7 is prime"
    assert join_prompt(("system", system), ("user", user)) == DOC_32["Code Interpreter"]


def test_join_prompt_frames_messages_like_the_reference_chat_format():
    """Our string helper frames messages exactly as the reference ChatFormat does, token for token."""
    import llama_models
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    tokenizer = Tokenizer(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model")
    system = render_system_prompt(ipython=True, date=SEP_21, instructions=HELPFUL)
    tools = render_tool_definitions([TRENDING], ToolPromptFormat.function_tag)
    question = "Use tools to get latest trending songs"
    dialog = [
        RawMessage(role="system", content=system),
        RawMessage(role="user", content=tools),
        RawMessage(role="user", content=question),
    ]
    reference = ChatFormat(tokenizer).encode_dialog_prompt(dialog).tokens
    ours = join_prompt(("system", system), ("user", tools), ("user", question))
    assert tokenizer.encode(ours, bos=False, eos=False, allowed_special="all") == reference


# ---------------------------------------------------------------- system prompt: rules and edge cases


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ""),
        ({"date": SEP_21}, "Cutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n"),
        (
            {"date": SEP_21, "instructions": "Be brief."},
            "Cutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n\nBe brief.\n",
        ),
        ({"ipython": True}, "Environment: ipython"),
        ({"ipython": True, "instructions": "Be brief."}, "Environment: ipython\n\nBe brief.\n"),
        (
            {"builtin_tools": ["brave_search"], "instructions": "Be brief."},
            "Environment: ipython\nTools: brave_search\n\nBe brief.\n",
        ),
        (
            {"builtin_tools": ["code_interpreter", "wolfram_alpha"]},
            "Environment: ipython\nTools: wolfram_alpha\n",
        ),
        ({"instructions": ""}, ""),
    ],
)
def test_system_prompt_layout(kwargs, expected):
    assert render_system_prompt(**kwargs) == expected


def test_no_tools_means_no_environment_line():
    assert "Environment" not in render_system_prompt(date=SEP_21, instructions=HELPFUL)
    assert "Tools:" not in render_system_prompt(ipython=True, date=SEP_21)


def test_builtin_tools_keep_their_order_once_each_and_accept_strings():
    system = render_system_prompt(builtin_tools=["wolfram_alpha", BuiltinTool.brave_search, "wolfram_alpha"])
    assert system == "Environment: ipython\nTools: wolfram_alpha, brave_search\n"
    assert "Tools: photogen" in render_system_prompt(builtin_tools=[BuiltinTool.photogen])


def test_instructions_are_verbatim_even_with_jinja_syntax():
    instructions = "Say {{ x }} and {% if y %}z{% endif %} {# not a comment #}\n  keep  spacing\t\n\n"
    assert render_system_prompt(instructions=instructions) == instructions
    with_date = render_system_prompt(date=SEP_21, instructions=instructions)
    assert with_date.endswith("\n\n" + instructions + "\n")


def test_date_format_is_english_whatever_the_locale():
    assert format_date(datetime.date(2024, 1, 5)) == "05 January 2024"
    assert format_date(datetime.datetime(2031, 12, 31, 23, 59)) == "31 December 2031"
    for month in range(1, 13):  # the process runs in the C locale, where %B is English
        day = datetime.date(2025, month, 9)
        assert format_date(day) == day.strftime("%d %B %Y")
    assert "Today Date: 29 February 2028\n" in render_system_prompt(date=datetime.date(2028, 2, 29))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"builtin_tools": ["google_search"]}, "unknown built-in tool 'google_search'"),
        ({"builtin_tools": "brave_search"}, "sequence of tools"),
        ({"builtin_tools": ["brave_search"], "ipython": False}, "ipython=False"),
        ({"date": "2024-09-21"}, "date must be a datetime.date"),
        ({"instructions": 42}, "instructions must be a string"),
    ],
)
def test_system_prompt_rejects_bad_input(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        render_system_prompt(**kwargs)


# ---------------------------------------------------------------- tool definitions: real schemas


RICH = ToolDefinition(
    name="search_flights",
    description='Find "cheap" flights\nfrom A to B — ünïcødé, </function> and {{ not_jinja }}',
    parameters={
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA code, e.g. 'SFO'"},
            "max_stops": {"type": "integer", "description": "Stops allowed", "default": 1},
            "budget": {"type": "number", "minimum": 0},
            "direct": {"type": "boolean", "description": "Direct only"},
            "dates": {"type": "array", "items": {"type": "string"}, "description": "ISO dates"},
            "filters": {"type": "object", "description": "Extra filters"},
            "cabin": {"enum": ["economy", "business"], "type": "string", "description": "Cabin"},
            "note": {"type": ["string", "null"], "description": "Free text"},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["origin", "dates"],
    },
)


def _json_objects(text: str) -> list[dict]:
    """The JSON objects of a `json`-format tool message, parsed (they lie between the fixed lines)."""
    body = text.split("Here is a list of functions in JSON format:\n", 1)[1]
    body = body.rsplit("\n\nReturn function calls in JSON format.", 1)[0]
    decoder, objects, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        obj, pos = decoder.raw_decode(body, pos)
        objects.append(obj)
        pos += len(body[pos:]) - len(body[pos:].lstrip())
    return objects


def _function_tag_specs(text: str) -> list[dict]:
    # split on "\n" only: str.splitlines() also breaks at U+0085, U+2028, ... inside JSON strings
    return [json.loads(line) for line in text.split("\n") if line.startswith('{"name": ')]


def _python_list_functions(text: str) -> list[dict]:
    return json.loads(text.split("Here is a list of functions in JSON format that you can invoke.\n\n", 1)[1])


def test_json_format_with_a_real_schema():
    (obj,) = _json_objects(render_tool_definitions([RICH], ToolPromptFormat.json))
    assert obj["type"] == "function"
    function = obj["function"]
    assert function["name"] == RICH.name and function["description"] == RICH.description
    assert function["parameters"]["required"] == ["origin", "dates"]
    properties = function["parameters"]["properties"]
    assert [next(iter(p)) for p in properties] == list(RICH.properties)
    assert properties[1] == {"max_stops": {"type": "integer", "description": "Stops allowed", "default": 1}}
    # type and description first, then the rest of the property's schema in its own order
    assert list(properties[6]["cabin"]) == ["type", "description", "enum"]
    assert properties[4]["dates"]["items"] == {"type": "string"}


def test_function_tag_format_with_a_real_schema():
    text = render_tool_definitions([RICH], ToolPromptFormat.function_tag)
    assert "Use the function 'search_flights' to 'Find \"cheap\" flights\nfrom A to B" in text
    (spec,) = _function_tag_specs(text)
    assert list(spec) == ["name", "description", "parameters"]
    assert spec["description"] == RICH.description
    params = spec["parameters"]
    assert {name: p["param_type"] for name, p in params.items()} == {
        "origin": "str",
        "max_stops": "int",
        "budget": "float",
        "direct": "bool",
        "dates": "list",
        "filters": "dict",
        "cabin": "str",
        "note": "str | None",
        "either": "int | str",
    }
    assert [name for name, p in params.items() if p["required"]] == ["origin", "dates"]
    assert params["max_stops"] == {
        "description": "Stops allowed",
        "param_type": "int",
        "required": False,
        "default": 1,
    }
    assert params["budget"] == {"param_type": "float", "required": False}


def test_python_list_format_with_a_real_schema():
    (function,) = _python_list_functions(render_tool_definitions([RICH], ToolPromptFormat.python_list))
    assert function["name"] == RICH.name and function["description"] == RICH.description
    parameters = function["parameters"]
    assert list(parameters) == ["type", "required", "properties"]
    assert parameters["type"] == "dict" and parameters["required"] == ["origin", "dates"]
    assert parameters["properties"]["max_stops"] == {
        "type": "integer",
        "description": "Stops allowed",
        "default": 1,
    }
    assert list(parameters["properties"]["cabin"]) == ["type", "description", "enum"]


def test_several_tools_in_every_format():
    tools = [GET_WEATHER, RICH, ToolDefinition(name="ping")]
    names = [t.name for t in tools]
    assert [o["function"]["name"] for o in _json_objects(render_tool_definitions(tools, "json"))] == names
    assert [s["name"] for s in _function_tag_specs(render_tool_definitions(tools, "function_tag"))] == names
    assert [f["name"] for f in _python_list_functions(render_tool_definitions(tools, "python_list"))] == names
    text = render_tool_definitions(tools, "function_tag")
    assert text.count("Use the function ") == 3 and "\n\nUse the function 'search_flights'" in text


def test_a_tool_without_parameters():
    for bare in (ToolDefinition(name="ping"), ToolDefinition(name="ping", parameters={})):
        (obj,) = _json_objects(render_tool_definitions([bare], "json"))
        assert obj["function"]["parameters"] == {"type": "object", "properties": [], "required": []}
        assert '"properties": [],\n' in render_tool_definitions([bare], "json")
        (spec,) = _function_tag_specs(render_tool_definitions([bare], "function_tag"))
        assert spec == {"name": "ping", "description": "", "parameters": {}}
        (function,) = _python_list_functions(render_tool_definitions([bare], "python_list"))
        assert function["parameters"] == {"type": "dict", "required": [], "properties": {}}


def test_no_tools_renders_nothing():
    for fmt in ToolPromptFormat:
        assert render_tool_definitions([], fmt) == ""


@given(
    name=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    description=st.text(),
    param_description=st.text(),
    default=st.none() | st.integers() | st.text() | st.lists(st.booleans()),
)
@settings(max_examples=60, deadline=None)
def test_any_description_comes_out_as_valid_json(name, description, param_description, default):
    schema = {"type": "string", "description": param_description, "default": default}
    tool = ToolDefinition(name=name, description=description, parameters={"properties": {"p": schema}})
    (obj,) = _json_objects(render_tool_definitions([tool], "json"))
    assert obj["function"]["description"] == description
    assert obj["function"]["parameters"]["properties"] == [{"p": schema}]
    (function,) = _python_list_functions(render_tool_definitions([tool], "python_list"))
    assert function["description"] == description and function["parameters"]["properties"]["p"] == schema
    (spec,) = _function_tag_specs(render_tool_definitions([tool], "function_tag"))
    assert spec["description"] == description
    assert spec["parameters"]["p"]["description"] == param_description
    assert spec["parameters"]["p"]["default"] == default


def test_json_is_not_html_escaped():
    tool = ToolDefinition(name="f", description='a < b && it\'s "ok" — ✓')
    text = render_tool_definitions([tool], "json")
    assert '"description": "a < b && it\'s \\"ok\\" — ✓",' in text


@pytest.mark.parametrize(
    ("tools", "fmt", "message"),
    [
        (
            [GET_WEATHER],
            "yaml",
            "unknown tool prompt format 'yaml'; use one of: json, function_tag, python_list",
        ),
        ([GET_WEATHER], None, "unknown tool prompt format None"),
        ([GET_WEATHER, GET_WEATHER], "json", "two tools are named 'get_weather'"),
        (GET_WEATHER, "json", "not a single ToolDefinition"),
        ([{"name": "f"}], "json", "must be ToolDefinition objects"),
        ([ToolDefinition(name="")], "json", "non-empty name"),
        ([ToolDefinition(name="f", parameters={"type": "array"})], "json", "of type 'object', not 'array'"),
        (
            [ToolDefinition(name="f", parameters={"properties": {"a": {}}, "required": ["b"]})],
            "function_tag",
            "required parameters ['b'] are not in its properties",
        ),
        (
            [ToolDefinition(name="f", parameters={"properties": {"a": "str"}})],
            "python_list",
            "the schema of parameter 'a' must be an object",
        ),
        (
            [ToolDefinition(name="f", parameters={"properties": {"a": {}}, "required": "a"})],
            "json",
            "must be a list of names",
        ),
    ],
)
def test_tool_definitions_reject_bad_input(tools, fmt, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        render_tool_definitions(tools, fmt)


def test_templates_ship_as_package_data():
    names = {p.name for p in resources.files("llama_agents.prompts").iterdir() if p.name.endswith(".j2")}
    assert names == {"system.j2", "tools_json.j2", "tools_function_tag.j2", "tools_python_list.j2"}
