"""Where an SFT step's time goes, op by op: one step of `sft.make_step_fns`
(gradient only; the optimizer step is milliseconds for LoRA) traced with
jax.profiler, XLA:CPU's per-op trace events turned on. `--stage decode`
traces the sampler instead: `sampler.generate` (greedy) from one-token
prompts left-padded to --prompt-len (the trace includes that prefill; its
ops are listed apart from the loop's), and reports `decode_step_ms`, the
time of a decoded token for the batch with the prefill subtracted.

Every instant of the step is shared equally among the XLA ops running then
(XLA:CPU runs independent ops on its thread pool at the same time), so the
per-op seconds add up to the step's wall time. Ops are grouped by what
XLA:CPU made of them:
  matmul     - dot fusions (YNNPACK/XNNPACK library calls, or XLA's own `dot`)
  copy       - fusions that write a copy or a transpose (layout changes)
  exp/log    - fusions computing exponentials or logs (softmax, log-sum-exp)
  elementwise- every other fusion (norms, GELU, residual adds, masks)
The largest single ops are listed with the JAX operation they came from.

    .venv/bin/python bench/profile_step.py --json /tmp/profile.json
    .venv/bin/python bench/profile_step.py --stage decode --batch 32 --new-tokens 32 --prompt-len 160
    .venv/bin/python bench/profile_step.py --model tiny --batch 2   # smoke
"""

from __future__ import annotations

import os

# XLA:CPU emits one trace event per op only with this flag; it must be set
# before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))


def category(op: str) -> str:
    if op.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn")):
        return "matmul"
    if "exponential" in op or "log" in op:
        return "exp/log"
    if "copy" in op or "transpose" in op:
        return "copy"
    return "elementwise"


def op_intervals(trace_file: Path) -> list[tuple[float, float, str]]:
    """(start µs, end µs, HLO op name) of every XLA op executed in the trace."""
    events = json.load(gzip.open(trace_file))
    events = events["traceEvents"] if isinstance(events, dict) else events
    out = []
    for e in events:
        op = e.get("args", {}).get("hlo_op") if e.get("ph") == "X" else None
        # `while` spans its body's ops, which are counted themselves.
        if op and not e["name"].startswith("end:") and not op.startswith("while"):
            out.append((e["ts"], e["ts"] + e["dur"], op))
    return out


def wall_shares(intervals: list[tuple[float, float, str]]) -> tuple[dict[str, float], float]:
    """Seconds of wall time per op (each instant split among the ops running) and the busy total."""
    edges = sorted([(s, 1, op) for s, _, op in intervals] + [(t, -1, op) for _, t, op in intervals])
    running: collections.Counter = collections.Counter()
    shares: collections.Counter = collections.Counter()
    busy, last = 0.0, edges[0][0] if edges else 0.0
    for ts, step, op in edges:
        n = sum(running.values())
        if n:
            busy += ts - last
            for name, count in running.items():
                if count:
                    shares[name] += (ts - last) * count / n
        running[op] += step
        last = ts
    return {k: v / 1e6 for k, v in shares.items()}, busy / 1e6


