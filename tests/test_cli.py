"""The `llama-agents` command line: prompt-format (no model), argument errors, run on a tiny checkpoint."""

from __future__ import annotations

import json
import textwrap

import pytest

from llama_agents.cli import main
from llama_agents.prompts import render_tool_definitions
from llama_agents.types import ToolDefinition, ToolPromptFormat

# The Llama 3.1 prompt-format doc, "Builtin Tool Calling" (its input prompt, verbatim).
DOC_BUILTIN_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Environment: ipython\nTools: brave_search, wolfram_alpha\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n\n"
    "You are a helpful assistant.\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "Search the web for the latest price of 1oz gold?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

TOOLS_MODULE = textwrap.dedent(
    '''
    from llama_agents.tools import tool

    @tool
    def trending_songs(n: int, genre: str = "all") -> list[str]:
        """Returns the trending songs on a Music site

        Args:
            n: The number of songs to return
            genre: The genre of the songs to return
        """
        return [f"song {i}" for i in range(n)]

    NOT_A_TOOL = 3
    '''
)


def test_prompt_format_prints_the_doc_prompt_exactly(capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_AGENTS_MODEL", raising=False)
    argv = [
        "prompt-format",
        "Search the web for the latest price of 1oz gold?",
        "--tools",
        "brave_search,wolfram_alpha",
        "--date",
        "2024-09-21",
        "--instructions",
        "You are a helpful assistant.",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == DOC_BUILTIN_PROMPT


def test_prompt_format_with_a_tools_module_as_json(capsys, tmp_path, tokenizer):
    module = tmp_path / "my_tools.py"
    module.write_text(TOOLS_MODULE)
    argv = ["prompt-format", "Use tools to get latest trending songs", "--tools-module", str(module)]
    argv += ["--tool-format", "function_tag", "--date", "2024-09-21", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert tokenizer.decode(out["tokens"]) == out["text"]
    definition = ToolDefinition(
        name="trending_songs",
        description="Returns the trending songs on a Music site",
        parameters={
            "type": "object",
            "properties": {
                "n": {"type": "integer", "description": "The number of songs to return"},
                "genre": {
                    "type": "string",
                    "description": "The genre of the songs to return",
                    "default": "all",
                },
            },
            "required": ["n"],
        },
    )
    expected_definitions = render_tool_definitions([definition], ToolPromptFormat.function_tag)
    assert "<|start_header_id|>user<|end_header_id|>\n\n" + expected_definitions + "<|eot_id|>" in out["text"]
    assert out["text"].startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\n"
    )
    assert out["tokens"][0] == tokenizer.bos_id


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prompt-format", "q", "--tools", "web_browser"], "unknown built-in tool 'web_browser'"),
        (["prompt-format", "q", "--tools-module", "no/such/file.py"], "no such file"),
        (["prompt-format", "q", "--date", "21/09/2024"], "--date must be YYYY-MM-DD"),
        (["run", "q"], "no model"),
        (["run", "q", "--model", "/no/such/dir"], "not a checkpoint directory"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_AGENTS_MODEL", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_tools_module_without_tools_is_an_error(capsys, tmp_path):
    module = tmp_path / "empty_tools.py"
    module.write_text("X = 1\n")
    assert main(["prompt-format", "q", "--tools-module", str(module)]) == 2
    assert "defines no tools" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "message"),
    [("def broken(:\n", "SyntaxError"), ("raise RuntimeError('boom')\n", "boom")],
)
def test_a_tools_module_that_fails_to_import_is_a_usage_error(source, message, capsys, tmp_path):
    module = tmp_path / "broken_tools.py"
    module.write_text(source)
    assert main(["prompt-format", "q", "--tools-module", str(module)]) == 2
    err = capsys.readouterr().err
    assert "--tools-module" in err and message in err and "Traceback" not in err


def test_an_importable_tools_module_that_raises_is_a_usage_error(capsys, tmp_path, monkeypatch):
    (tmp_path / "raising_tools_mod.py").write_text("raise KeyError('missing setting')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["prompt-format", "q", "--tools-module", "raising_tools_mod"]) == 2
    assert "missing setting" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_path):
    from llama_agents.llama.checkpoint import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny"), "tiny", seed=2, tokenizer_path=tokenizer_path
    )


