"""What went wrong in a sampled solution: the error analysis of self-teaching (DSA-CAST).

Every sample gets exactly one kind, the first that applies:

| kind | meaning |
|---|---|
| `correct` | well-formed, the gold answer, and every written equation true: a verified trace |
| `length` | the token budget ran out before `</answer>` (too long, not wrong) |
| `format` | not one reasoning block then one answer block |
| `arithmetic` | well-formed, and a written equation is false ("48 / 2 = 25"), whatever the answer |
| `setup` | well-formed and wrong, every written equation true: the plan was wrong |

A question counts as failed when none of its samples is correct; its failure
kinds are the kinds of its samples. The model keeps its reasoning apart from
its answer (the dual stream: `<reasoning>` and `<answer>`), which is what lets
the answer be checked apart from the arithmetic that led to it.
"""

from __future__ import annotations

from collections import Counter

from showwork.task import answers, arithmetic

KINDS = ("correct", "length", "format", "arithmetic", "setup")
FAILURES = KINDS[1:]


def diagnose(text: str, gold: str, truncated: bool) -> dict:
    """One sample's kind, with the equations it wrote and those it got wrong."""
    written = arithmetic.equations(answers.xml_reasoning(text) or text)
    wrong = [e.text for e in written if not e.correct]
    well_formed = answers.check_format(text).well_formed
    if well_formed and not wrong and answers.is_correct(text, str(gold)):
        kind = "correct"
    elif truncated and answers.ANSWER_CLOSE not in text:
        kind = "length"
    elif not well_formed:
        kind = "format"
    elif wrong:
        kind = "arithmetic"
    else:
        kind = "setup"
    return {"kind": kind, "equations": len(written), "wrong_equations": wrong}


def analysis(diagnosed: list[dict]) -> dict:
    """Counts over a round's samples (each a `diagnose` result plus the row `id`): samples per kind,
    questions solved, failed questions per failure kind, and equations written and wrong."""
    by_question: dict[str, list[str]] = {}
    for d in diagnosed:
        by_question.setdefault(d["id"], []).append(d["kind"])
    failed = {q: kinds for q, kinds in by_question.items() if "correct" not in kinds}
    return {
        "samples": len(diagnosed),
        "questions": len(by_question),
        "questions_solved": len(by_question) - len(failed),
        "samples_by_kind": {k: sum(d["kind"] == k for d in diagnosed) for k in KINDS},
        "failed_questions_by_kind": {k: sum(k in kinds for kinds in failed.values()) for k in FAILURES},
        "equations": sum(d["equations"] for d in diagnosed),
        "wrong_equations": sum(len(d["wrong_equations"]) for d in diagnosed),
    }


def failed_by_kind(diagnosed: list[dict]) -> dict[str, list[str]]:
    """Failure kind -> ids of failed questions with a sample of that kind (first-seen order), most
    frequent kind of the round first."""
    solved = {d["id"] for d in diagnosed if d["kind"] == "correct"}
    counts = Counter(d["kind"] for d in diagnosed if d["id"] not in solved)
    out: dict[str, list[str]] = {}
    for kind, _ in counts.most_common():
        out[kind] = list(dict.fromkeys(d["id"] for d in diagnosed if d["id"] not in solved and d["kind"] == kind))
    return out
