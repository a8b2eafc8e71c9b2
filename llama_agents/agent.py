"""The agent loop: ask the model, run the tools it calls, feed the results back, until it answers.

What it does: builds the exact Llama 3.1 prompt (system prompt with `Environment: ipython` and the
built-in `Tools:` line, custom tools described in a user message in the chosen format), sends the
prompt's token ids to a `Backend`, decodes each reply with `ChatFormat`, runs every tool call of a
reply (independent calls concurrently) and appends the results as `ipython` messages, in order. A
conversation continues over several `run` calls (a session) and only ever grows by appending, so a
backend's KV cache is reused. Model mistakes (bad arguments, an unknown tool, a repeated call)
become tool results the model can act on; limits (`max_steps`, `max_tokens`, `token_budget`, the
context length) end a run with a `stop_reason`, never a hang.

What it does not do: tokenise or sample (the backend), know about tensors, render templates (the
`prompts` package), or sandbox code (the tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llama_agents._events import (
    AgentEvent,
    AgentResult,
    FinalAnswer,
    RunStopReason,
    Step,
    StepFinished,
    TextDelta,
    ToolCallStarted,
    ToolResultEvent,
    ToolRun,
    read_jsonl,
)
from llama_agents._text_stream import AnswerTextStream
from llama_agents.backends.base import Backend, read_stats
from llama_agents.errors import PromptTooLongError, RunLimitExceeded, UsageError
from llama_agents.llama.chat_format import ChatFormat
from llama_agents.prompts import render_system_prompt, render_tool_definitions
from llama_agents.tools.base import Tool, tool
from llama_agents.types import BuiltinTool, Message, StopReason, ToolCall, ToolPromptFormat

__all__ = [
    "Agent",
    "AgentEvent",
    "AgentResult",
    "FinalAnswer",
    "RunStopReason",
    "Step",
    "StepFinished",
    "TextDelta",
    "ToolCallStarted",
    "ToolResultEvent",
    "ToolRun",
    "initial_messages",
    "read_jsonl",
]

logger = logging.getLogger(__name__)

MODEL_ENV = "LLAMA_AGENTS_MODEL"
"""The environment variable naming the checkpoint directory used when `Agent(model=None)`."""

T = TypeVar("T")


def initial_messages(
    tools: Sequence[Tool | BuiltinTool] = (),
    *,
    instructions: str | None = None,
    tool_prompt_format: ToolPromptFormat | str = ToolPromptFormat.json,
    date: datetime.date | None = None,
) -> list[Message]:
    """The messages a conversation starts with, before the first question.

    A system message (with `Environment: ipython` when there are tools, and the `Tools:` line for
    the built-in ones), then, when there are custom tools, the user message describing them in
    `tool_prompt_format`, as the Llama 3.1 prompt-format document shows (`python_list`: the
    definitions are the system prompt, as Llama 3.2's document shows). A `BuiltinTool` stands for
    the built-in tool of that name (no instance, no API key needed: the prompt only names it).
    """
    fmt = _prompt_format(tool_prompt_format)
    builtin = [t if isinstance(t, BuiltinTool) else t.builtin for t in tools]
    builtin = [b for b in builtin if b is not None]
    custom = [t for t in tools if not isinstance(t, BuiltinTool) and t.builtin is None]
    definitions = render_tool_definitions([t.definition() for t in custom], fmt) if custom else ""
    if fmt == ToolPromptFormat.python_list:
        # Llama 3.2's zero-shot function calling: the definitions are the system prompt (before
        # any instructions); its calls need no `Environment: ipython`.
        text = "\n\n".join(part for part in (definitions, instructions) if part) or None
        system = render_system_prompt(builtin_tools=builtin, date=date, instructions=text)
        return [Message(role="system", content=system)]
    system = render_system_prompt(
        builtin_tools=builtin, ipython=bool(tools), date=date, instructions=instructions
    )
    messages = [Message(role="system", content=system)]
    if definitions:
        messages.append(Message(role="user", content=definitions))
    return messages


class Agent:
    """A tool-using Llama 3.1 agent holding one conversation (a session) at a time.

    `model`: a `Backend`, a checkpoint directory (run in-process by `LocalBackend`), a model server
    URL (`backends.remote.connect`: `http://host:8000/v1`, `ollama+http://host:11434#llama3.1`), or
    None to use the directory or URL named by `$LLAMA_AGENTS_MODEL`. `tools`: `Tool` instances or
    plain functions (wrapped with `@tool`). `instructions`: appended to the system prompt.
    `max_steps`: model replies per run. `max_tokens`: ids per reply. `token_budget`: generated ids
    per run (None: no limit).
    `date`: the "Today Date" of the system prompt (default: the day the session starts).

    `run(question)` returns an `AgentResult`; `stream(question)` yields events; `arun` / `astream`
    are their async forms. Calling `run` again continues the conversation; `reset()` starts afresh.
    """

    def __init__(
        self,
        model: Backend | str | os.PathLike[str] | None = None,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        instructions: str | None = None,
        tool_prompt_format: ToolPromptFormat | str = ToolPromptFormat.json,
        max_steps: int = 10,
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_tokens: int = 1024,
        token_budget: int | None = None,
        date: datetime.date | None = None,
    ) -> None:
        _check_int("max_steps", max_steps, 1)
        _check_int("max_tokens", max_tokens, 1)
        if token_budget is not None:
            _check_int("token_budget", token_budget, 1)
        if not isinstance(temperature, int | float) or temperature < 0:
            raise UsageError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise UsageError(f"top_p must be a number in (0, 1], got {top_p!r}")
        self.tool_prompt_format = _prompt_format(tool_prompt_format)
        self.tools: list[Tool] = _collect_tools(tools)
        self.backend: Backend = _resolve_backend(model)
        self.formatter = ChatFormat(self.backend.tokenizer)
        self.instructions = instructions
        self.max_steps = max_steps
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_tokens = max_tokens
        self.token_budget = token_budget
        self.date = date
        self._tools_by_name = {t.name: t for t in self.tools}
        self._messages: list[Message] = []
        self._busy = threading.Lock()
        self._loop_thread = _LoopThread()

    # -- the conversation -------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """The session's transcript so far (a copy)."""
        return list(self._messages)

    def reset(self) -> None:
        """Start a new conversation: forget the transcript and reset every tool's state."""
        if self._busy.locked():
            raise UsageError("cannot reset an agent while a run is in progress")
        self._messages = []
        for t in self.tools:
            t.reset()

    def new_session(self) -> Agent:
        """Same as `reset()`; returns the agent for chaining."""
        self.reset()
        return self

    def prompt_tokens(self, question: str | None = None) -> list[int]:
        """The prompt the model would be given now (with `question` appended as a user message)."""
        messages = self._messages or self._start_messages()
        if question is not None:
            messages = [*messages, Message(role="user", content=question)]
        return self.formatter.encode_dialog_prompt(messages, self.tool_prompt_format)

    def close(self) -> None:
        """Release the tools' resources (the code interpreter's sandbox) and the helper thread."""
        for t in self.tools:
            try:
                t.close()
            except Exception:
                logger.exception("closing tool %r failed", t.name)
        self._loop_thread.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running ----------------------------------------------------------------------------

    def run(self, question: str) -> AgentResult:
        """Answer `question`, continuing the conversation; works inside a running event loop too."""
        return self._loop_thread.call(self.arun(question))

    async def arun(self, question: str) -> AgentResult:
        result: AgentResult | None = None
        async for event in self.astream(question):
            if isinstance(event, FinalAnswer):
                result = event.result
        assert result is not None, "astream always ends with a FinalAnswer"
        return result

    def stream(self, question: str) -> Iterator[AgentEvent]:
        """Yield the run's events as they happen (see `astream`); works inside a running loop too."""
        events = self.astream(question)

        async def next_event() -> AgentEvent:
            return await events.__anext__()

        try:
            while True:
                try:
                    event = self._loop_thread.call(next_event())
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._loop_thread.call(events.aclose())

    async def astream(self, question: str) -> AsyncIterator[AgentEvent]:
        """Yield `TextDelta`s of the answer, `ToolCallStarted` / `ToolResultEvent` for each call,
        `StepFinished` after each reply, and finally one `FinalAnswer` carrying the `AgentResult`."""
        if not isinstance(question, str) or not question.strip():
            raise UsageError(f"the question must be a non-empty string, got {question!r}")
        if not self._busy.acquire(blocking=False):
            raise UsageError("this agent is already running; one run at a time per agent (session)")
        steps = self._steps(question)
        try:
            async for event in steps:
                yield event
        finally:
            # Closed early (a `break` out of the stream, a cancelled task): close the run here, so the
            # backend's generation is stopped and the transcript tidied before the next run may start.
            try:
                await steps.aclose()
            finally:
                self._busy.release()

    async def _steps(self, question: str) -> AsyncIterator[AgentEvent]:
        if not self._messages:
            self._messages = self._start_messages()
        self._messages.append(Message(role="user", content=question))
        steps: list[Step] = []
        seen: dict[str, int] = {}
        generated_total = 0
        stop, detail, answer = RunStopReason.max_steps, "", ""
        max_seq_len = getattr(self.backend, "max_seq_len", None)
        for index in range(1, self.max_steps + 1):
            prompt = self.formatter.encode_dialog_prompt(self._messages, self.tool_prompt_format)
            limit, cut_reason = self.max_tokens, RunStopReason.max_tokens
            if self.token_budget is not None and self.token_budget - generated_total < limit:
                limit, cut_reason = self.token_budget - generated_total, RunStopReason.token_budget
            if isinstance(max_seq_len, int) and max_seq_len - len(prompt) < limit:
                limit, cut_reason = max_seq_len - len(prompt), RunStopReason.context_length
            if limit <= 0:
                stop = cut_reason
                detail = _limit_detail(cut_reason, len(prompt), max_seq_len, self.token_budget)
                break
            texts = AnswerTextStream(self.backend.tokenizer)
            tokens: list[int] = []
            started = time.perf_counter()
            try:
                async with contextlib.aclosing(self._generate(prompt, limit)) as generation:
                    async for token in generation:
                        tokens.append(token)
                        delta = texts.feed(token)
                        if delta:
                            yield TextDelta(step=index, text=delta)
            except PromptTooLongError as e:
                stop, detail = RunStopReason.context_length, f"{e} Start a new session with reset()."
                break
            generation_s = time.perf_counter() - started
            message = self.formatter.decode_assistant_message(tokens, StopReason.out_of_tokens)
            step_start = len(self._messages)
            self._messages.append(message)
            delta = texts.finish(message)
            if delta:
                yield TextDelta(step=index, text=delta)
            stats = read_stats(self.backend, len(prompt), len(tokens))
            generated_total += len(tokens)
            truncated = message.stop_reason == StopReason.out_of_tokens
            runs: list[ToolRun] = []
            started = time.perf_counter()
            if message.tool_calls and not truncated:
                try:
                    for call in message.tool_calls:
                        yield ToolCallStarted(step=index, call=call)
                    calls = self._run_calls(message.tool_calls, seen, index)
                    async with contextlib.aclosing(calls):
                        async for run in calls:
                            runs.append(run)
                            self._messages.append(
                                Message(
                                    role="tool",
                                    content=run.content,
                                    call_id=run.call.call_id,
                                    tool_name=run.call.tool_name,
                                )
                            )
                            yield ToolResultEvent(step=index, run=run)
                finally:
                    # Abandoned (the stream closed, the task cancelled) before every call had its
                    # result: drop the unfinished step, so the transcript stays a valid dialog.
                    if len(runs) < len(message.tool_calls):
                        del self._messages[step_start:]
            step = Step(
                index=index,
                message=message,
                tool_runs=runs,
                prompt_tokens=stats.prompt_tokens,
                prefilled=stats.prefilled,
                reused=stats.reused,
                generated=stats.generated,
                generation_s=generation_s,
                tools_s=time.perf_counter() - started if runs else 0.0,
            )
            steps.append(step)
            yield StepFinished(step=step)
            if truncated:
                stop, answer = cut_reason, message.content.lstrip()
                detail = _limit_detail(cut_reason, len(prompt), max_seq_len, self.token_budget, limit)
                break
            if not message.tool_calls:
                stop, answer = RunStopReason.final_answer, message.content.lstrip()
                break
        else:
            detail = f"the model was still calling tools after max_steps={self.max_steps} replies"
        if detail:
            logger.info("run stopped: %s (%s)", stop.value, detail)
        result = AgentResult(
            answer=answer, stop_reason=stop, detail=detail, steps=steps, messages=list(self._messages)
        )
        yield FinalAnswer(result=result)

    def _start_messages(self) -> list[Message]:
        return initial_messages(
            self.tools,
            instructions=self.instructions,
            tool_prompt_format=self.tool_prompt_format,
            date=self.date or datetime.date.today(),
        )

    async def _generate(self, prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        """Run the backend's (blocking) iterator in one worker thread, handing ids to this loop.

        One thread runs the whole completion, so thread-local state a backend sets up (torch's
        inference mode) stays on the thread that uses it.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        stop_tokens = self.backend.tokenizer.stop_tokens

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancelled.set()

        def work() -> None:
            try:
                iterator = self.backend.complete(
                    prompt, max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p
                )
                try:
                    for count, token in enumerate(iterator, start=1):
                        put(("token", token))
                        if cancelled.is_set() or token in stop_tokens or count >= max_tokens:
                            break
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                put(("end", None))
            except BaseException as e:
                put(("error", e))

        worker = threading.Thread(target=work, name="llama-agents-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "token":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancelled.set()
            worker.join()

    async def _run_calls(
        self, calls: Sequence[ToolCall], seen: dict[str, int], step: int
    ) -> AsyncIterator[ToolRun]:
        """Run a reply's calls concurrently; yield their results in call order.

        `seen` holds the calls whose results are still current (key -> step): a call equal to one of
        them is answered with a notice instead of running again, unless its tool is `repeatable`. A
        result stops being current once any tool runs after it (that tool may have changed what the
        call would return), and a call that failed never is (trying it again is how the model
        recovers from a timeout).
        """
        pending: list[asyncio.Future[ToolRun]] = []
        keys: list[str | None] = []  # the key of each call that runs, None for the others
        this_step: dict[str, int] = {}
        for call in calls:
            key = json.dumps([call.name, call.arguments], sort_keys=True, default=str)
            keys.append(None)
            found = self._tools_by_name.get(call.name)
            earlier = None if found is not None and found.repeatable else seen.get(key, this_step.get(key))
            if earlier is not None:
                notice = (
                    f"Notice: {call.name} was already called with exactly these arguments in step "
                    f"{earlier} of this run; its result is above. Use that result, or call it with "
                    "different arguments."
                )
                pending.append(_done(ToolRun(call=call, content=notice, is_error=True, repeated=True)))
                continue
            if found is None:
                names = ", ".join(sorted(self._tools_by_name)) or "none"
                content = f"Error: there is no tool named {call.name!r}. Available tools: {names}."
                pending.append(_done(ToolRun(call=call, content=content, is_error=True)))
                continue
            this_step[key] = step
            keys[-1] = key
            pending.append(asyncio.ensure_future(_call_tool(found, call)))
        # A developer error inside a tool (a rejected API key) stops the run, but only once every
        # call of the reply has its result in the transcript, so the dialog stays whole and the
        # session can go on once the problem is fixed.
        failure: BaseException | None = None
        current: dict[str, int] = {}
        try:
            for call, key, future in zip(calls, keys, pending, strict=True):
                try:
                    run = await future
                except (UsageError, RunLimitExceeded) as e:
                    failure = failure or e
                    run = ToolRun(call=call, content=f"Error: {call.name} could not run: {e}", is_error=True)
                if key is not None and not run.is_error:
                    current[key] = step
                yield run
        finally:
            for future in pending:
                future.cancel()
        if this_step:  # tools ran: only their results are current now
            seen.clear()
            seen.update(current)
        if failure is not None:
            raise failure


async def _call_tool(found: Tool, call: ToolCall) -> ToolRun:
    started = time.perf_counter()
    result = await found.acall(dict(call.arguments))
    return ToolRun(
        call=call,
        content=result.content,
        is_error=result.is_error,
        duration_s=time.perf_counter() - started,
    )


def _done(value: T) -> asyncio.Future[T]:
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _limit_detail(
    reason: RunStopReason, prompt: int, max_seq_len: int | None, budget: int | None, limit: int = 0
) -> str:
    if reason == RunStopReason.context_length:
        return (
            f"the conversation ({prompt} tokens) fills the model's context (max_seq_len={max_seq_len}); "
            "the transcript is kept, start a new session with reset() to go on"
        )
    if reason == RunStopReason.token_budget:
        return f"the run used its token_budget={budget} generated tokens"
    return f"a reply reached max_tokens={limit} before its end; raise max_tokens for longer replies"


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"{name} must be an int >= {minimum}, got {value!r}")


def _prompt_format(value: ToolPromptFormat | str) -> ToolPromptFormat:
    try:
        return ToolPromptFormat(value)
    except ValueError as e:
        choices = ", ".join(f.value for f in ToolPromptFormat)
        raise UsageError(f"unknown tool_prompt_format {value!r}; choose one of: {choices}") from e


def _collect_tools(tools: Iterable[Tool | Callable[..., Any]]) -> list[Tool]:
    if isinstance(tools, Tool) or callable(tools):
        raise UsageError("tools must be a list of tools, e.g. tools=[my_tool], not a single tool")
    collected: list[Tool] = []
    names: set[str] = set()
    for item in tools:
        if isinstance(item, Tool):
            t = item
        elif callable(item):
            t = tool(item)
        else:
            raise UsageError(f"a tool must be a Tool or a function to wrap with @tool, got {item!r}")
        if t.name in names:
            raise UsageError(f"two tools are named {t.name!r}; tool names must be unique")
        names.add(t.name)
        collected.append(t)
    return collected


def _resolve_backend(model: Backend | str | os.PathLike[str] | None) -> Backend:
    if model is None:
        model = os.environ.get(MODEL_ENV) or None
        if model is None:
            raise UsageError(
                "no model given: pass Agent(model=...) a Backend or a checkpoint directory, "
                f"or set {MODEL_ENV}=/path/to/checkpoint"
            )
    if isinstance(model, str) and "://" in model:
        from llama_agents.backends.remote import connect

        return connect(model)  # a model server: vllm+http://..., http://host:11434#llama3.1, ...
    if isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise UsageError(f"model {str(model)!r} is not a checkpoint directory (no such directory)")
        from llama_agents.backends.local import LocalBackend

        return LocalBackend.from_checkpoint(path)
    if callable(getattr(model, "complete", None)) and hasattr(model, "tokenizer"):
        return model
    raise UsageError(
        f"model must be a Backend (an object with `tokenizer` and `complete`), a checkpoint directory "
        f"or None, got {type(model).__name__}"
    )


class _LoopThread:
    """An event loop on a private thread, so the sync API works with or without a running loop
    (Jupyter) and tools holding loop-bound clients always see the same loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._start()
        if threading.current_thread() is self._thread:
            coro.close()
            raise UsageError("a sync Agent method was called from inside a run; use the async form")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        with self._lock:
            loop, thread, finalizer = self._loop, self._thread, self._finalizer
            self._loop = self._thread = self._finalizer = None
        if finalizer is not None:
            finalizer.detach()
        if loop is not None and thread is not None:
            _stop_loop(loop, thread)

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="llama-agents-loop", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
                # An agent dropped without close() must not leave its loop thread running.
                self._finalizer = weakref.finalize(self, _stop_loop, loop, thread)
            return self._loop


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join()
        loop.close()  # also lets the default executor's idle threads go
