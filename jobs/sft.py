"""SFT: fine-tune the recipe's model (full or LoRA) on data/train.jsonl.

Local:    python -m jobs.sft k8s/base/recipes/hybrid.yaml k8s/components/cpu/tier.yaml
Cluster:  the sft image runs the same module with --root gs://BUCKET/runs (k8s/base).
Writes:   sft/checkpoints/, sft/tensorboard/, sft/metrics.jsonl, sft/model/ (merged, HF layout), sft/_SUCCESS.
Skipped when done; on SIGTERM saves a checkpoint and exits 0; re-run resumes.
"""

from __future__ import annotations

from showwork import cli, log, sft, training


def main(cfg, bus, args=None):
    logger = log.get("sft", run=bus.root)
    try:
        marker, _ = sft.run(bus, cfg, logger)
    except training.Preempted as stop:
        logger.warning("preempted; checkpoint saved, exiting for a restart", detail=str(stop))
        raise SystemExit(0) from None
    return marker


if __name__ == "__main__":
    cli.run(__doc__, main)
