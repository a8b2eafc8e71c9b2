"""Tests for llama_agents.llama.tool_calls: every call shape Llama 3.x writes, plain answers that
must stay answers, the reference's known failures, and round trips of encode -> parse."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_models.llama3.tool_utils import ToolUtils

from llama_agents.errors import UsageError
from llama_agents.llama.tool_calls import encode_tool_calls, parse_tool_calls, uses_python_tag
from llama_agents.types import BuiltinTool, ToolCall, ToolPromptFormat

BS = BuiltinTool.brave_search
WA = BuiltinTool.wolfram_alpha
CI = BuiltinTool.code_interpreter
PG = BuiltinTool.photogen


def calls_of(body: str, python_tag: bool) -> list[tuple[Any, dict[str, Any]]]:
    return [(c.tool_name, c.arguments) for c in parse_tool_calls(body, python_tag=python_tag)]


# ------------------------------------------------------------------------- the corpus of calls

# (body, python_tag, expected calls)
CALLS: list[tuple[str, bool, list[tuple[Any, dict[str, Any]]]]] = [
    # built-in calls, as in the Llama 3.1 prompt-format doc
    (
        'brave_search.call(query="latest price of 1oz gold")',
        True,
        [(BS, {"query": "latest price of 1oz gold"})],
    ),
    ('wolfram_alpha.call(query="100th decimal of pi")', True, [(WA, {"query": "100th decimal of pi"})]),
    ('photogen.call(query="a cat on a sofa")', True, [(PG, {"query": "a cat on a sofa"})]),
    ('brave_search.call(query="x")', False, [(BS, {"query": "x"})]),  # without the tag
    ("\n  brave_search.call(query='single quotes')  \n", True, [(BS, {"query": "single quotes"})]),
    ('brave_search.call(query="what\'s \\"new\\" in AI")', True, [(BS, {"query": 'what\'s "new" in AI'})]),
    ("brave_search.call(query='it\\'s')", True, [(BS, {"query": "it's"})]),
    ('brave_search.call(query="météo à Paris 東京 🌧")', True, [(BS, {"query": "météo à Paris 東京 🌧"})]),
    ('brave_search.call(query="a\\\\b\\nc")', True, [(BS, {"query": "a\\b\nc"})]),
    (
        'brave_search.call(query="news", count=5, fresh=True)',
        True,
        [(BS, {"query": "news", "count": 5, "fresh": True})],
    ),
    ('wolfram_alpha.call("2+2")', True, [(WA, {"query": "2+2"})]),  # positional query
    ('code_interpreter.call(code="print(1)")', True, [(CI, {"code": "print(1)"})]),
    # unescaped quotes inside the query: the Python parser rejects it, the call is still read
    ('brave_search.call(query="who said "hello world"")', True, [(BS, {"query": 'who said "hello world"'})]),
    # several built-in calls
    (
        'brave_search.call(query="a")\nwolfram_alpha.call(query="b")',
        True,
        [(BS, {"query": "a"}), (WA, {"query": "b"})],
    ),
    (
        'brave_search.call(query="a; b"); brave_search.call(query="c")',
        True,
        [(BS, {"query": "a; b"}), (BS, {"query": "c"})],
    ),
    # JSON calls
    (
        '{"type": "function", "name": "trending_songs", "parameters": {"n": "10", "genre": "all"}}',
        True,
        [("trending_songs", {"n": "10", "genre": "all"})],
    ),
    (
        '{\n    "type": "function",\n    "name": "trending_songs",\n    "parameters": {\n'
        '        "n": 10,\n        "genre": "all"\n    }\n}',
        True,
        [("trending_songs", {"n": 10, "genre": "all"})],
    ),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', False, [("get_weather", {"city": "Paris"})]),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', True, [("get_weather", {"city": "Paris"})]),
    (
        '{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}',
        False,
        [("f", {"a": 1})],
    ),
    ('{"type": "function", "name": "now"}', True, [("now", {})]),
    (
        '{"name": "f", "parameters": {"a": {"b": [1, {"c": null}]}, "d": 1.5, "e": false}}',
        True,
        [("f", {"a": {"b": [1, {"c": None}]}, "d": 1.5, "e": False})],
    ),
    (
        '{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {"b": "x; y"}}',
        True,
        [("f", {"a": 1}), ("g", {"b": "x; y"})],
    ),
    (
        '{"name": "f", "parameters": {"a": 1}}\n{"name": "g", "parameters": {}}\n',
        False,
        [("f", {"a": 1}), ("g", {})],
    ),
    (
        '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]',
        False,
        [("f", {"a": 1}), ("g", {})],
    ),
    ('{"name": "f", "parameters": {"q": "it\'s"}}', True, [("f", {"q": "it's"})]),
    # a built-in tool written in a custom shape is the built-in tool
    ('{"name": "brave_search", "parameters": {"query": "x"}}', False, [(BS, {"query": "x"})]),
    ('<function=wolfram_alpha>{"query": "2+2"}</function>', False, [(WA, {"query": "2+2"})]),
    ('[code_interpreter(code="print(1)")]', False, [(CI, {"code": "print(1)"})]),
    # function tags
    ('<function=trending_songs>{"n": 10}</function>', False, [("trending_songs", {"n": 10})]),
    ('<function=f>{"a": {"b": {"c": 1}}}</function>', False, [("f", {"a": {"b": {"c": 1}}})]),
    ('<function=f>{"q": "it\'s Bob\'s"}</function>', False, [("f", {"q": "it's Bob's"})]),
    ('<function=f>{"q": "a </function> b"}</function>', False, [("f", {"q": "a </function> b"})]),
    (
        '<function=f>{"a": 1}</function><function=g>{"b": 2}</function>',
        False,
        [("f", {"a": 1}), ("g", {"b": 2})],
    ),
    (
        '<function=f>{"a": 1}</function>\n<function=g>{"b": 2}</function>',
        False,
        [("f", {"a": 1}), ("g", {"b": 2})],
    ),
    ('<function=f>{"a": 1}', False, [("f", {"a": 1})]),  # missing closing tag at the very end
    (
        "<function=f>{'a': 'x', 'b': True, 'c': None}</function>",
        False,
        [("f", {"a": "x", "b": True, "c": None})],
    ),
    ("<function=now></function>", False, [("now", {})]),
    # python lists
    ('[f(a=1, b="x"), g(c=[1, 2])]', False, [("f", {"a": 1, "b": "x"}), ("g", {"c": [1, 2]})]),
    (
        "[get_weather(city='San Francisco', metric='celsius'), "
        "get_weather(city='Seattle', metric='celsius')]",
        False,
        [
            ("get_weather", {"city": "San Francisco", "metric": "celsius"}),
            ("get_weather", {"city": "Seattle", "metric": "celsius"}),
        ],
    ),
    (
        '[get_weather(city="San Francisco", metric="celsius")]',
        True,
        [("get_weather", {"city": "San Francisco", "metric": "celsius"})],
    ),
    (
        '[f(a={"k": [1, -2.5, None]}, b=(1, 2), c=true, d=null)]',
        False,
        [("f", {"a": {"k": [1, -2.5, None]}, "b": [1, 2], "c": True, "d": None})],
    ),
    (
        "[get_user_info(user_id=7890, special='black')]",
        False,
        [("get_user_info", {"user_id": 7890, "special": "black"})],
    ),
    ("[now()]", False, [("now", {})]),
]


@pytest.mark.parametrize(("body", "python_tag", "expected"), CALLS)
def test_parses_every_call_shape(body: str, python_tag: bool, expected: list) -> None:
    assert calls_of(body, python_tag) == expected
    for name, _ in calls_of(body, python_tag):
        assert isinstance(name, BuiltinTool) == (name in BuiltinTool.__members__)


def test_argument_types_survive() -> None:
    for body in (
        '{"name": "f", "parameters": {"n": 3, "x": 2.5, "ok": true, "o": {"k": [1]}}}',
        '<function=f>{"n": 3, "x": 2.5, "ok": true, "o": {"k": [1]}}</function>',
        '[f(n=3, x=2.5, ok=True, o={"k": [1]})]',
    ):
        [(_, args)] = calls_of(body, False)
        assert args == {"n": 3, "x": 2.5, "ok": True, "o": {"k": [1]}}
        assert type(args["n"]) is int and type(args["x"]) is float and type(args["ok"]) is bool


# ------------------------------------------------------------------------------------ code


def test_python_tag_code_goes_to_code_interpreter_verbatim() -> None:
    # The prompt-format doc's own example, syntax error (missing colon) included: the interpreter
    # reports that to the model, so it must still be code.
    code = (
        "def is_prime(n):\n    if n <= 1\n        return False\n    for i in range(2, int(n**0.5) + 1):\n"
        "        if n % i == 0:\n            return False\n    return True\n\n"
        "print(is_prime(7))  # Output: True"
    )
    assert calls_of(code, True) == [(CI, {"code": code})]
    assert calls_of("\nimport math\nprint(math.pi)\n", True) == [
        (CI, {"code": "\nimport math\nprint(math.pi)\n"})
    ]
    assert calls_of("[x * x for x in range(3)]", True) == [(CI, {"code": "[x * x for x in range(3)]"})]
    assert calls_of("subprocess.call(['ls'])", True)[0][0] == CI  # `.call` of a non-built-in is code
    # the same code without the tag is a plain answer
    assert calls_of(code, False) == []


# ----------------------------------------------------------------------------- plain answers

PLAIN = [
    "The capital of France is Paris.",
    'Here is the JSON you asked for: {"name": "f", "parameters": {"a": 1}}',
    '```json\n{"type": "function", "name": "f", "parameters": {}}\n```',
    "```python\nprint('hi')\n```",
    'You could use brave_search.call(query="weather") to look that up.',
    'brave_search.call(query="x") is how I would search.',
    "# Title\n\n- item [link](http://x)\n- `code`",
    '{"name": "Bob", "age": 3}',  # data, not a call
    '{"type": "object", "name": "f", "parameters": {}}',
    "[1, 2, 3]",
    "[]",
    "{}",
    "print('hello')",
    "<function=f> is how you call f",
    "",
    "   \n\t",
]


@pytest.mark.parametrize("body", PLAIN)
def test_plain_answers_are_not_calls(body: str) -> None:
    assert parse_tool_calls(body, python_tag=False) == []


# ------------------------------------------------------------------------ malformed / truncated

MALFORMED = [
    '{"type": "function", "name": "f", "parameters": {"a":',
    '{"name": "f", "parameters": {"a": 1}}; {"name": "g", "par',
    '<function=f>{"a": 1',
    '<function=f>{"a": 1}</function><function=g>{"b": ',
    '<function=f>{"a": 1} trailing</function>',
    '[f(a=1, b="x"), g(c=',
    "[f(a=some_variable)]",
    "[f(1, 2)]",
    "[f(**kw)]",
    "[f(a=1, a=2)]",
    'brave_search.call(query="unterminated',
    'brave_search.call(query=os.environ["KEY"])',
    '{"name": "f", "parameters": [1, 2]}',
    '{"name": "", "parameters": {}}',
    '{"name": "f", "parameters": {}, "arguments": {}}',
    "<function=>{}</function>",
    "[f(a={1, 2})]",
    "[f(a=b'x')]",
    "[f(a=1j)]",
]


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("python_tag", [False, True])
def test_malformed_or_truncated_calls_give_no_calls(body: str, python_tag: bool) -> None:
    # With the tag too: a call with non-literal arguments is a broken call, not code to run.
    assert parse_tool_calls(body, python_tag=python_tag) == []


def test_hostile_inputs_do_not_raise() -> None:
    # Deep nesting, huge runs and odd characters: no exception, and no call made up from them.
    for body in (
        "[" * 100_000,
        "{" * 100_000,
        '{"a":' * 5000 + "1" + "}" * 5000,
        "<function=f>" + "[" * 50_000,
        "[f(a=" + "-" * 10_000 + "1)]",
    ):
        for python_tag in (False, True):
            assert parse_tool_calls(body, python_tag=python_tag) == []
    # Odd characters are kept as they are: plain text without the tag, code to run with it.
    for body in ("a\x00b", "\ud800"):
        assert parse_tool_calls(body, python_tag=False) == []
        (call,) = parse_tool_calls(body, python_tag=True)
        assert (call.tool_name, call.arguments) == (BuiltinTool.code_interpreter, {"code": body})
    # An invalid escape in a string is kept literally, not a crash and not a lost call.
    for python_tag in (False, True):
        (call,) = parse_tool_calls('brave_search.call(query="\\N{NOPE}")', python_tag=python_tag)
        assert (call.tool_name, call.arguments) == (BuiltinTool.brave_search, {"query": "\\N{NOPE}"})


def test_each_call_gets_a_fresh_uuid4_call_id() -> None:
    body = "[f(a=1), f(a=1), f(a=1)]"
    ids = [c.call_id for c in parse_tool_calls(body, python_tag=False)]
    ids += [c.call_id for c in parse_tool_calls(body, python_tag=False)]
    assert len(set(ids)) == 6
    assert all(uuid.UUID(i).version == 4 for i in ids)


# ------------------------------------------------------------------ where the reference is wrong


def test_reference_loses_escaped_quotes_and_single_quotes() -> None:
    for body, query in (
        ('brave_search.call(query="what\'s \\"new\\"")', 'what\'s "new"'),
        ("brave_search.call(query='weather')", "weather"),
    ):
        assert ToolUtils.maybe_extract_builtin_tool_call(body) is None
        assert calls_of(body, True) == [(BS, {"query": query})]


def test_reference_takes_a_mention_in_prose_for_a_call() -> None:
    body = 'You could use brave_search.call(query="weather") to look that up.'
    assert ToolUtils.maybe_extract_builtin_tool_call(body) == ("brave_search", "weather")
    assert calls_of(body, False) == []


def test_reference_breaks_on_nested_json_and_apostrophes(capsys: pytest.CaptureFixture[str]) -> None:
    for body, args in (
        ('<function=f>{"a": {"b": 1}}</function>', {"a": {"b": 1}}),
        ('<function=f>{"q": "it\'s"}</function>', {"q": "it's"}),
    ):
        assert ToolUtils.maybe_extract_custom_tool_call(body) is None  # and it prints
        assert calls_of(body, False) == [("f", args)]
    assert "Exception while parsing" in capsys.readouterr().out


def test_reference_keeps_only_the_first_of_several_calls() -> None:
    body = "[f(a=1), g(b=2)]"
    assert ToolUtils.maybe_extract_custom_tool_call(body) == ("f", {"a": 1})
    assert calls_of(body, False) == [("f", {"a": 1}), ("g", {"b": 2})]


def test_reference_raises_on_arguments_key() -> None:
    body = '{"name": "f", "arguments": {"a": 1}}'
    with pytest.raises(KeyError):
        ToolUtils.maybe_extract_custom_tool_call(body)
    assert calls_of(body, False) == [("f", {"a": 1})]


def test_reference_encoding_does_not_escape_queries() -> None:
    from llama_models import datatypes as ref

    query = 'say "hi"'
    ref_call = ref.ToolCall(call_id="1", tool_name=ref.BuiltinTool.brave_search, arguments={"query": query})
    ref_text = ToolUtils.encode_tool_call(ref_call, ref.ToolPromptFormat.json)
    assert ref_text == 'brave_search.call(query="say "hi"")'
    assert ToolUtils.maybe_extract_builtin_tool_call(ref_text) is None  # cannot read its own output
    ours = encode_tool_calls(
        [ToolCall(call_id="1", tool_name=BS, arguments={"query": query})], ToolPromptFormat.json
    )
    assert ours == 'brave_search.call(query="say \\"hi\\"")'
    assert calls_of(ours, True) == [(BS, {"query": query})]


# ---------------------------------------------------------------------------------- encoding


def _call(name: str | BuiltinTool, **arguments: Any) -> ToolCall:
    return ToolCall(call_id="x", tool_name=name, arguments=arguments)


def test_encodes_as_the_prompt_format_doc_shows() -> None:
    fmt = ToolPromptFormat
    assert encode_tool_calls([_call(BS, query="latest price of 1oz gold")], fmt.json) == (
        'brave_search.call(query="latest price of 1oz gold")'
    )
    assert encode_tool_calls([_call(CI, code="print(1)\n")], fmt.function_tag) == "print(1)\n"
    assert encode_tool_calls([_call("trending_songs", n=10)], fmt.json) == (
        '{"type": "function", "name": "trending_songs", "parameters": {"n": 10}}'
    )
    assert encode_tool_calls([_call("trending_songs", n=10)], fmt.function_tag) == (
        '<function=trending_songs>{"n": 10}</function>'
    )
    assert encode_tool_calls([_call("f", a=1, b="x"), _call("g", c=[1, 2])], fmt.python_list) == (
        '[f(a=1, b="x"), g(c=[1, 2])]'
    )
    assert encode_tool_calls([_call("f", a="é")], fmt.json) == (
        '{"type": "function", "name": "f", "parameters": {"a": "é"}}'
    )
    assert encode_tool_calls([], fmt.json) == ""


def test_several_and_mixed_calls_are_joined_in_documented_ways() -> None:
    fmt = ToolPromptFormat
    two = [_call("f", a=1), _call("g", b=2)]
    assert encode_tool_calls(two, fmt.json) == (
        '{"type": "function", "name": "f", "parameters": {"a": 1}}\n'
        '{"type": "function", "name": "g", "parameters": {"b": 2}}'
    )
    assert encode_tool_calls(two, fmt.function_tag) == (
        '<function=f>{"a": 1}</function><function=g>{"b": 2}</function>'
    )
    assert encode_tool_calls([_call(BS, query="a"), _call(WA, query="b")], fmt.python_list) == (
        'brave_search.call(query="a")\nwolfram_alpha.call(query="b")'
    )
    mixed = [_call(BS, query="a"), _call("f", a=1)]
    assert encode_tool_calls(mixed, fmt.python_list) == '[brave_search(query="a"), f(a=1)]'
    assert calls_of(encode_tool_calls(mixed, fmt.python_list), False) == [
        (BS, {"query": "a"}),
        ("f", {"a": 1}),
    ]


def test_code_that_would_read_as_something_else_is_written_as_a_call() -> None:
    for code in ('brave_search.call(query="x")', '{"name": "f", "parameters": {}}', "[f(a=1)]", "", "  \n"):
        text = encode_tool_calls([_call(CI, code=code)], ToolPromptFormat.json)
        assert text.startswith("code_interpreter.call(code=")
        assert calls_of(text, True) == [(CI, {"code": code})]


def test_uses_python_tag() -> None:
    fmt = ToolPromptFormat
    for f in fmt:
        assert uses_python_tag([_call(BS, query="x")], f) is True
        assert uses_python_tag([_call(CI, code="1")], f) is True
        assert uses_python_tag([], f) is False
    assert uses_python_tag([_call("f")], fmt.json) is True
    assert uses_python_tag([_call("f")], fmt.function_tag) is False
    assert uses_python_tag([_call("f")], fmt.python_list) is False
    assert uses_python_tag([_call(BS, query="x"), _call("f")], fmt.function_tag) is False


@pytest.mark.parametrize(
    ("calls", "fmt", "message"),
    [
        ([_call("f", a=math.nan)], ToolPromptFormat.json, "f.a is nan"),
        ([_call("f", a={"b": {1, 2}})], ToolPromptFormat.json, "f.a.b is a set"),
        ([_call("f", a={1: "x"})], ToolPromptFormat.function_tag, "non-string key 1"),
        ([_call("my-tool", a=1)], ToolPromptFormat.python_list, "not a Python identifier"),
        (
            [ToolCall(call_id="x", tool_name="f", arguments={"class": 1})],
            ToolPromptFormat.python_list,
            "'class'",
        ),
        ([ToolCall(call_id="x", tool_name="f", arguments={"a b": 1})], ToolPromptFormat.python_list, "'a b'"),
        ([_call("a>b")], ToolPromptFormat.function_tag, "'>'"),
        ([_call(" f")], ToolPromptFormat.json, "surrounding whitespace"),
        ([_call("f")], "yaml", "unknown tool_prompt_format 'yaml'"),
    ],
)
def test_encoding_what_cannot_be_written_is_a_usage_error(calls: list, fmt: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        encode_tool_calls(calls, fmt)


# ------------------------------------------------------------------------------ property tests

# Text without lone surrogates: what a tokenizer can carry.
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_tricky = st.sampled_from(
    [
        '"',
        "'",
        "\\",
        "\n",
        "</function>",
        "<function=f>",
        '"}',
        "; ",
        "{",
        "]",
        ")",
        "\\u00e9",
        "é",
        "🌧",
        "\x00",
    ]
)
_string = st.one_of(_text, st.lists(st.one_of(_tricky, _text), max_size=6).map("".join))
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _string
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_string, inner, max_size=3)),
    max_leaves=8,
)
_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True).filter(
    lambda s: s.isidentifier() and not __import__("keyword").iskeyword(s)
)
_custom_name = _ident.filter(lambda s: s not in BuiltinTool.__members__)
_custom_call = st.builds(
    lambda name, args: ToolCall(call_id="x", tool_name=name, arguments=args),
    _custom_name,
    st.dictionaries(_ident, _json, max_size=4),
)
_builtin_call = st.one_of(
    st.builds(
        lambda t, q: ToolCall(call_id="x", tool_name=t, arguments={"query": q}),
        st.sampled_from([BS, WA, PG]),
        _string,
    ),
    st.builds(lambda c: ToolCall(call_id="x", tool_name=CI, arguments={"code": c}), _string),
)
_calls = st.one_of(
    st.lists(_custom_call, min_size=1, max_size=3),
    st.lists(_builtin_call, min_size=1, max_size=3),
    st.lists(st.one_of(_custom_call, _builtin_call), min_size=1, max_size=4),
)
_fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(calls=_calls, fmt=st.sampled_from(list(ToolPromptFormat)))
def test_round_trip(calls: list[ToolCall], fmt: ToolPromptFormat) -> None:
    text = encode_tool_calls(calls, fmt)
    parsed = parse_tool_calls(text, python_tag=uses_python_tag(calls, fmt))
    assert [(c.tool_name, c.arguments) for c in parsed] == [(c.tool_name, c.arguments) for c in calls]
    assert all(
        isinstance(c.tool_name, BuiltinTool) == isinstance(o.tool_name, BuiltinTool)
        for c, o in zip(parsed, calls, strict=True)
    )


@_fast
@given(body=st.text(max_size=200), python_tag=st.booleans())
def test_never_raises_on_arbitrary_text(body: str, python_tag: bool) -> None:
    result = parse_tool_calls(body, python_tag=python_tag)
    assert isinstance(result, list)
    if not python_tag and not body.strip():
        assert result == []


_call_like = st.lists(
    st.sampled_from(
        [
            '{"name": "f", "parameters": ',
            "<function=f>",
            "</function>",
            "[f(a=",
            "brave_search.call(query=",
            '"x"',
            "'y'",
            "1",
            "{",
            "}",
            "[",
            "]",
            "(",
            ")",
            ";",
            "\n",
            ",",
            ":",
            "\\",
            '"',
            "true",
            " ",
        ]
    ),
    max_size=25,
).map("".join)


@_fast
@given(body=_call_like, python_tag=st.booleans())
def test_never_raises_on_call_like_fragments(body: str, python_tag: bool) -> None:
    for call in parse_tool_calls(body, python_tag=python_tag):
        assert isinstance(call.arguments, dict)


_any_name = _text.map(str.strip).filter(lambda s: bool(s) and s not in BuiltinTool.__members__)


@_fast
@given(
    name=_any_name,
    args=st.dictionaries(_string, _json, max_size=3),
    fmt=st.sampled_from([ToolPromptFormat.json, ToolPromptFormat.function_tag]),
)
def test_round_trip_of_any_name_and_key_in_json_and_function_tag(
    name: str, args: dict[str, Any], fmt: ToolPromptFormat
) -> None:
    call = ToolCall(call_id="x", tool_name=name, arguments=args)
    try:
        text = encode_tool_calls([call], fmt)
    except UsageError:
        assert fmt == ToolPromptFormat.function_tag and (">" in name or "\n" in name)
        return
    [parsed] = parse_tool_calls(text, python_tag=uses_python_tag([call], fmt))
    assert (parsed.tool_name, parsed.arguments) == (name, args)


def test_lone_surrogates_are_escaped_and_read_back() -> None:
    for fmt in ToolPromptFormat:
        for call in (_call(BS, query="a\ud800b"), _call("f", q="\udfff")):
            text = encode_tool_calls([call], fmt)
            text.encode("utf-8")  # a tokenizer can carry it
            [parsed] = parse_tool_calls(text, python_tag=uses_python_tag([call], fmt))
            assert parsed.arguments == call.arguments