def op_sources(hlo_text: str) -> dict[str, str]:
    """HLO op name -> the JAX operation it came from (its metadata op_name)."""
    found = {}
    for m in re.finditer(r"^\s*%?([\w.-]+) = .*?metadata=\{op_name=\"([^\"]+)\"", hlo_text, re.M):
        found.setdefault(m.group(1), m.group(2))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m", "tiny"])
    p.add_argument("--stage", default="sft", choices=["sft", "decode"])
    p.add_argument("--mode", default="lora-16", choices=["lora-16", "full"], help="SFT only")
    p.add_argument("--new-tokens", type=int, default=32, help="decode only")
    p.add_argument("--prompt-len", type=int, default=32,
                   help="decode only: prompt slots (left padding), so the cache has prompt-len + new-tokens slots")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--top", type=int, default=12, help="largest single ops to list")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import jax

    from sampler import write_summary

    from showwork.model import loader
    from showwork.sample import sampler

    loaded = loader.load(args.model)
    if args.stage == "decode":

        rows = ["x"] * args.batch
        hlo = ""

        def step(new_tokens=args.new_tokens):
            sampler.generate(loaded, rows, sampler.SampleSettings(new_tokens), batch_size=args.batch,
                              stop_ids=(-1,), prompt_len=args.prompt_len)
        shape = {"batch": args.batch, "new_tokens": args.new_tokens, "prompt_len": args.prompt_len,
                 "decode_step_ms": decode_step_ms(step, args.new_tokens)}
    else:
        step, hlo, shape = sft_step(args, loaded)
    step()  # compile and warm up
    start = time.perf_counter()
    step()
    untraced = time.perf_counter() - start

    trace_dir = Path(tempfile.mkdtemp(prefix="showwork-profile-"))
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    start = time.perf_counter()
    step()
    traced = time.perf_counter() - start
    jax.profiler.stop_trace()
    (trace_file,) = trace_dir.rglob("perfetto_trace.json.gz")
    shares, busy = wall_shares(op_intervals(trace_file))
    by_category: collections.Counter = collections.Counter()
    for op, seconds in shares.items():
        by_category[category(op)] += seconds
    sources = op_sources(hlo)
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:args.top]
    summary = {
        "model": args.model, "stage": args.stage, **shape,
        "step_seconds_untraced": untraced, "step_seconds_traced": traced, "ops_busy_seconds": busy,
        "by_category_seconds": dict(by_category.most_common()),
        "top_ops": [{"op": op, "seconds": s, "category": category(op), "source": sources.get(op, "")}
                    for op, s in top],
        "trace": str(trace_file),
    }
    return write_summary(summary, args.json)


def decode_step_ms(generate, new_tokens: int, repeats: int = 3) -> float:
    """Milliseconds a decoded token for the whole batch, prefill left out:
    the time of `new_tokens` minus that of one (the prefill and first pick),
    each the best of `repeats` runs (a difference of two times is noisy)."""
    times = {}
    for n in (1, new_tokens):
        generate(n)  # compile
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate(n)
            runs.append(time.perf_counter() - start)
        times[n] = min(runs)
    return (times[new_tokens] - times[1]) / max(new_tokens - 1, 1) * 1000


def sft_step(args, loaded):
    """(run one gradient step, its compiled HLO text, the batch's shape) for SFT as sft.train packs it."""
    import jax

    from train_step import sft_rows

    from showwork.config import LoraConfig, OptimizerConfig, ScheduleConfig
    from showwork.model import lora
    from showwork.sample import forward
    from showwork.train import sft, step as step_lib

    if args.mode == "lora-16":
        loaded.model = lora.add(loaded.model, LoraConfig(16, 32.0))
    seqs = sft.tokenize(sft_rows(args.batch, args.seq_len), loaded.tokenizer, args.seq_len)
    if len(seqs.prompts) < args.batch:
        raise SystemExit(f"--seq-len {args.seq_len} leaves no room for the target after the prompt")
    # Packed the way sft.train packs a batch.
    longest = max(len(c) for c in seqs.completions)
    prompt, completion, mask = forward.pack(
        seqs.prompts, seqs.completions, prompt_len=forward.bucket(max(len(x) for x in seqs.prompts)),
        completion_len=forward.capped_bucket(longest, 128, longest))
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    tx = step_lib.optimizer(OptimizerConfig(1e-5, 0.9, 0.99, 0.0, 1.0), ScheduleConfig(end_value_ratio=0.1), 10)
    grad_fn, _, _ = sft.make_step_fns(graphdef, tx)
    step_args = (trainable, frozen, prompt, completion, mask)
    hlo = grad_fn.lower(*step_args).compile().as_text()
    shape = {"mode": args.mode, "batch": args.batch, "prompt_len": int(prompt.shape[1]),
             "completion_len": int(completion.shape[1]), "target_tokens": int(mask.sum())}
    return (lambda: jax.block_until_ready(grad_fn(*step_args))), hlo, shape


if __name__ == "__main__":
    main()
