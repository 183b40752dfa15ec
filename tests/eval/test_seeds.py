"""Pooling a recipe's runs under several seeds (jobs.seeds) and the sign test behind it."""

import json

import pytest

from jobs import seeds
from showwork.bus import Bus
from showwork.eval import report


@pytest.mark.parametrize("fixed, broke, p", [
    (0, 0, 1.0),            # nothing changed: no evidence either way
    (3, 3, 1.0),            # as many broken as fixed
    (5, 0, 2 / 32),         # five of five one way: not yet p < 0.05
    (6, 0, 2 / 64),         # six of six: the smallest one-way split under 0.05
    (0, 6, 2 / 64),         # two-sided: breaks count alike
    (1, 5, 2 * 7 / 64),     # C(6,0) + C(6,1) = 7 of 64, both tails
    (10, 2, 2 * 79 / 4096),  # C(12,0) + C(12,1) + C(12,2) = 79
    (30, 30, 1.0),
])
def test_sign_test_is_the_two_sided_exact_binomial_tail(fixed, broke, p):
    assert report.sign_test(fixed, broke) == pytest.approx(p)


def _records(outcomes: dict[str, tuple[bool, str]]) -> list[dict]:
    return [{"id": q, "question": f"q{q}", "gold": "1", "source": src,
             "methods": {"greedy": {"correct": ok, "margin": 1.0, "samples": [
                 {"correct": ok, "well_formed": True, "reasoning_words": 20, "lm_eval_strict": ok,
                  "lm_eval_flexible": ok}]}}} for q, (ok, src) in outcomes.items()]


def _metrics(sft: dict[str, bool], grpo: dict[str, bool]) -> dict:
    src = lambda q: "gsm_symbolic" if q.startswith("g") else "word-problems"  # noqa: E731
    return report.compute({"sft": _records({q: (ok, src(q)) for q, ok in sft.items()}),
                           "grpo": _records({q: (ok, src(q)) for q, ok in grpo.items()})}, ["greedy"])


def test_fixed_and_broke_are_counted_within_each_source():
    m = _metrics({"w1": False, "w2": False, "w3": True, "g1": True, "g2": False},
                 {"w1": True, "w2": True, "w3": True, "g1": False, "g2": False})
    assert m["between_models"]["sft->grpo"]["greedy"] == {"fixed": 2, "broke": 1, "questions": 5}
    assert m["between_models_by_source"]["sft->grpo"]["greedy"] == {
        "gsm_symbolic": {"fixed": 0, "broke": 1, "questions": 2},
        "word-problems": {"fixed": 2, "broke": 0, "questions": 3}}
    md = report.markdown(m, ["greedy"], "demo", {})
    assert "| sft->grpo | greedy | all | 2 | 1 | 1 |" in md
    assert "| sft->grpo | greedy | word-problems | 2 | 0 | 0.5 |" in md
    assert "| sft->grpo | greedy | gsm_symbolic | 0 | 1 | 1 |" in md


def _run(root, name: str, sft: dict[str, bool], grpo: dict[str, bool]) -> str:
    run = str(root / name)
    Bus(run).write_json("report/metrics.json", _metrics(sft, grpo))
    return run