def test_run_on_a_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys, tokenizer):
    module = tmp_path / "my_tools.py"
    module.write_text(TOOLS_MODULE)
    transcript = tmp_path / "run.jsonl"
    argv = ["run", "hello", "--model", str(tiny_checkpoint), "--tools-module", str(module), "--json"]
    argv += ["--max-tokens", "5", "--max-steps", "1", "--seed", "0", "--transcript", str(transcript)]
    argv += ["--date", "2024-09-21", "--max-seq-len", "512"]
    code = main(argv)
    result = json.loads(capsys.readouterr().out)
    assert code == (0 if result["stop_reason"] == "final_answer" else 1)
    assert len(result["steps"]) == 1 and 1 <= result["steps"][0]["generated"] <= 5
    assert [m["role"] for m in result["messages"]][:3] == ["system", "user", "user"]
    assert "trending_songs" in result["messages"][1]["content"]
    assert len(transcript.read_text().splitlines()) == len(result["messages"])

    # the same question, streamed: a seeded run writes the same reply
    argv = ["run", "hello", "--model", str(tiny_checkpoint), "--tools-module", str(module)]
    argv += [
        "--max-tokens",
        "5",
        "--max-steps",
        "1",
        "--seed",
        "0",
        "--date",
        "2024-09-21",
        "--max-seq-len",
        "512",
    ]
    assert main(argv) == code
    out = capsys.readouterr()
    assert out.out == result["answer"] + "\n"
    if result["stop_reason"] != "final_answer":
        assert f"[stopped: {result['stop_reason']}]" in out.err


def test_prompt_format_uses_the_model_tokenizer(tiny_checkpoint, capsys, monkeypatch, tokenizer):
    monkeypatch.delenv("LLAMA_AGENTS_MODEL", raising=False)
    argv = ["prompt-format", "hi", "--date", "2024-09-21", "--json"]
    assert main([*argv, "--model", str(tiny_checkpoint)]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert with_model["text"].endswith("hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # the checkpoint's tokenizer (the real one, copied by the writer) gives the same ids as the bundled one
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == with_model
    assert with_model["tokens"] == tokenizer.encode(with_model["text"], allowed_special="all")


def test_chat_keeps_the_conversation_until_reset(tiny_checkpoint, capsys, monkeypatch):
    import io

    lines = "first question\n\nsecond question\n/reset\nthird question\nexit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    argv = ["chat", "--model", str(tiny_checkpoint), "--json", "--max-tokens", "3", "--max-steps", "1"]
    argv += ["--seed", "0", "--date", "2024-09-21", "--max-seq-len", "512"]
    assert main(argv) == 0
    out = capsys.readouterr()
    results = [json.loads(line) for line in out.out.splitlines()]
    assert len(results) == 3  # the blank line is skipped, `exit` ends the chat
    questions = [[m["content"] for m in r["messages"] if m["role"] == "user"] for r in results]
    assert questions[0] == ["first question"]
    assert questions[1] == ["first question", "second question"]  # the same conversation
    assert questions[2] == ["third question"]  # /reset started a new one
    assert results[1]["messages"][: len(results[0]["messages"])] == results[0]["messages"]
    assert "(new conversation)" in out.err


def test_tools_are_closed_when_the_model_cannot_be_reached(tmp_path, capsys, monkeypatch, tokenizer_path):
    from http_replay import unused_port_url

    marker = tmp_path / "closed"
    module = tmp_path / "closing_tools.py"
    module.write_text(
        textwrap.dedent(
            f"""
            from llama_agents.tools import Tool, ToolResult

            class Closing(Tool):
                name = "closing"
                description = "records that it was closed"

                async def run(self, arguments):
                    return ToolResult(content="ok")

                def close(self):
                    open({str(marker)!r}, "w").close()

            CLOSING = Closing()
            """
        )
    )
    monkeypatch.setenv("LLAMA_AGENTS_TOKENIZER", str(tokenizer_path))
    argv = ["run", "hi", "--model", "vllm+" + unused_port_url() + "#m", "--tools-module", str(module)]
    assert main(argv) == 2
    assert "llama-agents: error:" in capsys.readouterr().err
    assert marker.exists()


def test_an_error_under_json_is_printed_as_json(capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_AGENTS_MODEL", raising=False)
    assert main(["run", "hi", "--json"]) == 2
    out = capsys.readouterr()
    error = json.loads(out.out)
    assert error["type"] == "UsageError" and "LLAMA_AGENTS_MODEL" in error["error"]
    assert "llama-agents: error:" in out.err


def test_the_tokenizer_of_a_hugging_face_checkpoint_is_found(tmp_path, capsys, tokenizer_path):
    import argparse
    import shutil

    from llama_agents.cli import _tokenizer_path

    (tmp_path / "original").mkdir()
    shutil.copy(tokenizer_path, tmp_path / "original" / "tokenizer.model")
    (tmp_path / "config.json").write_text("{}")
    found = _tokenizer_path(argparse.Namespace(tokenizer=None, model=str(tmp_path)))
    assert found == tmp_path / "original" / "tokenizer.model"  # not llama-models' copy
    assert main(["prompt-format", "hi", "--model", str(tmp_path), "--json", "--date", "2024-09-21"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].endswith(
        "hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
