"""Evaluate one shard: questions i % N == I of the eval split, for one model.

Local:    python -m jobs.evaluate k8s/base/recipes/hybrid.yaml k8s/components/cpu/tier.yaml --model base --shard 0 --shards 1
Cluster:  an Indexed Job: the shard index is JOB_COMPLETION_INDEX, the count the tier's eval_shards.
Writes:   eval/<model>/shard-I-of-N.jsonl (one record per question, written atomically) and its marker.
A finished shard is skipped; a retried pod rewrites the whole file, never appends.
"""

from __future__ import annotations

import os

from showwork import cli, log
from showwork.eval import evaluate


def add_arguments(parser):
    parser.add_argument("--model", action="append", help="model to evaluate (base, sft, self-teach, grpo); "
                        "repeatable; default: every model in the recipe's eval.models")
    parser.add_argument("--shard", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", "0")),
                        help="this shard's index (env JOB_COMPLETION_INDEX)")
    parser.add_argument("--shards", type=int, default=None, help="shard count (default: the tier's eval_shards)")


def main(cfg, bus, args):
    logger = log.get("evaluate", run=bus.root, shard=args.shard)
    count = args.shards or cfg.tier.eval_shards
    return [evaluate.run_shard(bus, cfg, model, args.shard, count, logger)[0]
            for model in (args.model or cfg.eval.models)]


if __name__ == "__main__":
    cli.run(__doc__, main, add_arguments=add_arguments, placement=cli.Placement.ONE_HOST)
