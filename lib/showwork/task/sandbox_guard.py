"""The sandbox's child: run as `python -I -S sandbox_guard.py` by showwork.task.sandbox, standard
library only, never imported by the package.

It reads one JSON request on stdin ({program, tests, token, limits}) and closes stdin, so the
tests and the token are never on disk or in the environment. Then, before any of the program
runs, it locks itself down, layer by layer:

1. resource limits, soft and hard (CPU, address space, file size, open files, core, processes);
2. a seccomp filter where the kernel's architecture is known (x86_64, aarch64): no sockets, no
   exec, no fork or new processes (threads only), no signals to other processes, no ptrace or
   cross-process memory, no pidfds, io_uring or memfd, no 32-bit or x32 system calls;
3. an audit hook (PEP 578) that cannot be removed: no subprocess, socket, ctypes, gc walks or
   traceback frames from Python, no native extension from outside the standard library, no
   directory opened (a directory fd would let a relative path escape the checks), no file read
   outside the standard library and its own directory, none written outside its directory.

The program runs, then the tests, in one namespace. Only when the tests finish without an
exception does it print the token: a program that exits early (`sys.exit(0)`, `os._exit(0)`,
an atexit handler) has no token to print, so it cannot pass. The audit hook is not a sandbox by
itself (PEP 578 says so); the limits and the seccomp filter are enforced by the kernel.
"""

import importlib
import json
import os
import resource
import sys

GUARD_FILE = __file__  # the co_filename of the guard's own frames
# Syscall numbers denied outright, per architecture (AUDIT_ARCH value, then names -> numbers).
DENIED = {
    "x86_64": (0xC000003E, {
        "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
        "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "execveat": 322, "memfd_create": 319, "pidfd_send_signal": 424, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "pidfd_getfd": 438}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "socketpair": 199, "bind": 200, "listen": 201, "accept": 202, "connect": 203,
        "accept4": 242, "execve": 221, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "execveat": 281, "memfd_create": 279, "pidfd_send_signal": 424, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "pidfd_getfd": 438}),
}
# Allowed only on this process (first argument = our pid), and clone only for threads.
SIGNALS = {"x86_64": {"kill": 62, "tkill": 200, "tgkill": 234}, "aarch64": {"kill": 129, "tkill": 130, "tgkill": 131}}
CLONE = {"x86_64": (56, 435), "aarch64": (220, 435)}  # clone, clone3
CLONE_THREAD = 0x00010000
EPERM, ENOSYS = 1, 38


def limit(limits: dict) -> None:
    for name, value in limits.items():
        # CPU: SIGXCPU at the soft limit, SIGKILL a second later for a program that catches it.
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))


def bpf_program(arch: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The seccomp filter as (code, jt, jf, k) instructions (classic BPF over struct seccomp_data:
    the syscall number at offset 0, the architecture at 4, the first argument's low word at 16)."""
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | EPERM, 0x00050000 | ENOSYS
    audit_arch, denied = DENIED[arch]
    clone, clone3 = CLONE[arch]
    code: list[tuple] = [(load, 0, 0, 4), (jeq, 0, "deny", audit_arch),  # another ABI (i386 on x86_64)
                         (load, 0, 0, 0), (jge, "deny", 0, 0x40000000)]  # x32
    code += [(jeq, "deny", 0, number) for number in denied.values()]
    code += [(jeq, "self", 0, number) for number in SIGNALS[arch].values()]
    code += [(jeq, "clone", 0, clone), (jeq, "nosys", 0, clone3), (ret, 0, 0, allow)]
    labels = {}
    # Classic BPF jumps only forward: the blocks come after every jump to them.
    for name, block in (("self", [(load, 0, 0, 16), (jeq, "allow", "deny", pid)]),
                        ("clone", [(load, 0, 0, 16), (jset, "allow", "deny", CLONE_THREAD)]),
                        ("nosys", [(ret, 0, 0, nosys)]),  # glibc then falls back to clone
                        ("allow", [(ret, 0, 0, allow)]),
                        ("deny", [(ret, 0, 0, deny)])):
        labels[name] = len(code)
        code += block

    def offset(target, i: int) -> int:
        return labels[target] - i - 1 if isinstance(target, str) else target

    return [(op, offset(jt, i), offset(jf, i), k) for i, (op, jt, jf, k) in enumerate(code)]


def seccomp() -> str:
    """Install the filter; returns the architecture, or why not."""
    import ctypes
    import platform

    arch = platform.machine()
    if arch not in DENIED:
        return f"no filter for {arch}"
    libc = ctypes.CDLL(None, use_errno=True)
    program = bpf_program(arch, os.getpid())

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    filters = (Instruction * len(program))(*[Instruction(*i) for i in program])
    fprog = Program(len(program), filters)
    if libc.prctl(38, 1, 0, 0, 0):  # PR_SET_NO_NEW_PRIVS
        return f"no_new_privs refused (errno {ctypes.get_errno()})"
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return f"seccomp refused (errno {ctypes.get_errno()})"
    return arch


BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                  "os.forkpty", "os.kill", "os.killpg", "pty.", "ctypes.", "gc.get_", "sys.setprofile", "sys.settrace",
                  "sys._current_frames", "os.setuid", "os.setgid", "os.chroot", "resource.", "mmap.",
                  "sys.addaudithook", "webbrowser.", "code.__new__", "function.__new__")
BLOCKED_MODULES = frozenset({"socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess", "ctypes", "_ctypes",
                             "multiprocessing", "_multiprocessing", "pty", "asyncio", "select", "selectors", "mmap",
                             "gc", "resource", "urllib", "http", "ftplib", "smtplib", "signal", "_signal"})
# A traceback or generator leads to frames, frames to the hook's variables.
FRAMES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
CHANGED = frozenset({"__code__", "__globals__", "__closure__", "__builtins__"})
PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 2, "os.link": 2,
               "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.chflags": 1, "os.mkfifo": 1,
               "os.mknod": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2}


