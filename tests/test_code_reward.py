"""The code reward: code out of a completion, run against the problem's tests in the sandbox.

The hostile table lives in tests/code_cases.py, so the same table is scored here (on the
host; as root in CI, where the sandbox drops to `nobody`) and in the built image
(test_containers.py, as the pods run it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from code_cases import check_table
from conftest import REPO
from showwork.task import code, rewards, sandbox

def test_hostile_completions_score_zero_within_their_limits_and_leave_the_job_unharmed():
    done = subprocess.run([sys.executable, str(REPO / "tests" / "code_cases.py")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "lib")}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_table(json.loads(done.stdout))


@pytest.mark.parametrize("text, expected", [
    ("<reasoning>r</reasoning><answer>```python\ndef f():\n    return 1\n```</answer>", "def f():\n    return 1"),
    ("<answer>```py\nx = 1\n```\nthen\n```python\ny = 2\n```</answer>", "y = 2"),  # the last block
    ("<answer>\ndef f(): return 2\n</answer>", "def f(): return 2"),  # no fence: the answer block
    ("Here:\n```python\nz = 3\n```", "z = 3"),  # no answer block: a fence anywhere
    ("```\nw = 4\n```", "w = 4"),  # a fence without a language
    ("<reasoning>only thinking</reasoning>", None),
    ("<answer>   </answer>", None),
    (None, None),
    (42, None),
])
def test_extract_takes_the_last_fenced_block_of_the_answer(text, expected):
    assert code.extract(text) == expected


def test_math_and_code_rows_each_get_only_their_own_correctness():
    completions = ["<reasoning>2+3</reasoning><answer>5</answer>",
                   "<reasoning>r</reasoning><answer>```python\ndef add(a, b):\n    return a + b\n```</answer>",
                   "<reasoning>r</reasoning><answer>```python\ndef add(a, b):\n    return a * b\n```</answer>"]
    tests = [None, "assert add(2, 3) == 5", "assert add(2, 3) == 5"]
    gold = ["5", "def add(a, b): return a + b", "def add(a, b): return a + b"]
    totals, parts = rewards.combined({"math_correctness": 1.0, "code_correctness": 2.0}, [""] * 3, completions,
                                     gold, tests)
    assert parts == {"math_correctness": [1.0, 0.0, 0.0], "code_correctness": [0.0, 1.0, 0.0]}
    assert totals == [1.0, 2.0, 0.0]
    # Without test programs (a math-only recipe) code_correctness is 0 and math_correctness is `correct`.
    assert rewards.code_correctness([""], completions[:1], gold[:1]) == [0.0]
    assert rewards.math_correctness([""], completions[:1], gold[:1]) == rewards.correct([""], completions[:1], gold[:1])


@pytest.mark.skipif(os.geteuid() != 0, reason="as root the sandbox drops to nobody; as anyone else it keeps the uid")
def test_as_root_the_program_runs_as_nobody_with_its_own_directory_and_nothing_of_ours():
    result = sandbox.run("import json, os, sys\nprint(json.dumps([os.getuid(), os.getcwd() == os.environ['HOME'], "
                         "sorted(os.environ), sys.flags.isolated, sys.flags.no_site]))")
    assert result.passed, result.output
    assert json.loads(result.output.splitlines()[0]) == [65534, True, ["HOME", "LANG", "PATH", "TMPDIR"], 1, 1]


def test_cpu_time_ends_a_busy_loop_before_the_wall_clock():
    result = sandbox.run("while True:\n    pass", limits=sandbox.Limits(wall_s=60, cpu_s=1))
    assert result.status == "timeout" and result.seconds < 10


def test_output_is_cut_at_its_limit():
    result = sandbox.run("import sys\nsys.stdout.write('y' * 10_000)\nsys.stdout.flush()",
                         limits=sandbox.Limits(output_bytes=1000))
    assert result.status == "output_limit" and result.output.startswith("y" * 1000 + "\n")


def test_a_pass_needs_the_tests_to_finish_and_the_token_never_shows():
    passed = sandbox.run("def f():\n    return 1", "assert f() == 1")
    assert passed.passed and "<token>" in passed.output and "sandbox: x86_64" in passed.output
    assert sandbox.run("def f():\n    return 2", "assert f() == 1").status == "failed"
    assert sandbox.run("import os\nos._exit(0)", "assert f() == 1").status == "exited_early"


SECCOMP_PROBE = """
import os, socket, sys, threading
sys.path.insert(0, {guard_dir!r})
import sandbox_guard
print(sandbox_guard.seccomp())
def attempt(name, action):
    try:
        action()
        print(name, "allowed")
    except OSError as err:
        print(name, "denied", err.errno)
attempt("socket", lambda: socket.socket())
attempt("fork", os.fork)
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("signal parent", lambda: os.kill(os.getppid(), 0))
attempt("signal self", lambda: os.kill(os.getpid(), 0))
attempt("pidfd", lambda: os.pidfd_open(os.getppid()))
worker = threading.Thread(target=lambda: print("thread ran"))
worker.start()
worker.join()
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the filter knows these architectures")
def test_the_seccomp_filter_denies_what_the_kernel_sees_and_keeps_threads():
    """The kernel-enforced layer alone, without the audit hook: no socket, fork, exec, pidfd or signal to
    another process; signals to itself and threads still work."""
    import subprocess
    import sys

    from showwork.task import sandbox_guard

    probe = SECCOMP_PROBE.format(guard_dir=os.path.dirname(sandbox_guard.__file__))
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [os.uname().machine, "socket denied 1", "fork denied 1", "exec denied 1",
                                            "signal parent denied 1", "signal self allowed", "pidfd denied 1",
                                            "thread ran"]


def test_the_filter_jumps_only_forward_and_lists_every_denied_call():
    from showwork.task import sandbox_guard

    for arch, (_, denied) in sandbox_guard.DENIED.items():
        program = sandbox_guard.bpf_program(arch, 4242)
        for i, (op, jt, jf, k) in enumerate(program):
            assert jt >= 0 and jf >= 0 and (op == 0x06 or i + 1 + max(jt, jf) < len(program))
        compared = {k for op, _, _, k in program if op == 0x15}
        assert set(denied.values()) <= compared and 4242 in compared
