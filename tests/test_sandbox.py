"""The bubblewrap sandbox, attacked for real: every test runs model-style code in a real `bwrap`
sandbox and checks from the host side that it was contained and that the interpreter still works."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from llama_agents.errors import SandboxUnavailableError, UsageError
from llama_agents.tools._sandbox import (
    BubblewrapExecutor,
    Executor,
    SandboxLimits,
    find_bwrap,
)
from llama_agents.tools._unsafe_executor import UnsafeLocalExecutor

pytestmark = pytest.mark.timeout(60)

LIMITS = SandboxLimits(
    timeout_s=5,
    address_space_bytes=1024**3,
    processes=32,
    file_size_bytes=8 * 1024**2,
    tmp_bytes=16 * 1024**2,
    output_bytes=4096,
)


@pytest.fixture
def sandbox():
    ex = BubblewrapExecutor(limits=LIMITS)
    yield ex
    ex.close()
    assert _processes_of(ex.sandbox_uid) == [], "a sandboxed process survived close()"


def _processes_of(uid: int) -> list[int]:
    """Host pids of live (non-zombie) processes running as `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def _wait_for_no_processes(uid: int, allowed: int = 0, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        pids = _processes_of(uid)
        if len(pids) <= allowed or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def _ok(ex: Executor) -> None:
    """The interpreter answers again after an attack."""
    r = ex.execute("6 * 7", timeout=10)
    assert r.error is None, r.error
    assert r.result == "42"


# --- the basics --------------------------------------------------------------------------------


def test_runs_code_and_keeps_state_between_calls(sandbox):
    assert isinstance(sandbox, Executor)
    r = sandbox.execute("import math\ndef area(r):\n    return math.pi * r * r\nprint('defined')")
    assert (r.stdout, r.result, r.error) == ("defined\n", None, None)
    r = sandbox.execute("round(area(2), 3)")
    assert r.result == "12.566" and r.ok
    r = sandbox.execute("x = [1, 2]\nx.append(3)\nx")
    assert r.result == "[1, 2, 3]"
    assert sandbox.execute("_").result == "[1, 2, 3]"  # the last value, as in a notebook
    assert sandbox.execute("None").result is None


def test_errors_show_only_the_users_traceback(sandbox):
    r = sandbox.execute("def f(n):\n    return 1 / n\n\nprint('before')\nf(0)")
    assert r.stdout == "before\n"
    assert r.error is not None and r.error.type == "ZeroDivisionError"
    assert r.error.message == "division by zero"
    assert '"<cell 1>", line 5' in r.error.traceback and '"<cell 1>", line 2, in f' in r.error.traceback
    assert "repl.py" not in r.error.traceback and "_execute" not in r.error.traceback
    r = sandbox.execute("def broken(:\n    pass")
    assert r.error is not None and r.error.type == "SyntaxError"
    r = sandbox.execute("raise SystemExit(3)")
    assert r.error is not None and r.error.type == "SystemExit"
    _ok(sandbox)


def test_stderr_and_subprocess_output_are_captured(sandbox):
    r = sandbox.execute(
        "import sys, os\nprint('out')\nprint('err', file=sys.stderr)\nos.system('echo shell')"
    )
    assert r.stdout == "out\nshell\n"
    assert r.stderr == "err\n"
    assert r.result == "0"


def test_reset_starts_a_fresh_interpreter_with_an_empty_work_dir(sandbox):
    sandbox.execute("secret = 1\nopen('notes.txt', 'w').write('x')")
    assert [f.path for f in sandbox.files()] == ["notes.txt"]
    sandbox.reset()
    r = sandbox.execute("secret")
    assert r.error is not None and r.error.type == "NameError"
    assert sandbox.files() == []


def test_files_written_by_the_code_come_back_to_the_caller(sandbox):
    r = sandbox.execute(
        "import os\nos.makedirs('plots', exist_ok=True)\n"
        "open('plots/a.csv', 'w').write('x,y\\n1,2\\n')\n"
        "open('/workspace/b.bin', 'wb').write(bytes(range(256)))\n"
        "os.symlink('/etc/ld.so.cache', 'link')\nos.getcwd()"
    )
    assert r.result == "'/workspace'"
    assert [(f.path, f.size) for f in r.files] == [("b.bin", 256), ("plots/a.csv", 8)]
    assert sandbox.read_file("plots/a.csv") == b"x,y\n1,2\n"
    assert sandbox.read_file("/workspace/b.bin", max_bytes=4) == bytes(range(4))
    for bad in ("link", "../io/stdout", "/etc/passwd", "plots/../../x"):
        with pytest.raises(UsageError):
            sandbox.read_file(bad)
    with pytest.raises(UsageError, match="no file"):
        sandbox.read_file("missing.txt")


# --- the attack suite ----------------------------------------------------------------------------


def test_no_network_to_a_host_service(sandbox):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def serve() -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        code = (
            "import socket\nresults = []\n"
            f"for host in ('127.0.0.1', 'localhost', '8.8.8.8'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=1)\n"
            "        results.append('connected')\n"
            "    except OSError as e:\n"
            "        results.append(type(e).__name__)\n"
            "results"
        )
        r = sandbox.execute(code)
        assert r.error is None, r.error
        assert "connected" not in r.result
        # no network interfaces at all (not even the host's): an empty /sys/class/net or none
        interfaces = sandbox.execute(
            "import os; sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else []"
        )
        assert interfaces.error is None and interfaces.result == "[]"
    finally:
        thread.join()
        server.close()
    assert accepted == []


def test_cannot_read_host_files(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-FILE-CONTENT")
    project_file = Path(__file__).resolve()
    code = (
        "import os\nfound = {}\n"
        f"for path in ({str(secret)!r}, '/etc/shadow', '/etc/passwd', {str(project_file)!r},\n"
        "             '/root/.bash_history'):\n"
        "    try:\n"
        "        found[path] = open(path).read()[:50]\n"
        "    except OSError as e:\n"
        "        found[path] = type(e).__name__\n"
        "found, sorted(os.listdir('/')), sorted(os.listdir('/etc')), os.listdir('/root')"
    )
    r = sandbox.execute(code)
    assert r.error is None, r.error
    assert "TOP-SECRET" not in r.result and "root:" not in r.result
    assert r.result.count("FileNotFoundError") == 5
    assert "'home'" not in r.result and "'work'" not in r.result


def test_cannot_read_api_keys_from_environment_or_proc(monkeypatch):
    token = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("LLAMA_AGENTS_TEST_API_KEY", token)
    with BubblewrapExecutor(limits=LIMITS) as ex:
        r = ex.execute(
            "import os, glob\n"
            "with open('dump.bin', 'wb') as out:\n"
            "    out.write(repr(dict(os.environ)).encode())\n"
            "    for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/task/*/environ'):\n"
            "        try:\n"
            "            out.write(open(path, 'rb').read())\n"
            "        except OSError:\n"
            "            pass\n"
            "sorted(os.environ)"
        )
        assert r.error is None, r.error
        assert "LLAMA_AGENTS_TEST_API_KEY" not in r.result
        assert token.encode() not in ex.read_file("dump.bin", max_bytes=10**7)


def test_cannot_write_outside_the_work_dir(sandbox, tmp_path):
    marker = f"llama-agents-escape-{os.getpid()}"
    code = (
        "import sys\nresults = {}\n"
        f"for path in ('/usr/{marker}', '/etc/{marker}', sys.prefix + '/{marker}', "
        f"{str(tmp_path / marker)!r}, '/root/{marker}', '/{marker}', '/proc/{marker}'):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        results[path] = 'written'\n"
        "    except OSError as e:\n"
        "        results[path] = type(e).__name__\n"
        f"open('/tmp/{marker}', 'w').write('private tmp')\n"
        "results"
    )
    r = sandbox.execute(code)
    assert r.error is None, r.error
    assert "written" not in r.result
    assert not (tmp_path / marker).exists() and not Path(f"/tmp/{marker}").exists()
    assert not Path(f"/usr/{marker}").exists() and not Path(f"/etc/{marker}").exists()


def test_os_system_ctypes_and_fork_stay_inside(sandbox):
    r = sandbox.execute(
        "import os, ctypes\nlibc = ctypes.CDLL(None)\n"
        "print(os.getuid(), libc.setuid(0), libc.geteuid())\n"
        "os.system('id -u; cat /etc/shadow; ls /root/.ssh')\n"
        "pid = os.fork()\nif pid == 0:\n    print('child')\nelse:\n    os.waitpid(pid, 0)\n"
        "child = libc.fork()\n'forked'"
    )
    uid = str(sandbox.sandbox_uid)
    assert r.stdout.split()[:3] == [uid, "-1", uid]
    assert f"\n{uid}\n" in r.stdout and "root:" not in r.stdout
    assert "No such file" in r.stderr
    assert r.result == "'forked'"  # one answer: the forked children did not go on as the REPL
    _ok(sandbox)
    assert len(_wait_for_no_processes(sandbox.sandbox_uid, allowed=1)) == 1


def test_ignoring_sigterm_does_not_outlive_the_deadline(sandbox):
    sandbox.execute("kept = 'lost soon'")
    start = time.monotonic()
    r = sandbox.execute(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('waiting', flush=True)\n"
        "while True:\n    time.sleep(0.1)",
        timeout=1,
    )
    assert time.monotonic() - start < 3
    assert r.timed_out and r.state_lost and not r.ok
    assert r.error is not None and r.error.type == "TimeoutError" and "lost" in r.error.message
    assert r.stdout == "waiting\n"  # what it printed before the deadline is kept
    assert _wait_for_no_processes(sandbox.sandbox_uid) == []
    r = sandbox.execute("kept")  # a fresh interpreter: the state is gone, and says so
    assert r.error is not None and r.error.type == "NameError"
    _ok(sandbox)


def test_a_double_fork_daemon_does_not_survive(sandbox):
    r = sandbox.execute(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon.pid', 'w').write(str(os.getpid()))\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\nos.path.exists('daemon.pid')"
    )
    assert r.result == "True"
    # Only the REPL itself is left once the call returns; nothing at all after close().
    assert len(_wait_for_no_processes(sandbox.sandbox_uid, allowed=1)) == 1
    _ok(sandbox)


def test_a_fork_bomb_is_contained(sandbox):
    r = sandbox.execute(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", timeout=2
    )
    assert r.timed_out
    assert _wait_for_no_processes(sandbox.sandbox_uid) == []
    r = sandbox.execute(
        "import os\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n"
        "            import time; time.sleep(30)\n        n += 1\nexcept OSError:\n    pass\nn"
    )
    assert r.error is None and int(r.result) < LIMITS.processes
    _ok(sandbox)


def test_a_memory_bomb_gets_a_memory_error_and_keeps_state(sandbox):
    sandbox.execute("kept = 'still here'")
    r = sandbox.execute("x = bytearray(8 * 1024**3)")
    assert r.error is not None and r.error.type == "MemoryError"
    r = sandbox.execute("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))")
    assert r.error is not None and r.error.type == "MemoryError"
    assert sandbox.execute("del chunks\nkept").result == "'still here'"


def test_a_huge_file_is_cut_at_the_file_size_limit(sandbox):
    r = sandbox.execute("with open('big.bin', 'wb') as f:\n    f.write(b'0' * (64 * 1024**2))")
    assert r.error is not None and "File too large" in r.error.message
    r = sandbox.execute("import os\nos.system('head -c 100000000 /dev/zero > big2.bin')")
    sizes = {f.path: f.size for f in sandbox.files()}
    assert sizes["big.bin"] <= LIMITS.file_size_bytes and sizes["big2.bin"] <= LIMITS.file_size_bytes
    r = sandbox.execute(
        "open('/tmp/t.bin', 'wb').write(b'0' * (7 * 1024**2))\n"
        "open('/tmp/u.bin', 'wb').write(b'0' * (7 * 1024**2))\n"
        "open('/tmp/v.bin', 'wb').write(b'0' * (7 * 1024**2))"
    )
    assert r.error is not None and "No space left" in r.error.message  # the private /tmp is capped too
    _ok(sandbox)


def test_a_flood_of_output_is_cut(sandbox):
    r = sandbox.execute("for i in range(10**6):\n    print('x' * 100)")
    assert r.stdout_truncated and len(r.stdout) <= LIMITS.output_bytes and r.error is None
    r = sandbox.execute(
        "import os, sys\nos.system('yes flood | head -c 50000000')\nsys.stderr.write('e' * 10**7)"
    )
    assert r.stdout_truncated and len(r.stdout.encode()) <= LIMITS.output_bytes
    assert r.stdout.startswith("flood\nflood\n")
    assert r.stderr_truncated and len(r.stderr) <= LIMITS.output_bytes
    r = sandbox.execute("'y' * 10**6")
    assert len(r.result) < LIMITS.output_bytes + 100 and r.result.endswith("more characters]")
    _ok(sandbox)


def test_an_infinite_loop_times_out_and_the_next_call_starts_fresh(sandbox):
    r = sandbox.execute("while True:\n    pass", timeout=1)
    assert r.timed_out and r.state_lost and 1 <= r.duration_s < 3
    r = sandbox.execute("1 + 1")
    assert r.result == "2" and not r.state_lost and not r.timed_out


def test_cpu_seconds_limit_kills_the_interpreter():
    with BubblewrapExecutor(limits=SandboxLimits(timeout_s=10, cpu_seconds=1)) as ex:
        r = ex.execute("while True:\n    pass")
        assert not r.timed_out and r.state_lost
        assert r.error is not None and r.error.type == "SandboxCrashed" and "SIGXCPU" in r.error.message
        _ok(ex)


def test_the_code_runs_unprivileged_with_its_own_pid_namespace(sandbox):
    r = sandbox.execute(
        "import os\nstatus = open('/proc/self/status').read()\n"
        "caps = [l.split()[1] for l in status.splitlines()\n"
        "        if l.startswith('CapEff') or l.startswith('NoNewPrivs')]\n"
        "os.getpid(), caps, sorted(p for p in os.listdir('/proc') if p.isdigit())"
    )
    assert r.result == "(2, ['0000000000000000', '1'], ['1', '2'])"


# --- setup errors and the unsafe opt-out ----------------------------------------------------------


def test_missing_bwrap_says_how_to_fix_it(tmp_path):
    with pytest.raises(SandboxUnavailableError, match="Install bubblewrap"):
        BubblewrapExecutor(bwrap=tmp_path / "no-such-bwrap")
    assert find_bwrap(tmp_path / "no-such-bwrap") is None
    assert find_bwrap() is not None


def test_a_sandbox_that_cannot_start_raises_with_bwraps_message(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    ex = BubblewrapExecutor(bwrap=fake)
    with pytest.raises(SandboxUnavailableError, match="No permissions to create new namespace"):
        ex.execute("1")
    ex.close()
    with pytest.raises(UsageError, match="closed"):
        ex.execute("1")


def test_limits_are_validated():
    with pytest.raises(UsageError, match="processes"):
        SandboxLimits(processes=0)


def test_unsafe_executor_runs_the_same_repl_and_warns(caplog, tmp_path):
    with caplog.at_level("WARNING"), UnsafeLocalExecutor(limits=LIMITS, work_dir=tmp_path) as ex:
        assert "WITHOUT a sandbox" in caplog.text
        ex.execute("import os\nvalue = os.getcwd()")
        assert ex.execute("value").result == repr(str(tmp_path))
        assert ex.execute("while True: pass", timeout=0.5).timed_out
        assert ex.execute("value").error is not None
    assert tmp_path.exists()  # a work dir the caller gave is not removed


def test_state_survives_the_end_of_the_thread_that_started_the_sandbox(sandbox):
    # bwrap's --die-with-parent is tied to the forking thread; calls from short-lived worker threads
    # (asyncio.to_thread, a thread pool) must not kill the interpreter when that thread ends.
    thread = threading.Thread(target=sandbox.execute, args=("kept = 'from a thread'",))
    thread.start()
    thread.join()
    time.sleep(0.2)
    assert sandbox.execute("kept").result == "'from a thread'"


# --- the host end must not trust what the sandbox left in its dirs ------------------------------


def test_a_symlink_planted_as_the_output_file_does_not_read_host_files(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HOST-FILE")
    secret.chmod(0o600)
    r = sandbox.execute(
        "import os\n"
        "for name in ('stdout', 'stderr'):\n"
        "    os.unlink('/run/llama_agents/io/' + name)\n"
        f"    os.symlink({str(secret)!r}, '/run/llama_agents/io/' + name)\n"
    )
    assert "TOP-SECRET" not in r.stdout + r.stderr
    _ok(sandbox)  # and the next cells still run


def test_a_fifo_planted_as_the_output_file_does_not_hang_the_host(sandbox):
    start = time.monotonic()
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(
            sandbox.execute(
                "import os\nos.unlink('/run/llama_agents/io/stderr')\n"
                "os.mkfifo('/run/llama_agents/io/stderr')"
            )
        ),
        daemon=True,
    )
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "the host blocked opening a FIFO the sandbox planted"
    assert time.monotonic() - start < 15
    _ok(sandbox)


def test_read_file_refuses_a_fifo_instead_of_hanging(sandbox):
    assert sandbox.execute("import os\nos.mkfifo('pipe')").error is None
    result: list[object] = []

    def read() -> None:
        try:
            sandbox.read_file("pipe")
        except UsageError as e:
            result.append(e)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "read_file blocked on a FIFO"
    assert result and "regular file" in str(result[0])


def test_read_file_does_not_follow_a_directory_swapped_for_a_symlink(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HOST-FILE")
    # A thread left running in the interpreter flips d between a directory and a symlink to a host dir.
    r = sandbox.execute(
        "import os, threading\nos.mkdir('real')\nopen('real/secret.txt', 'w').write('harmless')\n"
        "def flip():\n"
        "    while True:\n"
        "        os.rename('real', 'd')\n"
        f"        os.symlink({str(tmp_path)!r}, 'link')\n"
        "        os.rename('d', 'real')\n"
        "        os.rename('link', 'd')\n"
        "        os.unlink('d')\n"
        "threading.Thread(target=flip, daemon=True).start()"
    )
    assert r.error is None, r.error
    leaked = 0
    for _ in range(3000):
        with contextlib.suppress(UsageError):
            leaked += b"TOP-SECRET" in sandbox.read_file("d/secret.txt")
    assert leaked == 0


def test_files_does_not_list_a_host_dir_through_a_swapped_symlink(sandbox, tmp_path):
    (tmp_path / "host-only-name.txt").write_text("x")
    r = sandbox.execute(
        "import os, threading\nos.mkdir('real')\n"
        "def flip():\n"
        "    while True:\n"
        "        os.rename('real', 'd')\n"
        f"        os.symlink({str(tmp_path)!r}, 'link')\n"
        "        os.rename('d', 'real')\n"
        "        os.rename('link', 'd')\n"
        "        os.unlink('d')\n"
        "threading.Thread(target=flip, daemon=True).start()"
    )
    assert r.error is None, r.error
    for _ in range(1000):
        assert not any("host-only-name" in f.path for f in sandbox.files())


def test_the_hosts_session_keyring_is_not_reachable(sandbox):
    import ctypes
    import platform

    nr = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(platform.machine())
    if nr is None:
        pytest.skip("add_key/keyctl syscall numbers known only for x86_64 and aarch64 here")
    add_key, keyctl = nr
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    payload = b"HOST-KEYRING-SECRET"
    key = libc.syscall(add_key, b"user", b"llama-agents-test", payload, len(payload), -3)  # @s
    if key < 0:
        pytest.skip(f"keyctl is not allowed here (errno {ctypes.get_errno()}), so neither is it inside")
    try:
        r = sandbox.execute(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
            "buf = ctypes.create_string_buffer(64)\n"
            f"n = libc.syscall({keyctl}, 11, {key}, buf, 64)\n"  # KEYCTL_READ
            f"found = libc.syscall({keyctl}, 10, -3, b'user', b'llama-agents-test', 0)\n"  # KEYCTL_SEARCH
            "buf.raw[: max(n, 0)], found"
        )
        assert r.error is None, r.error
        assert "HOST-KEYRING-SECRET" not in r.result
    finally:
        libc.syscall(keyctl, 21, key, -3)  # KEYCTL_UNLINK


def test_no_host_file_descriptor_is_left_open_inside(sandbox):
    r = sandbox.execute(
        "import os\n{int(fd): os.readlink('/proc/self/fd/' + fd) for fd in os.listdir('/proc/self/fd')"
        " if os.path.exists('/proc/self/fd/' + fd)}"
    )
    assert r.error is None, r.error
    fds = eval(r.result)
    # stdin, the cell's stdout/stderr, the two REPL pipes and dups of our own: nothing from the host's disk
    inside = ("/dev/", "/run/llama_agents/")
    host_files = [t for t in fds.values() if t.startswith("/") and not t.startswith(inside)]
    assert host_files == [], fds


def test_a_forged_deeply_nested_frame_is_a_crash_not_a_host_exception(sandbox):
    r = sandbox.execute(
        "import json, os, struct, time\n"
        "fd = json.loads(open('/proc/self/cmdline').read().split('\\0')[-2])['response_fd']\n"
        "body = b'[' * 200000\nos.write(fd, struct.pack('>I', len(body)) + body)\ntime.sleep(0.5)"
    )
    assert r.state_lost and r.error is not None and r.error.type == "SandboxCrashed"
    _ok(sandbox)
