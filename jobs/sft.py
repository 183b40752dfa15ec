"""SFT: fine-tune the recipe's model (full or LoRA) on data/train.jsonl.

Local:    python -m jobs.sft k8s/base/recipes/hybrid.yaml k8s/components/cpu/tier.yaml
Cluster:  the sft image runs the same module with --root gs://BUCKET/runs (k8s/base).
Writes:   sft/checkpoints/, sft/tensorboard/, sft/metrics.jsonl, sft/model/ (merged, HF layout), sft/_SUCCESS.
Skipped when done, and when the recipe has no such stage (exit 0: the pipeline JobSet
runs this job for every recipe); on SIGTERM saves a checkpoint and exits 75 (showwork.errors); re-run resumes.
"""

from __future__ import annotations

from showwork import cli, log
from showwork.train import sft


def main(cfg, bus, args=None):
    logger = log.get("sft", run=bus.root)
    if cli.absent(cfg, "sft", logger):
        return None
    marker, _ = sft.run(bus, cfg, logger)
    return marker


if __name__ == "__main__":
    cli.run(__doc__, main)
