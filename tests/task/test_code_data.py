"""Code problems as data: MBPP and HumanEval records into rows, mixed with math, scored in evaluation."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from showwork import config
from showwork.eval import evaluate, report
from showwork.task import code, data

MBPP = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": "def remove_Occ(s,ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n    return s[:i] + s[i+1:] "
             "if i >= 0 else s",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
     "test_setup_code": ""},
    {"task_id": 12, "text": "Write a function to sort a matrix by the sum of its rows.",
     "code": "def sort_matrix(M):\n    return sorted(M, key=sum)",
     "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]]) == [[1, 1, 1], [1, 2, 3], [2, 4, 5]]"],
     "test_setup_code": "import math"},
    {"task_id": 13, "text": "No tests here.", "code": "x = 1", "test_list": []},
    {"task_id": 14, "text": "", "code": "x = 1", "test_list": ["assert True"]},
    {"task_id": 15, "text": "A task without a reference.", "test_list": ["assert f() == 1"]},
]


def write_jsonl(path, records, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize("record, reason", [(MBPP[2], "missing_tests"), (MBPP[3], "missing_question"),
                                            (MBPP[4], "missing_solution"),
                                            ({"prompt": "def f():\n", "test": "assert f() == 1", "entry_point": "f",
                                              "canonical_solution": "    return 1"}, "missing_tests"),
                                            ({"prompt": "def f():\n", "test": "def check(c): pass",
                                              "entry_point": "f()", "canonical_solution": "    return 1"},
                                             "missing_tests")])
def test_code_records_without_question_tests_or_reference_are_rejected_by_reason(record, reason):
    row = data.to_row(record, "code", "readable", 2000, 8000)
    assert isinstance(row, data.Rejected) and row.reason == reason


def test_an_mbpp_row_asks_with_its_tests_and_its_reference_passes_them():
    row = data.to_row(MBPP[1], "code", "readable", 2000, 8000)
    assert row.question.endswith("Your code should pass these tests:\n\n" + MBPP[1]["test_list"][0])
    assert row.tests == "import math\n" + MBPP[1]["test_list"][0]
    assert row.answer == "```python\ndef sort_matrix(M):\n    return sorted(M, key=sum)\n```"
    formatted = data.formatted(row, "SYS")
    assert formatted["tests"] == row.tests and formatted["target"].count("```python") == 1
    (verdict,) = code.verdicts([formatted["target"]], [row.tests])
    assert verdict.passed, verdict.output
    # A math row's layout is unchanged: no tests key.
    math_row = data.to_row({"question": "1+1?", "answer": "1+1=2\n#### 2"}, "gsm8k", "readable", 2000, 8000)
    assert "tests" not in data.formatted(math_row, "SYS")


def test_every_humaneval_reference_passes_its_tests_in_the_sandbox_and_a_wrong_one_fails():
    train, evals, stats = data.build_splits(config.DataConfig(source="code", train_size=150, eval_size=14))
    assert stats["rows_out"] == {"train": 150, "eval": 14} and stats["dropped_total"] == 0  # all 164 problems
    rows = train + evals
    right = code.verdicts([data.formatted(r, "")["target"] for r in rows], [r.tests for r in rows])
    assert [r.id for r, v in zip(rows, right) if not v.passed] == []
    wrong = code.verdicts(["<answer>```python\ndef nothing():\n    pass\n```</answer>"] * 20, [r.tests for r in rows[:20]])
    assert not any(v.passed for v in wrong)


def test_a_gzipped_jsonl_reads_like_a_plain_one(tmp_path):
    plain = config.DataConfig(source="code", path=write_jsonl(tmp_path / "m.jsonl", MBPP), train_size=1, eval_size=1)
    packed = dataclasses.replace(plain, path=write_jsonl(tmp_path / "m.jsonl.gz", MBPP, compress=True))
    assert data.build_splits(plain) == data.build_splits(packed)


def test_a_mix_shuffles_training_rows_together_and_keeps_each_sources_eval_rows(tmp_path):
    gsm = [{"question": f"Tom has {k} apples and eats 1. How many are left?", "answer": f"{k}-1={k - 1}\n#### {k - 1}"}
           for k in range(2, 30)]
    cfg = config.DataConfig(source="gsm8k", path=write_jsonl(tmp_path / "gsm.jsonl", gsm), train_size=10, eval_size=3,
                            mix=(config.MixedSource(source="code", path=write_jsonl(tmp_path / "mbpp.jsonl", MBPP),
                                                    train_size=1, eval_size=1),))
    train, evals, stats = data.build_splits(cfg)
    assert sorted(r.source for r in train) == ["code"] + ["gsm8k"] * 10
    assert [r.source for r in evals] == ["gsm8k"] * 3 + ["code"]
    assert stats["source"] == "gsm8k+code" and stats["rows_out"] == {"train": 11, "eval": 4}
    assert stats["dropped"] == {"missing_question": 1, "missing_solution": 1, "missing_tests": 1}
    assert [s["source"] for s in stats["sources"]] == ["gsm8k", "code"]
    assert train == data.build_splits(cfg)[0]  # seeded: the same order every time
    assert [r.id for r in train] != [r.id for r in sorted(train, key=lambda r: r.source)]  # interleaved


@pytest.mark.parametrize("text, extracted, correct", [
    ("<reasoning>r</reasoning><answer>```python\ndef add(a, b):\n    return a + b\n```</answer>", "passed", True),
    ("<reasoning>r</reasoning><answer>```python\ndef add(a, b):\n    return a * b\n```</answer>", "failed", False),
    ("<reasoning>r</reasoning>", None, False),
])
def test_evaluation_scores_a_code_row_by_running_it(text, extracted, correct):
    got = evaluate.score(text, "def add(a, b): return a + b", "assert add(2, 3) == 5")
    assert got["correct"] is correct and (got["extracted"] or "").startswith(extracted or "") and (
        got["extracted"] is None) == (extracted is None)
    assert got["well_formed"] is ("<answer>" in text) and got["method"] == "code"


def test_the_report_gives_accuracy_per_source():
    def record(i, source, correct):
        return {"id": f"q{i}", "question": "q", "gold": "1", "source": source, "methods": {"greedy": {
            "correct": correct, "vote": None, "votes": 1, "margin": 1.0,
            "samples": [{"correct": correct, "well_formed": True, "reasoning_words": 10, "lm_eval_strict": False,
                         "lm_eval_flexible": False, "extracted": "1"}]}}}

    recs = [record(0, "gsm8k", True), record(1, "gsm8k", False), record(2, "code", True), record(3, "code", True),
            record(4, "code", False)]
    metrics = report.compute({"grpo": recs}, ["greedy"])
    per = metrics["by_source"]["grpo"]["greedy"]
    assert (per["gsm8k"]["correct"], per["gsm8k"]["questions"]) == (1, 2)
    assert (per["code"]["correct"], per["code"]["questions"]) == (2, 3)
    shown = "\n".join(report.source_markdown(metrics["by_source"], ["greedy"]))
    assert "| grpo | greedy | code | 3 | 66.7% |" in shown
    assert "by_source" not in report.compute({"grpo": recs[:2]}, ["greedy"])


def test_a_recipe_with_code_rows_refuses_sft_and_a_mix_refuses_source_order(tmp_path):
    base = tmp_path / "r.yaml"
    base.write_text("recipe: r\nmodel: {name: tiny}\ndata: {source: code}\nsft: {}\n")
    tier = tmp_path / "t.yaml"
    tier.write_text("tier: {name: cpu}\n")
    with pytest.raises(config.ConfigError, match="no worked reasoning"):
        config.load(str(base), str(tier))
    base.write_text("recipe: r\nmodel: {name: tiny}\ndata: {source: glaive, order: source, mix: [{source: code}]}\n")
    with pytest.raises(config.ConfigError, match="not with order: source"):
        config.load(str(base), str(tier))
