"""The agent loop, driven by a scripted backend writing real Llama 3.1 replies, against real tools."""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import pytest
from scripted_backend import ScriptedBackend

from llama_agents.agent import (
    Agent,
    FinalAnswer,
    RunStopReason,
    StepFinished,
    TextDelta,
    ToolCallStarted,
    ToolResultEvent,
    initial_messages,
    read_jsonl,
)
from llama_agents.errors import UsageError
from llama_agents.llama.chat_format import ChatFormat
from llama_agents.prompts import render_tool_definitions
from llama_agents.tools import Tool, ToolResult, tool
from llama_agents.types import BuiltinTool, Message, StopReason, ToolPromptFormat

DATE = datetime.date(2024, 9, 21)


def json_call(name: str, **params: object) -> str:
    body = json.dumps({"type": "function", "name": name, "parameters": params})
    return f"<|python_tag|>{body}<|eom_id|>"


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


@tool
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def make_agent(tokenizer, replies, tools=(add,), **kwargs):
    backend = ScriptedBackend(tokenizer, replies, max_seq_len=kwargs.pop("max_seq_len", None))
    kwargs.setdefault("date", DATE)
    return Agent(backend, tools, **kwargs), backend


# -- the basic loop ---------------------------------------------------------------------------


def test_custom_tool_call_then_answer(tokenizer):
    agent, backend = make_agent(tokenizer, [json_call("add", a=2, b=3), "2 + 3 = 5.<|eot_id|>"])
    result = agent.run("What is 2 + 3?")
    assert result.stop_reason == RunStopReason.final_answer
    assert result.answer == "2 + 3 = 5."
    assert len(result.steps) == 2
    first = result.steps[0]
    assert first.message.stop_reason == StopReason.end_of_message
    assert [(r.call.name, r.call.arguments, r.content, r.is_error) for r in first.tool_runs] == [
        ("add", {"a": 2, "b": 3}, "5", False)
    ]
    roles = [m.role for m in result.messages]
    # system, tool definitions, question, call, result, answer
    assert roles == ["system", "user", "user", "assistant", "tool", "assistant"]
    tool_message = result.messages[4]
    assert tool_message.content == "5"
    assert tool_message.call_id == first.message.tool_calls[0].call_id
    assert first.generated == len(backend.completions[0])
    assert first.prompt_tokens == len(backend.prompts[0])
    assert result.generated_tokens == sum(len(c) for c in backend.completions)


def test_prompt_at_step_two_is_exactly_the_chat_format_of_the_transcript(tokenizer):
    agent, backend = make_agent(tokenizer, [json_call("add", a=1, b=1), "It is 2.<|eot_id|>"])
    result = agent.run("1 + 1?")
    formatter = ChatFormat(tokenizer)
    before_answer = result.messages[:-1]
    assert backend.prompts[1] == formatter.encode_dialog_prompt(before_answer, ToolPromptFormat.json)
    assert backend.prompts[0] == formatter.encode_dialog_prompt(result.messages[:3], ToolPromptFormat.json)
    # The prompt only grows by appending: step 1's prompt + what the model wrote is a prefix of step 2's.
    grown = backend.prompts[0] + backend.completions[0]
    assert backend.prompts[1][: len(grown)] == grown
    assert result.steps[1].reused == len(grown)
    # The assistant message keeps exactly the generated ids (without the stop token).
    assert result.messages[3].tokens == backend.completions[0][:-1]


