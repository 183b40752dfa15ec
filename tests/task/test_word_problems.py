"""task/word_problems.py: the demo's one- and two-step GSM-style problems, their worked solutions and splits."""

import dataclasses
import json
from fractions import Fraction

import pytest

from showwork.config import DataConfig, MixedSource, UsageError, load
from showwork.task import answers, arithmetic, data, targeted, word_problems


def rows(task: str, size: int, seed: int = 0) -> list[data.Row]:
    out = [data.to_row(r, "word-problems", "readable", 2000, 8000) for r in word_problems.records(task, size, seed)]
    assert all(isinstance(r, data.Row) for r in out)
    return out


@pytest.mark.parametrize("task, steps", [("one-step", {1}), ("two-step", {2}), ("mixed", {1, 2})])
def test_every_solution_line_is_a_true_equation_and_the_last_value_is_the_gold(task, steps):
    seen_steps = set()
    for row in rows(task, 400):
        lines = row.solution.splitlines()
        equations = [arithmetic.equations(line) for line in lines]
        assert all(len(e) == 1 for e in equations), row.solution  # one written step per line
        for (eq,) in equations:
            assert eq.correct, row.solution
        assert Fraction(answers.normalize(row.answer)) == equations[-1][0].value
        assert int(row.answer) >= 0
        seen_steps.add(len(lines))
    assert seen_steps == steps


def test_each_task_draws_every_one_of_its_templates():
    for task in word_problems.TASKS:
        used = {r.template.partition("#")[2] for r in rows(task, 600)}
        assert used == set(word_problems.templates(task)), task
        assert all(r.template.startswith("word-problems#") for r in rows(task, 5))


def test_the_same_seed_gives_the_same_problems_and_another_seed_others():
    first = [r.question for r in rows("mixed", 50, seed=3)]
    assert first == [r.question for r in rows("mixed", 50, seed=3)]
    assert len(set(first) & {r.question for r in rows("mixed", 50, seed=4)}) <= 1


def test_an_unknown_task_is_refused_by_the_generator_and_by_the_config(tmp_path):
    with pytest.raises(ValueError, match="one-step, two-step, mixed"):
        list(word_problems.records("three-step", 1, 0))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: r\nmodel: {name: tiny}\ndata: {source: word-problems, task: gsm_symbolic}\n")
    with pytest.raises(UsageError, match="data.task.*word-problems generates one-step, two-step, mixed"):
        load(recipe)


def test_splits_are_disjoint_by_normalized_question_and_a_mixed_in_source_keeps_its_own_eval_rows():
    cfg = DataConfig(source="word-problems", task="mixed", train_size=300, eval_size=120, seed=3,
                     max_solution_chars=200, mix=(MixedSource(source="reasoning-gym", task="gsm_symbolic", eval_size=8),))
    train, evals, stats = data.build_splits(cfg)
    assert len(train) == 300 and {r.source for r in train} == {"word-problems"}
    assert [r.source for r in evals].count("reasoning-gym") == 8
    assert 110 <= [r.source for r in evals].count("word-problems") <= 120  # a repeat of a training question is dropped
    assert not {data.question_key(r.question) for r in train} & {data.question_key(r.question) for r in evals}
    assert stats["rows_out"] == {"train": 300, "eval": len(evals)}


def test_an_eval_question_in_another_sources_training_rows_is_dropped(tmp_path):
    """Two sources of one mix: source B's eval question, re-spaced, is one of source A's training questions."""
    wp = next(iter(rows("mixed", 1, seed=5)))
    respaced = wp.question.replace(". ", ".  ").upper()
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"question": respaced, "answer": f"{wp.solution}\n#### {wp.answer}"}) + "\n"
                    + json.dumps({"question": "Zed has 2 cats and 3 dogs. How many pets?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    cfg = DataConfig(source="word-problems", task="mixed", train_size=1, eval_size=0, seed=5,
                     mix=(MixedSource(source="gsm8k", path=str(path), eval_size=2),))
    train, evals, stats = data.build_splits(cfg)
    assert [r.question for r in train] == [wp.question]
    assert [r.answer for r in evals] == ["5"]
    assert stats["dropped"]["eval_seen_in_train"] == 1


def test_self_teaching_redraws_a_failed_word_problem_from_its_template():
    failed = rows("mixed", 40, seed=1)
    wages = next(r for r in failed if r.template == "word-problems#wages")
    made = list(targeted.regenerated(wages.template, 7))[:3]
    assert [m["template"] for m in made] == ["word-problems#wages"] * 3
    assert all("earns $" in m["question"] and m["question"] != wages.question for m in made)
    with pytest.raises(ValueError, match="unknown word-problems template"):
        next(word_problems.regenerated("nope", 0, 1))


def test_the_demo_recipe_is_word_problems_with_todays_gsm_symbolic_questions_beside_them():
    from conftest import RECIPES, TIERS
    cfg = load(RECIPES / "demo.yaml", TIERS / "cpu" / "tier.yaml")
    assert cfg.data.source == "word-problems" and cfg.data.eval_size >= 200
    gsm = dataclasses.replace(cfg.data, mix=(), **dataclasses.asdict(cfg.data.mix[0]))
    assert (gsm.source, gsm.task, gsm.seed, gsm.max_solution_chars, gsm.eval_size) == (
        "reasoning-gym", "gsm_symbolic", 3, 200, 64)
