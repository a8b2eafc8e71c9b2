"""The `code_interpreter` built-in tool: run the model's Python in a sandboxed, persistent interpreter.

`CodeInterpreter` is the `Tool` Llama 3.1 calls with `<|python_tag|>` code (`{"code": str}`). It
hands the code to an `Executor` (by default `BubblewrapExecutor`: see `_sandbox.py` for what the
sandbox does and does not protect against) and renders the `ExecutionResult` as compact text for
the model: stdout, the value of a final expression, stderr, then the error if any. The structured
result is kept in `ToolResult.data`.

Variables, functions and imports persist from one call to the next within a conversation;
`reset()` starts a fresh interpreter with an empty work dir. If no sandbox can be started, calls
raise `SandboxUnavailableError`; running without one takes `sandbox="unsafe-no-sandbox"`.

What it does not do: decide when code should run (the agent does), or show the model the files
its code wrote (they are listed in `ExecutionResult.files`; read them with `read_file`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Literal

from pydantic import BaseModel, Field

from llama_agents.errors import UsageError
from llama_agents.tools._sandbox import (
    BubblewrapExecutor,
    ExecutionError,
    ExecutionResult,
    Executor,
    SandboxLimits,
    WorkFile,
)
from llama_agents.tools._unsafe_executor import UnsafeLocalExecutor
from llama_agents.tools.base import Tool, ToolResult
from llama_agents.types import BuiltinTool

__all__ = [
    "CodeInterpreter",
    "ExecutionError",
    "ExecutionResult",
    "Executor",
    "SandboxLimits",
    "WorkFile",
    "render_execution_result",
]

logger = logging.getLogger(__name__)

UNSAFE_NO_SANDBOX = "unsafe-no-sandbox"


class _CodeArgs(BaseModel):
    code: str = Field(description="Python code to run; the value of a final expression is shown.")


class CodeInterpreter(Tool):
    """Runs the model's Python code in a sandboxed interpreter that keeps state across calls.

    `sandbox`: `"bubblewrap"` (the default; raises `SandboxUnavailableError` if bwrap is missing),
    `"unsafe-no-sandbox"` (the code runs as this user with no isolation; logs a warning), or any
    `Executor`. `limits`: the sandbox's `SandboxLimits` (its `timeout_s` is each call's deadline).
    `work_dir`: a host directory to use as the code's working directory (default: a fresh temp dir,
    emptied by `reset()` and removed by `close()`). `python`: the interpreter to run.
    """

    name = "code_interpreter"
    description = "Run Python code in a sandboxed interpreter that keeps its state between calls."
    builtin = BuiltinTool.code_interpreter
    args_model = _CodeArgs

    def __init__(
        self,
        sandbox: Literal["bubblewrap", "unsafe-no-sandbox"] | Executor = "bubblewrap",
        *,
        limits: SandboxLimits | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        python: str | os.PathLike[str] | None = None,
    ) -> None:
        self.executor: Executor
        if sandbox == "bubblewrap":
            self.executor = BubblewrapExecutor(limits=limits, work_dir=work_dir, python=python)
        elif sandbox == UNSAFE_NO_SANDBOX:
            logger.warning("CodeInterpreter: sandbox=%r: model-written code runs with NO isolation", sandbox)
            self.executor = UnsafeLocalExecutor(limits=limits, work_dir=work_dir, python=python)
        elif isinstance(sandbox, Executor):
            if limits is not None or work_dir is not None or python is not None:
                raise UsageError(
                    "limits, work_dir and python configure the built-in executors; "
                    "set them on your Executor instead"
                )
            self.executor = sandbox
        else:
            raise UsageError(
                f"sandbox must be 'bubblewrap', {UNSAFE_NO_SANDBOX!r} or an Executor, not {sandbox!r}"
            )
        self._lock = threading.Lock()

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run `code` and return everything it did. `timeout`: this call's wall-clock deadline in
        seconds (default: the limits' `timeout_s`)."""
        with self._lock:
            return self.executor.execute(code, timeout)

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        result = await asyncio.to_thread(self.execute, arguments["code"])
        return ToolResult(
            content=render_execution_result(result),
            is_error=result.error is not None or result.timed_out,
            data=result,
        )

    def files(self) -> list[WorkFile]:
        """The files in the code's work dir (paths relative to it, sizes)."""
        with self._lock:
            return self.executor.files()

    def read_file(self, path: str, max_bytes: int = 1024 * 1024) -> bytes:
        """The first `max_bytes` of a file the code wrote in its work dir."""
        with self._lock:
            return self.executor.read_file(path, max_bytes)

    def reset(self) -> None:
        """A new conversation: a fresh interpreter (no variables) and an empty work dir."""
        with self._lock:
            self.executor.reset()

    def close(self) -> None:
        with self._lock:
            self.executor.close()


def render_execution_result(result: ExecutionResult) -> str:
    """The text the model reads: stdout, the final expression's value, stderr, then the error."""
    parts: list[str] = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stdout_truncated:
        parts.append("[stdout truncated]")
    if result.result is not None:
        parts.append(result.result if not parts else f"Out: {result.result}")
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.stderr_truncated:
        parts.append("[stderr truncated]")
    if result.error is not None:
        error = result.error
        parts.append(error.traceback.rstrip("\n") if error.traceback else f"{error.type}: {error.message}")
    if not parts:
        parts.append("[no output]")
    return "\n".join(parts)
