"""The host end of one running REPL process (`_sandbox_repl.py`): its pipes and its process tree.

`ReplSession` writes requests and reads length-prefixed JSON frames (`HEADER`, then UTF-8 JSON) under
a deadline, and kills the process with everything below it. It does not start the process, build its
command or config, or interpret the frames (`_sandbox._ReplExecutor` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "ReplSession"]

HEADER = struct.Struct(">I")


class ReplSession:
    """One running interpreter process and the pipes to it."""

    def __init__(self, proc: subprocess.Popen[bytes], request_w: int, response_r: int, io_dir: Path):
        self.proc = proc
        self.request_w = request_w
        self.response_r = response_r
        self.io_dir = io_dir
        self.buffer = b""

    def write(self, data: bytes, deadline: float) -> bool:
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _, writable, _ = select.select([], [self.request_w], [], remaining)
            if not writable:
                return False
            try:
                data = data[os.write(self.request_w, data[: 1 << 16]) :]
            except (BrokenPipeError, OSError):
                return False
        return True

    def _fill(self, n: int, deadline: float) -> bool | None:
        """Read until the buffer holds n bytes. True: done; False: deadline; None: EOF."""
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self.response_r], [], [], remaining)
            if not readable:
                return False
            chunk = os.read(self.response_r, max(n - len(self.buffer), 1 << 16))
            if not chunk:
                return None
            self.buffer += chunk
        return True

    def read_frame(self, deadline: float, max_bytes: int) -> dict[str, Any] | bool | None:
        """A decoded frame; False when the deadline passed; None on EOF or a malformed frame."""
        done = self._fill(HEADER.size, deadline)
        if not done:
            return done
        (length,) = HEADER.unpack(self.buffer[: HEADER.size])
        if length > max_bytes:
            return None
        done = self._fill(HEADER.size + length, deadline)
        if not done:
            return done
        body = self.buffer[HEADER.size : HEADER.size + length]
        self.buffer = self.buffer[HEADER.size + length :]
        try:
            frame = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):  # a frame the code forged, e.g. deeply nested JSON
            return None
        return frame if isinstance(frame, dict) else None

    def kill(self) -> None:
        """SIGKILL the sandbox: bwrap's process group, then whatever of its tree is still there."""
        pid = self.proc.pid
        tree = _descendants(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        # The pid namespace dies with its init, but asynchronously: wait until the processes are gone.
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        for fd in (self.request_w, self.response_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie waiting to be reaped, not gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (the sandbox's own pid namespace dies with its init)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
