"""Self-teaching: sample k solutions per training question, keep the correct and
well-formed ones, fine-tune on them (rejection-sampling fine-tuning).

Local:    python -m jobs.self_teach k8s/base/recipes/self-teach.yaml k8s/components/cpu/tier.yaml
Writes:   self-teach/samples.jsonl, self-teach/yield.json, self-teach/checkpoints/, self-teach/model/, self-teach/_SUCCESS.
Skipped when done, and when the recipe has no such stage (exit 0: the pipeline JobSet
runs this job for every recipe); sampling is not repeated after a restart; SFT resumes from its checkpoint.
"""

from __future__ import annotations

from showwork import cli, log
from showwork.train import self_teach


def main(cfg, bus, args=None):
    logger = log.get("self_teach", run=bus.root)
    if cli.absent(cfg, "self_teach", logger):
        return None
    marker, _ = self_teach.run(bus, cfg, logger)
    return marker


if __name__ == "__main__":
    cli.run(__doc__, main)