def test_initial_messages_describe_custom_tools_as_the_llama_doc_shows(tokenizer):
    agent, backend = make_agent(tokenizer, ["Hi.<|eot_id|>"], tools=[add, mul])
    agent.run("hello")
    system, definitions, question = agent.messages[:3]
    assert system.content.startswith("Environment: ipython\n")
    assert "Today Date: 21 September 2024" in system.content
    assert definitions.role == "user"
    assert definitions.content == render_tool_definitions(
        [add.definition(), mul.definition()], ToolPromptFormat.json
    )
    assert question.content == "hello"
    text = tokenizer.decode(backend.prompts[0])
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython"
    )
    assert text.endswith("hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_python_list_tools_are_described_in_the_system_prompt_as_the_llama_3_2_doc_shows():
    definitions = render_tool_definitions([add.definition()], ToolPromptFormat.python_list)
    # the 3.2 doc's "Zero shot function calling": the whole system prompt, no extra user message
    assert initial_messages([add], tool_prompt_format="python_list") == [
        Message(role="system", content=definitions)
    ]
    (system,) = initial_messages(
        [add, BuiltinTool.brave_search], tool_prompt_format="python_list", date=DATE, instructions="Be brief."
    )
    assert system.content.startswith("Environment: ipython\nTools: brave_search\nCutting Knowledge Date:")
    assert system.content.endswith(f"\n\n{definitions}\n\nBe brief.\n")


def test_no_tools_means_no_ipython_environment(tokenizer):
    agent, _ = make_agent(tokenizer, ["Hello!<|eot_id|>"], tools=[], instructions="Be brief.")
    result = agent.run("hi")
    assert "Environment: ipython" not in result.messages[0].content
    assert "Be brief." in result.messages[0].content
    assert [m.role for m in result.messages] == ["system", "user", "assistant"]


# -- the model's mistakes ---------------------------------------------------------------------


def test_bad_arguments_are_fed_back_and_the_model_corrects_them(tokenizer):
    replies = [json_call("add", a="two", b=3), json_call("add", a=2, b=3), "5<|eot_id|>"]
    agent, backend = make_agent(tokenizer, replies)
    result = agent.run("2 + 3?")
    first, second = result.tool_runs
    assert first.is_error and "a" in first.content
    assert not second.is_error and second.content == "5"
    assert result.answer == "5"
    # the error went back to the model as an ipython message, which it saw at step 2
    assert first.content in tokenizer.decode(backend.prompts[1])


def test_unknown_tool_becomes_an_error_result(tokenizer):
    agent, _ = make_agent(tokenizer, [json_call("subtract", a=1, b=2), "Sorry.<|eot_id|>"])
    result = agent.run("1 - 2?")
    (run,) = result.tool_runs
    assert run.is_error
    assert "no tool named 'subtract'" in run.content and "add" in run.content
    assert result.messages[-2].role == "tool"


def test_a_repeated_call_is_answered_with_a_notice_not_run_again(tokenizer):
    calls = []

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        calls.append(key)
        return f"value of {key}"

    replies = [json_call("lookup", key="k"), json_call("lookup", key="k"), "done<|eot_id|>"]
    agent, _ = make_agent(tokenizer, replies, tools=[lookup])
    result = agent.run("look k up")
    assert calls == ["k"]
    first, second = result.tool_runs
    assert not first.repeated and first.content == "value of k"
    assert second.repeated and "already called" in second.content and "step 1" in second.content


def test_a_repeatable_tool_runs_every_time_it_is_called(tokenizer):
    rolls = iter([3, 5, 1])

    @tool(repeatable=True)
    def roll_die() -> int:
        """Roll a six-sided die."""
        return next(rolls)

    roll = json_call("roll_die")
    agent, _ = make_agent(tokenizer, [roll, roll, "3 then 5<|eot_id|>"], tools=[roll_die])
    result = agent.run("roll twice")
    assert roll_die.repeatable
    assert [(r.content, r.repeated, r.is_error) for r in result.tool_runs] == [
        ("3", False, False),
        ("5", False, False),
    ]


def test_a_call_repeated_after_another_call_changed_the_world_runs_again(tokenizer):
    items: list[str] = []

    @tool
    def add_item(item: str) -> str:
        """Add an item."""
        items.append(item)
        return "added"

    @tool
    def list_items() -> str:
        """List the items."""
        return ", ".join(items) or "none"

    listing = json_call("list_items")
    replies = [listing, json_call("add_item", item="x"), listing, "x<|eot_id|>"]
    agent, _ = make_agent(tokenizer, replies, tools=[add_item, list_items])
    result = agent.run("add x and show the list before and after")
    assert [(r.content, r.repeated) for r in result.tool_runs] == [
        ("none", False),
        ("added", False),
        ("x", False),
    ]


def test_a_call_that_failed_may_be_retried(tokenizer):
    attempts = []

    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        attempts.append(url)
        if len(attempts) == 1:
            raise RuntimeError("timed out")
        return "page"

    replies = [json_call("fetch", url="u"), json_call("fetch", url="u"), "page<|eot_id|>"]
    agent, _ = make_agent(tokenizer, replies, tools=[fetch])
    result = agent.run("fetch u")
    assert attempts == ["u", "u"]
    assert [(r.is_error, r.repeated) for r in result.tool_runs] == [(True, False), (False, False)]


def test_a_failing_tool_becomes_an_error_result(tokenizer):
    @tool
    def flaky(x: int) -> int:
        """Fails."""
        raise RuntimeError("the service is down")

    agent, _ = make_agent(tokenizer, [json_call("flaky", x=1), "It failed.<|eot_id|>"], tools=[flaky])
    result = agent.run("go")
    (run,) = result.tool_runs
    assert run.is_error and "the service is down" in run.content
    assert result.answer == "It failed."


# -- several calls, formats -------------------------------------------------------------------


def test_two_calls_in_one_message_run_concurrently_and_answer_in_order(tokenizer):
    barrier = asyncio.Barrier(2)

    async def meet(name: str) -> str:
        await asyncio.wait_for(barrier.wait(), timeout=10)  # only passes if both run at once
        return f"{name} ok"

    first, second = tool(meet, name="first"), tool(meet, name="second")
    reply = '<|python_tag|>[first(name="a"), second(name="b")]<|eom_id|>'
    agent, _ = make_agent(
        tokenizer, [reply, "both ok<|eot_id|>"], tools=[first, second], tool_prompt_format="python_list"
    )
    result = agent.run("go")
    assert [(r.call.name, r.content, r.is_error) for r in result.tool_runs] == [
        ("first", "a ok", False),
        ("second", "b ok", False),
    ]
    tool_messages = [m for m in result.messages if m.role == "tool"]
    assert [m.call_id for m in tool_messages] == [c.call_id for c in result.steps[0].message.tool_calls]


def test_function_tag_call_ending_in_eot_is_run(tokenizer):
    reply = '<function=add>{"a": 4, "b": 5}</function><|eot_id|>'
    agent, _ = make_agent(tokenizer, [reply, "9<|eot_id|>"], tool_prompt_format="function_tag")
    result = agent.run("4 + 5?")
    assert result.steps[0].message.stop_reason == StopReason.end_of_turn
    assert [r.content for r in result.tool_runs] == ["9"]
    assert result.answer == "9"


# -- limits -----------------------------------------------------------------------------------


def test_max_steps_stops_the_run_with_a_reason(tokenizer):
    replies = [json_call("add", a=i, b=i) for i in range(5)]
    agent, backend = make_agent(tokenizer, replies, max_steps=3)
    result = agent.run("loop")
    assert result.stop_reason == RunStopReason.max_steps
    assert "max_steps=3" in result.detail
    assert len(result.steps) == 3 and len(backend.prompts) == 3
    assert result.answer == ""
    assert result.messages[-1].role == "tool"


def test_max_tokens_cuts_a_reply_and_says_so(tokenizer):
    agent, backend = make_agent(
        tokenizer, ["one two three four five six seven eight<|eot_id|>"], max_tokens=3
    )
    result = agent.run("count")
    assert result.stop_reason == RunStopReason.max_tokens
    assert len(backend.completions[0]) == 3
    assert result.steps[0].message.stop_reason == StopReason.out_of_tokens
    assert result.answer == tokenizer.decode(backend.completions[0])


def test_token_budget_ends_the_run(tokenizer):
    replies = [json_call("add", a=1, b=2), json_call("add", a=3, b=4), "7<|eot_id|>"]
    agent, backend = make_agent(
        tokenizer, replies, token_budget=len(tokenizer.encode(replies[0], allowed_special="all")) + 5
    )
    result = agent.run("go")
    assert result.stop_reason == RunStopReason.token_budget
    assert sum(len(c) for c in backend.completions) <= agent.token_budget


def test_a_conversation_that_outgrows_the_context_stops_and_keeps_the_transcript(tokenizer):
    probe, _ = make_agent(tokenizer, [])
    size = len(probe.prompt_tokens("What is 2 + 3?"))
    agent, backend = make_agent(tokenizer, [json_call("add", a=2, b=3), "5<|eot_id|>"], max_seq_len=size + 40)
    result = agent.run("What is 2 + 3?")
    assert result.stop_reason == RunStopReason.context_length
    assert "max_seq_len" in result.detail
    assert [m.role for m in result.messages] == ["system", "user", "user", "assistant", "tool"]
    assert all(len(p) < size + 40 for p in backend.prompts)


# -- streaming --------------------------------------------------------------------------------


def test_stream_event_order_and_text(tokenizer):
    replies = [json_call("add", a=2, b=2), "The answer is 4, naïvely — 🎉.<|eot_id|>"]
    agent, _ = make_agent(tokenizer, replies)
    events = list(agent.stream("2 + 2?"))
    kinds = [e.type for e in events]
    first_text = kinds.index("text_delta")
    assert kinds[:3] == ["tool_call_started", "tool_result", "step_finished"]
    assert first_text == 3
    assert kinds[-2:] == ["step_finished", "final_answer"]
    assert set(kinds[3:-2]) == {"text_delta"}
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert all(d.step == 2 for d in deltas)
    assert "".join(d.text for d in deltas) == "The answer is 4, naïvely — 🎉."
    assert not any("\ufffd" in d.text for d in deltas)
    assert len(deltas) > 3  # streamed, not all at the end
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    finished = next(e for e in events if isinstance(e, ToolResultEvent))
    assert started.call == finished.run.call and finished.run.content == "4"
    final = events[-1]
    assert isinstance(final, FinalAnswer) and final.result.answer == "The answer is 4, naïvely — 🎉."
    assert isinstance(events[2], StepFinished) and events[2].step.index == 1


@pytest.mark.parametrize(
    "reply", ["\n\nHello there.  ", " Hi", "\n", "Plain.", "  [not a call] but prose", '\n\n{"x": 1} is JSON']
)
def test_streamed_text_adds_up_to_the_answer(tokenizer, reply):
    agent, _ = make_agent(tokenizer, [reply + "<|eot_id|>"], tools=())
    events = list(agent.stream("hi"))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    result = events[-1].result
    assert streamed == result.answer == reply.lstrip()
    assert result.messages[-1].content == reply  # the transcript keeps what the model wrote


def test_stream_never_shows_tool_call_syntax(tokenizer):
    replies = [
        '<function=add>{"a": 1, "b": 1}</function><|eot_id|>',
        "<|python_tag|>print('hidden')<|eom_id|>",
        "Done: 2 and <function=add> is how I call.<|eot_id|>",
    ]
    agent, _ = make_agent(tokenizer, replies, tool_prompt_format="function_tag")
    events = list(agent.stream("go"))
    result = events[-1].result
    assert [(r.call.name, r.is_error) for r in result.tool_runs] == [
        ("add", False),
        ("code_interpreter", True),
    ]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert {d.step for d in deltas} == {3}
    # a message that turned out not to be a call is shown in full once it ends
    assert "".join(d.text for d in deltas) == result.answer == "Done: 2 and <function=add> is how I call."
    assert "<function" not in "".join(d.text for d in deltas[:-1])


def test_breaking_out_of_a_stream_mid_tool_results_leaves_a_whole_transcript(tokenizer):
    two_calls = json_call("add", a=1, b=2).replace("<|eom_id|>", "\n") + json_call("add", a=3, b=4)[14:]
    agent, backend = make_agent(tokenizer, [two_calls, "x<|eot_id|>"])
    before = agent.prompt_tokens("1 + 2 and 3 + 4?")
    for event in agent.stream("1 + 2 and 3 + 4?"):
        if event.type == "tool_result":
            break  # one of the two results seen: abandon the run
    # the unfinished step (a reply whose calls do not all have results) is not kept; the question is
    assert agent.formatter.encode_dialog_prompt(agent.messages) == before
    assert agent.run("again?").answer == "x"
    assert [m.role for m in agent.messages][-3:] == ["user", "user", "assistant"]
    assert backend.prompts[-1] == agent.formatter.encode_dialog_prompt(agent.messages[:-1])


class SlowBackend(ScriptedBackend):
    """Yields one id every 20 ms and records whether each completion ran out or was closed."""

    def __init__(self, tokenizer, replies):
        super().__init__(tokenizer, replies)
        self.ends: list[str] = []

    def complete(self, prompt_tokens, **kwargs):
        inner = super().complete(prompt_tokens, **kwargs)
        try:
            for token in inner:
                time.sleep(0.02)
                yield token
        except GeneratorExit:
            self.ends.append("closed")
            raise
        finally:
            inner.close()


def test_breaking_out_of_a_stream_closes_the_backend_before_the_next_run(tokenizer):
    backend = SlowBackend(tokenizer, ["A long answer, word after word, and more.<|eot_id|>", "b<|eot_id|>"])
    agent = Agent(backend, [add], date=DATE)
    for _ in agent.stream("q"):
        break  # the first text delta: generation is still going on
    assert backend.ends == ["closed"]  # closed before stream() returned, not left running
    assert agent.run("q2").answer == "b"
    assert len(backend.ends) == 2 and backend.completions[1][-1] == tokenizer.eot_id


def test_async_forms_and_sync_run_inside_a_running_loop(tokenizer):
    agent, _ = make_agent(tokenizer, ["a<|eot_id|>", "b<|eot_id|>", "c<|eot_id|>"], tools=[])

    async def main():
        first = await agent.arun("1")
        types = [e.type async for e in agent.astream("2")]
        third = agent.run("3")  # sync, from inside a running loop (as in Jupyter)
        return first, types, third

    first, types, third = asyncio.run(main())
    assert first.answer == "a" and third.answer == "c"
    assert types == ["text_delta", "step_finished", "final_answer"]


# -- sessions ---------------------------------------------------------------------------------


class Counter(Tool):
    """A stateful custom tool: counts calls within a conversation."""

    name = "count"
    description = "Count one more and say how many so far."

    def __init__(self):
        self.parameters = {"type": "object", "properties": {}}
        self.n = 0

    async def run(self, arguments):
        self.n += 1
        return ToolResult(content=str(self.n))

    def reset(self):
        self.n = 0


def test_a_session_continues_over_runs_and_reuses_the_prompt(tokenizer):
    counter = Counter()
    replies = [json_call("count"), "1<|eot_id|>", json_call("count"), "2<|eot_id|>"]
    agent, backend = make_agent(tokenizer, replies, tools=[counter])
    first = agent.run("count once")
    second = agent.run("and again")
    assert (first.answer, second.answer) == ("1", "2")
    assert counter.n == 2
    questions = [m.content for m in second.messages if m.role == "user"][1:]
    assert questions == ["count once", "and again"]
    # run 2's first prompt extends everything run 1 sent and received
    grown = backend.prompts[1] + backend.completions[1]
    assert backend.prompts[2][: len(grown)] == grown
    assert second.steps[0].reused == len(grown)
    assert backend.prompts[2] == ChatFormat(tokenizer).encode_dialog_prompt(second.messages[:-3])

    agent.reset()
    assert agent.messages == [] and counter.n == 0


def test_repeat_detection_is_per_run(tokenizer):
    replies = [json_call("add", a=1, b=1), "2<|eot_id|>", json_call("add", a=1, b=1), "2<|eot_id|>"]
    agent, _ = make_agent(tokenizer, replies)
    agent.run("1 + 1?")
    again = agent.run("once more, 1 + 1?")
    assert [r.repeated for r in again.steps[0].tool_runs] == [False]


def test_transcript_round_trips_through_jsonl(tokenizer, tmp_path):
    agent, _ = make_agent(tokenizer, [json_call("add", a=2, b=3), "5<|eot_id|>"])
    result = agent.run("2 + 3?")
    path = tmp_path / "run.jsonl"
    result.write_jsonl(path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(result.messages)
    assert json.loads(lines[3])["tool_calls"][0]["tool_name"] == "add"
    loaded = read_jsonl(path)
    assert loaded == result.messages
    formatter = ChatFormat(tokenizer)
    assert formatter.encode_dialog_prompt(loaded) == formatter.encode_dialog_prompt(result.messages)


# -- configuration errors ---------------------------------------------------------------------


def test_model_from_nowhere_is_a_clear_usage_error(monkeypatch, tmp_path):
    monkeypatch.delenv("LLAMA_AGENTS_MODEL", raising=False)
    with pytest.raises(UsageError, match="LLAMA_AGENTS_MODEL"):
        Agent()
    monkeypatch.setenv("LLAMA_AGENTS_MODEL", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="not a checkpoint directory"):
        Agent()
    with pytest.raises(UsageError, match="must be a Backend"):
        Agent(model=42)


def test_bad_configuration_is_rejected(tokenizer):
    backend = ScriptedBackend(tokenizer, [])

    def other(x: int) -> int:
        """Another tool called add."""
        return x

    with pytest.raises(UsageError, match="two tools are named 'add'"):
        Agent(backend, [add, tool(other, name="add")])
    with pytest.raises(UsageError, match="tool_prompt_format"):
        Agent(backend, tool_prompt_format="xml")
    with pytest.raises(UsageError, match="max_steps"):
        Agent(backend, max_steps=0)
    with pytest.raises(UsageError, match="top_p"):
        Agent(backend, top_p=0)
    with pytest.raises(UsageError, match="question"):
        Agent(backend).run("   ")


def test_initial_messages_for_builtin_tool_names(tokenizer):
    class Search(Tool):
        name = "brave_search"
        builtin = BuiltinTool.brave_search

    messages = initial_messages([Search()], date=DATE)
    assert messages == [Message(role="system", content=messages[0].content)]
    assert messages[0].content.startswith("Environment: ipython\nTools: brave_search\n")


# -- real built-in tools ----------------------------------------------------------------------


def test_builtin_search_call_ipython_result_then_answer(tokenizer):
    from http_replay import ReplayServer, Reply, load_data

    from llama_agents.tools import BraveSearch

    with ReplayServer() as server:
        server.script(
            "/res/v1/web/search",
            Reply(body=load_data("brave_web_search.json"), content_type="application/json"),
        )
        search = BraveSearch(api_key="test-key", base_url=server.base_url)
        replies = [
            '<|python_tag|>brave_search.call(query="latest price of 1oz gold")<|eom_id|>',
            "Here is what I found.<|eot_id|>",
        ]
        agent, backend = make_agent(tokenizer, replies, tools=[search])
        result = agent.run("Search the web for the latest price of 1oz gold?")
        assert server.requests[0].query["q"] == ["latest price of 1oz gold"]
    system = result.messages[0].content
    assert system.startswith("Environment: ipython\nTools: brave_search\n")
    (run,) = result.tool_runs
    assert run.call.tool_name == BuiltinTool.brave_search and not run.is_error
    assert json.loads(run.content)["results"]
    assert result.answer == "Here is what I found."
    text = tokenizer.decode(backend.prompts[1])
    assert "<|eom_id|><|start_header_id|>ipython<|end_header_id|>\n\n" + run.content + "<|eot_id|>" in text


def test_rejected_api_key_raises_but_keeps_the_dialog_whole(tokenizer):
    from http_replay import ReplayServer, Reply

    from llama_agents.errors import ToolConfigurationError
    from llama_agents.tools import BraveSearch

    with ReplayServer() as server:
        server.script("/res/v1/web/search", Reply(status=401, body={"error": "invalid token"}))
        search = BraveSearch(api_key="bad-key", base_url=server.base_url)
        replies = [
            '<|python_tag|>brave_search.call(query="gold")\nbrave_search.call(query="silver")<|eom_id|>',
            "Sorry, search is not available.<|eot_id|>",
        ]
        agent, backend = make_agent(tokenizer, replies, tools=[search])
        with pytest.raises(ToolConfigurationError, match="rejected"):
            agent.run("Price of gold and silver?")
    # Both calls have a result in the transcript, so the dialog is valid and the session goes on.
    *_, call, first, second = agent.messages
    assert call.role == "assistant" and len(call.tool_calls) == 2
    assert [m.role for m in (first, second)] == ["tool", "tool"]
    assert [m.call_id for m in (first, second)] == [c.call_id for c in call.tool_calls]
    assert "could not run" in first.content
    result = agent.run("Never mind.")
    assert result.answer == "Sorry, search is not available."
    assert backend.prompts[1] == ChatFormat(tokenizer).encode_dialog_prompt(
        agent.messages[:-1], ToolPromptFormat.json
    )


def test_an_agent_dropped_without_close_leaves_no_thread_behind(tokenizer):
    import gc
    import threading

    agent, _ = make_agent(tokenizer, ["Hi.<|eot_id|>"])
    assert agent.run("Hello?").answer == "Hi."
    (thread,) = [t for t in threading.enumerate() if t is agent._loop_thread._thread]
    assert thread.is_alive()
    del agent
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def interpreter():
    from llama_agents.tools.code_interpreter import CodeInterpreter

    with CodeInterpreter() as ci:
        yield ci


def test_code_written_in_one_step_is_reused_in_the_next_and_survives_runs(tokenizer, interpreter):
    replies = [
        "<|python_tag|>def is_prime(n):\n    return n > 1 and all(n % i for i in range(2, n))\n\n"
        "print(is_prime(7))<|eom_id|>",
        "<|python_tag|>print([n for n in range(20) if is_prime(n)])<|eom_id|>",
        "The primes below 20 are 2, 3, 5, 7, 11, 13, 17 and 19.<|eot_id|>",
        "<|python_tag|>print(is_prime(97))<|eom_id|>",
        "Yes.<|eot_id|>",
    ]
    agent, _ = make_agent(tokenizer, replies, tools=[interpreter])
    result = agent.run("Which numbers below 20 are prime?")
    assert "Environment: ipython" in result.messages[0].content
    assert "Tools:" not in result.messages[0].content  # code_interpreter is implied by ipython
    contents = [r.content for r in result.tool_runs]
    assert "True" in contents[0]
    assert "[2, 3, 5, 7, 11, 13, 17, 19]" in contents[1]
    again = agent.run("Is 97 prime?")  # same session: the function is still defined
    assert "True" in again.tool_runs[0].content and not again.tool_runs[0].is_error

    agent.reset()  # a new session forgets the interpreter's variables too
    agent.backend.replies.extend(["<|python_tag|>print(is_prime(3))<|eom_id|>", "Gone.<|eot_id|>"])
    fresh = agent.run("Is 3 prime?")
    assert "NameError" in fresh.tool_runs[0].content


# -- end to end on a tiny random checkpoint ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_path):
    from llama_agents.llama.checkpoint import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny"), "tiny", seed=1, tokenizer_path=tokenizer_path
    )


def test_end_to_end_on_a_tiny_random_checkpoint(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LLAMA_AGENTS_MODEL", str(tiny_checkpoint))
    with Agent(tools=[add], max_tokens=6, max_steps=2, temperature=0.0, date=DATE) as agent:
        assert type(agent.backend).__name__ == "LocalBackend"
        first = agent.run("What is 2 + 3?")
        second = agent.run("And 4 + 4?")
    step = first.steps[0]
    tokens = step.message.tokens
    # The reply is noise, but the run ends for the reason its tokens give: a stop token, or max_tokens.
    if step.generated == 6 and step.message.stop_reason == StopReason.out_of_tokens:
        assert first.stop_reason == RunStopReason.max_tokens and len(tokens) == 6
    else:
        assert step.message.tool_calls or first.stop_reason == RunStopReason.final_answer
    assert step.prompt_tokens == len(
        ChatFormat(agent.backend.tokenizer).encode_dialog_prompt(first.messages[:3])
    )
    assert step.prefilled == step.prompt_tokens and step.reused == 0  # a cold cache
    assert 1 <= step.generated <= 6
    # The second run appends to the first conversation: the backend's cache serves everything it
    # holds, i.e. the first prompt and every generated token but the last (sampled, never fed back).
    last = first.steps[-1]
    if len(first.steps) == 1:
        assert second.steps[0].reused == last.prompt_tokens + last.generated - 1
    assert second.steps[0].prefilled == second.steps[0].prompt_tokens - second.steps[0].reused
    assert second.steps[0].prefilled < second.steps[0].prompt_tokens
    # Greedy decoding is deterministic: a fresh agent on the same checkpoint writes the same reply.
    with Agent(
        str(tiny_checkpoint), tools=[add], max_tokens=6, max_steps=2, temperature=0.0, date=DATE
    ) as again:
        events = list(again.stream("What is 2 + 3?"))
    assert [e.type for e in events[-2:]] == ["step_finished", "final_answer"]
    replayed = events[-1].result
    assert [s.message.tokens for s in replayed.steps] == [s.message.tokens for s in first.steps]
    assert (replayed.answer, replayed.stop_reason) == (first.answer, first.stop_reason)
