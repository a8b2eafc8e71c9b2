"""`UnsafeLocalExecutor`: the code interpreter's REPL with the same rlimits and deadline, and NO sandbox.

It reuses `_sandbox._ReplExecutor` (the REPL protocol, deadlines, output capture, work-dir files)
and only says how to start the REPL: as a plain child process of this one. It does not isolate
anything (no namespaces, no read-only binds, no private /tmp), and it does not decide whether running
unsandboxed is acceptable: the caller opts in by name (`CodeInterpreter(sandbox="unsafe-no-sandbox")`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from llama_agents.tools._sandbox import _REPL_SCRIPT, _ReplExecutor

__all__ = ["UnsafeLocalExecutor"]

logger = logging.getLogger(__name__)


class UnsafeLocalExecutor(_ReplExecutor):
    """The same persistent REPL with the same rlimits and deadline, and NO sandbox: the code can read
    and write every file this process can, use the network, and see the host. Only for trusted code
    on a machine where bubblewrap cannot run; `CodeInterpreter(sandbox="unsafe-no-sandbox")`."""

    def _created(self) -> None:
        logger.warning(
            "running model-written code WITHOUT a sandbox in %s: it can read, write and send anything "
            "this process can",
            self.work_dir,
        )

    def _command(self, config: dict[str, Any]) -> list[str]:
        return [self.python, "-I", "-u", str(_REPL_SCRIPT), json.dumps(config)]
