"""self_teach.py: which samples are kept, the yield, and the stage on the tiny model."""

import subprocess
import sys

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
