"""Benchmarks are not tests, but they must not rot: each script runs on the
tiny model for a few tokens, and what it prints is checked for sense."""

import json
import subprocess
import sys

from conftest import REPO, job_env


def test_sampler_benchmark_runs_on_tiny(tmp_path):
    out = tmp_path / "sampler.json"
    done = subprocess.run([sys.executable, "bench/sampler.py", "--model", "tiny", "--batches", "2", "4",
                           "--new-tokens", "6", "--repeats", "1", "--json", str(out)],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [(r["batch"], r["mode"]) for r in summary["results"]] == [
        (2, "greedy"), (2, "top-k/top-p"), (4, "greedy"), (4, "top-k/top-p")]
    for row in summary["results"]:
        assert row["ours_tok_s"] > 0 and 0 < row["ours_peak_fraction"] < 1
    assert summary["matmul_gflops"]["numpy"] > 1 and summary["flops_per_token"] > 0


def test_training_step_benchmark_runs_on_tiny(tmp_path):
    out = tmp_path / "train_step.json"
    done = subprocess.run([sys.executable, "bench/train_step.py", "--model", "tiny", "--steps", "1",
                           "--completion-tokens", "8", "--json", str(out)],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [(r["stage"], r["mode"]) for r in summary["results"]] == [
        ("sft", "lora-16"), ("sft", "full"), ("sft", "full-remat"), ("grpo", "lora-16")]
    for row in summary["results"]:
        assert row["ours_seconds_per_step"] > 0 and row["ours_peak_rss_mib"] > 100
    *sfts, grpo = summary["results"]
    assert all(row["ours_tokens_per_second"] > 0 for row in sfts)
    assert grpo["ours_prompts_per_minute"] > 0 and 0 < grpo["ours_completion_tokens"] <= 8
