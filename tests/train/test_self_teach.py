"""self_teach.py: which samples are kept, the yield, and the stage on the tiny model."""

import subprocess
import sys

import pytest

from conftest import REPO, TIERS, job_env
from showwork.train import self_teach

ROWS = [{"id": "a", "prompt": "p1", "answer": "72", "question": "q1"},
        {"id": "b", "prompt": "p2", "answer": "5", "question": "q2"}]
GOOD_A = "<reasoning>48 + 24 = 72</reasoning>\n<answer>72</answer>"
GOOD_A2 = "<reasoning>24 + 48 = 72</reasoning>\n<answer>72</answer>"
WRONG_A = "<reasoning>48 + 48 = 96</reasoning>\n<answer>96</answer>"
MESSY_A = "Sure! <reasoning>48 + 24 = 72</reasoning><answer>72</answer>"  # correct, not well-formed


def test_keepers_filters_correct_well_formed_distinct():
    texts = [GOOD_A, GOOD_A, WRONG_A, MESSY_A,   # row a: one distinct keeper
             WRONG_A, "no", "", "<answer>5"]      # row b: none
    kept, stats = self_teach.keepers(ROWS, texts, k=4, keep_per_question=2)
    assert [k["id"] for k in kept] == ["a"]
    assert kept[0]["target"] == GOOD_A + "<end_of_turn>" and kept[0]["source"] == "self-teach"
    assert stats == {"questions": 2, "questions_solved": 1, "samples": 8, "kept": 1, "yield": 1 / 8}


def test_keepers_refuse_a_right_answer_reached_through_a_false_equation():
    lucky = "<reasoning>48 + 24 = 70, so 72</reasoning>\n<answer>72</answer>"
    kept, stats = self_teach.keepers(ROWS[:1], [lucky, GOOD_A], k=2, keep_per_question=2)
    assert [k["target"] for k in kept] == [GOOD_A + "<end_of_turn>"] and stats["kept"] == 1


def test_keepers_caps_per_question():
    kept, stats = self_teach.keepers(ROWS[:1], [GOOD_A, GOOD_A2, GOOD_A + " ", WRONG_A], k=4, keep_per_question=1)
    assert len(kept) == 1 and stats["questions_solved"] == 1


def test_stage_says_clearly_when_nothing_is_kept(tmp_path):
    recipe = tmp_path / "st.yaml"
    recipe.write_text("""recipe: tiny-st
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 2, seed: 1}
self_teach: {samples_per_question: 2, questions: 2, max_tokens: 6, sft: {max_steps: 2, max_seq_len: 1024}}
""")
    cpu = TIERS / "cpu" / "tier.yaml"
    env = job_env()
    prep = subprocess.run([sys.executable, "-m", "jobs.prepare_data", str(recipe), str(cpu), "--root", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr
    done = subprocess.run([sys.executable, "-m", "jobs.self_teach", str(recipe), str(cpu), "--root", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "kept no samples" in done.stderr and "run SFT first" in done.stderr
    assert (tmp_path / "tiny-st" / "self-teach" / "yield.json").exists()


@pytest.mark.slow
def test_a_dsa_cast_round_on_the_real_270m_recounts_and_targets_every_failure_kind(gemma270m, tmp_path):
    """One round of the self-teach recipe on the real Gemma 3 270M: every sample's kind re-diagnosed
    from its text, the analysis recounted, and fresh problems for every failure kind it found."""
    import dataclasses

    from self_teach_check import check_round
    from showwork import config, log
    from showwork.bus import Bus
    from showwork.task import data

    cfg = config.load(REPO / "k8s" / "base" / "recipes" / "self-teach.yaml", TIERS / "cpu" / "tier.yaml")
    st = dataclasses.replace(cfg.self_teach, questions=8, samples_per_question=2, max_tokens=96, targeted_per_kind=2)
    cfg = dataclasses.replace(cfg, self_teach=st, data=dataclasses.replace(cfg.data, train_size=40, eval_size=8))
    bus = Bus(str(tmp_path / "run"))
    data.prepare(bus, cfg)
    train = bus.read_jsonl("data/train.jsonl")
    rows = self_teach.round_rows(train, st.questions, 0)
    diagnosed = self_teach.sample_round(bus, gemma270m, rows, st, 8, 0, log.get("test"))
    pool = [r for r in train if r["id"] not in {q["id"] for q in rows}]
    made, analysis = self_teach.round_data(bus, cfg, rows, pool, diagnosed, 0)
    assert check_round(tmp_path / "run", 0, st.targeted_per_kind) == analysis
    failing = [k for k, n in analysis["failed_questions_by_kind"].items() if n]
    assert failing and all(analysis["targeted_by_kind"][k] >= 1 for k in failing)
    assert len(made) == analysis["yield"]["kept"] + sum(analysis["targeted_by_kind"].values())
