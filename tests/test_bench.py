"""Benchmarks are not tests, but they must not rot: each script runs on the
tiny model for a few tokens, and what it prints is checked for sense."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, job_env


def bench(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """One bench/ script as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_sampler_benchmark_runs_on_tiny(tmp_path):
    out = tmp_path / "sampler.json"
    done = bench("sampler.py", "--model", "tiny", "--batches", "2", "4", "--new-tokens", "6", "--repeats", "1",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [(r["batch"], r["mode"]) for r in summary["results"]] == [
        (2, "greedy"), (2, "top-k/top-p"), (4, "greedy"), (4, "top-k/top-p")]
    for row in summary["results"]:
        assert row["ours_tok_s"] > 0 and 0 < row["ours_peak_fraction"] < 1
    assert summary["matmul_gflops"]["numpy"] > 1 and summary["flops_per_token"] > 0


def test_training_step_benchmark_runs_on_tiny(tmp_path):
    out = tmp_path / "train_step.json"
    done = bench("train_step.py", "--model", "tiny", "--steps", "1", "--completion-tokens", "8",
                 "--json", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [(r["stage"], r["mode"]) for r in summary["results"]] == [
        ("sft", "lora-16"), ("sft", "full"), ("sft", "full-remat"), ("grpo", "lora-16")]
    for row in summary["results"]:
        assert row["ours_seconds_per_step"] > 0 and row["ours_peak_rss_mib"] > 100
        # What a user pays: imports, loading, compiling and the first step come before the first result.
        assert row["ours_seconds_per_step"] < row["ours_first_result_seconds"] < row["ours_total_seconds"]
    *sfts, grpo = summary["results"]
    assert all(row["ours_tokens_per_second"] > 0 for row in sfts)
    assert grpo["ours_prompts_per_minute"] > 0 and 0 < grpo["ours_completion_tokens"] <= 8
    assert 0 < grpo["ours_sample_seconds_per_step"] < grpo["ours_seconds_per_step"]


def test_training_step_benchmark_repeats_give_min_and_median_of_separate_processes(tmp_path):
    out = tmp_path / "train_step.json"
    done = bench("train_step.py", "--model", "tiny", "--steps", "1", "--stages", "sft", "--modes", "lora-16",
                 "--repeats", "2", "--json", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    runs = row["ours_runs"]
    assert row["repeats"] == 2 and len(runs) == 2
    for key in ("tokens_per_second", "first_result_seconds", "total_seconds", "peak_rss_mib"):
        values = sorted(r[key] for r in runs)
        assert row[f"ours_{key}_min"] == values[0] and row[f"ours_{key}"] == pytest.approx(sum(values) / 2)


@pytest.mark.parametrize("stage, micro, passes", [("sft", None, (4, 1)), ("sft", 2, (2, 2)), ("sft", 1, (1, 4)),
                                                   ("grpo", None, None), ("grpo", 2, 2)])
def test_training_step_benchmark_micro_batch_splits_ours_into_passes_not_the_update(tmp_path, stage, micro, passes):
    sys.path.insert(0, str(REPO / "bench"))
    import train_step
    from showwork import config

    job = {"stage": stage, "model": "tiny", "lora_rank": 16, "steps": 3, "seq_len": 512, "batch": 4, "prompts": 2,
           "generations": 4, "completion_tokens": 128, "micro_batch": micro}
    (tmp_path / "recipe.yaml").write_text(train_step.recipe_text(job))
    (tmp_path / "tier.yaml").write_text("tier: {name: bench, train_batch: 4}\n")
    cfg = config.load(tmp_path / "recipe.yaml", tmp_path / "tier.yaml")
    if stage == "sft":  # the same 4 sequences an update (TRL's batch), in passes of `micro`
        assert (cfg.sft.batch_size, cfg.sft.gradient_accumulation) == passes
    else:  # the same 2 prompts x 4 completions an update, `micro` completions a pass
        assert (cfg.grpo.batch_size, cfg.grpo.num_generations, cfg.grpo.micro_batch) == (2, 4, passes)


def test_training_step_benchmark_refuses_a_micro_batch_that_does_not_divide_the_batch():
    done = bench("train_step.py", "--model", "tiny", "--batch", "4", "--micro-batch", "3")
    assert done.returncode == 2 and "--micro-batch 3 does not divide --batch 4" in done.stderr


def test_step_memory_benchmark_runs_on_tiny_and_sees_remats_barriers(tmp_path):
    out = tmp_path / "step_memory.json"
    done = bench("step_memory.py", "--model", "tiny", "--passes", "1", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["remat"], r["pass_sequences"]) for r in rows] == [(False, 1), (False, 2), (True, 1), (True, 2)]
    for remat in (False, True):
        one, two = [r for r in rows if r["remat"] is remat]
        assert 0 < one["temp_gib"] < two["temp_gib"] and two["tokens"] == 2 * one["tokens"]
    # One barrier around each recomputed attention and MLP block of the tiny model's 2 layers, none without remat.
    assert {r["barriers_before"] for r in rows if r["remat"]} == {4}
    assert {r["barriers_before"] for r in rows if not r["remat"]} == {0}
    # What is alive at the peak grows with the pass, and the MLP's activations are among it.
    one, two = [r["live_at_peak"] for r in rows if not r["remat"]]
    assert 0 < one["peak_bytes"] < two["peak_bytes"]
    assert any(r["shape"].endswith(",128]") for r in two["by_shape"][:8])  # the tiny MLP is 128 wide


SCHEDULED = """HloModule m, is_scheduled=true
%f (x: f32[4]) -> f32[256] { ... }
ENTRY %main (p: f32[4]) -> (f32[4], f32[8]) {
  %p = f32[4]{0} parameter(0)
  %a = f32[256]{0} fusion(%p), kind=kLoop, calls=%f
  %b = f32[1024]{0} fusion(%a), kind=kLoop, calls=%g
  %c = (f32[8]{0}, s32[2]{0}) fusion(%b), kind=kLoop, calls=%h
  %e = f32[2048]{0} fusion(%p), kind=kLoop, calls=%k
  %v = f32[8]{0} get-tuple-element(%c), index=0
  %d = f32[4]{0} fusion(%a, %e), kind=kLoop, calls=%k
  ROOT %t = (f32[4]{0}, f32[8]{0}) tuple(%d, %v)
}
"""


def test_live_at_peak_follows_each_array_to_its_last_user_through_views():
    sys.path.insert(0, str(REPO / "bench"))
    from step_memory import array_bytes, live_at_peak

    assert array_bytes("f32[512,2048]{1,0}") == 4 * 512 * 2048 and array_bytes("(f32[2]{0}, pred[3]{0})") == 11
    # a lives until d reads it; b dies at c; c (a tuple, 40 bytes) lives through its element v until the
    # root; e is born after b died: the peak is at d (a, c, e and d), not at c (a, b, c).
    live = live_at_peak(SCHEDULED)
    assert live["peak_bytes"] == 1024 + 40 + 8192 + 16
    assert {r["shape"]: (r["count"], r["bytes"]) for r in live["by_shape"]} == {
        "f32[2048]": (1, 8192), "f32[256]": (1, 1024), "(f32[8], s32[2])": (1, 40), "f32[4]": (1, 16)}


def test_step_profile_runs_on_tiny_and_accounts_for_the_step(tmp_path):
    out = tmp_path / "profile.json"
    done = bench("profile_step.py", "--model", "tiny", "--batch", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    shares = summary["by_category_seconds"]
    assert shares.get("matmul", 0) > 0
    assert set(shares) <= {"matmul", "copy", "exp/log", "elementwise"}
    # the per-op shares add up to the time some op was running, within the traced step
    assert abs(sum(shares.values()) - summary["ops_busy_seconds"]) < 1e-3
    assert 0 < summary["ops_busy_seconds"] <= summary["step_seconds_traced"] * 1.05
    assert summary["top_ops"] and all(op["seconds"] > 0 for op in summary["top_ops"])


def test_wall_shares_split_overlapping_ops_evenly():
    sys.path.insert(0, str(REPO / "bench"))
    from profile_step import category, wall_shares

    # a: 0-4 µs alone for 2, shared with b for 2; b alone 4-6; a gap 6-8; c 8-9
    shares, busy = wall_shares([(0, 4, "a"), (2, 6, "b"), (8, 9, "c")])
    assert busy == pytest.approx(7e-6)
    assert shares == pytest.approx({"a": 3e-6, "b": 3e-6, "c": 1e-6})
    assert [category(op) for op in ["ynn_fusion.3", "dot.1", "copy_bitcast_fusion.2", "subtract_exponential_fusion",
                                    "bitcast_transpose_fusion", "multiply_add_fusion"]] == [
        "matmul", "matmul", "copy", "exp/log", "copy", "elementwise"]


def test_decode_profile_runs_on_tiny(tmp_path):
    out = tmp_path / "decode.json"
    done = bench("profile_step.py", "--model", "tiny", "--stage", "decode", "--batch", "4", "--new-tokens", "16",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["stage"] == "decode" and summary["new_tokens"] == 16
    # a tiny decode step is microseconds, under the timer's noise: only its presence is checked here
    assert math.isfinite(summary["decode_step_ms"])
    assert summary["by_category_seconds"].get("matmul", 0) > 0


def test_decode_step_time_leaves_the_prefill_out():
    """decode_step_ms on a generate whose cost is known: 30 ms of prefill,
    then 4 ms a token, the first run of each length slower (compile)."""
    import time as clock

    sys.path.insert(0, str(REPO / "bench"))
    from profile_step import decode_step_ms

    calls = []

    def generate(n):
        calls.append(n)
        compile_ = 0.05 if calls.count(n) == 1 else 0.0
        clock.sleep(compile_ + 0.03 + 0.004 * n)

    ms = decode_step_ms(generate, 9)
    assert 3.5 < ms < 5.5
    assert calls == [1] * 4 + [9] * 4


def test_compile_cache_benchmark_runs_on_tiny_and_the_warm_run_compiles_nothing(tmp_path):
    out = tmp_path / "compile_cache.json"
    done = bench("compile_cache.py", "--model", "tiny",
                 "--repeats", "1", "--steps", "1", "--questions", "1", "--tokens", "4",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {(r["stage"], r["cache"]): r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {("sft", "cold"), ("sft", "warm"), ("eval shard", "cold"), ("eval shard", "warm")}
    for stage in ("sft", "eval shard"):
        cold, warm = runs[(stage, "cold")], runs[(stage, "warm")]
        assert cold["programs_compiled"] > 0 and warm["programs_compiled"] == 0
        # Every program the cold run asked for, compiled or loaded (a cold eval shard loads what the SFT
        # job before it compiled), the warm run loads.
        assert warm["programs_from_cache"] == cold["programs_compiled"] + cold["programs_from_cache"]
    assert 0 < runs[("sft", "warm")]["first_step_seconds"] < runs[("sft", "cold")]["first_step_seconds"]


def test_accelerator_benchmark_plans_every_tpu_cell_and_measures_one_cell_shrunk(tmp_path):
    """The plan covers every documented TPU cell with each kind of work its stages run; a shrunk
    measurement of one cell records every kind, with its FLOPs and the gradient program's memory,
    the update in the recipe's micro-batched passes (shrunk to two)."""
    out = tmp_path / "accelerator.json"
    done = bench("accelerator.py", "--measure", "relay-consensus@v5e-8", "--shrink", "--repeats", "1",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    kinds = {(r["cell"], r["work"]["kind"]) for r in summary["plan"]}
    assert {("relay-consensus@v5e-8", k) for k in ("rollout", "update", "eval")} <= kinds
    assert ("sft-full@v5e-8", "sft") in kinds and ("hybrid@v5e-16", "sft") in kinds
    assert not any(cell.endswith("@cpu") for cell, _ in kinds)
    for row in summary["plan"]:
        assert row["flops"] > 0 and row["plan_s"] > 0
        assert (row["bytes"] is not None) == (row["work"]["kind"] in ("rollout", "eval"))
    measured = summary["results"]["measured"]
    assert sorted(m["work"]["kind"] for m in measured.values()) == ["eval", "rollout", "update"]
    for m in measured.values():
        assert m["step_s_min"] > 0 and m["flops"] > 0 and m["work"]["completion"] == 16
    (update,) = [m for m in measured.values() if m["work"]["kind"] == "update"]
    assert update["program_gib"] > 0 and update["work"]["reference"] and update["passes"] == 2
    assert "| relay-consensus@v5e-8 | update | 64x1 256+512 LoRA 32, passes of 16 |" in done.stdout


def test_accelerator_plan_refuses_an_undocumented_cell():
    done = bench("accelerator.py", "--cells", "grpo-baseline@v5e-64", timeout=300)
    assert done.returncode != 0 and "unknown cells ['grpo-baseline@v5e-64']" in done.stderr


def test_packing_benchmark_runs_on_tiny_in_passes_and_counts_real_tokens(tmp_path):
    out = tmp_path / "packing.json"
    done = bench("packing.py", "--model", "tiny", "--steps", "1", "--examples", "16",
                 "--repeats", "1", "--seq-len", "1024", "--batch", "4", "--micro-batch", "2",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [r["side"] for r in summary["runs"]] == ["padded", "packed"]
    # What each run handed sft.train: updates of 4 rows as 2 passes of 2.
    assert all((r["rows_per_pass"], r["passes"]) == (2, 2) for r in summary["runs"])
    padded, packed = summary["runs"]
    assert padded["examples"] == packed["examples"] == 16 and packed["rows"] < padded["rows"]
    assert all(r["tokens_per_second"] > 0 for r in summary["runs"]) and summary["packed_over_padded"] > 0


def test_packing_benchmark_refuses_a_micro_batch_that_does_not_divide_the_batch(tmp_path):
    done = bench("packing.py", "--model", "tiny", "--batch", "4", "--micro-batch", "3",
                 "--json", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--micro-batch 3 does not divide --batch 4" in done.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident set from /proc")
def test_memory_benchmark_runs_the_pipeline_on_tiny_and_accounts_every_stage_and_phase(tmp_path):
    out = tmp_path / "memory.json"
    done = bench("memory.py", "--model", "tiny", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = [s["stage"] for s in result["stages"]]
    assert stages[0] == "prepare data" and stages[-1] == "report" and "SFT" in stages
    phases = {(p["stage"], p["phase"]) for p in result["phases"]}
    for phase in ("load model", "add LoRA", "fold adapters for rollouts", "sample", "score (no gradient)",
                  "GRPO update, all passes"):
        assert any(stage.startswith("GRPO") and name == phase for stage, name in phases), phase
    for row in result["phases"]:
        assert 0 < row["first_before_gb"] <= row["peak_gb"] <= result["peak_gb"], row
    assert all(0 < s["peak_gb"] <= result["peak_gb"] for s in result["stages"])


def test_lora_benchmark_adds_adapters_in_a_cold_process_and_counts_its_programs(tmp_path):
    out = tmp_path / "lora.json"
    done = bench("lora_add.py", "--model", "tiny", "--rank", "4", "--repeats", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    # A cold cache: the pass and its scalar inputs are compiled, nothing loaded; the wall includes them.
    assert 1 <= run["programs"] <= 16 and 0 < run["xla_seconds"] < run["seconds"]
    assert result["summary"]["seconds"]["min"] == run["seconds"]
    assert "lora.add on tiny, rank 4" in done.stdout
