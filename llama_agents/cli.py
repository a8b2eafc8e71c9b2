"""The `llama-agents` command line: `run`, `chat` and `prompt-format`.

- `llama-agents run "question"`: streams the answer to stdout and each tool call and result to
  stderr as it happens; `--json` prints the whole `AgentResult` as JSON instead.
- `llama-agents chat`: a multi-turn conversation read from stdin (until EOF or `exit`; `/reset`
  starts afresh).
- `llama-agents prompt-format "question"`: prints the exact prompt text the model would be given
  (special tokens included), with no model loaded: the debugging view.

This is the user interface, so it prints; everything it runs lives in the library. It does not
download checkpoints: `--model` (or `$LLAMA_AGENTS_MODEL`) names a local checkpoint directory or a
model server URL.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TextIO

from llama_agents.agent import MODEL_ENV, Agent, AgentResult, initial_messages
from llama_agents.backends.base import Backend
from llama_agents.errors import LlamaAgentsError, UsageError
from llama_agents.tools.base import Tool
from llama_agents.types import BuiltinTool, Message, ToolPromptFormat

__all__ = ["build_parser", "main"]

BUILTIN_TOOLS = {
    "brave_search": "BraveSearch",
    "wolfram_alpha": "WolframAlpha",
    "code_interpreter": "CodeInterpreter",
}
_SHOWN_RESULT_CHARS = 600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-agents", description="Tool-using agents on Llama 3.1, exact to its prompt format."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tools = argparse.ArgumentParser(add_help=False)
    tools.add_argument("--tools", default="", help="built-in tools: " + ",".join(BUILTIN_TOOLS))
    tools.add_argument(
        "--tools-module", action="append", default=[], metavar="MODULE",
        help="a .py file or importable module whose @tool functions the agent may call (repeatable)",
    )  # fmt: skip
    tools.add_argument("--tool-format", default="json", choices=[f.value for f in ToolPromptFormat])
    tools.add_argument("--instructions", default=None, help="text appended to the system prompt")
    tools.add_argument(
        "--date", default=None, help="the prompt's 'Today Date' as YYYY-MM-DD (default: today)"
    )
    tools.add_argument(
        "--model",
        default=None,
        help=f"checkpoint directory or model server URL, e.g. vllm+http://host:8000 (default: ${MODEL_ENV})",
    )

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--temperature", type=float, default=0.6)
    model.add_argument("--top-p", type=float, default=0.9)
    model.add_argument("--max-steps", type=int, default=10)
    model.add_argument("--max-tokens", type=int, default=1024, help="tokens per model reply")
    model.add_argument("--max-seq-len", type=int, default=8192, help="context length to allocate")
    model.add_argument("--seed", type=int, default=None, help="seed sampling for a reproducible run")
    model.add_argument("--json", action="store_true", help="print the AgentResult as JSON")
    model.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.model for a server --model (default: $LLAMA_AGENTS_TOKENIZER)",
    )

    run = commands.add_parser("run", parents=[tools, model], help="answer one question")
    run.add_argument("question")
    run.add_argument("--transcript", default=None, help="also write the transcript here as JSON lines")
    commands.add_parser("chat", parents=[tools, model], help="a multi-turn conversation on stdin")
    fmt = commands.add_parser("prompt-format", parents=[tools], help="print the exact prompt, no model")
    fmt.add_argument("question")
    fmt.add_argument(
        "--tokenizer", default=None, help="tokenizer.model (default: the model's, else llama-models')"
    )
    fmt.add_argument("--json", action="store_true", help="print the text and the token ids as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prompt-format":
            return _prompt_format(args)
        if args.command == "run":
            return _run(args)
        return _chat(args)
    except LlamaAgentsError as e:
        print(f"llama-agents: error: {e}", file=sys.stderr)
        if getattr(args, "json", False):  # machine-readable output stays machine-readable
            print(json.dumps({"error": str(e), "type": type(e).__name__}))
        return 2
    except KeyboardInterrupt:
        return 130


# -- commands ---------------------------------------------------------------------------------


def _prompt_format(args: argparse.Namespace) -> int:
    from llama_agents.llama.chat_format import ChatFormat
    from llama_agents.llama.tokenizer import Tokenizer

    tokenizer = Tokenizer(_tokenizer_path(args))
    # Built-in tools are only named in the prompt: no instance (and no API key) is needed.
    builtin: list[Tool | BuiltinTool] = [BuiltinTool(name) for name in _builtin_names(args)]
    tools = _custom_tools(args)
    try:
        messages = initial_messages(
            builtin + tools,
            instructions=args.instructions,
            tool_prompt_format=args.tool_format,
            date=_date(args) or datetime.date.today(),
        )
        messages.append(Message(role="user", content=args.question))
        tokens = ChatFormat(tokenizer).encode_dialog_prompt(messages, ToolPromptFormat(args.tool_format))
    finally:
        for t in tools:
            t.close()
    text = tokenizer.decode(tokens)
    if args.json:
        print(json.dumps({"text": text, "tokens": tokens}))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


def _run(args: argparse.Namespace) -> int:
    with _agent(args) as agent:
        result = (
            agent.run(args.question) if args.json else _stream(agent, args.question, sys.stdout, sys.stderr)
        )
    if args.transcript:
        result.write_jsonl(args.transcript)
    if args.json:
        print(result.model_dump_json(indent=2))
    return 0 if result.stop_reason.value == "final_answer" else 1


def _chat(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    with _agent(args) as agent:
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            question = line.strip()
            if not question:
                continue
            if question in ("exit", "quit"):
                break
            if question == "/reset":
                agent.reset()
                print("(new conversation)", file=sys.stderr)
                continue
            if args.json:
                print(agent.run(question).model_dump_json())
            else:
                _stream(agent, question, sys.stdout, sys.stderr)
    return 0


# -- helpers ----------------------------------------------------------------------------------


def _stream(agent: Agent, question: str, out: TextIO, err: TextIO) -> AgentResult:
    result: AgentResult | None = None
    for event in agent.stream(question):
        if event.type == "text_delta":
            out.write(event.text)
            out.flush()
        elif event.type == "tool_call_started":
            arguments = ", ".join(f"{k}={v!r}" for k, v in event.call.arguments.items())
            print(f"[tool] {event.call.name}({arguments})", file=err, flush=True)
        elif event.type == "tool_result":
            run = event.run
            content = run.content
            if len(content) > _SHOWN_RESULT_CHARS:
                content = content[:_SHOWN_RESULT_CHARS] + f"... ({len(run.content)} chars)"
            label = "error" if run.is_error else "result"
            print(f"[{label}] {content}", file=err, flush=True)
        elif event.type == "final_answer":
            result = event.result
    assert result is not None
    out.write("\n")
    out.flush()
    if result.stop_reason.value != "final_answer":
        print(f"[stopped: {result.stop_reason.value}] {result.detail}", file=err, flush=True)
    return result


def _agent(args: argparse.Namespace) -> Agent:
    model = args.model or os.environ.get(MODEL_ENV)
    if not model:
        raise UsageError(f"no model: pass --model /path/to/checkpoint or set {MODEL_ENV}")
    _check_numbers(args)
    remote = "://" in model  # a model server (vLLM, Ollama, llama.cpp, OpenAI-compatible)
    if not remote and not Path(model).is_dir():
        raise UsageError(f"--model {model!r} is not a checkpoint directory or a server URL")
    # Tools first, so a missing API key fails before a model is loaded; closed again if the rest fails.
    tools = _tools(args)
    try:
        backend: Backend
        if remote:
            from llama_agents.backends.remote import connect

            backend = connect(model, tokenizer=args.tokenizer)
        else:
            from llama_agents.backends.local import LocalBackend  # imports torch: only when a model runs

            backend = LocalBackend.from_checkpoint(model, seed=args.seed, max_seq_len=args.max_seq_len)
        return Agent(
            backend,
            tools,
            instructions=args.instructions,
            tool_prompt_format=args.tool_format,
            max_steps=args.max_steps,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            date=_date(args),
        )
    except BaseException:
        for t in tools:
            t.close()
        raise


def _check_numbers(args: argparse.Namespace) -> None:
    if args.max_seq_len < 2:
        raise UsageError(f"--max-seq-len must be at least 2, got {args.max_seq_len}")


def _builtin_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    for name in names:
        if name not in BUILTIN_TOOLS:
            raise UsageError(
                f"unknown built-in tool {name!r} in --tools; choose from: {', '.join(BUILTIN_TOOLS)}"
            )
    return names


def _tools(args: argparse.Namespace) -> list[Tool]:
    import llama_agents.tools as tools_package

    tools: list[Tool] = []
    for name in _builtin_names(args):
        cls = getattr(tools_package, BUILTIN_TOOLS[name], None)
        if cls is None:
            raise UsageError(f"the built-in tool {name!r} is not available in this installation")
        tools.append(cls())
    return tools + _custom_tools(args)


def _custom_tools(args: argparse.Namespace) -> list[Tool]:
    tools: list[Tool] = []
    for spec in args.tools_module:
        found = _module_tools(_import(spec))
        if not found:
            raise UsageError(f"--tools-module {spec!r} defines no tools (decorate functions with @tool)")
        tools.extend(found)
    return tools


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--tools-module {spec!r}: no such file")
        module_spec = importlib.util.spec_from_file_location(f"_llama_agents_tools_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"--tools-module {spec!r} cannot be imported as Python")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # the user's code: a syntax error, or anything it raises at import
            raise UsageError(f"--tools-module {spec!r} failed to import: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise UsageError(f"--tools-module {spec!r} cannot be imported: {e}") from e
    except Exception as e:
        raise UsageError(f"--tools-module {spec!r} failed to import: {type(e).__name__}: {e}") from e


def _module_tools(module: ModuleType) -> list[Tool]:
    return [value for value in vars(module).values() if isinstance(value, Tool)]


def _date(args: argparse.Namespace) -> datetime.date | None:
    if args.date is None:
        return None
    try:
        return datetime.date.fromisoformat(args.date)
    except ValueError as e:
        raise UsageError(f"--date must be YYYY-MM-DD, got {args.date!r}") from e


def _tokenizer_path(args: argparse.Namespace) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    model = args.model or os.environ.get(MODEL_ENV)
    for candidate in ("tokenizer.model", "original/tokenizer.model"):  # Meta, then HF layout
        if model and (Path(model) / candidate).is_file():
            return Path(model) / candidate
    try:
        import llama_models
    except ImportError:
        llama_models = None
    if llama_models is not None:
        path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
        if path.is_file():
            return path
    raise UsageError("no tokenizer: pass --tokenizer /path/to/tokenizer.model or --model /path/to/checkpoint")


if __name__ == "__main__":
    sys.exit(main())
