"""Where a pipeline run's resident memory goes, phase by phase, as `jobs.pipeline` runs it.

Runs the recipe's stages in this process, as `make demo` does, with a thread
sampling the resident set every 20 ms. The phases that hold the big
allocations are wrapped (model load, LoRA, folding adapters for rollouts,
sampling, scoring, the GRPO update's passes):
each call records the resident set before it, its peak and after it. Between
stages it records what the pipeline's release handed back.

    .venv/bin/python bench/memory.py                          # the demo, shortened (below)
    .venv/bin/python bench/memory.py --full                   # the whole demo recipe as make demo runs it
    .venv/bin/python bench/memory.py --model tiny --json out.json   # smoke (tests/test_bench.py)

The shortened run keeps every shape that sets the peak (SFT's batch and
packed length, GRPO's batch, group, micro-batch and rollout lengths, the
eval batch) and cuts counts: 4 SFT steps, 2 GRPO steps, 48 eval questions.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT)]
DEMO = ROOT / "k8s" / "base" / "recipes" / "demo.yaml"
CPU = ROOT / "k8s" / "components" / "cpu" / "tier.yaml"

from showwork import memory  # noqa: E402


class Sampler:
    """The process's resident set, sampled every `period` seconds: the peak since each open
    measurement began (a stage's and, inside it, a phase's), and over the whole run."""

    def __init__(self, period: float = 0.02):
        self.open: dict[str, int] = {}  # measurement -> its peak so far
        self.overall = 0
        self.period = period
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _see(self, now: int):
        with self.lock:
            self.overall = max(self.overall, now)
            for name in self.open:
                self.open[name] = max(self.open[name], now)

    def _run(self):
        while True:
            self._see(memory.resident_bytes() or 0)
            time.sleep(self.period)

    def start(self, name: str) -> int:
        now = memory.resident_bytes() or 0
        with self.lock:
            self.open[name] = now
        self._see(now)
        return now

    def stop(self, name: str) -> int:
        self._see(memory.resident_bytes() or 0)
        with self.lock:
            return self.open.pop(name)


def wrap(module, name: str, phase: str, sampler: Sampler, calls: list[dict], stage: list[str]):
    """Replace module.name by a version that records RSS before, at its peak and after each call."""
    inner = getattr(module, name)

    @functools.wraps(inner)
    def measured(*args, **kwargs):
        import jax

        before = sampler.start("phase")
        out = inner(*args, **kwargs)
        jax.block_until_ready(jax.tree.leaves(out)) if isinstance(out, (list, tuple, dict)) else None
        calls.append({"stage": stage[0], "phase": phase, "before": before, "peak": sampler.stop("phase"),
                      "after": memory.resident_bytes() or 0})
        return out

    setattr(module, name, measured)


def shortened(doc: dict) -> dict:
    """The recipe with counts cut and every peak-setting shape kept (see the module docstring)."""
    doc["data"]["eval_size"] = 32
    doc["data"]["mix"] = [dict(m, eval_size=min(m.get("eval_size", 16), 16)) for m in doc["data"].get("mix", [])]
    doc["sft"].update(max_steps=4, checkpoint_every=4)
    if doc.get("grpo"):
        doc["grpo"].update(steps_per_session=2, checkpoint_every=2)
    return doc


def recipe(model: str, full: bool) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    if not full:
        doc = shortened(doc)
    if model != doc["model"]["name"]:
        doc["model"] = {"name": model, "lora": doc["model"]["lora"]}
        doc["data"].update(train_size=16, eval_size=4, mix=[])
        doc["grpo"]["rollout"].update(max_tokens_to_generate=8)
        doc["eval"]["max_tokens"] = 8
    return doc


def summarize(calls: list[dict]) -> list[dict]:
    """Per (stage, phase): calls, the resident set before the first, the highest peak, the largest rise."""
    rows: dict[tuple[str, str], dict] = {}
    for c in calls:
        row = rows.setdefault((c["stage"], c["phase"]), {"stage": c["stage"], "phase": c["phase"], "calls": 0,
                                                          "first_before_gb": c["before"] / 1e9, "peak_gb": 0.0,
                                                          "largest_rise_gb": 0.0})
        row["calls"] += 1
        row["peak_gb"] = max(row["peak_gb"], c["peak"] / 1e9)
        row["largest_rise_gb"] = max(row["largest_rise_gb"], (c["peak"] - c["before"]) / 1e9)
    return [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows.values()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--full", action="store_true", help="the whole demo recipe, not the shortened one")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--override", action="append", default=[],
                    help="a YAML file merged over the recipe, as jobs.pipeline merges its config files "
                         "(e.g. grpo: {micro_batch: null} for the update in one pass)")
    args = ap.parse_args()

    from jobs import pipeline as job
    from showwork import cli, pipeline
    from showwork.model import loader, lora
    from showwork.sample import sampler as sampler_lib
    from showwork.train import grpo

    sampler, calls, stage = Sampler(), [], ["-"]
    for module, name, phase in [(loader, "load_from", "load model"), (lora, "add", "add LoRA"),
                                (lora, "fold_into", "fold adapters for rollouts"),
                                (sampler_lib, "generate", "sample"), (grpo, "pass_logps", "score (no gradient)"),
                                (grpo, "gradient", "GRPO update, all passes")]:
        wrap(module, name, phase, sampler, calls, stage)
    stages: list[dict] = []
    run_stage = pipeline.run_stage

    def staged(cfg, bus, st, log):
        # What the previous stage's release left is this stage's "before"; SFT's per-step resident
        # set is also in its log lines (rss_gb).
        stage[0] = st.label
        before = sampler.start("stage")
        out = run_stage(cfg, bus, st, log)
        stages.append({"stage": st.label, "before_gb": round(before / 1e9, 2),
                       "peak_gb": round(sampler.stop("stage") / 1e9, 2)})
        return out

    pipeline.run_stage = staged
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(args.model, args.full)))
        began = time.time()
        cli.run(job.__doc__, job.main, [str(path), str(CPU), *args.override, "--root", str(Path(work) / "bus"),
                                        "--run-id", "run"], job.add_arguments)
        wall = time.time() - began
    result = {"model": args.model, "full": args.full, "wall_seconds": round(wall, 1),
              "peak_gb": round(sampler.overall / 1e9, 2), "stages": stages, "phases": summarize(calls)}
    print(f"{'stage':30s} {'before':>7s} {'peak':>7s}")
    for s in stages:
        print(f"{s['stage']:30s} {s['before_gb']:6.2f}G {s['peak_gb']:6.2f}G")
    print(f"\n{'stage':30s} {'phase':28s} {'calls':>5s} {'before':>7s} {'peak':>7s} {'rise':>7s}")
    for r in result["phases"]:
        print(f"{r['stage']:30s} {r['phase']:28s} {r['calls']:5d} {r['first_before_gb']:6.2f}G {r['peak_gb']:6.2f}G "
              f"{r['largest_rise_gb']:6.2f}G")
    print(f"\npeak resident set {result['peak_gb']:.2f} GB, {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
