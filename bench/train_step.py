"""Training-step throughput: showwork's SFT and GRPO steps vs TRL's SFTTrainer and GRPOTrainer.

Both sides train the same weights (Gemma 3 270M from the GGUF package; TRL
gets them exported to a Hugging Face directory, float32) on the same texts
with the same settings:
* SFT: GSM8K-style chat prompts with long worked targets, every sequence cut
  to --seq-len tokens (512), batch --batch, LoRA rank 16 (alpha 32, attention
  and MLP projections) and full fine-tuning; tokens/s and peak RSS.
* GRPO: G=4 completions of up to 128 new tokens per prompt (temperature 1,
  top-k 50), the `hybrid` reward from lib/showwork/task/rewards.py on both sides,
  beta 0.08, one optimizer step per rollout, LoRA rank 16; prompts/min and
  peak RSS.
Each measurement runs in its own process (so peak RSS is its own) and
reports what a user pays: the time to the first result (the process's
imports, loading the model, compiling (JAX) or warming up (torch), and the
first step), the steady rate over the steps after the first, and the whole
process's seconds. `--repeats` runs the sides interleaved (ours, TRL, ours,
TRL, ...), so drift of this shared machine falls on both alike; rows give the
min and median over repeats. Ours runs the product's own loops (`sft.train`,
`grpo.train_session`) and reads the step times they log to metrics.jsonl.
Ours runs with the persistent compilation cache off (a cold first step, as a
first run pays; bench/compile_cache.py measures the warm one).

    .venv/bin/python bench/train_step.py --trl-python bench/.venv-torch/bin/python --repeats 3
    .venv/bin/python bench/train_step.py --model tiny --steps 2 --completion-tokens 8   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # what a user's process pays starts here: every import is after it
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

LORA_TARGETS = "attention and MLP projections (q, k, v, o, gate, up, down)"
# (name, LoRA rank (0: full fine-tuning), remat): remat recomputes each block's
# activations in the backward pass, on both sides (ours: tier.remat; TRL:
# gradient checkpointing, which its configs turn on by default).
MODES = [("lora-16", 16, False), ("lora-16-remat", 16, True), ("full", 0, False), ("full-remat", 0, True)]


def sft_rows(count: int, target_words: int) -> list[dict]:
    """A GSM8K-style prompt with worked targets long enough to fill the sequence.

    One prompt for every row, so every sequence has the same length and each
    side's step has one shape. With varied lengths ours compiles once per
    (prompt, completion) bucket pair, a handful per run, which a few-step
    benchmark would otherwise count as step time.
    """
    sys.path.insert(0, str(ROOT / "bench"))
    from sampler import gsm_prompts

    (prompt,) = gsm_prompts(1)
    rows = []
    for n in range(count):
        steps = " ".join(f"Step {i}: {i} x {n + 3} = {i * (n + 3)}." for i in range(1, 300))
        target = " ".join(steps.split()[:target_words])
        rows.append({"prompt": prompt, "target": f"<reasoning>{target}</reasoning><answer>{n}</answer>",
                     "answer": str(n)})
    return rows


def grpo_rows(count: int) -> list[dict]:
    from showwork.config import DataConfig
    from showwork.task import data, prompts

    train, _, _ = data.build_splits(DataConfig(source="reasoning-gym", task="gsm_symbolic", train_size=count, eval_size=0, seed=321))
    system = ("Respond in the following format: <reasoning> your step-by-step working </reasoning> "
              "<answer> the final number only </answer>")
    return [{"prompt": prompts.chat_prompt(system, r.question), "answer": r.answer} for r in train]


def recipe_text(job: dict) -> str:
    lora = f"lora: {{rank: {job['lora_rank']}, alpha: {2 * job['lora_rank']}}}" if job["lora_rank"] else ""
    model = f"model: {{name: {job['model']}{', ' + lora if lora else ''}}}"
    micro = job.get("micro_batch") or (job["batch"] if job["stage"] == "sft" else None)
    if job["stage"] == "sft":
        return f"""recipe: bench
{model}
data: {{source: reasoning-gym}}
sft: {{batch_size: {micro}, gradient_accumulation: {job['batch'] // micro}, max_steps: {job['steps'] + 1},
      max_seq_len: {job['seq_len']}, checkpoint_every: 1000000, optimizer: {{learning_rate: 1.0e-5}}}}
"""
    return f"""recipe: bench
{model}
data: {{source: reasoning-gym}}
grpo:
  batch_size: {job['prompts']}
  num_generations: {job['generations']}
  prompts_per_session: {job['prompts'] * (job['steps'] + 1)}
  steps_per_session: {job['steps'] + 1}
  checkpoint_every: 1000000
  micro_batch: {micro or 'null'}
  rollout: {{max_prompt_length: 256, max_tokens_to_generate: {job['completion_tokens']}, temperature: 1.0, top_k: 50}}
  rewards: {{hybrid: 1.0}}
"""


def ours_worker(job: dict, started: float) -> dict:
    """One measurement of our step, in this process (`started`: when the process began, perf_counter)."""
    from showwork import config, log
    from showwork.bus import Bus
    from showwork.model import loader, lora
    from showwork.train import grpo, sft

    work = Path(tempfile.mkdtemp(prefix="showwork-bench-"))
    (work / "recipe.yaml").write_text(recipe_text(job))
    (work / "tier.yaml").write_text(f"tier: {{name: bench, train_batch: 4, remat: {str(job.get('remat', False)).lower()}}}\n")
    cfg = config.load(work / "recipe.yaml", work / "tier.yaml")
    bus = Bus(str(work / "run"))
    quiet = log.get("bench")
    loaded = loader.load(cfg.model.name, remat=cfg.tier.remat)
    base = None
    if cfg.model.lora:
        base = loaded.model  # as grpo.run does: rollouts sample with the adapters folded into it
        loaded.model = lora.add(base, cfg.model.lora, 0)
    ready = time.perf_counter()  # imports, model loaded, adapters added: the loop starts
    if job["stage"] == "sft":
        s = cfg.sft
        settings = dataclasses.replace(s, seed=0, epochs=1, keep_checkpoints=1)
        sft.train(bus, loaded, job["rows"], settings, batch=s.batch_size, stage="sft", digest="bench", log=quiet)
        logged = bus.read_jsonl("sft/metrics.jsonl")
        every = [job["tokens_per_step"] / r["tokens_per_second"] for r in logged]
    else:
        grpo.train_session(bus, loaded, job["rows"], session=0, grpo=dataclasses.replace(cfg.grpo, seed=0),
                           batch=job["prompts"], digest="bench", log=quiet, base=base)
        logged = bus.read_jsonl("grpo/s-0/metrics.jsonl")
        every = [r["step_seconds"] for r in logged]
    timed = logged[1:]
    out = {"step_seconds": every[1:], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           # The first step's own time includes its compilation; the setup before it, imports and loading.
           "first_result_seconds": ready - started + every[0], "total_seconds": time.perf_counter() - started}
    if job["stage"] == "grpo":
        out["completion_tokens"] = sum(r["completion_tokens"] for r in timed) / len(timed)
        out["sample_seconds"] = [r["sample_seconds"] for r in timed]  # the rollout's share of each step
    return out


def measure(python: str, script: Path, job: dict) -> dict:
    # No persistent compilation cache for ours: every measurement compiles cold, as a first run does.
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    done = subprocess.run([python, str(script), "--worker"], input=json.dumps(job), capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(stage: str, job: dict, result: dict) -> dict:
    """One measurement's numbers: steady rate (steps after the first), time to first result, total, peak RSS."""
    seconds = sum(result["step_seconds"]) / len(result["step_seconds"])
    row = {"seconds_per_step": seconds, "peak_rss_mib": result["peak_rss_mib"],
           "first_result_seconds": result["first_result_seconds"], "total_seconds": result["total_seconds"]}
    if stage == "sft":
        row["tokens_per_second"] = job["tokens_per_step"] / seconds
    else:
        row["prompts_per_minute"] = 60 * job["prompts"] / seconds
        row["completion_tokens"] = result.get("completion_tokens")
        if "sample_seconds" in result:
            row["sample_seconds_per_step"] = sum(result["sample_seconds"]) / len(result["sample_seconds"])
    return row


def over_repeats(runs: list[dict]) -> dict:
    """min and median of every number the runs share (one side's repeats of one row)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and all(r.get(k) is not None for r in runs)]
    return {k: {"min": min(r[k] for r in runs), "median": statistics.median(r[k] for r in runs)} for k in keys}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m", "tiny"])
    p.add_argument("--stages", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (one more warms up)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="SFT sequences per step")
    p.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--completion-tokens", type=int, default=128)
    p.add_argument("--modes", nargs="+", default=["lora-16", "full", "full-remat"], choices=[m[0] for m in MODES],
                   help="SFT modes to measure (GRPO runs the LoRA ones among them, or lora-16)")
    p.add_argument("--micro-batch", type=int,
                   help="ours only: SFT sequences (GRPO completions) per forward/backward pass; a step sums "
                        "the passes' gradients into the same update (sft.gradient_accumulation, grpo.micro_batch)")
    p.add_argument("--trl-python", help="python of a venv with torch + TRL (bench/README.md)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per side, interleaved ours/TRL")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.micro_batch and args.batch % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} does not divide --batch {args.batch}")
    if args.worker:
        print(json.dumps(ours_worker(json.loads(sys.stdin.read()), STARTED)))
        return None

    sys.path.insert(0, str(ROOT / "bench"))
    from sampler import write_summary

    from showwork.model import export, loader
    from showwork.train import sft

    loaded = loader.load(args.model)
    hf_dir = None
    if args.trl_python:
        hf_dir = Path(tempfile.mkdtemp(prefix="showwork-bench-hf-"))
        export.export_hf(loaded, hf_dir)
    results = []
    for stage in args.stages:
        modes = [m for m in MODES if m[0] in args.modes and (stage == "sft" or m[1])] or [MODES[0]]
        for name, rank, remat in modes:
            job = {"stage": stage, "model": args.model, "lora_rank": rank, "remat": remat, "steps": args.steps,
                   "seq_len": args.seq_len, "batch": args.batch, "prompts": args.prompts,
                   "generations": args.generations, "completion_tokens": args.completion_tokens,
                   "lora_alpha": 2 * rank, "model_dir": str(hf_dir) if hf_dir else None,
                   "micro_batch": args.micro_batch}
            if stage == "sft":
                job["rows"] = sft_rows(args.batch * (args.steps + 1), args.seq_len)
                seqs = sft.tokenize(job["rows"], loaded.tokenizer, args.seq_len)
                lengths = [len(a) + len(b) for a, b in zip(seqs.prompts, seqs.completions)]
                if len(lengths) < len(job["rows"]):
                    raise SystemExit(f"--seq-len {args.seq_len} leaves no room for the target after some prompts")
                job["tokens_per_step"] = args.batch * sum(lengths) / len(lengths)
            else:
                job["rows"] = grpo_rows(args.prompts * (args.steps + 1))
            runs = {"ours": [], "trl": []}
            for _ in range(args.repeats):  # interleaved: the machine's drift falls on both sides alike
                runs["ours"].append(summarize(stage, job, measure(sys.executable, Path(__file__), job)))
                if hf_dir is not None:
                    runs["trl"].append(summarize(stage, job, measure(args.trl_python, Path(__file__).with_name("trl_step.py"), job)))
            row = {"stage": stage, "mode": name, "repeats": args.repeats, "ours_micro_batch": args.micro_batch}
            for side in [s for s in runs if runs[s]]:
                for key, stats in over_repeats(runs[side]).items():
                    row[f"{side}_{key}"] = stats["median"]  # the headline: medians
                    row[f"{side}_{key}_min"] = stats["min"]
                row[f"{side}_runs"] = runs[side]
            if runs["trl"]:
                key = "tokens_per_second" if stage == "sft" else "prompts_per_minute"
                row["ratio"] = row[f"ours_{key}"] / row[f"trl_{key}"]
                row["peak_rss_ratio"] = row["ours_peak_rss_mib"] / row["trl_peak_rss_mib"]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_runs")}), flush=True)
    summary = {"model": args.model, "seq_len": args.seq_len, "batch": args.batch, "prompts": args.prompts,
               "generations": args.generations, "completion_tokens": args.completion_tokens, "steps": args.steps,
               "repeats": args.repeats,
               "lora_targets": LORA_TARGETS, "results": results}
    return write_summary(summary, args.json)


if __name__ == "__main__":
    main()
