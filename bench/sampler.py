"""Sampler throughput: showwork's KV-cache sampler vs Hugging Face `generate`.

Same weights (Gemma 3 270M from the GGUF package, exported to a Hugging Face
directory), same token ids (GSM8K-style chat prompts), same number of new
tokens (stops disabled on both sides so every row generates exactly
--new-tokens), batch 8 and 32, greedy and top-k/top-p. Prints tok/s, the
fraction of this machine's measured float32 matmul peak, the ratio, and
whether greedy outputs agree token for token on the first 32 tokens.

    .venv/bin/python bench/sampler.py --hf-python bench/.venv-torch/bin/python
    .venv/bin/python bench/sampler.py --model tiny --batches 4 --new-tokens 8   # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from showwork.config import DataConfig
from showwork.model import export, loader
from showwork.sample import sampler
from showwork.task import data, prompts

MODES = {  # name -> (temperature, top_k, top_p)
    "greedy": (0.0, None, None),
    "top-k/top-p": (0.7, 50, 0.95),
}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured float32 matmul rate, through numpy's BLAS and through XLA."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    best = {}
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    best["numpy"] = flops * repeats / (time.perf_counter() - start) / 1e9
    x = jnp.asarray(a)
    dot = jax.jit(jnp.dot)
    dot(x, x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        dot(x, x).block_until_ready()
    best["xla"] = flops * repeats / (time.perf_counter() - start) / 1e9
    return best


def gsm_prompts(count: int) -> list[str]:
    train, _, _ = data.build_splits(DataConfig(source="reasoning-gym", task="gsm_symbolic", train_size=count, eval_size=0, seed=123))
    system = "You are given a problem. Think about it step by step and show your work."
    return [prompts.chat_prompt(system, row.question) for row in train]


def flops_per_token(config) -> float:
    """Matmul FLOPs of one decoded token: 2 x every weight it multiplies (the
    embedding lookup is free, the tied output projection is not); attention
    over the cache is small at these lengths and left out."""
    d, layers, vocab = config.embed_dim, config.num_layers, config.num_embed
    attn = d * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim + config.num_heads * config.head_dim * d
    mlp = 3 * d * config.hidden_dim
    return 2.0 * (layers * (attn + mlp) + vocab * d)


def ours(loaded, ids: list[list[int]], batch: int, new_tokens: int, mode: str, repeats: int) -> dict:
    temperature, top_k, top_p = MODES[mode]
    settings = sampler.SampleSettings(new_tokens, temperature, top_k, top_p)
    texts = [loaded.tokenizer.decode(row[1:]) for row in ids[:batch]]  # generate() re-adds BOS
    never = (-1,)  # no token stops a row: both sides generate exactly new_tokens
    sampler.generate(loaded, texts, settings, batch_size=batch, stop_ids=never)  # compile
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = sampler.generate(loaded, texts, settings, batch_size=batch, stop_ids=never)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    produced = sum(len(t) for t in out.completion_ids)
    return {"tokens_per_second": produced / best, "seconds": best, "tokens": out.tokens}


def write_summary(summary: dict, path: str | None) -> dict:
    """Print the run's summary and, with --json, keep it in a file."""
    print(json.dumps(summary, indent=1))
    if path:
        Path(path).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m", "tiny"])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best counts")
    p.add_argument("--hf-python", help="python of a venv with torch + transformers (bench/README.md)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    loaded = loader.load(args.model)
    texts = gsm_prompts(max(args.batches))
    ids = [loaded.tokenizer.encode(t, bos=True) for t in texts]
    peak = matmul_peak_gflops()
    per_token = flops_per_token(loaded.config)
    results = []
    hf_dir = None
    if args.hf_python:
        hf_dir = Path(tempfile.mkdtemp(prefix="showwork-bench-hf-"))
        export.export_hf(loaded, hf_dir)
    for batch in args.batches:
        for mode in MODES:
            row = {"batch": batch, "mode": mode}
            mine = ours(loaded, ids, batch, args.new_tokens, mode, args.repeats)
            row["ours_tok_s"] = mine["tokens_per_second"]
            row["ours_peak_fraction"] = mine["tokens_per_second"] * per_token / (max(peak.values()) * 1e9)
            if hf_dir is not None:
                job = {"model_dir": str(hf_dir), "ids": ids[:batch], "new_tokens": args.new_tokens,
                       "mode": MODES[mode], "repeats": args.repeats}
                done = subprocess.run([args.hf_python, str(Path(__file__).with_name("hf_sampler.py"))],
                                      input=json.dumps(job), capture_output=True, text=True, check=True)
                theirs = json.loads(done.stdout.strip().splitlines()[-1])
                row["hf_tok_s"] = theirs["tokens_per_second"]
                row["ratio"] = row["ours_tok_s"] / row["hf_tok_s"]
                if mode == "greedy":
                    row["greedy_first32_identical_rows"] = sum(
                        a[:32] == b[:32] for a, b in zip(mine["tokens"], theirs["tokens"]))
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"model": args.model, "new_tokens": args.new_tokens, "matmul_gflops": peak,
               "flops_per_token": per_token, "results": results}
    return write_summary(summary, args.json)


if __name__ == "__main__":
    main()