# The audit hook binds every name it uses at install, so a program that replaces builtins
# (`builtins.any = ...`) changes nothing in it; it never formats or calls an object of the program.
def install_hook(root: str, stdlib: tuple[str, ...]) -> None:
    """Install the audit hook: `root` is the program's directory, `stdlib` the standard library's."""
    realpath, fsdecode, isdir, sep = os.path.realpath, os.fsdecode, os.path.isdir, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    str_, bytes_, int_, type_, error = str, bytes, int, type, PermissionError
    blocked, modules, frames, changed, path_events = BLOCKED_EVENTS, BLOCKED_MODULES, FRAMES, CHANGED, PATH_EVENTS
    guard_file = GUARD_FILE
    readable = stdlib + (root, "/dev/null", "/dev/urandom")

    def under(path, places) -> bool:
        if type_(path) is not str_ and type_(path) is not bytes_:  # an object's __fspath__ would run its code
            return False
        path = realpath(fsdecode(path))
        for place in places:
            if path == place or path.startswith(place + sep):
                return True
        return False

    def hook(event, args):
        if type_(event) is not str_:
            raise error("sandbox: refused")
        if event.startswith(blocked):
            raise error("sandbox: " + event + " is not allowed")
        if event == "import":
            name, filename = args[0], args[1]
            if type_(name) is not str_ or name.partition(".")[0] in modules:
                raise error("sandbox: this import is not allowed")
            if filename is not None and not under(filename, stdlib):  # a native module it wrote itself
                raise error("sandbox: importing from outside the standard library is not allowed")
        elif event == "sys._getframe":
            if args[0].f_code.co_filename == guard_file:
                raise error("sandbox: the guard's frames are not reachable")
        elif event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
            name = args[1] if type_(args[1]) is str_ else ""
            if name in frames or (event != "object.__getattr__" and name in changed):
                raise error("sandbox: " + name + " is not allowed")
        elif event == "open":
            _open(args)
        elif event in ("os.listdir", "os.scandir") and args[0] is not None and type_(args[0]) is not int_:
            if not under(args[0], readable):
                raise error("sandbox: listing this directory is not allowed")
        elif event in path_events:
            for path in args[:path_events[event]]:
                if type_(path) is not int_ and not under(path, (root,)):
                    raise error("sandbox: " + event + " outside the sandbox is not allowed")

    def _open(args):
        path, mode, flags = args
        if type_(path) is int_:
            return
        if type_(mode) is str_:
            writing = "w" in mode or "a" in mode or "x" in mode or "+" in mode
        else:
            writing = mode is not None or type_(flags) is not int_ or bool(flags & write_flags)
        if not under(path, (root, "/dev/null") if writing else readable):
            raise error("sandbox: " + ("writing" if writing else "reading") + " outside the sandbox is not allowed")
        if isdir(realpath(fsdecode(path))):  # a directory fd + dir_fd= would escape the path checks
            raise error("sandbox: opening a directory is not allowed")

    sys.addaudithook(hook)


def run(request: dict) -> int:
    """Lock down, run the program and then its tests; print the token only if the tests passed."""
    limit(request["limits"])
    layer = seccomp()
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # imported for the filter; the program must import it afresh (refused)
    root = os.path.realpath(os.getcwd())
    stdlib = tuple(sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}))
    importlib.import_module("types")  # it reads a traceback's frame at import, which the hook refuses

    install_hook(root, stdlib)
    # Bound before the program runs: it may replace builtins (`builtins.exec = ...`) or os.write.
    run_code, compile_, write, leave, flush = exec, compile, os.write, SystemExit, sys.stdout.flush
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    token, tests, program = request["token"].encode(), request["tests"], request["program"]
    del request
    try:
        run_code(compile_(program, "solution.py", "exec"), namespace)
    except leave:  # leaving before the tests is not passing them, whatever the status
        write(2, b"sandbox: the program exited before the tests ran\n")
        return 3
    run_code(compile_(tests, "tests.py", "exec"), namespace)
    flush()  # what the program printed comes first
    write(1, b"\n" + token + b"\n")
    write(2, ("sandbox: " + layer + "\n").encode())
    return 0


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    os.close(0)
    sys.stdin = None
    raise SystemExit(run(request))
