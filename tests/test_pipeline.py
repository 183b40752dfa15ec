"""jobs/pipeline.py end to end on the tiny model: every stage, a kill mid-SFT, resume, no-op re-run."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TIERS, job_env
from showwork import config, pipeline, stages
from showwork.bus import Bus
from showwork.errors import EXIT_PREEMPTED

CPU = TIERS / "cpu" / "tier.yaml"

TINY_PIPELINE = """recipe: tiny-pipeline
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 16, eval_size: 6, seed: 2}
sft: {max_steps: 40, max_seq_len: 1024, checkpoint_every: 2, optimizer: {learning_rate: 1.0e-3}}
grpo:
  sessions: 1
  prompts_per_session: 4
  steps_per_session: 2
  num_generations: 2
  rollout: {max_prompt_length: 512, max_tokens_to_generate: 8, temperature: 1.0, top_k: 20}
  rewards: {format_approx: 1.0, correct: 1.0}
eval:
  models: [base, sft, grpo]
  methods: [greedy]
  max_tokens: 8
tier: {name: tiny-cpu, eval_shards: 2, train_batch: 2, eval_batch: 4}
"""


def test_stage_plan_and_selection(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_PIPELINE)
    cfg = config.load(CPU, recipe)
    plan = stages.plan(cfg)
    assert [s.name for s in plan] == ["data", "sft", "grpo"] + ["eval"] * 6 + ["report"]
    assert [s.name for s in pipeline.select(plan, "eval", None)] == ["eval"] * 6 + ["report"]
    assert [s.name for s in pipeline.select(plan, None, "report")] == ["report"]
    with pytest.raises(ValueError, match="not in this recipe"):
        pipeline.select(plan, "self-teach", None)


def test_pipeline_end_to_end_with_a_kill_mid_sft(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_PIPELINE)
    args = [sys.executable, "-m", "jobs.pipeline", str(CPU), str(recipe), "--root", str(tmp_path)]
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=job_env(SHOWWORK_LOG_FORMAT="json"), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if '"event": "sft step"' in line and '"step": 3,' in line:
            proc.send_signal(signal.SIGSTOP)
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            break
    proc.stderr.read()
    assert proc.wait(timeout=600) == EXIT_PREEMPTED  # checkpoint saved: run the same command again
    bus = Bus(str(tmp_path / "tiny-pipeline"))
    assert bus.exists("data/_SUCCESS") and not bus.exists("sft/_SUCCESS")

    resumed = subprocess.run(args, cwd=REPO, env=job_env(SHOWWORK_LOG_FORMAT="json"), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stderr
    check_eta([json.loads(line) for line in resumed.stderr.splitlines() if '"stage finished"' in line])
    assert "report: " in resumed.stdout and "report.html" in resumed.stdout
    metrics = json.loads((tmp_path / "tiny-pipeline" / "report" / "metrics.json").read_text())
    assert metrics["model_order"] == ["base", "sft", "grpo"] and set(metrics["models"]) == {"base", "sft", "grpo"}
    assert all(metrics["models"][m]["greedy"]["questions"] == 6 for m in metrics["models"])
    sft_steps = [r["step"] for r in bus.read_jsonl("sft/metrics.jsonl")]
    assert sft_steps == list(range(1, 41))  # every step once: none lost, none repeated
    elapsed = time.perf_counter() - started

    again = subprocess.run(args, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert again.stderr.count("skipping") == 10  # every stage skipped
    assert "report.html" in again.stdout
    assert elapsed < 300, f"the tiny pipeline took {elapsed:.0f} s"


def check_eta(finished: list[dict]):
    """The resumed run's progress lines: the ETA after the first eval shard prices the five shards left (the
    same questions each) at that shard's measured rate; the data stage, skipped by its marker, priced
    nothing; the last line has nothing left."""
    assert [f["stage"] for f in finished][:3] == ["prepare data", "SFT", "GRPO session 1/1"]
    first_eval = finished[3]
    assert first_eval["stage"].startswith("evaluate base")
    assert first_eval["eta_seconds"] == pytest.approx(5 * first_eval["seconds"], rel=0.02, abs=0.5)
    assert finished[-1]["eta_seconds"] == 0.0
    # Memory is released after every stage that ran (showwork.memory.release: its resident set
    # before and after on the stage's line), not after one skipped by its marker.
    assert "rss_before_gb" not in finished[0]
    assert all(f["rss_before_gb"] > 0 and f["rss_after_gb"] > 0 for f in finished[1:]), finished
