"""The code_interpreter tool over a real bubblewrap sandbox: its definition, what the model reads,
state across calls and conversations, errors, and the explicit unsafe opt-out."""

from __future__ import annotations

import asyncio

import pytest

from llama_agents.errors import SandboxUnavailableError, UsageError
from llama_agents.tools import CodeInterpreter as ExportedCodeInterpreter
from llama_agents.tools._sandbox import BubblewrapExecutor
from llama_agents.tools._unsafe_executor import UnsafeLocalExecutor
from llama_agents.tools.code_interpreter import (
    CodeInterpreter,
    ExecutionError,
    ExecutionResult,
    SandboxLimits,
    render_execution_result,
)
from llama_agents.types import BuiltinTool

pytestmark = pytest.mark.timeout(60)

LIMITS = SandboxLimits(timeout_s=5, address_space_bytes=1024**3, output_bytes=2048)


@pytest.fixture
def interpreter():
    ci = CodeInterpreter(limits=LIMITS)
    yield ci
    ci.close()


def test_is_the_builtin_code_interpreter_tool():
    assert ExportedCodeInterpreter is CodeInterpreter
    ci = CodeInterpreter()
    try:
        assert ci.name == "code_interpreter" and ci.builtin is BuiltinTool.code_interpreter
        definition = ci.definition()
        assert definition.name == "code_interpreter"
        assert definition.required == ["code"] and definition.properties["code"]["type"] == "string"
    finally:
        ci.close()


def test_the_model_reads_output_then_the_final_value(interpreter):
    result = asyncio.run(interpreter.acall({"code": "print('hello')\n2 + 3"}))
    assert not result.is_error
    assert result.content == "hello\nOut: 5"
    assert isinstance(result.data, ExecutionResult) and result.data.result == "5"
    assert interpreter.call({"code": "[1, 2][0]"}).content == "1"
    assert interpreter.call({"code": "x = 1"}).content == "[no output]"


def test_state_persists_across_calls_and_reset_forgets_it(interpreter):
    interpreter.call({"code": "def double(n):\n    return 2 * n"})
    assert interpreter.call({"code": "double(21)"}).content == "42"
    interpreter.reset()
    result = interpreter.call({"code": "double(21)"})
    assert result.is_error and "NameError: name 'double' is not defined" in result.content


def test_errors_are_results_the_model_can_correct(interpreter):
    result = interpreter.call(
        {"code": "import sys\nprint('partial')\nprint('warn', file=sys.stderr)\n{}['k']"}
    )
    assert result.is_error
    lines = result.content.splitlines()
    assert lines[:3] == ["partial", "[stderr]", "warn"]
    assert lines[-1] == "KeyError: 'k'" and 'File "<cell 1>", line 4' in result.content
    assert result.data.error.type == "KeyError"
    # A malformed call never reaches the sandbox.
    bad = interpreter.call({"source": "1"})
    assert bad.is_error and "code" in bad.content


def test_a_timeout_tells_the_model_that_state_was_lost(interpreter):
    interpreter.call({"code": "kept = 1"})
    result = interpreter.execute("while True:\n    pass", timeout=1)
    assert result.timed_out
    rendered = render_execution_result(result)
    assert rendered.startswith("TimeoutError: execution exceeded the 1 s time limit")
    assert "lost" in rendered
    assert interpreter.call({"code": "kept"}).is_error
    assert interpreter.call({"code": "'alive'"}).content == "'alive'"


def test_files_written_by_the_code(interpreter):
    result = interpreter.call({"code": "open('report.txt', 'w').write('done')"})
    assert [f.path for f in result.data.files] == ["report.txt"]
    assert interpreter.read_file("report.txt") == b"done"
    assert [(f.path, f.size) for f in interpreter.files()] == [("report.txt", 4)]


def test_output_truncation_is_shown():
    rendered = render_execution_result(
        ExecutionResult(
            stdout="abc\n",
            stdout_truncated=True,
            stderr="e",
            error=ExecutionError(type="ValueError", message="bad"),
        )
    )
    assert rendered == "abc\n[stdout truncated]\n[stderr]\ne\nValueError: bad"
    ci = CodeInterpreter(limits=LIMITS)
    try:
        content = ci.call({"code": "print('z' * 100000)"}).content
        assert content.endswith("[stdout truncated]") and len(content) < 2 * LIMITS.output_bytes
    finally:
        ci.close()


def test_no_sandbox_is_a_configuration_error_the_model_never_sees(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    ci = CodeInterpreter(sandbox=BubblewrapExecutor(bwrap=fake))
    with pytest.raises(SandboxUnavailableError, match="uid map: Permission denied"):
        ci.call({"code": "1"})
    ci.close()


def test_sandbox_argument_is_checked():
    with pytest.raises(UsageError, match="unsafe-no-sandbox"):
        CodeInterpreter(sandbox="none")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="set them on your Executor"):
        CodeInterpreter(sandbox=UnsafeLocalExecutor(), limits=LIMITS)


def test_unsafe_opt_out_is_loud_and_works(caplog, tmp_path):
    with caplog.at_level("WARNING"):
        ci = CodeInterpreter(sandbox="unsafe-no-sandbox", limits=LIMITS, work_dir=tmp_path)
    try:
        assert "NO isolation" in caplog.text and "WITHOUT a sandbox" in caplog.text
        ci.call({"code": "import os\nwhere = os.getcwd()"})
        assert ci.call({"code": "where"}).content == repr(str(tmp_path))
    finally:
        ci.close()


def test_acall_inside_a_running_event_loop(interpreter):
    async def main() -> list[str]:
        first = await interpreter.acall({"code": "n = 10"})
        second = await interpreter.acall({"code": "sum(range(n))"})
        return [first.content, second.content]

    assert asyncio.run(main()) == ["[no output]", "45"]
