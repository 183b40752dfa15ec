"""Preemption: SIGKILL (no chance to save) at seeded random points of SFT,
GRPO and evaluation, then a restart. Nothing lost, nothing duplicated, and
the final results equal an uninterrupted run's. SIGTERM (save, exit 0, resume)
is covered in tests/train/test_training.py."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, TIERS, job_env
from showwork.bus import Bus

CPU = TIERS / "cpu" / "tier.yaml"

SFT = """recipe: kill-sft
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 24, eval_size: 4, seed: 5}
sft: {max_steps: 10, max_seq_len: 1024, checkpoint_every: 2, optimizer: {learning_rate: 1.0e-3}}
"""

GRPO = """recipe: kill-grpo
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 24, eval_size: 4, seed: 5}
grpo:
  prompts_per_session: 8
  steps_per_session: 10
  num_generations: 2
  checkpoint_every: 1
  rollout: {max_prompt_length: 512, max_tokens_to_generate: 10, temperature: 1.0, top_k: 30}
  optimizer: {learning_rate: 1.0e-3}
  rewards: {format_approx: 1.0, numbers: 1.0}
"""

EVAL = """recipe: kill-eval
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 24, seed: 9}
eval: {models: [base], methods: [greedy, majority], samples: 3, max_tokens: 10}
"""


def command(module, recipe, root, *extra):
    return [sys.executable, "-m", module, str(recipe), str(CPU), "--root", str(root), *map(str, extra)]


def run(module, recipe, root, *extra, **env):
    done = subprocess.run(command(module, recipe, root, *extra), cwd=REPO, env=job_env(**env),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def killed(module, recipe, root, *extra, event: str, step: int, delay: float, **env) -> int:
    """Start the job; SIGKILL it `delay` seconds after it logs `event` at `step`."""
    proc = subprocess.Popen(command(module, recipe, root, *extra), cwd=REPO,
                            env=job_env(SHOWWORK_LOG_FORMAT="json", **env),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if f'"event": "{event}"' in line and (step is None or f'"step": {step},' in line):
            time.sleep(delay)  # may land mid-checkpoint or mid-write: that is the point
            proc.send_signal(signal.SIGKILL)
            break
    proc.stderr.close()
    return proc.wait(timeout=600)


def same_weights(a_path, b_path):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("text, job, event, stage, steps, seed", [
    (SFT, "jobs.sft", "sft step", "sft", 10, 2026),
    (GRPO, "jobs.grpo_session", "grpo step", "grpo/s-0", 10, 7),
], ids=["sft", "grpo"])
def test_training_killed_at_a_random_step_resumes_to_the_same_model(tmp_path, text, job, event, stage, steps, seed):
    rng = random.Random(seed)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    name = text.split()[1]  # the recipe name is the run id
    for root in ("clean", "killed"):
        run("jobs.prepare_data", recipe, tmp_path / root)
    run(job, recipe, tmp_path / "clean")
    # A checkpoint exists by step 3; at least 4 steps are left, so the kill
    # lands before the job can finish (a tiny GRPO step is a fraction of
    # the 0.5 s delay).
    step, delay = rng.randint(3, steps - 4), rng.uniform(0.0, 0.5)
    assert killed(job, recipe, tmp_path / "killed", event=event, step=step, delay=delay) == -signal.SIGKILL
    bus = Bus(str(tmp_path / "killed" / name))
    assert not bus.exists(f"{stage}/_SUCCESS")
    resumed = run(job, recipe, tmp_path / "killed")
    assert "resuming" in resumed.stderr
    same_weights(tmp_path / "clean" / name / stage / "model/model.safetensors",
                 tmp_path / "killed" / name / stage / "model/model.safetensors")
    # Every step logged exactly once in the metrics, however often it was retried.
    assert [m["step"] for m in bus.read_jsonl(f"{stage}/metrics.jsonl")] == list(range(1, steps + 1))


def test_eval_shard_killed_mid_sampling_leaves_nothing_and_reruns_identically(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(EVAL)
    for root in ("clean", "killed"):
        run("jobs.prepare_data", recipe, tmp_path / root)
    run("jobs.evaluate", recipe, tmp_path / "clean", "--shards", "2", JOB_COMPLETION_INDEX="1")
    # Killed after its first batch of samples, before the shard file exists.
    assert killed("jobs.evaluate", recipe, tmp_path / "killed", "--shards", "2", event="sampled", step=None,
                  delay=0.0, JOB_COMPLETION_INDEX="1") == -signal.SIGKILL
    bus = Bus(str(tmp_path / "killed" / "kill-eval"))
    assert bus.list("eval") == []  # no partial shard file, no marker
    run("jobs.evaluate", recipe, tmp_path / "killed", "--shards", "2", JOB_COMPLETION_INDEX="1")
    clean = Bus(str(tmp_path / "clean" / "kill-eval"))
    assert bus.read_bytes("eval/base/shard-1-of-2.jsonl") == clean.read_bytes("eval/base/shard-1-of-2.jsonl")
    assert len(bus.read_jsonl("eval/base/shard-1-of-2.jsonl")) == 12
