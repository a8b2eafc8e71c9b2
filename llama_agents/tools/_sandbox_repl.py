"""The persistent Python REPL that runs *inside* the code-interpreter sandbox.

This file is executed as a script by `_sandbox.py` (`python -I _sandbox_repl.py CONFIG_JSON`), inside
bubblewrap. It imports only the standard library (the sandbox does not see the llama_agents package)
and never trusts the code it runs: everything it reports, the host re-checks.

At start it drops to the sandbox uid when started as root (bwrap keeps only CAP_SETUID/CAP_SETGID
for that), sets the rlimits, points stdin at /dev/null and sends a `ready` frame. Then it loops:
read a request frame, run the code in one persistent globals dict with the cell's stdout/stderr
(file descriptors 1 and 2) going to files the host reads, and write a response frame. A frame is a
4-byte big-endian length followed by that many bytes of UTF-8 JSON.

After each cell, when it runs as the second process of its own pid namespace, it kills every
other process in the namespace, so nothing the code started outlives the call.

It does not enforce the wall-clock deadline (the host kills the whole sandbox for that) and does
not cap what the host reads (the host caps frames and output files itself).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import linecache
import os
import resource
import signal
import struct
import sys
import traceback
import types
from typing import Any

__all__ = ["Repl", "main"]

_HEADER = struct.Struct(">I")
_MAX_REQUEST = 64 * 1024 * 1024


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> dict[str, Any] | None:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > _MAX_REQUEST:
        return None
    body = _read_exact(fd, length)
    return None if body is None else json.loads(body.decode("utf-8"))


def _write_frame(fd: int, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode("utf-8")
    data = _HEADER.pack(len(body)) + body
    while data:
        data = data[os.write(fd, data) :]


class _CappedWriter(io.TextIOBase):
    """A text stream writing to a file descriptor until `cap` bytes, then counting what it drops.

    Python-level prints stop at the cap instead of running into RLIMIT_FSIZE; output written to the
    descriptor by subprocesses is bounded by RLIMIT_FSIZE and the host's read cap instead.
    """

    def __init__(self, fd: int, cap: int) -> None:
        self._fd = fd
        self._cap = cap
        self.written = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        data = s.encode("utf-8", "replace")
        room = max(0, self._cap - self.written)
        keep = data[:room]
        while keep:
            n = os.write(self._fd, keep)
            self.written += n
            keep = keep[n:]
        self.dropped += len(data) - min(len(data), room)
        return len(s)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


def _drop_privileges(uid: int | None, gid: int | None) -> None:
    if uid is None or os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid if gid is not None else uid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("sandbox: could not drop root privileges")


# keyctl(2) by machine: the sandbox inherits our session keyring, and whoever possesses a keyring
# (any process in that session, whatever its uid) can read its keys.
_KEYCTL_SYSCALL = {
    "x86_64": 250,
    "aarch64": 219,
    "arm64": 219,
    "riscv64": 219,
    "loongarch64": 219,
    "i386": 288,
    "i686": 288,
    "armv7l": 311,
    "ppc64le": 311,
    "ppc64": 311,
    "s390x": 280,
}
_KEYCTL_JOIN_SESSION_KEYRING = 1


def _leave_session_keyring() -> None:
    """Join a new anonymous session keyring, so that the host's session keys are no longer possessed.

    Where keyctl is not allowed at all (ENOSYS, EPERM: a seccomp filter, as Docker's default), the
    code cannot reach any keyring either and there is nothing to leave."""
    import ctypes
    import errno
    import platform

    nr = _KEYCTL_SYSCALL.get(platform.machine())
    if nr is None:
        raise SystemExit(f"sandbox: keyctl syscall number unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(nr, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):
            raise SystemExit(f"sandbox: could not leave the host's session keyring: {os.strerror(err)}")


def _set_limits(limits: dict[str, int]) -> None:
    table = {
        "address_space": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "processes": resource.RLIMIT_NPROC,
        "file_size": resource.RLIMIT_FSIZE,
        "open_files": resource.RLIMIT_NOFILE,
    }
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key, which in table.items():
        value = limits.get(key)
        if value is not None:
            # The CPU soft limit sends SIGXCPU (which ends the REPL with a status the host can name);
            # at the hard limit the kernel sends SIGKILL, so keep the hard limit a second later.
            hard = value + 1 if which == resource.RLIMIT_CPU else value
            resource.setrlimit(which, (value, hard))


def _kill_strays() -> None:
    """Kill every process of this pid namespace but its init (pid 1) and this REPL."""
    for _ in range(1000):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
        except PermissionError:
            break
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break


def _user_traceback(exc: BaseException, filename_prefix: str) -> str:
    """The traceback with the REPL's own frames cut off: it starts at the first frame of the cell."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(filename_prefix):
        tb = tb.tb_next
    exc.__traceback__ = tb
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error(exc: BaseException, filename_prefix: str) -> dict[str, str]:
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    prefix = type(exc).__name__ + ": "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return {
        "type": type(exc).__name__,
        "message": message,
        "traceback": _user_traceback(exc, filename_prefix),
    }


class Repl:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cell = 0
        self.output_cap = int(config["output_bytes"])
        self.io_dir = config["io_dir"]
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = __builtins__
        self.pid = os.getpid()
        # bwrap's init is pid 1 of the sandbox's pid namespace and this REPL is pid 2.
        self.in_pid_namespace = bool(config.get("pid_namespace")) and self.pid == 2

    def run_cell(self, code: str) -> dict[str, Any]:
        self.cell += 1
        filename = f"<cell {self.cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        out_fd = self._open_output("stdout")
        err_fd = self._open_output("stderr")
        saved = (os.dup(1), os.dup(2), sys.stdout, sys.stderr)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        stdout = _CappedWriter(1, self.output_cap + 1)
        stderr = _CappedWriter(2, self.output_cap + 1)
        sys.stdout, sys.stderr = stdout, stderr
        result: str | None = None
        error: dict[str, str] | None = None
        try:
            result = self._execute(code, filename)
        except BaseException as exc:  # the user's code may raise anything, SystemExit included
            error = _error(exc, "<cell ")
        finally:
            if os.getpid() != self.pid:
                # A process the cell forked (os.fork, ctypes) got back here: it must not go on as the REPL.
                os._exit(0)
            sys.stdout, sys.stderr = saved[2], saved[3]
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        if self.in_pid_namespace:
            _kill_strays()
        return {
            "result": result,
            "error": error,
            "stdout_dropped": stdout.dropped,
            "stderr_dropped": stderr.dropped,
        }

    def _open_output(self, name: str) -> int:
        """A fresh output file: the previous cell may have replaced it with a symlink or a FIFO."""
        path = os.path.join(self.io_dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def _execute(self, code: str, filename: str) -> str | None:
        tree = ast.parse(code, filename, "exec")
        last: ast.expr | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop().value
        namespace = self.module.__dict__
        exec(compile(tree, filename, "exec"), namespace)
        if last is None:
            return None
        value = eval(compile(ast.Expression(last), filename, "eval"), namespace)
        if value is None:
            return None
        namespace["_"] = value
        text = repr(value)
        cap = self.output_cap
        return text if len(text) <= cap else text[:cap] + f"... [{len(text) - cap} more characters]"


def main() -> None:
    config = json.loads(sys.argv[1])
    req_fd, resp_fd = int(config["request_fd"]), int(config["response_fd"])
    _drop_privileges(config.get("uid"), config.get("gid"))
    _leave_session_keyring()
    _set_limits(config.get("limits", {}))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.chdir(config["work_dir"])
    sys.argv = [""]
    sys.path = [p for p in sys.path if p and os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]
    repl = Repl(config)
    _write_frame(resp_fd, {"ready": True, "uid": os.getuid()})
    # stderr was the host's start-up log file (read only until `ready`): keep no host file open in here.
    os.dup2(devnull, 2)
    os.close(devnull)
    while True:
        request = _read_frame(req_fd)
        if request is None:
            return
        _write_frame(resp_fd, repl.run_cell(str(request.get("code", ""))))


if __name__ == "__main__":
    main()
