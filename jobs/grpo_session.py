"""GRPO session K: continue from the newest checkpoint on the recipe's prompts.

Local:    python -m jobs.grpo_session k8s/base/recipes/quickstart.yaml k8s/components/cpu/tier.yaml --session 0
Cluster:  the grpo-session image runs the same module, one Job per session (--session from the JobSet).
Writes:   grpo/checkpoints/ (global steps), grpo/tensorboard/, grpo/s-K/metrics.jsonl, grpo/s-K/model/, grpo/s-K/_SUCCESS.
Session K needs session K-1 finished. Skipped when done, and when the recipe has no grpo section
(exit 0: the pipeline JobSet runs this job for every recipe); on SIGTERM saves and exits 75; re-run resumes.
"""

from __future__ import annotations

import os

from showwork import cli, log
from showwork.train import grpo


def add_arguments(parser):
    parser.add_argument("--session", type=int, default=int(os.environ.get("SHOWWORK_SESSION", "-1")),
                        help="0-based session to run (env SHOWWORK_SESSION); default: every session in order")


def main(cfg, bus, args):
    logger = log.get("grpo_session", run=bus.root)
    if cli.absent(cfg, "grpo", logger):
        return []
    sessions = [args.session] if args.session >= 0 else list(range(cfg.grpo.sessions))
    markers = []
    for session in sessions:
        marker, _ = grpo.run(bus, cfg, session, logger)
        markers.append(marker)
    return markers


if __name__ == "__main__":
    cli.run(__doc__, main, add_arguments=add_arguments)
