"""What adding LoRA adapters costs before the first step: `lora.add` on a loaded model, cold.

Every stage that trains adapters (SFT, each GRPO session, each self-teach round) pays it once per
process, before its first step. Each repeat is a fresh process with an empty XLA compilation cache;
it reports the wall time of `lora.add`, the programs XLA compiled for it and the seconds XLA spent.

    .venv/bin/python bench/lora_add.py                          # real Gemma 3 270M, LoRA 16, 3 repeats
    .venv/bin/python bench/lora_add.py --model tiny --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import json, sys, time, jax
from flax import nnx
from showwork import xla_cache
from showwork.config import LoraConfig
from showwork.model import loader, lora
xla_cache.enable()
model, rank = sys.argv[1], int(sys.argv[2])
loaded = loader.load(model)
before, started = xla_cache.counts(), time.perf_counter()
adapted = lora.add(loaded.model, LoraConfig(rank, 2.0 * rank), seed=0)
jax.block_until_ready(jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam)))
seconds, after = time.perf_counter() - started, xla_cache.counts()
print(json.dumps({"seconds": seconds, "programs": after.requested - before.requested,
                  "xla_seconds": after.seconds - before.seconds}))
"""


def once(model: str, rank: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="showwork-lora-bench-") as cache:
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), str(ROOT)])}
        done = subprocess.run([sys.executable, "-c", ONE, model, str(rank)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"lora.add on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = [once(args.model, args.rank) for _ in range(args.repeats)]
    summary = {key: {"min": min(r[key] for r in runs), "median": statistics.median(r[key] for r in runs)}
               for key in ("seconds", "programs", "xla_seconds")}
    result = {"model": args.model, "rank": args.rank, "runs": runs, "summary": summary}
    print(f"lora.add on {args.model}, rank {args.rank}, {args.repeats} cold process(es): "
          f"{summary['seconds']['min']:.1f} s ({summary['seconds']['median']:.1f} s median), "
          f"{summary['programs']['median']} programs, {summary['xla_seconds']['median']:.1f} s in XLA")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
