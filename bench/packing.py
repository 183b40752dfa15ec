"""Packed vs padded SFT on GSM-style examples of varied length: real (non-pad) tokens per second.

Both runs train the same model (Gemma 3 270M from the GGUF package, LoRA
rank 16, float32) on the same formatted gsm_symbolic examples through the
product's loop (`sft.train`), batch --batch sequences of up to --seq-len
tokens: padded (one example a row, completions in 128-token buckets) and
packed (`sft.packing`: whole examples back to back, attention kept inside
each). The first step of each run compiles and is left out; tokens/s is
what `sft.train` logs (real tokens only). Each run is its own process.

    .venv/bin/python bench/packing.py --trl-python bench/.venv-torch/bin/python   # with TRL's packing
    .venv/bin/python bench/packing.py --trl-python bench/.venv-torch/bin/python --micro-batch 2 --repeats 3
    .venv/bin/python bench/packing.py --model tiny --steps 2 --examples 16   # smoke (tests/test_bench.py)

With --trl-python, TRL's SFTTrainer trains the same rows twice more:
padded (`packing=False`: each batch padded to its longest example) and
packed (`packing=True`, its default best-fit-decreasing strategy), both
with `max_length` = --seq-len, the same batch in one pass (its defaults),
LoRA 16 on the same projections, float32, the model exported to a Hugging
Face directory. Its real tokens/s are the tokens it logs as trained
(`num_tokens`) over the timed steps' seconds. TRL's padding-free packing joins
a batch's rows into one row with position ids restarting at each example;
transformers 5 finds the examples from those ids and masks attention
block-diagonally (`masking_utils.find_packed_sequence_indices`), so with
`sdpa` on CPU (recorded as `attention`) its examples attend only to
themselves, as ours do.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def rows(count: int) -> list[dict]:
    """The demo's formatted SFT rows (prompt, target) of gsm_symbolic, any solution length."""
    from showwork.config import DataConfig, PromptConfig
    from showwork.task import data

    train, _, _ = data.build_splits(DataConfig(source="reasoning-gym", task="gsm_symbolic", train_size=count,
                                               eval_size=0, seed=11))
    return [data.formatted(r, PromptConfig().system) for r in train]


def worker(job: dict) -> dict:
    """One run of sft.train in this process; its steady-state real tokens/s and peak RSS."""
    from showwork import log
    from showwork.bus import Bus
    from showwork.config import LoraConfig, OptimizerConfig, SftConfig
    from showwork.model import loader, lora
    from showwork.train import sft

    loaded = loader.load(job["model"])
    loaded.model = lora.add(loaded.model, LoraConfig(rank=16, alpha=32), 0)
    settings = SftConfig(max_steps=job["steps"] + 1, max_seq_len=job["seq_len"], packing=job["packed"],
                         gradient_accumulation=job["batch"] // job["micro_batch"], checkpoint_every=10 ** 6,
                         optimizer=OptimizerConfig(learning_rate=1e-5))
    bus = Bus(tempfile.mkdtemp(prefix="showwork-pack-"))
    per_pass = job["micro_batch"]
    final = sft.train(bus, loaded, rows(job["examples"]), settings, per_pass, "sft", "bench", log.get("bench"))
    timed = bus.read_jsonl("sft/metrics.jsonl")[1:]
    rates = [r["tokens_per_second"] for r in timed]
    return {"tokens_per_second": statistics.median(rates), "rows": final.get("packed_sequences", final["sequences"]),
            "rows_per_pass": per_pass, "passes": settings.gradient_accumulation,
            "examples": final["sequences"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def trl_setup(args) -> dict:
    """TRL's job: the same rows, the model exported once to a Hugging Face directory."""
    from showwork.model import export, loader

    hf_dir = Path(tempfile.mkdtemp(prefix="showwork-pack-hf-"))
    export.export_hf(loader.load(args.model), hf_dir)
    return {"stage": "sft", "model_dir": str(hf_dir), "rows": rows(args.examples), "batch": args.batch,
            "seq_len": args.seq_len, "lora_rank": 16, "lora_alpha": 32, "steps": args.steps}


def run_side(side: str, args, trl_job: dict | None) -> dict:
    """One run of one side in its own process: real tokens/s, peak RSS."""
    if side.startswith("trl-"):
        job = {**trl_job, "packing": side == "trl-packed"}
        done = subprocess.run([args.trl_python, str(ROOT / "bench" / "trl_step.py")], input=json.dumps(job),
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        got = json.loads(done.stdout.splitlines()[-1])
        return {"tokens_per_second": got["timed_tokens"] / sum(got["step_seconds"]),
                "peak_rss_mib": got["peak_rss_mib"], "attention": got.get("attention")}
    job = {"model": args.model, "examples": args.examples, "batch": args.batch, "seq_len": args.seq_len,
           "steps": args.steps, "packed": side == "packed", "micro_batch": args.micro_batch}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--micro-batch", type=int,
                   help="ours: each update of --batch rows in passes of this many rows, their gradients averaged "
                        "(sft.gradient_accumulation), as bench/train_step.py --micro-batch: less memory at the peak")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (after the compiling one)")
    p.add_argument("--repeats", type=int, default=2, help="padded, packed, padded, packed, ...")
    p.add_argument("--json", type=Path)
    p.add_argument("--trl-python", help="python of the torch venv: also run TRL's padded and packed SFT")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.micro_batch is not None and (args.micro_batch < 1 or args.batch % args.micro_batch):
        p.error(f"--micro-batch {args.micro_batch} does not divide --batch {args.batch}")
    args.micro_batch = args.micro_batch or args.batch
    trl_job = trl_setup(args) if args.trl_python else None
    runs = []
    for repeat in range(args.repeats):  # interleaved: machine drift falls on every side alike
        for side in ("padded", "packed") + (("trl-padded", "trl-packed") if trl_job else ()):
            runs.append({"repeat": repeat, "side": side, **run_side(side, args, trl_job)})
            print(json.dumps(runs[-1]), flush=True)
    rate = {side: [r["tokens_per_second"] for r in runs if r["side"] == side] for side in {r["side"] for r in runs}}
    result = {"model": args.model, "batch": args.batch, "micro_batch": args.micro_batch,
              "seq_len": args.seq_len, "steps": args.steps, "runs": runs,
              **{f"{side}_tokens_per_second": {"min": min(v), "median": statistics.median(v)} for side, v in rate.items()},
              "packed_over_padded": statistics.median(rate["packed"]) / statistics.median(rate["padded"])}
    if trl_job:
        result["packed_over_trl_packed"] = statistics.median(rate["packed"]) / statistics.median(rate["trl-packed"])
        result["padded_over_trl_padded"] = statistics.median(rate["padded"]) / statistics.median(rate["trl-padded"])
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
