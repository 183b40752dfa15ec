"""Time to first result with a cold and a warm XLA compilation cache, as a user pays it.

Runs the demo recipe's SFT stage (a few steps) and one eval shard through
their job entrypoints twice each, on two fresh bus roots: the first with an
empty compilation cache (a first run, a new machine), the second with the
cache the first filled (a resumed run, the next eval shard, the next
pipeline run, or a new pod with the cache on the bus). Reports per run:
the process's wall time, the time from launch to the first SFT step's end
(load + trace + compile + one step), what the job compiled and what it
loaded from the cache (its "xla programs" log record), and its peak RSS.

    .venv/bin/python bench/compile_cache.py                         # real Gemma 3 270M (demo recipe)
    .venv/bin/python bench/compile_cache.py --model tiny --repeats 1   # smoke (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "k8s" / "base" / "recipes" / "demo.yaml"
CPU = ROOT / "k8s" / "components" / "cpu" / "tier.yaml"


def recipe(model: str, steps: int, questions: int, tokens: int) -> dict:
    """The demo recipe, shortened: `steps` SFT steps, one eval shard of the base and SFT models."""
    doc = yaml.safe_load(DEMO.read_text())
    if model != doc["model"]["name"]:
        doc["model"] = {"name": model, "lora": doc["model"]["lora"]}
    doc["data"].update(train_size=max(16, steps * doc["sft"]["batch_size"]), eval_size=questions)
    doc["sft"].update(max_steps=steps, checkpoint_every=10 ** 6)
    doc["eval"].update(models=["sft"], max_tokens=tokens)
    doc.pop("grpo")
    return doc


def run_job(module: str, config: Path, root: Path, cache: Path) -> dict:
    """One job as its pod runs it; wall, first-step time, its xla programs record, peak RSS."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT}", "SHOWWORK_LOG_FORMAT": "json",
           "JAX_COMPILATION_CACHE_DIR": str(cache)}
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the jobs' own default: keep every program
    began = time.time()
    done = subprocess.run([sys.executable, "-m", module, str(config), str(CPU), "--root", str(root)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    wall = time.time() - began
    if done.returncode:
        raise SystemExit(f"{module} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    steps = [r for r in records if r.get("event") == "sft step"]
    (programs,) = [r for r in records if r.get("event") == "xla programs"]
    first = (datetime.datetime.fromisoformat(steps[0]["timestamp"]).timestamp() - began) if steps else None
    return {"wall_seconds": round(wall, 1), "first_step_seconds": first and round(first, 1),
            "programs_compiled": programs["programs_compiled"], "programs_from_cache": programs["programs_from_cache"],
            "xla_seconds": programs["xla_seconds"]}


def children_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def one_repeat(config: Path, work: Path) -> list[dict]:
    """Cold then warm, SFT then the eval shard of the model that SFT exported."""
    cache = work / "xla"
    rows = []
    for state in ("cold", "warm"):
        root = work / state
        subprocess.run([sys.executable, "-m", "jobs.prepare_data", str(config), str(CPU), "--root", str(root)],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT}"}, check=True,
                       capture_output=True)
        for stage, module in (("sft", "jobs.sft"), ("eval shard", "jobs.evaluate")):
            rows.append({"stage": stage, "cache": state, **run_job(module, config, root, cache)})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Min and median over repeats of each (stage, cache) pair."""
    out = []
    for key in dict.fromkeys((r["stage"], r["cache"]) for r in rows):
        group = [r for r in rows if (r["stage"], r["cache"]) == key]
        row = {"stage": key[0], "cache": key[1], "repeats": len(group)}
        for field in ("wall_seconds", "first_step_seconds", "programs_compiled", "programs_from_cache", "xla_seconds"):
            values = [r[field] for r in group if r[field] is not None]
            if values:
                row[field] = {"min": min(values), "median": statistics.median(values)}
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=3, help="SFT steps per run")
    p.add_argument("--questions", type=int, default=8, help="eval questions in the shard")
    p.add_argument("--tokens", type=int, default=64, help="eval max_tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="showwork-cc-") as tmp:
        config = Path(tmp) / "recipe.yaml"
        config.write_text(yaml.safe_dump(recipe(args.model, args.steps, args.questions, args.tokens)))
        for repeat in range(args.repeats):
            for row in one_repeat(config, Path(tmp) / f"r{repeat}"):
                rows.append({"repeat": repeat, **row})
                print(json.dumps(rows[-1]), flush=True)
    result = {"model": args.model, "steps": args.steps, "questions": args.questions, "tokens": args.tokens,
              "runs": rows, "summary": summary(rows), "peak_rss_mib_any_job": round(children_peak_rss_mib())}
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
