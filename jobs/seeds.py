"""Pool one recipe's runs under different seeds: did a stage help, beyond one lucky seed?

Local:  make demo; make demo SEED=1; make demo SEED=2
        python -m jobs.seeds runs/demo runs/demo-seed1 runs/demo-seed2 [--before sft] [--after grpo]
              [--method greedy] [--source word-problems]
Reads:  each run's report/metrics.json (a directory or gs://bucket/prefix/run).
Prints: per run, the two models' accuracy and the questions the later one fixed and broke; pooled
        over the runs, the net fixes in points of the questions compared, the two-sided sign
        test's p (showwork.eval.report.sign_test) and the mean change of the held-out reward.
        --json prints the same as one JSON object.

Each run is scored on its own held-out questions, so runs with the same data seed (the demo's
SEED changes only sft.seed and grpo.seed) pool the same questions once per seed: a question fixed
in one run and broken in another counts once each way.
"""

from __future__ import annotations

import argparse
import json
import sys

from showwork.bus import Bus
from showwork.errors import UsageError
from showwork.eval.report import sign_test


def compare(metrics: dict, before: str, after: str, method: str, source: str | None) -> dict:
    """One run's accuracy of `before` and `after` and the questions `after` fixed and broke."""
    change = f"{before}->{after}"
    if change not in metrics.get("between_models", {}):
        raise UsageError(f"the report compares {sorted(metrics.get('between_models', {}))}, not {change!r}")
    if method not in metrics["between_models"][change]:
        raise UsageError(f"the report scored methods {sorted(metrics['between_models'][change])}, not {method!r}")
    if source is None:
        fb = metrics["between_models"][change][method]
        acc = {m: metrics["models"][m][method]["accuracy"] for m in (before, after)}
    else:
        per = metrics.get("between_models_by_source", {}).get(change, {}).get(method, {})
        if source not in per:
            raise UsageError(f"no source {source!r} in the report (it has {sorted(per)})")
        fb = per[source]
        acc = {m: metrics["by_source"][m][method][source]["accuracy"] for m in (before, after)}
    # The held-out reward's paired change (every math row; the report has it for GRPO recipes).
    reward = metrics.get("held_out_reward_changes", {}).get(change, {}).get(method, {}).get("change")
    return {"before": acc[before], "after": acc[after], "reward_change": reward, **fb}


def pool(runs: list[dict]) -> dict:
    fixed, broke, n = (sum(r[k] for r in runs) for k in ("fixed", "broke", "questions"))
    return {"runs": len(runs), "questions": n, "fixed": fixed, "broke": broke,
            "net_points": 100.0 * (fixed - broke) / n if n else 0.0, "sign_test_p": sign_test(fixed, broke),
            "mean_before": sum(r["before"] for r in runs) / len(runs),
            "mean_after": sum(r["after"] for r in runs) / len(runs),
            "mean_reward_change": (sum(r["reward_change"] for r in runs) / len(runs)
                                   if all(r["reward_change"] is not None for r in runs) else None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or gs:// prefixes) holding report/metrics.json")
    p.add_argument("--before", default="sft")
    p.add_argument("--after", default="grpo")
    p.add_argument("--method", default="greedy")
    p.add_argument("--source", default=None, help="one data source of a mixed eval set (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        per_run = {run: compare(Bus(run).read_json("report/metrics.json"), args.before, args.after,
                                args.method, args.source) for run in args.runs}
    except (UsageError, FileNotFoundError) as err:
        print(f"seeds: {err}", file=sys.stderr)
        return 2
    pooled = pool(list(per_run.values()))
    if args.json:
        print(json.dumps({"runs": per_run, "pooled": pooled}, indent=1, sort_keys=True))
        return 0
    print(f"| run | {args.before} | {args.after} | fixed | broke | questions |\n|---|---|---|---|---|---|")
    for run, r in per_run.items():
        print(f"| {run} | {100 * r['before']:.1f}% | {100 * r['after']:.1f}% | {r['fixed']} | {r['broke']} | "
              f"{r['questions']} |")
    print(f"\npooled over {pooled['runs']} runs: {args.before} {100 * pooled['mean_before']:.1f}% -> "
          f"{args.after} {100 * pooled['mean_after']:.1f}% (mean); fixed {pooled['fixed']}, broke "
          f"{pooled['broke']} of {pooled['questions']}: net {pooled['net_points']:+.1f} points, "
          f"sign test p = {pooled['sign_test_p']:.3g}")
    if pooled["mean_reward_change"] is not None:
        print(f"held-out reward, {args.before} -> {args.after}: {pooled['mean_reward_change']:+.3f} (mean of the runs' "
              "paired changes, every source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