def test_runs_under_three_seeds_pool_their_fixes_into_one_sign_test(tmp_path, capsys):
    words = [f"w{i}" for i in range(10)]
    # Each seed: GRPO fixes three word problems and breaks one; the gsm_symbolic question it breaks
    # every time is left out when only the demo's own task is pooled.
    runs = [_run(tmp_path, f"seed{s}", {**{q: i < 4 for i, q in enumerate(words)}, "g0": True},
                 {**{q: (i < 3) or (4 + s <= i < 7 + s) for i, q in enumerate(words)}, "g0": False})
            for s in range(3)]
    assert seeds.main([*runs, "--source", "word-problems", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [out["runs"][r]["fixed"] for r in runs] == [3, 3, 3]
    assert [out["runs"][r]["broke"] for r in runs] == [1, 1, 1]
    pooled = out["pooled"]
    assert (pooled["fixed"], pooled["broke"], pooled["questions"]) == (9, 3, 30)
    assert pooled["net_points"] == pytest.approx(20.0)
    assert pooled["sign_test_p"] == pytest.approx(report.sign_test(9, 3))
    assert pooled["mean_before"] == pytest.approx(0.4) and pooled["mean_after"] == pytest.approx(0.6)
    assert pooled["mean_reward_change"] is None  # these reports were computed without a GRPO reward
    # Every source together: the broken gsm_symbolic question counts against GRPO in each run.
    assert seeds.main([*runs, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pooled"]["broke"] == 6


@pytest.mark.parametrize("extra, message", [
    (["--source", "gsm8k"], "no source 'gsm8k'"),
    (["--before", "base"], "not 'base->grpo'"),
    (["--method", "majority"], "not 'majority'"),
])
def test_a_comparison_the_reports_cannot_answer_is_refused_by_name(tmp_path, capsys, extra, message):
    run = _run(tmp_path, "seed0", {"w1": False}, {"w1": True})
    assert seeds.main([run, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_run_without_a_report_is_refused_with_its_path(tmp_path, capsys):
    assert seeds.main([str(tmp_path / "never-ran")]) == 2
    assert "never-ran/report/metrics.json" in capsys.readouterr().err


def _texts(answers: dict[str, list[str]], code: tuple[str, ...] = ()) -> list[dict]:
    return [{"id": q, "question": f"What is {q}?", "gold": "3", "source": "word-problems", "methods": {"greedy": {
        "correct": False, "margin": 1.0, "samples": [
            {"text": f"<reasoning>\n1 + 2 = 3\n</reasoning>\n<answer>\n{a}\n</answer>", "correct": a == "3",
             "well_formed": True, "reasoning_words": 4, "lm_eval_strict": False, "lm_eval_flexible": a == "3",
             **({"method": "code"} if q in code else {})} for a in ans]}}} for q, ans in answers.items()]


def test_held_out_reward_is_the_recipes_reward_per_question_with_a_paired_change():
    # q1: SFT answers 4 (wrong), GRPO 3; q2: both right; q3 is a code row, which the reward leaves out.
    sft = _texts({"q1": ["4"], "q2": ["3"], "q3": ["4"]}, code=("q3",))
    grpo = _texts({"q1": ["3"], "q2": ["3"], "q3": ["3"]}, code=("q3",))
    m = report.compute({"sft": sft, "grpo": grpo}, ["greedy"], {"correct": 2.0, "format_exact": 0.5})
    fmt = 0.5 * 3.0  # format_exact: 3 for a fully well-formed completion
    assert m["held_out_reward"]["sft"]["greedy"]["questions"] == 2
    assert m["held_out_reward"]["sft"]["greedy"]["mean"] == pytest.approx(fmt + 1.0)   # (0 + 2) / 2
    assert m["held_out_reward"]["grpo"]["greedy"]["mean"] == pytest.approx(fmt + 2.0)
    change = m["held_out_reward_changes"]["sft->grpo"]["greedy"]
    assert change["questions"] == 2 and change["change"] == pytest.approx(1.0)
    assert change["ci95"][0] <= 1.0 <= change["ci95"][1]
    # A question's samples are averaged before questions are: two samples, one right, count as half.
    two = _texts({"q1": ["3", "4"]})
    assert report.compute({"sft": two}, ["greedy"], {"correct": 1.0})["held_out_reward"]["sft"]["greedy"]["mean"] == 0.5
    # Without a GRPO reward (an SFT-only recipe) the report has no reward section.
    assert "held_out_reward" not in report.compute({"sft": sft}, ["greedy"])


def test_seeds_pool_the_runs_held_out_reward_changes(tmp_path, capsys):
    runs = []
    for s, answers in enumerate([("4", "3"), ("3", "3")]):  # run 0: GRPO fixes q1 (+1.0); run 1: no change
        run = str(tmp_path / f"seed{s}")
        m = report.compute({"sft": _texts({"q1": [answers[0]], "q2": ["3"]}),
                            "grpo": _texts({"q1": [answers[1]], "q2": ["3"]})}, ["greedy"], {"correct": 2.0})
        Bus(run).write_json("report/metrics.json", m)
        runs.append(run)
    assert seeds.main([*runs, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [out["runs"][r]["reward_change"] for r in runs] == [1.0, 0.0]
    assert out["pooled"]["mean_reward_change"] == pytest.approx(0.5)
