"""Evaluation shards, voting and the report: shard-count independence, retries, refusal."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TIERS, job_env
from showwork import evaluate, report, voting
from showwork.bus import Bus

CPU = TIERS / "cpu" / "tier.yaml"

TINY_EVAL = """recipe: tiny-eval
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 7, seed: 9}
eval:
  models: [base]
  methods: [greedy, majority, consensus]
  samples: 3
  temperature: 0.8
  consensus_temperatures: [0.3, 1.0]
  max_tokens: 12
"""


@pytest.mark.parametrize("values, answer, count, margin", [
    (["18", "18", "7"], "18", 2, 1 / 3),
    (["7", "18", "18", "7"], "7", 2, 0.0),  # tie: the earliest answer wins
    (["18", "7", "7", "18"], "18", 2, 0.0),
    ([None, None, "5"], "5", 1, 1 / 3),  # "no answer" never beats a real one
    ([None, None, None], None, 0, 0.0),
    ([], None, 0, 0.0),
    (["3"], "3", 1, 1.0),
])
def test_majority(values, answer, count, margin):
    vote = voting.majority(values)
    assert (vote.answer, vote.count) == (answer, count)
    assert vote.margin == pytest.approx(margin)


def test_numeric_equivalents_are_one_answer():
    from showwork import answers

    texts = ["<answer>18</answer>", "<answer>18.0</answer>", "<answer>$18</answer>", "<answer>17</answer>"]
    vote = voting.majority([answers.extract(t).value for t in texts])
    assert (vote.answer, vote.count, vote.total) == ("18", 3, 4)


def test_shard_rows_partition():
    rows = list(range(10))
    parts = [evaluate.shard_rows(rows, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="does not exist"):
        evaluate.shard_rows(rows, 3, 3)


def test_score_sample():
    s = evaluate.score("<reasoning>48 / 2 = 24, 48 + 24 = 72</reasoning><answer>72</answer>", "72")
    assert s["correct"] and s["well_formed"] and s["reasoning_words"] == 10
    assert not s["lm_eval_strict"] and s["lm_eval_flexible"]
    s = evaluate.score("so 48+24=72\n#### 72", "72")
    assert s["correct"] and not s["well_formed"] and s["lm_eval_strict"] and s["lm_eval_flexible"]


def test_wilson_interval():
    assert report.wilson(0, 10)[0] == 0.0 and report.wilson(10, 10)[1] == 1.0
    low, high = report.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def records(correct_by_method):
    out = []
    for qid, methods in correct_by_method.items():
        out.append({"id": qid, "question": f"q{qid}", "gold": "1", "methods": {
            m: {"correct": c, "margin": 1.0, "samples": [{"correct": c, "well_formed": True, "reasoning_words": 55,
                                                          "lm_eval_strict": False, "lm_eval_flexible": c}]}
            for m, c in methods.items()}})
    return out


def test_compute_fixed_broke_and_unsolved():
    base = records({"a": {"greedy": True, "majority": True}, "b": {"greedy": False, "majority": True},
                    "c": {"greedy": False, "majority": False}, "d": {"greedy": True, "majority": False}})
    tuned = records({"a": {"greedy": False, "majority": True}, "b": {"greedy": True, "majority": True},
                     "c": {"greedy": False, "majority": False}, "d": {"greedy": True, "majority": True}})
    m = report.compute({"base": base, "grpo": tuned}, ["greedy", "majority"])
    assert m["models"]["base"]["greedy"]["accuracy"] == 0.5
    assert m["between_methods"]["base"]["greedy->majority"] == {"fixed": 1, "broke": 1, "questions": 4}
    assert m["between_models"]["base->grpo"]["greedy"] == {"fixed": 1, "broke": 1, "questions": 4}
    assert m["between_models"]["base->grpo"]["majority"] == {"fixed": 1, "broke": 0, "questions": 4}
    assert [u["id"] for u in m["unsolved"]] == ["c"]
    assert m["by_reasoning_length"]["base"]["greedy"] == {"50-59": {"samples": 4, "accuracy": 0.5}}


def run(*args, **kw):
    done = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=job_env(**kw),
                          capture_output=True, text=True, timeout=900)
    return done


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    recipe = root / "recipe.yaml"
    recipe.write_text(TINY_EVAL)
    done = run("jobs.prepare_data", recipe, CPU, "--root", root / "runs")
    assert done.returncode == 0, done.stderr
    return root, recipe


def test_three_shards_merge_to_the_same_metrics_as_one(prepared, tmp_path):
    root, recipe = prepared
    one, three = tmp_path / "one", tmp_path / "three"
    for target in (one, three):
        shutil.copytree(root / "runs", target)
    done = run("jobs.evaluate", recipe, CPU, "--root", one, "--shards", "1")
    assert done.returncode == 0, done.stderr
    assert run("jobs.report", recipe, CPU, "--root", one, "--shards", "1").returncode == 0

    for index in (0, 2):
        assert run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3",
                   JOB_COMPLETION_INDEX=str(index)).returncode == 0
    refused = run("jobs.report", recipe, CPU, "--root", three, "--shards", "3")
    assert refused.returncode != 0 and "shard-1-of-3" in refused.stderr and "1 of 3 shards" in refused.stderr

    bus3 = Bus(str(three / "tiny-eval"))
    # A shard killed mid-write leaves no records file; a retried pod re-runs it whole.
    bus3.write_text("eval/base/shard-1-of-3.jsonl", '{"id": "partial"')
    assert run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3", JOB_COMPLETION_INDEX="1").returncode == 0
    again = run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3", JOB_COMPLETION_INDEX="1")
    assert "skipping" in again.stderr
    assert run("jobs.report", recipe, CPU, "--root", three, "--shards", "3").returncode == 0

    m1 = json.loads((one / "tiny-eval" / "report" / "metrics.json").read_text())
    m3 = json.loads((three / "tiny-eval" / "report" / "metrics.json").read_text())
    assert m1 == m3
    assert m1["models"]["base"]["greedy"]["questions"] == len(Bus(str(one / "tiny-eval")).read_jsonl("data/eval.jsonl"))
    shard_lines = sum(len(bus3.read_jsonl(f"eval/base/shard-{i}-of-3.jsonl")) for i in range(3))
    assert shard_lines == m1["models"]["base"]["greedy"]["questions"]  # no duplicates from the retry

    record = bus3.read_jsonl("eval/base/shard-0-of-3.jsonl")[0]
    assert set(record["methods"]) == {"greedy", "majority", "consensus"}
    assert len(record["methods"]["majority"]["samples"]) == 3
    assert [s["temperature"] for s in record["methods"]["consensus"]["samples"]] == [0.3, 1.0]
    sample = record["methods"]["greedy"]["samples"][0]
    assert {"text", "extracted", "correct", "well_formed", "reasoning_words", "lm_eval_strict"} <= set(sample)

    page = (three / "tiny-eval" / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page
    md = (three / "tiny-eval" / "report" / "report.md").read_text()
    assert "lm-eval strict-match" in md and "![Accuracy per model and method](accuracy.png)" in md
