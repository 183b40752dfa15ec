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


def program(code: str, tests: str) -> str:
    return f"{code}\n\n\n{tests}\n"


def verdicts(completions, tests, limits: sandbox.Limits = sandbox.Limits(), workers: int | None = None) -> list:
    """sandbox.Result per completion (None where there is no test program or no code), run in parallel."""
    jobs = []
    for text, test in zip(completions, tests):
        code = extract(text) if test else None
        jobs.append(program(code, test) if code and len(code) <= MAX_CODE_CHARS else None)
    todo = [i for i, job in enumerate(jobs) if job]
    out = [None] * len(jobs)
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(len(todo), os.cpu_count() or 1)) as pool:
            for i, result in zip(todo, pool.map(lambda k: sandbox.run(jobs[k], limits), todo)):
                out[i] = result
    return out
