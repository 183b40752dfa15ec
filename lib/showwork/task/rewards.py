"""Rewards: plain functions `fn(prompts, completions, answer, **kw) -> list[float]`.

Every reward design the seed projects used is here, in one explicit table
(`REWARDS`); a recipe picks rewards by name and weights them
(`grpo.rewards: {format_exact: 1.0, answer: 1.0}`), and `combined` sums them.

Completions are untrusted model output: every function is linear-time
(through `answers`), never raises, and treats a non-string as empty.
`answer` is the list of gold answers, one per completion.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from showwork.errors import UsageError
from showwork.task import answers

RewardFn = Callable[..., list[float]]

TAGS = (answers.REASONING_OPEN, answers.REASONING_CLOSE, answers.ANSWER_OPEN, answers.ANSWER_CLOSE)

# A line that starts a step: "1.", "2)", "Step 3:", "-", "*", "•".
_STEP_LINE = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|step\s+\d{1,3}\s*[:.)]|[-*•])[ \t]+\S", re.IGNORECASE | re.MULTILINE)
# Arithmetic written out: "48 / 2 = 24", "3×4=12". Anchored on the operator
# with bounded repeats, so a 100k-digit run costs one pass, not n² backtracking.
_ARITHMETIC = re.compile(r"(?<=\d)[ \t]?[-+*/×x÷][ \t]?\d{1,12}(?:[.,]\d{1,12})?[ \t]?=[ \t]?-?\$?\d")


def _text(c) -> str:
    return c if isinstance(c, str) else ""


# ---------------------------------------------------------------- baseline four
# (Google's tunix GRPO example; values as the seeds used them.)


def format_exact(prompts, completions, answer=None, **kw) -> list[float]:
    """+3.0 for exactly one reasoning block followed by one answer block."""
    return [3.0 if answers.check_format(_text(c)).well_formed else 0.0 for c in completions]


def format_approx(prompts, completions, answer=None, **kw) -> list[float]:
    """+0.5 per tag that appears exactly once, -0.5 per tag missing or repeated."""
    out = []
    for c in completions:
        text = _text(c)
        out.append(sum(0.5 if text.count(tag) == 1 else -0.5 for tag in TAGS))
    return out


def answer_match(prompts, completions, answer, **kw) -> list[float]:
    """Graded answer credit from the <answer> block.

    +3.0 same number (18, 18.0, $18) or same string; +1.5 equal once all
    whitespace is removed; +0.5 within 10% and +0.25 within 20% of the gold
    value; -1.0 otherwise (wrong or unreadable); 0.0 with no answer block.
    """
    out = []
    for c, gold in zip(completions, answer):
        guess = answers.xml_answer(_text(c))
        if guess is None:
            out.append(0.0)
            continue
        gold = str(gold)
        if guess == gold.strip() or answers.same_number(guess, gold):
            out.append(3.0)
        elif "".join(guess.split()) == "".join(gold.split()):
            out.append(1.5)
        else:
            out.append(_ratio_credit(guess, gold))
    return out


def _ratio_credit(guess: str, gold: str) -> float:
    g, t = answers.parse_number(guess), answers.parse_number(gold)
    if g is None or t is None or t == 0:
        return -1.0
    ratio = float(g / t)
    if 0.9 <= ratio <= 1.1:
        return 0.5
    if 0.8 <= ratio <= 1.2:
        return 0.25
    return -1.0


_FIRST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers(prompts, completions, answer, **kw) -> list[float]:
    """+1.5 when the first number in the answer block equals the gold value."""
    out = []
    for c, gold in zip(completions, answer):
        block = answers.xml_answer(_text(c)) or ""
        match = _FIRST_NUMBER.search(block[:200])
        out.append(1.5 if match and answers.same_number(match.group(0), str(gold)) else 0.0)
    return out


# ---------------------------------------------------------------- trajectory


def tagged_correct(text: str, gold: str) -> bool:
    """The number inside the (last) <answer> block equals the gold number: no tag, no credit (the
    trajectory and hybrid systems credit only a tagged answer, unlike `is_correct`'s fallbacks)."""
    return answers.same_number(answers.xml_answer(text), str(gold))


def trajectory(prompts, completions, answer, **kw) -> list[float]:
    """(0.6 * r + 0.4 * a) * 3, as the trajectory-reward system scores it (max 2.1).

    r = 0.5 when the reasoning block has more than 20 words (a bare tag pair with a token of
    text is not reasoning), else 0; a = 1 only for the gold number inside <answer>. So a right
    answer with short reasoning (1.2) beats a wrong one with long reasoning (0.9).
    """
    out = []
    for c, gold in zip(completions, answer):
        text = _text(c)
        reasoning = 0.5 if answers.check_format(text).reasoning_words > 20 else 0.0
        correct = 1.0 if tagged_correct(text, gold) else 0.0
        out.append((0.6 * reasoning + 0.4 * correct) * 3.0)
    return out


# ---------------------------------------------------------------- hybrid


def reasoning_depth(text: str) -> float:
    """0.3 per numbered or bulleted step, +0.5 above 50 words, capped at 2.0."""
    block = answers.xml_reasoning(text) or ""
    steps = len(_STEP_LINE.findall(block[:20_000]))
    words = len(block.split())
    return min(2.0, 0.3 * steps + (0.5 if words > 50 else 0.0))


def hybrid(prompts, completions, answer, **kw) -> list[float]:
    """0.3 * format + 0.4 * reasoning depth + 0.3 * answer, the recommended-hybrid system's
    weights and scales (max 2.6).

    format: 3.0 when well formed, else 0; depth: `reasoning_depth` (0 to 2); answer: 3.0 for
    the gold number inside <answer>, else 0 (no credit without the tag).
    """
    out = []
    for c, gold in zip(completions, answer):
        text = _text(c)
        fmt = 3.0 if answers.check_format(text).well_formed else 0.0
        correct = 3.0 if tagged_correct(text, gold) else 0.0
        out.append(0.3 * fmt + 0.4 * reasoning_depth(text) + 0.3 * correct)
    return out


# ---------------------------------------------------------------- composite


# The relay system penalises very short answers without saying by how much or below what length:
# these two values are ours (a reasoning block of a few words, or none, loses a fifth of a correct
# answer's 25), so a bare guess scores under a worked answer and never above a correct one.
SHORT_REASONING_WORDS = 5
SHORT_PENALTY = 5.0


def composite(prompts, completions, answer, **kw) -> list[float]:
    """+25 correct, +2 reasoning block, +2 answer block, +1 arithmetic shown, -15 format violation,
    -5 for reasoning under SHORT_REASONING_WORDS words (no reasoning block counts as none)."""
    out = []
    for c, gold in zip(completions, answer):
        text = _text(c)
        flags = answers.check_format(text)
        score = 25.0 if answers.is_correct(text, str(gold)) else 0.0
        score += 2.0 if flags.has_reasoning else 0.0
        score += 2.0 if flags.has_answer else 0.0
        reasoning = answers.xml_reasoning(text) or ""
        score += 1.0 if _ARITHMETIC.search(reasoning[:20_000]) else 0.0
        score -= 0.0 if flags.well_formed else 15.0
        score -= SHORT_PENALTY if flags.reasoning_words < SHORT_REASONING_WORDS else 0.0
        out.append(score)
    return out


# ---------------------------------------------------------------- correctness


def correct(prompts, completions, answer, **kw) -> list[float]:
    """1.0 when the extracted answer equals the gold answer (the eval definition)."""
    return [1.0 if answers.is_correct(_text(c), str(g)) else 0.0 for c, g in zip(completions, answer)]


def math_correctness(prompts, completions, answer, tests=None, **kw) -> list[float]:
    """`correct` on math rows; 0.0 on code rows (those with a test program), which it cannot judge."""
    tests = tests or [None] * len(completions)
    return [0.0 if t else v for v, t in zip(correct(prompts, completions, answer), tests)]


def code_correctness(prompts, completions, answer, tests=None, **kw) -> list[float]:
    """1.0 when the completion's code passes its row's tests in the sandbox (code.verdicts), else 0.0;
    0.0 on math rows. Runs untrusted code: only ever through `sandbox`."""
    from showwork.task import code

    results = code.verdicts(completions, tests or [None] * len(completions))
    return [1.0 if r is not None and r.passed else 0.0 for r in results]


REWARDS: dict[str, RewardFn] = {
    "format_exact": format_exact,
    "format_approx": format_approx,
    "answer": answer_match,
    "numbers": numbers,
    "trajectory": trajectory,
    "hybrid": hybrid,
    "composite": composite,
    "correct": correct,
    "math_correctness": math_correctness,
    "code_correctness": code_correctness,
}


def check_names(names: Sequence[str]) -> None:
    """ValueError naming every reward not in REWARDS (config loading and `combined` both check here)."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise UsageError(f"unknown reward{plural} {', '.join(map(repr, unknown))}; known: {', '.join(REWARDS)}")


def combined(weights: dict[str, float], prompts, completions, answer,
             tests=None) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the named rewards, plus each reward's raw values. `tests`: each row's test
    program (code rows) or None (math rows), for the rewards that run code."""
    check_names(list(weights))
    parts = {name: REWARDS[name](prompts, completions, answer, tests=tests) for name in weights}
    totals = [math.fsum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    return totals, parts
